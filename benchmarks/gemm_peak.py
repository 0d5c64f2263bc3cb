#!/usr/bin/env python3
"""The machine's matrix-multiply peaks, the ceiling every figure of docs/performance.md is read against.

    python benchmarks/gemm_peak.py [--threads N] [--n 2048] [--json]

PyTorch (MKL / oneDNN) multiplies two n x n matrices in f32 and in bf16 (bf16 inputs, f32 accumulation;
oneDNN uses AMX tiles where the CPU has them, AVX512-BF16 otherwise), best of 5 after a warm-up, and prints
GFLOP/s (2 n^3 per product). Also prints which bf16 hardware /proc/cpuinfo lists. Needs torch only;
never needed to build or test text2ct.
"""
import argparse
import json
import os
import time

import torch


def best(f, reps=5):
    f()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return min(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    hw = [f for f in ("amx_tile", "amx_bf16", "avx512_bf16", "avx512f", "avx2") if f in flags]
    out = {"threads": a.threads, "n": a.n, "cpu_flags": hw, "torch": torch.__version__}
    g = torch.Generator().manual_seed(0)
    for name, dt in (("f32", torch.float32), ("bf16", torch.bfloat16)):
        x = torch.randn(a.n, a.n, generator=g).to(dt)
        y = torch.randn(a.n, a.n, generator=g).to(dt)
        s = best(lambda: torch.mm(x, y))
        out[f"gemm_{name}_gflops"] = 2 * a.n**3 / s / 1e9
    if a.json:
        print(json.dumps(out))
    else:
        print(f"{a.threads} threads, {a.n}^3, CPU: {' '.join(hw) or 'no AVX flags found'}")
        print(f"f32  GEMM: {out['gemm_f32_gflops']:.0f} GFLOP/s")
        print(f"bf16 GEMM: {out['gemm_bf16_gflops']:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
