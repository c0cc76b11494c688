#!/usr/bin/python3
"""libattn's backward pass against PyTorch's CPU autograd on attn-bench's backward cases.

PyTorch computes the same gradients the way a training script without a fused kernel does:
S = Q K^T * scale (GQA by repeating K and V over the query group), the causal mask as -inf,
softmax, O = P V, then O.backward(dO) for dQ, dK, dV (PyTorch 1.13 has no fused attention
function, so this is what its autograd runs for attention). Both sides use the same number of
threads; the two are timed in alternation in one process, so a noisy machine disturbs both
alike, and the script prints the median time of each and their ratio (> 1: libattn is faster).

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 benchmarks/compare_torch.py [--bench PATH] [--threads N]
        [--reps N] [--case NAME]...
"""
import sys
import time

import torch_compare

CASES = {  # B, Hq, Hkv, Lq, Lk, D, causal
    "bwd-enc-1k": (1, 8, 8, 1024, 1024, 64, False),
    "bwd-causal-1k": (1, 8, 8, 1024, 1024, 64, True),
    "bwd-gqa-2k": (1, 32, 8, 2048, 2048, 128, True),
}


def torch_backward(torch, name, reps):
    B, Hq, Hkv, Lq, Lk, D, causal = CASES[name]
    g = torch.Generator().manual_seed(1)
    q = torch.randn(B, Hq, Lq, D, generator=g, requires_grad=True)
    k = torch.randn(B, Hkv, Lk, D, generator=g, requires_grad=True)
    v = torch.randn(B, Hkv, Lk, D, generator=g, requires_grad=True)
    dout = torch.randn(B, Hq, Lq, D, generator=g)
    scale = 1.0 / D ** 0.5
    mask = None
    if causal:
        i = torch.arange(Lq)[:, None] + (Lk - Lq)
        mask = torch.arange(Lk)[None, :] > i

    def step():
        kk = k.repeat_interleave(Hq // Hkv, dim=1)
        vv = v.repeat_interleave(Hq // Hkv, dim=1)
        s = torch.matmul(q, kk.transpose(-1, -2)) * scale
        if mask is not None:
            s = s.masked_fill(mask, float("-inf"))
        out = torch.matmul(torch.softmax(s, dim=-1), vv)
        q.grad = k.grad = v.grad = None
        t0 = time.perf_counter()
        out.backward(dout)
        return time.perf_counter() - t0

    return torch_compare.median_seconds(step, reps)


if __name__ == "__main__":
    sys.exit(torch_compare.main("compare_torch.py", CASES, torch_backward, "PyTorch autograd",
                                "backward only: the forward is not timed on either side"))
