#!/usr/bin/python3
"""libattn against a plain numpy implementation on attn-bench's cases.

numpy computes attention the textbook way: a batched matmul for Q.K^T, a numerically stable
softmax (subtract the row max, exp, divide by the sum) and a matmul with V; grouped-query heads
by broadcasting; the causal mask as -inf above the diagonal. When the score matrix of a case
would exceed 256 MiB the queries are processed in blocks, so every case fits in memory. Both
sides run with the same number of threads (numpy through OpenBLAS). libattn's figures come from
`attn-bench --json` in the same run.

    benchmarks/compare_numpy.py [--bench PATH] [--threads N] [--reps N] [--case NAME]...
"""
import argparse
import json
import os
import subprocess
import sys
import time

CASES = {  # B, Hq, Hkv, Lq, Lk, D, causal
    "enc-1k": (1, 8, 8, 1024, 1024, 64, False),
    "causal-1k": (1, 8, 8, 1024, 1024, 64, True),
    "bert-512": (4, 12, 12, 512, 512, 64, False),
    "d128-2k": (1, 8, 8, 2048, 2048, 128, False),
    "gqa-2k": (1, 32, 8, 2048, 2048, 128, True),
    "decode-4k": (1, 32, 32, 1, 4096, 128, False),
    "decode-gqa-8k": (1, 32, 8, 1, 8192, 128, False),
    "long-8k": (1, 1, 1, 8192, 8192, 64, True),
    "long-64k": (1, 1, 1, 65536, 65536, 64, True),
}
DEFAULT = [c for c in CASES if c != "long-64k"]


def numpy_attention(np, q, k, v, causal):
    """q [B,Hq,Lq,D], k/v [B,Hkv,Lk,D] float32 -> [B,Hq,Lq,D]."""
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    g = Hq // Hkv
    qg = q.reshape(B, Hkv, g, Lq, D)
    kt = k[:, :, None].swapaxes(-1, -2)          # [B,Hkv,1,D,Lk]
    vg = v[:, :, None]                           # [B,Hkv,1,Lk,D]
    scale = np.float32(1.0 / np.sqrt(D))
    out = np.empty_like(qg)
    rows = max(1, (256 << 20) // (4 * Lk * B * Hq))
    for i0 in range(0, Lq, rows):
        i1 = min(Lq, i0 + rows)
        s = np.matmul(qg[..., i0:i1, :], kt) * scale
        if causal:  # the last query sees the last key
            i = np.arange(i0, i1)[:, None] + (Lk - Lq)
            s = np.where(np.arange(Lk)[None, :] <= i, s, np.float32(-np.inf))
        s -= s.max(axis=-1, keepdims=True)
        np.exp(s, out=s)
        s /= s.sum(axis=-1, keepdims=True)
        out[..., i0:i1, :] = np.matmul(s, vg)
    return out.reshape(B, Hq, Lq, D)


def time_numpy(np, name, reps):
    B, Hq, Hkv, Lq, Lk, D, causal = CASES[name]
    rng = np.random.default_rng(1)
    q = rng.standard_normal((B, Hq, Lq, D), dtype=np.float32)
    k = rng.standard_normal((B, Hkv, Lk, D), dtype=np.float32)
    v = rng.standard_normal((B, Hkv, Lk, D), dtype=np.float32)
    numpy_attention(np, q, k, v, causal)  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        numpy_attention(np, q, k, v, causal)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", default=os.path.join(here, "..", "build", "benchmarks", "attn-bench"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--case", action="append", choices=list(CASES))
    args = ap.parse_args()
    cases = args.case or DEFAULT
    # numpy's OpenBLAS reads its thread count when it loads
    os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)
    import numpy as np

    cmd = [args.bench, "--json", "--threads", str(args.threads), "--reps", str(args.reps)]
    for c in cases:
        cmd += ["--case", c]
    print(f"running {' '.join(cmd)}", file=sys.stderr)
    lib = {}
    for line in subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines():
        r = json.loads(line)
        lib[r["case"]] = r

    print(f"libattn vs numpy {np.__version__}, {args.threads} threads, medians of {args.reps}\n")
    print(f"{'case':<14} {'numpy ms':>10} {'libattn ms':>11} {'speed-up':>9}")
    for c in cases:
        print(f"numpy {c}...", file=sys.stderr)
        t = time_numpy(np, c, args.reps)
        ms = lib[c]["median_ms"]
        print(f"{c:<14} {t * 1e3:>10.2f} {ms:>11.3f} {t * 1e3 / ms:>8.1f}x", flush=True)


if __name__ == "__main__":
    main()
