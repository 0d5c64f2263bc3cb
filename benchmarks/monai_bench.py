#!/usr/bin/env python3
"""MONAI on the workloads of `text2ct bench`, with the same shapes, inputs, thread count and JSON fields,
so every figure can be a ratio measured side by side (benchmarks/compare.sh runs both).

    python benchmarks/monai_bench.py unet --latent 4,16,16,8 [--batch 1]
    python benchmarks/monai_bench.py vae --size 64,64,32 [--decode one-pass|sliding|both] [--splits 4]
                                         [--window 16,16,8] [--overlap 0.4]
    python benchmarks/monai_bench.py generate --size 64,64,32 [--steps 2] [--guidance 5]
                                         [--decode one-pass|sliding] [--decode-window X,Y,Z] [--decode-splits N]
  common options: --repeats N --threads N --precision f32|bf16 --json

Networks: MONAI's DiffusionModelUNetMaisi and AutoencoderKlMaisi with Text2CT's released configurations
(random weights: speed does not depend on them). --precision bf16 runs the forward passes under
torch.autocast("cpu", dtype=torch.bfloat16) (weights stay f32; PyTorch casts per operation).
Inputs: the values of text2ct_models::speed::pattern (x = ((i * 2654435761) mod 2000) / 1000 - 1), timestep
500, class label 1, spacing [75, 75, 300], a context of pattern(768, 1000). The one-pass decode is MONAI's
own (its split convolutions with num_splits = --splits, dim_split 1); the sliding window is MONAI's
SlidingWindowInferer (Gaussian, sigma 0.125) around decode_stage_2_outputs, as MAISI and Text2CT decode.
`generate` runs the sampling loop of text2ct's pipeline (rectified-flow steps, both guidance branches as one
batch of 2) and the decode; it has no text encoder (seconds_text is 0).
Peak memory: VmHWM of /proc/self/status, reset before each phase (Linux), as text2ct reads it.
Needs torch, monai and einops (pip install torch monai einops); never needed to build or test text2ct.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch


def pattern(n, m):
    i = np.arange(n, dtype=np.uint64)
    return ((i * np.uint64(2654435761)) % np.uint64(m)).astype(np.float32) / np.float32(max(m // 2, 1)) - np.float32(1)


def status_bytes(key):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Meter:
    """Phases with seconds and peak RSS, as text2ct_bench::speed::Meter keeps them."""

    def __init__(self):
        self.phases = []
        self.whole = status_bytes("VmHWM:")

    def note(self, p):
        if p is not None:
            self.whole = p if self.whole is None else max(self.whole, p)

    def phase(self, name, f):
        self.note(status_bytes("VmHWM:"))
        ok = reset_peak()
        t = time.perf_counter()
        v = f()
        s = time.perf_counter() - t
        p = status_bytes("VmHWM:")
        self.note(p)
        self.phases.append({"name": name, "seconds": s, "peak_rss_bytes": p if ok else None})
        return v

    def each(self, prefix, exclude=None):
        return [p["seconds"] for p in self.phases
                if p["name"].startswith(prefix) and not (exclude and p["name"].startswith(exclude))]

    def best(self, prefix, exclude=None):
        v = self.each(prefix, exclude)
        return min(v) if v else None

    def peak(self, prefix, exclude=None):
        v = [p["peak_rss_bytes"] for p in self.phases if p["name"].startswith(prefix)
             and not (exclude and p["name"].startswith(exclude)) and p["peak_rss_bytes"] is not None]
        return max(v) if v else None


def triple(s, what):
    v = [int(x) for x in s.split(",")]
    if len(v) != 3 or min(v) <= 0:
        sys.exit(f"{what} must be three positive numbers X,Y,Z, got {s!r}")
    return v


def autocast(precision):
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def make_unet():
    from monai.apps.generation.maisi.networks.diffusion_model_unet_maisi import DiffusionModelUNetMaisi

    return DiffusionModelUNetMaisi(
        spatial_dims=3, in_channels=4, out_channels=4, num_channels=[64, 128, 256, 512],
        attention_levels=[False, False, True, True], num_head_channels=[0, 0, 32, 32], num_res_blocks=2,
        use_flash_attention=False, include_top_region_index_input=False, include_bottom_region_index_input=False,
        include_spacing_input=True, num_class_embeds=128, resblock_updown=True, include_fc=True,
        with_conditioning=True, cross_attention_dim=768,
    ).eval()


def make_vae(splits):
    from monai.apps.generation.maisi.networks.autoencoderkl_maisi import AutoencoderKlMaisi

    return AutoencoderKlMaisi(
        spatial_dims=3, in_channels=1, out_channels=1, latent_channels=4, num_channels=[64, 128, 256],
        num_res_blocks=[2, 2, 2], norm_num_groups=32, norm_eps=1e-6, attention_levels=[False] * 3,
        with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False, use_checkpointing=False,
        use_convtranspose=False, norm_float16=False, num_splits=splits, dim_split=1,
    ).eval()


def unet_cond(batch):
    ctx = torch.from_numpy(pattern(768, 1000)).reshape(1, 1, 768).repeat(batch, 1, 1)
    labels = torch.ones(batch, dtype=torch.long)
    spacing = torch.tensor([[75.0, 75.0, 300.0]]).repeat(batch, 1)
    return ctx, labels, spacing


def set_splits(vae, n):
    """MONAI's split convolutions (MaisiConvolution.num_splits) everywhere in the VAE."""
    for mod in vae.modules():
        if hasattr(mod, "num_splits"):
            mod.num_splits = n


def decoder(vae, mode, window, overlap, splits):
    # The one-pass decode splits as asked; windows decode unsplit (MONAI's split convolution
    # fails on extents shorter than ~3 planes per split, as small windows have).
    set_splits(vae, splits if mode == "one-pass" else 1)
    if mode == "sliding":
        from monai.inferers import SlidingWindowInferer

        inf = SlidingWindowInferer(roi_size=window, sw_batch_size=1, overlap=overlap, mode="gaussian",
                                   sigma_scale=0.125, progress=False)
        return lambda z: inf(z, vae.decode_stage_2_outputs)
    return vae.decode_stage_2_outputs


def bench_unet(a, m):
    c, x, y, z = [int(v) for v in a.latent.split(",")]
    net = m.phase("load", make_unet)
    n = a.batch * c * x * y * z
    lat = torch.from_numpy(pattern(n, 2000)).reshape(a.batch, c, x, y, z)
    t = torch.full((a.batch,), 500.0)
    ctx, labels, spacing = unet_cond(a.batch)
    for i in range(a.repeats):
        def fwd():
            with torch.no_grad(), autocast(a.precision):
                return net(lat, t, context=ctx, class_labels=labels, spacing_tensor=spacing)
        m.phase(f"forward {i + 1}", fwd)
    return {"bench": "unet", "latent": [c, x, y, z], "batch": a.batch,
            "seconds_per_forward": m.best("forward"), "seconds_forwards": m.each("forward"),
            "seconds_load": m.best("load"), "peak_rss_forward_bytes": m.peak("forward")}


def hu(v):
    return np.clip(v * 2000.0 - 1000.0, -1000.0, 1000.0)


def bench_vae(a, m):
    size = triple(a.size, "--size")
    window = triple(a.window, "--window")
    lat = [s // 4 for s in size]
    window = [min(w, l) for w, l in zip(window, lat)]
    vae = m.phase("load", lambda: make_vae(a.splits))
    set_splits(vae, 1)  # encode unsplit (speed only: split convolutions compute the same)
    img = torch.from_numpy((pattern(int(np.prod(size)), 2000) + 1) / 2).reshape(1, 1, *size)
    mu = None
    for i in range(a.repeats):
        def enc():
            with torch.no_grad(), autocast(a.precision):
                return vae.encode(img)[0].float()
        mu = m.phase(f"encode {i + 1}", enc)
    out = {}
    modes = ["one-pass", "sliding"] if a.decode == "both" else [a.decode]
    for mode in modes:
        dec = decoder(vae, mode, window, a.overlap, a.splits)
        name = "decode sliding" if (a.decode == "both" and mode == "sliding") else "decode"
        for i in range(a.repeats):
            def run():
                with torch.no_grad(), autocast(a.precision):
                    return dec(mu).float()
            out[mode] = m.phase(f"{name} {i + 1}", run)
    r = {"bench": "vae", "size": size, "latent": list(mu.shape[1:]),
         "decode": (f"one pass, MONAI num_splits {a.splits}" if a.decode != "sliding"
                    else f"sliding window {window} latent voxels, overlap {a.overlap}"),
         "seconds_encode": m.best("encode"), "seconds_decode": m.best("decode", "decode sliding"),
         "seconds_encodes": m.each("encode"), "seconds_decodes": m.each("decode", "decode sliding"),
         "seconds_load": m.best("load"), "peak_rss_encode_bytes": m.peak("encode"),
         "peak_rss_decode_bytes": m.peak("decode", "decode sliding")}
    if a.decode == "both":
        p, s = out["one-pass"].numpy().ravel(), out["sliding"].numpy().ravel()
        d = np.abs(hu(p) - hu(s))
        r["sliding"] = {"decode": f"sliding window {window} latent voxels, overlap {a.overlap}",
                        "seconds_decode": m.best("decode sliding"),
                        "peak_rss_decode_bytes": m.peak("decode sliding"),
                        "hu_mean_abs_diff": float(d.mean()), "hu_p99_abs_diff": float(np.quantile(d, 0.99)),
                        "hu_max_abs_diff": float(d.max()),
                        "output_rel_l2": float(np.linalg.norm(p - s) / max(np.linalg.norm(p), 1e-30)),
                        "clipped_fraction": float((np.abs(hu(p)) >= 1000).mean())}
    return r


def bench_generate(a, m):
    size = triple(a.size, "--size")
    lat = [s // 4 for s in size]
    mode = a.decode or ("one-pass" if a.decode_splits else "sliding")
    window = triple(a.decode_window, "--decode-window") if a.decode_window else [80, 80, 80]
    window = [min(w, l) for w, l in zip(window, lat)]
    splits = a.decode_splits or 4
    unet = m.phase("load", make_unet)
    vae = make_vae(splits)
    batch = 1 if a.guidance in (0.0, 1.0) else 2
    ctx, labels, spacing = unet_cond(batch)
    dec = decoder(vae, mode, window, 0.4, splits)
    runs = []
    for i in range(a.repeats):
        def gen():
            x = torch.from_numpy(pattern(4 * int(np.prod(lat)), 2000)).reshape(1, 4, *lat)
            t0 = time.perf_counter()
            with torch.no_grad(), autocast(a.precision):
                # Rectified flow from t = 1000 to 0 in equal steps (the timesteps do not change the cost).
                for k in range(a.steps):
                    tt = torch.full((batch,), 1000.0 * (1 - k / a.steps))
                    xb = x.repeat(batch, 1, 1, 1, 1)
                    v = unet(xb, tt, context=ctx, class_labels=labels, spacing_tensor=spacing).float()
                    v = v[:1] + a.guidance * (v[1:] - v[:1]) if batch == 2 else v
                    x = x + v * (-1.0 / a.steps)
            t1 = time.perf_counter()
            with torch.no_grad(), autocast(a.precision):
                out = dec(x).float()
            hu(out.numpy())
            t2 = time.perf_counter()
            return (t1 - t0, t2 - t1)
        runs.append(m.phase(f"generate {i + 1}", gen))
    sampling, decode = min(runs, key=lambda r: r[0] + r[1])
    per_step = sampling / a.steps
    return {"bench": "generate", "size": size, "latent": lat, "steps": a.steps, "guidance": a.guidance,
            "sampler": "rflow", "decode": (f"sliding window {window} latent voxels, overlap 0.4" if mode == "sliding"
                                           else f"one pass, MONAI num_splits {splits}"),
            "seconds_total": sampling + decode, "seconds_text": 0.0, "seconds_sampling": sampling,
            "seconds_per_step": per_step, "seconds_decode": decode, "seconds_load": m.best("load"),
            "steps_scaled_to": 30, "seconds_total_scaled": per_step * 30 + decode,
            "peak_rss_generate_bytes": m.peak("generate")}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="bench", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--repeats", type=int, default=1)
    common.add_argument("--threads", type=int)
    common.add_argument("--precision", choices=["f32", "bf16"], default="f32")
    common.add_argument("--json", action="store_true")
    u = sub.add_parser("unet", parents=[common])
    u.add_argument("--latent", required=True)
    u.add_argument("--batch", type=int, default=1)
    v = sub.add_parser("vae", parents=[common])
    v.add_argument("--size", required=True)
    v.add_argument("--decode", choices=["one-pass", "sliding", "both"], default="one-pass")
    v.add_argument("--splits", type=int, default=4)
    v.add_argument("--window", default="16,16,8")
    v.add_argument("--overlap", type=float, default=0.4)
    g = sub.add_parser("generate", parents=[common])
    g.add_argument("--size", required=True)
    g.add_argument("--steps", type=int, default=30)
    g.add_argument("--guidance", type=float, default=5.0)
    g.add_argument("--decode", choices=["one-pass", "sliding"])
    g.add_argument("--decode-window")
    g.add_argument("--decode-splits", type=int)
    a = p.parse_args()
    if a.repeats < 1 or (a.threads is not None and a.threads < 1):
        sys.exit("--repeats and --threads must be at least 1")
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    m = Meter()
    r = {"unet": bench_unet, "vae": bench_vae, "generate": bench_generate}[a.bench](a, m)
    r.update({"program": f"MONAI {__import__('monai').__version__}, PyTorch {torch.__version__}",
              "precision": a.precision, "threads": torch.get_num_threads(), "repeats": a.repeats,
              "peak_rss_bytes": m.whole, "phases": m.phases})
    if a.json:
        print(json.dumps(r))
        return
    print(f"MONAI bench {a.bench} ({a.precision}, {r['threads']} threads): " +
          ", ".join(f"{k} {v}" for k, v in r.items() if k in ("latent", "size", "batch", "decode", "steps")))
    for ph in m.phases:
        peak = "-" if ph["peak_rss_bytes"] is None else f"{ph['peak_rss_bytes'] / 1e9:.2f} GB"
        print(f"  {ph['name']:<20} {ph['seconds']:>9.3f}  {peak}")
    for k, val in r.items():
        if k.startswith("seconds_") and not isinstance(val, list) and val is not None:
            print(f"  {k}: {val:.3f}")
    if m.whole is not None:
        print(f"  peak RSS (whole run): {m.whole / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
