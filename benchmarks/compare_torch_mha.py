#!/usr/bin/python3
"""libattn's multi-head attention layer against PyTorch's CPU nn.MultiheadAttention.

attn-bench's cases mha-bert (the layer's forward) and bwd-mha-bert (its backward) against
torch.nn.MultiheadAttention(E, H, batch_first=True) in self-attention on the same shape
(B 4, L 512, E 768, H 12), float32, need_weights=False: the forward timed under torch.no_grad()
(PyTorch 1.13 then takes its fused "fast path" where it can), the backward as out.backward(dout)
of a forward run with autograd, gradients of the input and every parameter as libattn computes
them. Both sides use the same number of threads and are timed in alternation, so a noisy
machine disturbs both alike; the script prints the median time of each and their ratio
(> 1: libattn is faster).

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 benchmarks/compare_torch_mha.py [--bench PATH]
        [--threads N] [--reps N] [--case NAME]...
"""
import sys
import time

import torch_compare

CASES = {  # B, H, L, E, backward
    "mha-bert": (4, 12, 512, 768, False),
    "bwd-mha-bert": (4, 12, 512, 768, True),
}


def torch_layer(torch, name, reps):
    B, H, L, E, backward = CASES[name]
    g = torch.Generator().manual_seed(1)
    mha = torch.nn.MultiheadAttention(E, H, batch_first=True)
    x = torch.randn(B, L, E, generator=g, requires_grad=backward)
    dout = torch.randn(B, L, E, generator=g)

    def step():
        if not backward:
            mha.eval()
            with torch.no_grad():
                t0 = time.perf_counter()
                mha(x, x, x, need_weights=False)
                return time.perf_counter() - t0
        mha.train()
        out, _ = mha(x, x, x, need_weights=False)
        mha.zero_grad(set_to_none=True)
        x.grad = None
        t0 = time.perf_counter()
        out.backward(dout)
        return time.perf_counter() - t0

    return torch_compare.median_seconds(step, reps)


if __name__ == "__main__":
    sys.exit(torch_compare.main("compare_torch_mha.py", CASES, torch_layer,
                                "PyTorch nn.MultiheadAttention",
                                "backward cases: the backward only, on both sides"))
