#!/usr/bin/env python3
"""Arithmetic of the real workload, counted by PyTorch's FlopCounterMode on MONAI's networks (meta
tensors: nothing is computed or allocated), to read every measured time against the machine's peaks.

    python benchmarks/flops.py [--latent 4,128,128,32] [--image 512,512,128] [--window 80,80,80 --overlap 0.4]

Prints TFLOP (2 per multiply-add) of one U-Net forward at batch 1, of decoding the whole image in one
pass, and of the sliding-window decode (the one-pass count per window times the windows MONAI's
SlidingWindowInferer visits). Needs torch and monai (see monai_bench.py); never needed to build or test.
"""
import argparse
import itertools
import json
import math
import os
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from monai_bench import make_unet, make_vae  # noqa: E402


def count(f):
    with FlopCounterMode(display=False) as m:
        f()
    return m.get_total_flops()


def windows(extent, window, overlap):
    """Window starts per axis as MONAI's dense_patch_slices makes them (scan interval roi·(1−overlap))."""
    n = 1
    for e, w in zip(extent, window):
        w = min(w, e)
        step = max(int(w * (1 - overlap)), 1)
        n *= max(math.ceil((e - w) / step), 0) + 1
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--latent", default="4,128,128,32")
    ap.add_argument("--image", default="512,512,128")
    ap.add_argument("--window", default="80,80,80", help="sliding window in latent voxels")
    ap.add_argument("--overlap", type=float, default=0.4)
    a = ap.parse_args()
    c, x, y, z = [int(v) for v in a.latent.split(",")]
    img = [int(v) for v in a.image.split(",")]
    lat = [v // 4 for v in img]
    win = [min(int(v), l) for v, l in zip(a.window.split(","), lat)]
    with torch.device("meta"):
        unet = make_unet()
        vae = make_vae(1)
        xs = torch.zeros(1, c, x, y, z)
        t = torch.zeros(1)
        ctx = torch.zeros(1, 1, 768)
        labels = torch.ones(1, dtype=torch.long)
        sp = torch.zeros(1, 3)
        with torch.no_grad():
            f_unet = count(lambda: unet(xs, t, context=ctx, class_labels=labels, spacing_tensor=sp))
            # The decoder is convolutions, linear in the voxels: counted on an eighth of the latent
            # (MONAI's MAISI decoder copies through the CPU beyond 500 voxels an axis, which meta
            # tensors cannot), times 8.
            half = [max(v // 2, 1) for v in lat]
            f_dec = count(lambda: vae.decode_stage_2_outputs(torch.zeros(1, 4, *half))) * (
                math.prod(lat) / math.prod(half))
            f_win = count(lambda: vae.decode_stage_2_outputs(torch.zeros(1, 4, *win)))
    nwin = windows(lat, win, a.overlap)
    out = {
        "unet_forward_tflop": f_unet / 1e12,
        "latent": [c, x, y, z],
        "image": img,
        "decode_one_pass_tflop": f_dec / 1e12,
        "sliding_window": win,
        "sliding_overlap": a.overlap,
        "sliding_windows": nwin,
        "decode_sliding_tflop": f_win * nwin / 1e12,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
