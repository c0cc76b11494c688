"""What compare_torch.py and compare_torch_mha.py share: the command line, the median timing of
a PyTorch step, and the loop that times attn-bench and PyTorch in alternation and prints the
ratio. Each script supplies its cases and the PyTorch side."""
import argparse
import json
import os
import subprocess
import sys


def median_seconds(step, reps):
    """One warm-up call of step(), then the median of reps calls (each returns its seconds)."""
    step()
    return sorted(step() for _ in range(reps))[reps // 2]


def main(script, cases, torch_seconds, torch_label, note):
    """Times each case (all of `cases` unless --case names some) with attn-bench --json and
    with torch_seconds(torch, name, reps), twice each in alternation so that a noisy machine
    disturbs both alike, and prints the better median of each side and their ratio (> 1:
    libattn is faster). `note` says what is timed. Returns the exit status."""
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(prog=script)
    ap.add_argument("--bench", default=os.path.join(here, "..", "build", "benchmarks", "attn-bench"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--case", action="append")
    args = ap.parse_args()
    try:
        import torch
    except ImportError:
        print(f"{script}: PyTorch is not installed (Debian: apt-get install python3-torch)")
        return 0
    torch.set_num_threads(args.threads)
    print(f"PyTorch {torch.__version__}, {args.threads} threads; times are medians, ratio = "
          f"PyTorch time / libattn time ({note})")
    for name in args.case or list(cases):
        ours = []
        theirs = []
        for _ in range(2):  # alternate the two sides
            out = subprocess.run([args.bench, "--case", name, "--json", "--reps", str(args.reps),
                                  "--threads", str(args.threads)], capture_output=True, text=True,
                                 check=True).stdout
            ours.append(json.loads(out.splitlines()[-1])["median_ms"])
            theirs.append(torch_seconds(torch, name, args.reps) * 1e3)
        a, t = sorted(ours)[0], sorted(theirs)[0]
        print(f"{name:14s} libattn {a:9.2f} ms   {torch_label} {t:9.2f} ms   x{t / a:.2f}")
        sys.stdout.flush()
    return 0
