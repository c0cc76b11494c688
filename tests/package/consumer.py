"""Python consumer of an installed libattn: imports attn from PYTHONPATH, computes one causal
grouped-query call and checks it against float64 numpy. Run by tests/package/run.sh."""
import os
import sys

import numpy as np

import attn

rng = np.random.default_rng(0)
q = rng.standard_normal((2, 4, 5, 16)).astype(np.float32)
k = rng.standard_normal((2, 2, 9, 16)).astype(np.float32)
v = rng.standard_normal((2, 2, 9, 8)).astype(np.float32)
out = attn.scaled_dot_product_attention(q, k, v, is_causal=True)

kk, vv = (np.repeat(x.astype(np.float64), 2, axis=1) for x in (k, v))
s = q.astype(np.float64) @ kk.swapaxes(-1, -2) / 4.0
s[..., np.arange(9)[None, :] > np.arange(5)[:, None] + 4] = -np.inf  # q_offset = 9 - 5
p = np.exp(s - s.max(-1, keepdims=True))
want = (p / p.sum(-1, keepdims=True)) @ vv
err = float(np.max(np.abs(out - want)))
libs = sorted({line.split()[-1] for line in open("/proc/self/maps") if "libattn" in line})
print(f"   attn {attn.__version__} from {os.path.dirname(attn.__file__)}, "
      f"libattn: {', '.join(libs) or 'linked into the extension'}; max |error| {err:.2g}")
sys.exit(0 if err < 1e-5 else 1)
