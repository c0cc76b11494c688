#!/usr/bin/python3
"""Writes the initial seeds of fuzz_forward into a directory (default: a new corpus/): fixed
pseudo-random inputs of a few lengths. The committed corpus/ is libFuzzer's minimised merge
(-merge=1) of these seeds and of what fuzzing found; see docs/testing.md."""
import sys
import os
import random

here = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "corpus")
os.makedirs(here, exist_ok=True)
rng = random.Random(2026)
for i in range(48):
    n = rng.choice([24, 48, 64, 96, 128])
    data = bytes(rng.randrange(256) for _ in range(n))
    with open(os.path.join(here, f"seed-{i:02d}"), "wb") as f:
        f.write(data)
# inputs that are all zeros or all ones decode to the smallest and the "every option" cases
for name, b in (("zeros", 0), ("ones", 255)):
    with open(os.path.join(here, f"seed-{name}"), "wb") as f:
        f.write(bytes([b]) * 96)
