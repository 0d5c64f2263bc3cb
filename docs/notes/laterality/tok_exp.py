#!/usr/bin/env python3
"""Does a multi-token text context let the U-Net learn the effusion side? (docs/evaluation/
prompt-effects.md, session 8; phantoms only; a check outside the project in PyTorch/MONAI/transformers.)

usage: python3 tok_exp.py pooled|tokens|oracle STEPS [TOKENS [REGION_WEIGHT]]
Fine-tunes K3's U-Net (MONAI's DiffusionModelUNetMaisi, the same weights) for STEPS steps on
ldm_sided.jsonl (rectified flow, L1 on v, CFG dropout 0.1, Adam 3e-4 with polynomial decay, batch 4)
with (a) the pooled, standardised 1-token context text2ct uses, or (b) the text encoder's first
TOKENS projected token states ([B, TOKENS, 64], standardised per dimension), then measures
side / effusion and the mirror share of the right-minus-left velocity as side_diag.py does. At
STEPS = 0 with `pooled` it reproduces side_diag.py's K3 row (a cross-check of text2ct's U-Net and
text encoder against PyTorch). `oracle` replaces the pooled context's first dimension by a clean
side code of size $ORACLE (default 3). LOAD=FILE.pt with STEPS = 0 measures a U-Net an earlier run
saved. The measure also prints the cosine between the response and the data's mean-latent
difference (right - left; effusion - none). REGION_WEIGHT (default 1) multiplies the L1 loss on the 5 % of
latent voxels where a one-sided effusion changes the mean latent most (either side). Paths: /tmp/s7 (te_K, ldm_K3) and /tmp/s7/ldm_sided.jsonl.
"""
import os, sys, json, re, tempfile, time
import numpy as np, torch
sys.path.insert(0, '/work/main/crates/text2ct-text/fixtures'); argv = sys.argv; sys.argv = ['x']
import gen_token_fixtures as g
from transformers import CLIPTokenizer, CLIPTextConfig, CLIPTextModelWithProjection
from safetensors.numpy import load_file
from monai.apps.generation.maisi.networks.diffusion_model_unet_maisi import DiffusionModelUNetMaisi
from monai.networks.schedulers.rectified_flow import RFlowScheduler
MODE, STEPS, T_TOK = argv[1], int(argv[2]), int(argv[3]) if len(argv) > 3 else 48
REGION_W = float(argv[4]) if len(argv) > 4 else 1.0  # L1 weight inside the effusion regions (latent voxels)
torch.manual_seed(0); torch.set_num_threads(2)
d = tempfile.mkdtemp(); g.build_hub_files(d); tok = CLIPTokenizer.from_pretrained(d)
cfg = CLIPTextConfig(vocab_size=49408, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, max_position_embeddings=384, hidden_act="quick_gelu", projection_dim=64, eos_token_id=49407, bos_token_id=49406, pad_token_id=49407)
te = CLIPTextModelWithProjection(cfg)
w = load_file('/tmp/s7/te_K/text_encoder.safetensors')
sd = {k[len('model.'):]: torch.tensor(v).float() for k, v in w.items() if k.startswith('model.text')}
sd.pop('text_model.embeddings.position_ids', None)
r_ = te.load_state_dict(sd, strict=False); print('te missing', r_.missing_keys, 'unexpected', r_.unexpected_keys); te.eval()
rows = [json.loads(l) for l in open('/tmp/s7/ldm_sided.jsonl')]
def embed(texts):
    ids = tok(texts, padding='max_length', truncation=True, max_length=384, return_tensors='pt')['input_ids']
    with torch.no_grad():
        o = te(input_ids=ids)
        toks = te.text_projection(o.last_hidden_state[:, :T_TOK])        # [B, T, 64] projected token states
        pooled = torch.nn.functional.normalize(o.text_embeds, dim=-1)    # what text2ct caches
    return pooled.numpy(), toks.numpy()
P, TK = [], []
for i in range(0, len(rows), 64):
    p, t = embed([r['report'] for r in rows[i:i + 64]]); P.append(p); TK.append(t)
P, TK = np.concatenate(P), np.concatenate(TK)
lens = [len(tok(r['report'])['input_ids']) for r in rows[:200]]
print('token lengths: median', np.median(lens), 'max', max(lens), '-> using', T_TOK)
pm, ps = P.mean(0), P.std(0) + 1e-6
tm, ts = TK.reshape(-1, 64).mean(0), TK.reshape(-1, 64).std(0) + 1e-6
ctx_of = (lambda p, t: ((p - pm) / ps)[:, None, :]) if MODE in ('pooled', 'oracle') else (lambda p, t: (t - tm) / ts)
def side_of(rep):
    r = rep.lower()
    return 'R' if ('right pleural' in r or 'seen on the right' in r) else 'L' if ('left pleural' in r or 'seen on the left' in r) else 'N' if ('no pleural effusion' in r or 'pleural effusion is not' in r) else None
def oracle(c, texts):
    # 'oracle': the pooled context with its first dimension replaced by a clean side code (+S right,
    # -S left, 0 otherwise; S = $ORACLE, default 3): what a text encoder with a strong side direction would give.
    if MODE == 'oracle':
        S = float(os.environ.get('ORACLE', '3'))
        c = c.copy(); c[:, 0, 0] = [S if side_of(x) == 'R' else -S if side_of(x) == 'L' else 0.0 for x in texts]
    return c
C = oracle(ctx_of(P, TK).astype(np.float32), [r['report'] for r in rows])
X = np.stack([np.load(f"/tmp/s7/ldm_K3/cache/latents/{r['id']}.npy").reshape(4, 16, 16, 8) for r in rows]).astype(np.float32) * 0.5909814834594727
sides = [side_of(r['report']) for r in rows]
mean = {k: X[[i for i, q in enumerate(sides) if q == k]].mean(0) for k in 'RLN'}
# the latent voxels (any channel) where a one-sided effusion changes the mean latent most: top 5 % per side
reg = np.zeros(X.shape[2:], bool)
for k in 'RL':
    d = np.abs(mean[k] - mean['N']).max(0)
    reg |= d >= np.quantile(d, 0.95)
WMAP = torch.tensor(np.where(reg, REGION_W, 1.0).astype(np.float32))[None, None]
print('region voxels', int(reg.sum()), 'of', reg.size, 'weight', REGION_W)
ucfg = json.load(open('/tmp/s7/ldm_K3/model/unet_config.json'))
ucfg = {k: v for k, v in ucfg.items() if k not in ('use_flash_attention',)}
net = DiffusionModelUNetMaisi(**ucfg).float()
wu = load_file('/tmp/s7/ldm_K3/model/unet.safetensors')
net.load_state_dict({k[len('unet_state_dict.'):] if k.startswith('unet_state_dict.') else k: torch.tensor(v).float() for k, v in wu.items() if k != 'scale_factor'}, strict=True)
if os.environ.get('LOAD'):  # measure a U-Net saved by an earlier run (with STEPS = 0) instead of K3
    net.load_state_dict(torch.load(os.environ['LOAD']), strict=True)
sch = RFlowScheduler(num_train_timesteps=1000, use_discrete_timesteps=False, sample_method='uniform', use_timestep_transform=True, base_img_size_numel=32 * 32 * 32, spatial_dim=3)
opt = torch.optim.Adam(net.parameters(), lr=3e-4)
rng = np.random.default_rng(0)
sp = torch.tensor([[600., 600., 1000.]] * 4); cl = torch.ones(4, dtype=torch.long)
t0 = time.time()
for step in range(1, STEPS + 1):
    b = rng.choice(len(X), 4, replace=False)
    x0 = torch.tensor(X[b]); c = torch.tensor(C[b])
    drop = torch.tensor(rng.random(4) < 0.1); c[drop] = 0
    n = torch.randn_like(x0); t = sch.sample_timesteps(x0)
    xt = sch.add_noise(x0, n, t)
    v = net(xt, t, c, class_labels=cl, spacing_tensor=sp)
    loss = ((v - (x0 - n)).abs() * WMAP).mean()
    for gp in opt.param_groups: gp['lr'] = 3e-4 * (1 - step / STEPS) ** 2
    opt.zero_grad(); loss.backward(); opt.step()
    if step % 100 == 0: print(step, round(loss.item(), 4), round(time.time() - t0), 's', flush=True)
# side/effusion, as side_diag.py
net.eval()
PR = {"R": "Findings: Right pleural effusion with a maximal thickness of 30 mm. Impression: Right pleural effusion.",
      "L": "Findings: Left pleural effusion with a maximal thickness of 30 mm. Impression: Left pleural effusion.",
      "N": "Findings: No pleural effusion. Impression: Normal chest CT."}
pp, tt = embed(list(PR.values())); cc = oracle(ctx_of(pp, tt).astype(np.float32), list(PR.values()))
nid = [i for i, q in enumerate(sides) if q == 'N'][:4]
x0 = torch.tensor(X[nid]); eps = torch.tensor(np.random.default_rng(0).standard_normal(x0.shape).astype(np.float32))
rms = lambda z: float(z.pow(2).mean().sqrt())
for tv in (900., 600., 300.):
    a = 1 - tv / 1000; xt = a * x0 + (1 - a) * eps; T = torch.full((4,), tv)
    with torch.no_grad():
        out = {k: net(xt, T, torch.tensor(np.repeat(cc[i:i + 1], 4, 0)), class_labels=cl, spacing_tensor=sp) for i, k in enumerate(PR)}
    dd = out['R'] - out['L']; ee = 0.5 * (out['R'] + out['L']) - out['N']
    fl = torch.flip(dd, dims=[2]); anti = rms(dd - fl) / (rms(dd - fl) + rms(dd + fl))
    # does the response point where the data's difference does? cosine with the mean-latent differences
    cos = lambda a, b: float((a * b).sum() / (a.pow(2).sum().sqrt() * b.pow(2).sum().sqrt()))
    cs = cos(dd.mean(0), torch.tensor(mean['R'] - mean['L'])); ce = cos(ee.mean(0), torch.tensor(0.5 * (mean['R'] + mean['L']) - mean['N']))
    print(MODE, STEPS, 't', tv, 'side/effusion', round(rms(dd) / rms(ee), 3), 'antisym', round(anti, 3), 'cos side', round(cs, 3), 'cos effusion', round(ce, 3))
if STEPS > 0: torch.save(net.state_dict(), f"/tmp/s8/tok/unet_{MODE}{os.environ.get('ORACLE', '') if MODE == 'oracle' else ''}_{STEPS}_{REGION_W:g}.pt")
