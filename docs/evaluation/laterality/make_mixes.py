#!/usr/bin/env python3
"""The training mixes of the laterality runs (docs/evaluation/prompt-effects.md, session 6).

usage: python3 make_mixes.py PH_TRAIN EFF_TRAIN OUT_DIR
  PH_TRAIN:  the default's prepared phantoms (text2ct prepare … --out PH_TRAIN)
  EFF_TRAIN: the effusion-enriched phantoms, prepared the same way
Writes OUT_DIR/clip_mix.jsonl (1500 + 1500, interleaved) and OUT_DIR/ldm_mix.jsonl (the U-Net's
1000 default phantoms + 500 enriched, 2:1 interleaved), with absolute volume paths and the enriched
ids prefixed `eff_` (both sets number their scans from 1). Session 8 added two mixes without
bilateral pleural effusions (a report naming both sides rewards drawing both):
OUT_DIR/ldm_sided.jsonl (ldm_mix without them: 1318 rows, 229 one-sided; stage 3 of the default,
ldm_K3.toml) and OUT_DIR/ldm_sided_rich.jsonl (every one-sided effusion of the 1000 default + 1500
enriched phantoms, 588, with 700 others drawn with seed 0, shuffled with seed 1; ldm_K4.toml).
"""
import json
import random
import sys

ph, eff, out = sys.argv[1:4]


def load(root, prefix, n):
    rows = []
    with open(f"{root}/manifest.jsonl") as f:
        for i, line in enumerate(f):
            if i >= n:
                break
            e = json.loads(line)
            e["volume"] = f"{root}/{e['volume']}"
            e["id"] = prefix + e["id"]
            rows.append(e)
    return rows


orig, enriched = load(ph, "", 1500), load(eff, "eff_", 1500)
clip = [e for pair in zip(orig, enriched) for e in pair]
ldm = [e for i in range(500) for e in (orig[2 * i], orig[2 * i + 1], enriched[i])]
for name, rows in (("clip_mix.jsonl", clip), ("ldm_mix.jsonl", ldm)):
    with open(f"{out}/{name}", "w") as f:
        f.writelines(json.dumps(e) + "\n" for e in rows)


def bilateral(e):
    r = e["report"].lower()
    return "bilateral pleural" in r or "both sides" in r


def one_sided(e):
    r = e["report"].lower()
    return any(k in r for k in ("right pleural", "seen on the right", "left pleural", "seen on the left"))


sided = [e for e in ldm if not bilateral(e)]
pool = [e for e in orig[:1000] + enriched if not bilateral(e)]
ones = [e for e in pool if one_sided(e)]
others = [e for e in pool if not one_sided(e)]
random.Random(0).shuffle(others)
rich = ones + others[:700]
random.Random(1).shuffle(rich)
for name, rows in (("ldm_sided.jsonl", sided), ("ldm_sided_rich.jsonl", rich)):
    with open(f"{out}/{name}", "w") as f:
        f.writelines(json.dumps(e) + "\n" for e in rows)
