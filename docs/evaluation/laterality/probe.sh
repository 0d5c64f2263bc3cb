#!/bin/bash
# Does a 3D CLIP read laterality? (docs/evaluation/prompt-effects.md, "Session 6")
#
# usage: probe.sh CLIP_CONFIG CLIP_WEIGHTS TAG WORKDIR
#   WORKDIR holds side_valid.jsonl, side_texts.csv and sides.json from make_side_pairs.py.
# Prints: how often a held-out volume with a one-sided pleural effusion is nearer (cosine) to its
# own report than to the same report with the effusion's side swapped (0.5 = chance), the mean
# cosine between a report and its swap, and, for the prompt-effects effusion pairs
# (effusion_prompt_pairs.csv: with/without the finding), the cosine between the right- and the
# left-effusion text directions (1 = the text encoder cannot tell the sides apart).
# Needs the text2ct binary (TEXT2CT, default target/release/text2ct) and Python with numpy.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
T=${TEXT2CT:-$here/../../../target/release/text2ct}
cd "$4"
"$T" clip embed-text --config "$1" --weights "$2" --reports side_texts.csv --output "t_$3.npy" >/dev/null 2>&1
"$T" clip embed-volume --config "$1" --weights "$2" --input side_valid.jsonl --output "v_$3.npy" >/dev/null 2>&1
"$T" clip embed-text --config "$1" --weights "$2" --reports "$here/effusion_prompt_pairs.csv" --output "p_$3.npy" >/dev/null 2>&1
python3 - "$3" <<'PY'
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
PY
