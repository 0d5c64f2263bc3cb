#!/usr/bin/env python3
"""Right / left / no-effusion triplets from one model, and where each puts fluid
(docs/evaluation/prompt-effects.md, session 8; phantoms only; numpy + nibabel + the text2ct binary).

usage: python3 side_triplets.py TEXT2CT MODEL_DIR EFFECTS_JSON PREPARED_DIR OUT_DIR N [--negative]
  EFFECTS_JSON: an `eval prompt-effects` output (its right/left effusion prompt pairs and seeds)
  PREPARED_DIR: prepared phantoms (manifest.jsonl + volumes/*.npy); the first 2000 give the
                signatures S_side = mean(one-sided effusion on that side) - mean(no effusion)
  --negative:   the right prompt gets the left one as --negative-prompt, and vice versa
Regions: the 2 % of voxels where S_side is largest. Prints the mean HU change (prompt - no
effusion, same seed) inside the right and left regions for right and left prompts.
"""
import glob
import json
import os
import re
import subprocess
import sys

import nibabel as nib
import numpy as np

T, MODEL, EFFECTS, PREP, OUT, N = sys.argv[1:7]
NEG = "--negative" in sys.argv[7:]
swap = lambda s: re.sub(r"\b(right|left|Right|Left)\b", lambda m: {"right": "left", "left": "right", "Right": "Left", "Left": "Right"}[m.group(1)], s)


def side(report):
    imp = report.split("Impression:")[-1]
    r, l = "Right pleural effusion" in imp, "Left pleural effusion" in imp
    if "ilateral pleural effusion" in imp or (r and l):
        return "B"
    return "R" if r else "L" if l else ("N" if "pleural effusion" not in imp.lower() else None)


acc, cnt = {}, {}
for i, line in enumerate(open(f"{PREP}/manifest.jsonl")):
    if i >= 2000:
        break
    e = json.loads(line)
    k = side(e["report"])
    if k in ("R", "L", "N"):
        v = np.load(f"{PREP}/{e['volume']}").astype(np.float32)
        acc[k] = acc.get(k, 0) + v
        cnt[k] = cnt.get(k, 0) + 1
S = {k: acc[k] / cnt[k] - acc["N"] / cnt["N"] for k in ("R", "L")}
region = {k: S[k] >= np.quantile(S[k], 0.98) for k in S}

prompts = [q for q in json.load(open(EFFECTS))["prompts"] if q["finding"] in ("right pleural effusion", "left pleural effusion")]
rows = []
for i, q in enumerate(prompts[: int(N)]):
    right = q["with"] if q["finding"].startswith("right") else swap(q["with"])
    vols = {}
    for s, text, neg in (("R", right, swap(right)), ("L", swap(right), right), ("N", q["without"], None)):
        out = f"{OUT}/p{i:02d}_{s}"
        if not glob.glob(f"{out}/*.nii.gz"):
            cmd = [T, "generate", "--model", MODEL, "--prompt", text, "--seed", str(q["seed"]), "--out", out]
            if NEG and neg:
                cmd += ["--negative-prompt", neg]
            subprocess.run(cmd, check=True, capture_output=True)
        vols[s] = np.asarray(nib.load(glob.glob(f"{out}/*.nii.gz")[0]).get_fdata(), np.float32)
    d = {s: vols[s] - vols["N"] for s in ("R", "L")}
    rows.append([d["R"][region["R"]].mean(), d["R"][region["L"]].mean(), d["L"][region["R"]].mean(), d["L"][region["L"]].mean()])
a = np.array(rows)
print(f"{MODEL} ({len(a)} triplets{', other side as negative prompt' if NEG else ''}): "
      f"right prompt: {a[:, 0].mean():.1f} HU in the right region, {a[:, 1].mean():.1f} in the left | "
      f"left prompt: {a[:, 2].mean():.1f} right, {a[:, 3].mean():.1f} left | more fluid on their own side: "
      f"R {np.mean(a[:, 0] > a[:, 1]):.2f}, L {np.mean(a[:, 3] > a[:, 2]):.2f}")
