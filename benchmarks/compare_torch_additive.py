#!/usr/bin/python3
"""libattn's additive (Bahdanau) attention against the same computation in PyTorch (CPU),
written the broadcasting way:

    e = w(tanh(W_q(q)[:, :, None, :] + W_k(k)[:, None, :, :]))   # a [B, Lq, Lk, A] tensor
    out = softmax(e, -1) @ v

attn-bench's cases additive (forward) and bwd-additive (backward): B 8, Lq 64, Lk 512,
Dq = Dk = Dv = A = 256, a bias on the query projection, float32. The forward is timed under
torch.no_grad(), the backward as out.backward(dout) of a forward run with autograd (gradients of
q, k, v and every parameter, as libattn computes them). Both sides use the same number of
threads and run in alternation: each round runs attn-bench once (the median of its --reps runs)
and then PyTorch --reps times (their median); the script prints the median over the rounds of
each side and the median of the per-round ratios (> 1: libattn is faster).

--memory instead runs attn-bench's additive-4k case (B 1, Lq = Lk = 4096, A 256) and prints its
peak resident memory next to what the broadcasting form needs for its [B, Lq, Lk, A] tensors
(computed, not run: 16 GiB for one of them).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE benchmarks/compare_torch_additive.py
        [--bench PATH] [--threads N] [--reps N] [--rounds N] [--case NAME]... [--memory]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CASES = {  # B, Lq, Lk, D (= Dq = Dk = Dv = A), backward
    "additive": (8, 64, 512, 256, False),
    "bwd-additive": (8, 64, 512, 256, True),
}


def make_layer(torch, D):
    class Additive(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.W_q = torch.nn.Linear(D, D, bias=True)    # W_q and the bias
            self.W_k = torch.nn.Linear(D, D, bias=False)   # W_k
            self.w = torch.nn.Linear(D, 1, bias=False)     # w

        def forward(self, q, k, v):
            e = self.w(torch.tanh(self.W_q(q).unsqueeze(2) + self.W_k(k).unsqueeze(1))).squeeze(-1)
            return torch.softmax(e, dim=-1) @ v

    return Additive()


def torch_times(torch, name, reps):
    B, Lq, Lk, D, backward = CASES[name]
    g = torch.Generator().manual_seed(1)
    layer = make_layer(torch, D)
    q = torch.randn(B, Lq, D, generator=g, requires_grad=backward)
    k = torch.randn(B, Lk, D, generator=g, requires_grad=backward)
    v = torch.randn(B, Lk, D, generator=g, requires_grad=backward)
    dout = torch.randn(B, Lq, D, generator=g)

    def step():
        if not backward:
            with torch.no_grad():
                t0 = time.perf_counter()
                layer(q, k, v)
                return time.perf_counter() - t0
        out = layer(q, k, v)
        layer.zero_grad(set_to_none=True)
        q.grad = k.grad = v.grad = None
        t0 = time.perf_counter()
        out.backward(dout)
        return time.perf_counter() - t0

    step()  # warm-up
    return statistics.median(step() for _ in range(reps))


def bench(args, name):
    out = subprocess.run([args.bench, "--case", name, "--json", "--reps", str(args.reps),
                          "--threads", str(args.threads)], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.splitlines()[-1])


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", default=os.path.join(here, "..", "build", "benchmarks", "attn-bench"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--case", action="append")
    ap.add_argument("--memory", action="store_true")
    args = ap.parse_args()
    if args.memory:
        r = bench(args, "additive-4k")
        B, L, A = 1, 4096, 256
        one = B * L * L * A * 4
        print(f"additive-4k (B {B}, Lq = Lk = {L}, A {A}): libattn peak RSS above the program's "
              f"baseline {r['peak_rss_mib']:.1f} MiB (inputs and outputs {r['data_mib']:.1f} MiB), "
              f"{r['median_ms']:.0f} ms")
        print(f"broadcasting form: one [B, Lq, Lk, A] float32 tensor is {one / 2**30:.1f} GiB; "
              f"its forward holds at least two (the sum and its tanh: {2 * one / 2**30:.1f} GiB), "
              "and training keeps the tanh for the backward")
        return 0
    try:
        import torch
    except ImportError:
        print("compare_torch_additive.py: PyTorch is not installed (Debian: apt-get install "
              "python3-torch)")
        return 0
    torch.set_num_threads(args.threads)
    print(f"PyTorch {torch.__version__}, {args.threads} threads; {args.rounds} alternated rounds, "
          f"medians of {args.reps} runs each; ratio = PyTorch time / libattn time (backward "
          "cases: the backward only, on both sides)")
    for name in args.case or list(CASES):
        ours, theirs, ratios = [], [], []
        for _ in range(args.rounds):
            a = bench(args, name)["median_ms"]
            t = torch_times(torch, name, args.reps) * 1e3
            ours.append(a), theirs.append(t), ratios.append(t / a)
        print(f"{name:14s} libattn {statistics.median(ours):9.2f} ms   PyTorch broadcasting "
              f"{statistics.median(theirs):9.2f} ms   x{statistics.median(ratios):.2f} "
              f"(per-round ratios {min(ratios):.2f} .. {max(ratios):.2f})")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
