#!/usr/bin/env python3
"""How much does a U-Net's velocity depend on the effusion side the prompt names, and how much
should it? (docs/evaluation/prompt-effects.md, session 8; phantoms only; numpy + the text2ct binary)

usage: python3 side_diag.py TEXT2CT CLIP_CONFIG LATENT_CACHE SIDED_MANIFEST MODEL_DIR [MODEL_DIR ...]
  TEXT2CT:        the text2ct binary
  CLIP_CONFIG:    the whole CLIP config of the models' text encoder (e.g. /tmp/s7/te_K/clip_config.json)
  LATENT_CACHE:   a `train ldm` cache's latents/ folder holding the manifest's ids
  SIDED_MANIFEST: a training manifest (make_mixes.py's ldm_sided.jsonl)

Real: mean cached latent of right- / left- / no-effusion phantoms (up to 300 each); "side" =
|mean_R - mean_L|, "effusion" = |(mean_R + mean_L)/2 - mean_N| (RMS over the latent).
Model: the conditional velocity v(prompt) of each U-Net on 4 noised latents of effusion-free
phantoms at t = 900, 600, 300 (same noise), for a right-, a left- and a no-effusion prompt; the
same two ratios. A U-Net that draws the side should answer with a side/effusion ratio near the
data's; "antisym" is the share of the R - L difference that flips sign under a left-right mirror.
"""
import json
import subprocess
import sys
import tempfile

import numpy as np

T, CLIP_CFG, CACHE, MANIFEST, *MODELS = sys.argv[1:]
W = tempfile.mkdtemp()
P = {
    "R": "Findings: Right pleural effusion with a maximal thickness of 30 mm. Impression: Right pleural effusion.",
    "L": "Findings: Left pleural effusion with a maximal thickness of 30 mm. Impression: Left pleural effusion.",
    "N": "Findings: No pleural effusion. Impression: Normal chest CT.",
}
rms = lambda z: float(np.sqrt((z**2).mean()))
mirror = lambda z: np.flip(z, axis=-3)  # the X (left-right) axis of [.., C, X, Y, Z]


def antisym(d):
    a, s = rms(d - mirror(d)), rms(d + mirror(d))
    return a / (a + s)


def side_of(report):
    r = report.lower()
    if "right pleural" in r or "seen on the right" in r:
        return "R"
    if "left pleural" in r or "seen on the left" in r:
        return "L"
    if "no pleural effusion" in r or "pleural effusion is not" in r:
        return "N"
    return None


def latent(path):
    a = np.load(path)
    return a.reshape(a.shape[-4:])  # [C, X, Y, Z]


groups = {"R": [], "L": [], "N": []}
for line in open(MANIFEST):
    e = json.loads(line)
    s = side_of(e["report"])
    if s and len(groups[s]) < 300:
        groups[s].append(latent(f"{CACHE}/{e['id']}.npy"))
m = {k: np.mean(v, 0) for k, v in groups.items()}
rl, eff = m["R"] - m["L"], 0.5 * (m["R"] + m["L"]) - m["N"]
print(f"real latents ({', '.join(f'{k} {len(v)}' for k, v in groups.items())}): side/effusion {rms(rl) / rms(eff):.3f}, antisym {antisym(rl):.3f}")

x0 = np.stack([v for v in groups["N"][:4]]).astype(np.float32)
eps = np.random.default_rng(0).standard_normal(x0.shape).astype(np.float32)
B = len(x0)


def unet_scale_factor(path):
    """The scale factor `train ldm` stores in the U-Net's safetensors metadata (else 1)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        meta = json.loads(f.read(n)).get("__metadata__") or {}
    return float(meta.get("scale_factor", 1.0))


def run(*args):
    r = subprocess.run([T, *args], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{T} {args[0]} {args[1]} failed: {r.stderr.strip()}")


for model in MODELS:
    card = json.load(open(f"{model}/model.json"))
    norm = card["conditioning"]["context_norm"]
    mu, sd = np.array(norm["mean"], np.float32), np.array(norm["std"], np.float32)
    ctx = {}
    for k, p in P.items():
        run("clip", "embed-text", "--config", CLIP_CFG, "--weights", f"{model}/{card['text_encoder']['weights']}", "--text", p, "--output", f"{W}/e.npy")
        ctx[k] = (np.load(f"{W}/e.npy").reshape(-1) - mu) / sd
    sf = card.get("scale_factor") or unet_scale_factor(f"{model}/{card['unet']['weights']}")
    np.save(f"{W}/s.npy", np.tile(np.array([[600, 600, 1000]], np.float32), (B, 1)))
    np.save(f"{W}/c.npy", np.ones(B, np.float32))
    print(f"{model}: context |R-L|/|R-N| {np.linalg.norm(ctx['R'] - ctx['L']) / np.linalg.norm(ctx['R'] - ctx['N']):.3f}")
    for t in (900.0, 600.0, 300.0):
        a = 1 - t / 1000
        np.save(f"{W}/x.npy", (a * x0 * sf + (1 - a) * eps).astype(np.float32))
        np.save(f"{W}/t.npy", np.full(B, t, np.float32))
        v = {}
        for k, c in ctx.items():
            np.save(f"{W}/ctx.npy", np.tile(c.reshape(1, 1, -1), (B, 1, 1)).astype(np.float32))
            run("unet", "forward", "--config", f"{model}/unet_config.json", "--weights", f"{model}/unet.safetensors",
                "--x", f"{W}/x.npy", "--t", f"{W}/t.npy", "--context", f"{W}/ctx.npy", "--spacing", f"{W}/s.npy",
                "--class-labels", f"{W}/c.npy", "--output", f"{W}/o.npy")
            v[k] = np.load(f"{W}/o.npy")
        d, e = v["R"] - v["L"], 0.5 * (v["R"] + v["L"]) - v["N"]
        print(f"  t {t:.0f}: side/effusion {rms(d) / rms(e):.3f}, antisym {antisym(d):.3f}")
