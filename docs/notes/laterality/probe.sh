#!/bin/bash
# Does a 3D CLIP read laterality? (docs/evaluation/prompt-effects.md, "Session 6")
#
# usage: probe.sh CLIP_CONFIG CLIP_WEIGHTS TAG WORKDIR
#   WORKDIR holds side_valid.jsonl, side_texts.csv and sides.json from make_side_pairs.py.
# Prints: how often a held-out volume with a one-sided pleural effusion is nearer (cosine) to its
# own report than to the same report with the effusion's side swapped (0.5 = chance), the mean
# cosine between a report and its swap, and, for the prompt-effects effusion pairs
# (effusion_prompt_pairs.csv: with/without the finding), the cosine between the right- and the
# left-effusion text directions (1 = the text encoder cannot tell the sides apart). Then the same in
# the coordinates the U-Net sees (each embedding dimension standardised over the texts): the size of
# report - swapped report relative to the distance between two different reports, and how
# consistent its direction is (mean cosine of each pair's right-minus-left difference with their mean);
# and whether the volume embeddings alone separate the sides (leave-one-out nearest centroid,
# standardised).
# Needs the text2ct binary (TEXT2CT, default target/release/text2ct) and Python with numpy.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
T=${TEXT2CT:-$here/../../../target/release/text2ct}
cd "$4"
"$T" clip embed-text --config "$1" --weights "$2" --reports side_texts.csv --output "t_$3.npy" >/dev/null 2>&1
"$T" clip embed-volume --config "$1" --weights "$2" --input side_valid.jsonl --output "v_$3.npy" >/dev/null 2>&1
"$T" clip embed-text --config "$1" --weights "$2" --reports "$here/effusion_prompt_pairs.csv" --output "p_$3.npy" >/dev/null 2>&1
python3 - "$3" <<'PY'
import json
import sys
import numpy as np
tag = sys.argv[1]
t = np.load(f"t_{tag}.npy"); v = np.load(f"v_{tag}.npy")
true, swapped = t[0::2], t[1::2]
st, ss = (v * true).sum(1), (v * swapped).sum(1)
e = np.load(f"p_{tag}.npy")
R, Wr, L, Wl = [0, 2, 4, 6, 8], [1, 3, 5, 7, 9], [10, 12, 14, 16, 18], [11, 13, 15, 17, 19]
dR = e[R].mean(0) - e[Wr].mean(0); dL = e[L].mean(0) - e[Wl].mean(0)
print(f"{tag}: volume nearer its true-side report {np.mean(st > ss):.3f} ({(st > ss).sum()}/{len(st)}), "
      f"mean margin {np.mean(st - ss):.4f}; cos(report, side-swapped report) {(true * swapped).sum(1).mean():.4f}; "
      f"cos(right-effusion direction, left-effusion direction) {dR @ dL / np.linalg.norm(dR) / np.linalg.norm(dL):.4f}")
z = (t - t.mean(0)) / (t.std(0) + 1e-12)
zt, zs = z[0::2], z[1::2]
sign = np.array([1.0 if s == "R" else -1.0 for s in json.load(open("sides.json"))])
d = (zt - zs) * sign[:, None]
n = len(zt)
pairs = [(i, j) for i in range(0, n, 7) for j in range(1, n, 11) if i != j]
ratio = np.linalg.norm(d, axis=1).mean() / np.mean([np.linalg.norm(zt[i] - zt[j]) for i, j in pairs])
m = d.mean(0)
print(f"{tag} (standardised): |report - side-swapped| / |report - other report| {ratio:.4f}; "
      f"consistency of the right-minus-left direction {np.mean(d @ m / np.linalg.norm(d, axis=1) / np.linalg.norm(m)):.3f}")
side = np.array(json.load(open("sides.json")))
zv = (v - v.mean(0)) / (v.std(0) + 1e-12)
hits = 0
for i in range(len(zv)):
    rest = np.arange(len(zv)) != i
    cr, cl = zv[rest & (side == "R")].mean(0), zv[rest & (side == "L")].mean(0)
    hits += ("R" if np.linalg.norm(zv[i] - cr) < np.linalg.norm(zv[i] - cl) else "L") == side[i]
print(f"{tag} (volumes): side from the volume embedding, leave-one-out nearest centroid {hits / len(zv):.3f}")
PY
