"""Tests of the Python module attn (run by ctest as `python`; by hand:
PYTHONPATH=<build>/python /usr/bin/python3 python/tests/test_attn.py).

Every result is compared with a float64 reference written here in numpy (and checked against
the 64 problems PyTorch solved in float64, tests/data/reference), and with PyTorch itself when
`import torch` works. The tolerance is the first-order float32 error bound of docs/testing.md,
doubled, per element.
"""

import json
import os
import subprocess
import sys
import threading
import unittest

import numpy as np

import attn
from attn import _attn

U = 2.0**-24
DATA_DIR = os.environ.get("ATTN_TEST_DATA_DIR",
                          os.path.join(os.path.dirname(__file__), "..", "..", "tests", "data",
                                       "reference"))
try:
    import torch
    import torch.nn.functional as F
except ImportError:  # python3-torch is optional
    torch = None

WORST = {"ratio": 0.0, "arrays": 0}  # largest error / tolerance seen and arrays compared


# ---- the float64 reference ----------------------------------------------------------------


def reference(q, k, v, *, scale=None, causal=False, q_offset=None, window=(None, None),
              kv_lens=None, mask=None, bias=None, masked_rows="zero"):
    """Attention in float64 on logical [B, Hq, Lq, D] / [B, Hkv, Lk, D] arrays. Returns a dict
    with out, weights (per head), mean (head mean), lse, entropy and, for each, the tolerance
    (tol_*) of a float32 computation."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    g = Hq // Hkv
    k = np.broadcast_to(k, (B,) + k.shape[1:])
    v = np.broadcast_to(v, (B,) + v.shape[1:])
    kk, vv = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    scale = 1.0 / np.sqrt(D) if scale is None else float(scale)
    qk = q @ kk.swapaxes(-1, -2)
    qk_abs = np.abs(q) @ np.abs(kk).swapaxes(-1, -2)
    bias = np.zeros((B, Hq, Lq, Lk)) if bias is None else \
        np.broadcast_to(np.asarray(bias, np.float64), (B, Hq, Lq, Lk))
    s = scale * qk + bias
    off = Lk - Lq if q_offset is None else q_offset
    i = np.arange(Lq)[:, None]
    j = np.arange(Lk)[None, :]
    vis = np.ones((B, Hq, Lq, Lk), bool)
    if causal:
        vis &= j <= i + off
    if window[0] is not None:
        vis &= j >= i + off - window[0]
    if window[1] is not None:
        vis &= j <= i + off + window[1]
    if kv_lens is not None:
        vis &= j[None, None] < np.asarray(kv_lens)[:, None, None, None]
    if mask is not None:
        vis &= np.broadcast_to(np.asarray(mask).astype(bool), vis.shape)
    vis &= bias != -np.inf
    s = np.where(vis, s, -np.inf)
    n = vis.sum(-1)
    empty = n == 0
    m = np.where(empty, 0.0, s.max(-1, initial=-np.inf))
    e = np.where(vis, np.exp(s - m[..., None]), 0.0)
    z = e.sum(-1)
    p = e / np.where(empty, 1.0, z)[..., None]
    out = p @ vv
    lse = np.where(empty, -np.inf, m + np.log(np.where(empty, 1.0, z)))
    plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    ent = -plogp.sum(-1)
    # Tolerances (docs/testing.md): delta bounds the error of a score, rel that of a weight.
    sig = np.where(vis, abs(scale) * qk_abs + np.abs(bias) + np.abs(np.where(vis, s, 0.0)), 0.0)
    delta = (D + 3) * U * sig.max(-1)
    rel = 2 * delta + (n + 8) * U
    r = {"out": out, "weights": p, "mean": p.mean(1), "lse": lse, "entropy": ent,
         "tol_out": 2 * rel[..., None] * (p @ np.abs(vv)) + 1e-30,
         "tol_weights": 2 * rel[..., None] * p + 1e-37,
         "tol_lse": 2 * (delta + (n + 8) * U * (1 + np.abs(np.where(empty, 0.0, lse)))),
         "tol_entropy": 2 * (rel * (ent + 1) + (n + 8) * U * (ent + np.log(np.maximum(n, 1)) + 1))
         + 1e-30}
    r["tol_mean"] = r["tol_weights"].mean(1)
    if masked_rows == "nan":
        r["out"] = np.where(empty[..., None], np.nan, out)
        r["weights"] = np.where(empty[..., None], np.nan, p)
        r["mean"] = r["weights"].mean(1)
        r["entropy"] = np.where(empty, np.nan, ent)
    return r


class Case(unittest.TestCase):
    def assert_close(self, got, want, tol, what):
        """got (float32) within tol of want (float64), elementwise; NaN and -inf must match."""
        got = np.asarray(got, np.float64)
        self.assertEqual(got.shape, want.shape, what)
        nan = np.isnan(want)
        np.testing.assert_array_equal(np.isnan(got), nan, f"{what}: NaN positions")
        inf = np.isinf(want)
        np.testing.assert_array_equal(got[inf], want[inf], f"{what}: infinite values")
        fin = ~nan & ~inf
        err = np.abs(got[fin] - want[fin])
        t = np.broadcast_to(tol, want.shape)[fin]
        bad = err > t
        if bad.any():
            at = np.argwhere(fin)[np.argmax(bad)]
            self.fail(f"{what}: {int(bad.sum())} elements outside the tolerance, first at "
                      f"{tuple(at)}: got {got[tuple(at)]!r}, want {want[tuple(at)]!r}, "
                      f"tol {np.broadcast_to(tol, want.shape)[tuple(at)]:.3g}")
        WORST["arrays"] += 1
        if err.size:
            ratio = np.max(err / np.maximum(t, 1e-300))
            WORST["ratio"] = max(WORST["ratio"], float(ratio))

    def check(self, res, ref, *, layout="bhsd", weights="none", lse=False, entropy=False):
        """Compares a call's result (out or Result) with reference() (logical layout)."""
        if isinstance(res, attn.Result):
            out = res.out
        else:
            self.assertIsInstance(res, np.ndarray)
            self.assertTrue(weights == "none" and not lse and not entropy,
                            "a plain array returned though extras were asked for")
            out = res
        self.assertEqual(out.dtype, np.float32)
        if layout == "bshd":
            out = out.transpose(0, 2, 1, 3)
        self.assert_close(out, ref["out"], ref["tol_out"], "out")
        if isinstance(res, attn.Result):
            if weights == "per_head":
                self.assert_close(res.weights, ref["weights"], ref["tol_weights"], "weights")
            elif weights == "head_mean":
                self.assert_close(res.weights, ref["mean"], ref["tol_mean"], "head-mean weights")
            else:
                self.assertIsNone(res.weights)
            if lse:
                self.assert_close(res.lse, ref["lse"], ref["tol_lse"], "lse")
            else:
                self.assertIsNone(res.lse)
            if entropy:
                self.assert_close(res.entropy, ref["entropy"], ref["tol_entropy"], "entropy")
            else:
                self.assertIsNone(res.entropy)

    def check_grads(self, got, ref, what, dbias_shape=None):
        dq, dk, dv = got[:3]
        for name, x in (("dq", dq), ("dk", dk), ("dv", dv)):
            self.assertEqual(x.dtype, np.float32, name)
            self.assert_close(x, ref[name], ref["tol_" + name], f"{what}: {name}")
        if dbias_shape is not None:
            self.assertEqual(len(got), 4)
            tol = ref["tol_dbias"]
            self.assertEqual(got[3].shape, tuple(dbias_shape), "dbias: the bias's own shape")
            dbias_shape = (1,) * (4 - len(dbias_shape)) + tuple(dbias_shape)
            # summed over the bias's broadcast axes, as the gradient of the bias itself
            axes = tuple(a for a in range(4) if dbias_shape[a] == 1 and ref["dbias"].shape[a] > 1)
            self.assert_close(got[3].reshape(dbias_shape), ref["dbias"].sum(axes, keepdims=True),
                              tol.sum(axes, keepdims=True), f"{what}: dbias")
        else:
            self.assertEqual(len(got), 3)


def rand(rng, *shape, amp=1.0):
    return (amp * rng.standard_normal(shape)).astype(np.float32)


def other_thread_ran(call, times):
    """Calls call() up to `times` times with a switch interval of 1000 s, under which the
    interpreter never takes the GIL from the thread holding it: a second thread, waiting to
    run, gets to run only if the calls release the GIL. True if it ran."""
    go, ran = threading.Event(), threading.Event()
    worker = threading.Thread(target=lambda: (go.wait(), ran.set()))
    worker.start()
    old = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    try:
        go.set()
        calls = 0
        while not ran.is_set() and calls < times:
            call()
            calls += 1
        return ran.is_set()
    finally:
        sys.setswitchinterval(old)
        worker.join()


def to_layout(x, layout):
    """A logical [B, H, L, D] array in the given layout (a fresh C-contiguous array)."""
    return np.ascontiguousarray(x.transpose(0, 2, 1, 3)) if layout == "bshd" else x


# ---- numerics against the float64 reference -----------------------------------------------


class TestAgainstReference(Case):
    def test_plain(self):
        rng = np.random.default_rng(1)
        q, k, v = rand(rng, 2, 3, 5, 8), rand(rng, 2, 3, 7, 8), rand(rng, 2, 3, 7, 8)
        self.check(attn.scaled_dot_product_attention(q, k, v), reference(q, k, v))

    def test_each_option(self):
        rng = np.random.default_rng(2)
        B, Hq, Hkv, Lq, Lk, D, Dv = 2, 4, 2, 6, 9, 8, 5
        q, k, v = rand(rng, B, Hq, Lq, D), rand(rng, B, Hkv, Lk, D), rand(rng, B, Hkv, Lk, Dv)
        mask = rng.random((B, 1, Lq, Lk)) < 0.7
        bias = rand(rng, 1, Hq, Lq, Lk)
        cases = [
            ({"is_causal": True}, {"causal": True}),
            ({"is_causal": True, "q_offset": 0}, {"causal": True, "q_offset": 0}),
            ({"is_causal": True, "q_offset": -2}, {"causal": True, "q_offset": -2}),
            ({"window": (2, 1)}, {"window": (2, 1)}),
            ({"window": (None, 0), "q_offset": 1}, {"window": (None, 0), "q_offset": 1}),
            ({"window": (1, None)}, {"window": (1, None)}),
            ({"kv_lens": [4, 9]}, {"kv_lens": [4, 9]}),
            ({"attn_mask": mask}, {"mask": mask}),
            ({"attn_mask": bias}, {"bias": bias}),
            ({"bias": bias}, {"bias": bias}),
            ({"attn_mask": mask, "bias": bias}, {"mask": mask, "bias": bias}),
            ({"scale": 0.3}, {"scale": 0.3}),
            ({"scale": -1.5}, {"scale": -1.5}),
            ({"is_causal": True, "window": (3, 0), "kv_lens": [7, 5], "attn_mask": mask,
              "bias": bias},
             {"causal": True, "window": (3, 0), "kv_lens": [7, 5], "mask": mask, "bias": bias}),
        ]
        for kwargs, ref_kwargs in cases:
            for layout in ("bhsd", "bshd"):
                with self.subTest(layout=layout, **{k_: str(v_)[:20] for k_, v_ in kwargs.items()}):
                    res = attn.scaled_dot_product_attention(
                        to_layout(q, layout), to_layout(k, layout), to_layout(v, layout),
                        layout=layout, weights="per_head", return_lse=True,
                        return_entropy=True, **kwargs)
                    self.check(res, reference(q, k, v, **ref_kwargs), layout=layout,
                               weights="per_head", lse=True, entropy=True)

    def test_random_configurations(self):
        """120 random draws over every option together."""
        rng = np.random.default_rng(3)
        for trial in range(120):
            B = int(rng.integers(1, 4))
            Hkv = int(rng.integers(1, 4))
            Hq = Hkv * int(rng.choice([1, 2, 3]))
            Lq, Lk = (int(x) for x in rng.choice([1, 2, 3, 17, 33, 65], 2))
            D, Dv = (int(x) for x in rng.choice([1, 4, 16, 33], 2))
            layout = str(rng.choice(["bhsd", "bshd"]))
            q, k, v = rand(rng, B, Hq, Lq, D), rand(rng, B, Hkv, Lk, D), rand(rng, B, Hkv, Lk, Dv)
            kw, rk = {"layout": layout}, {}
            if rng.random() < 0.5:
                kw["is_causal"] = rk["causal"] = True
            if rng.random() < 0.4:
                kw["q_offset"] = rk["q_offset"] = int(rng.integers(-3, Lk + 2))
            if rng.random() < 0.3:
                w = tuple(None if rng.random() < 0.3 else int(rng.integers(0, 8)) for _ in "lr")
                kw["window"] = rk["window"] = w
            if rng.random() < 0.4:
                kw["kv_lens"] = rk["kv_lens"] = [int(x) for x in rng.integers(0, Lk + 1, B)]
            if rng.random() < 0.4:  # a mask over some broadcast shape
                shape = tuple(n if rng.random() < 0.5 else 1 for n in (B, Hq, Lq, Lk))
                kw["attn_mask"] = rk["mask"] = rng.random(shape) < 0.8
            if rng.random() < 0.4:
                shape = tuple(n if rng.random() < 0.5 else 1 for n in (B, Hq, Lq, Lk))
                kw["bias"] = rk["bias"] = rand(rng, *shape)
            if rng.random() < 0.3:
                kw["scale"] = rk["scale"] = float(rng.uniform(-2, 2)) or 0.5
            masked = str(rng.choice(["zero", "nan"]))
            kw["masked_rows"] = rk["masked_rows"] = masked
            weights = str(rng.choice(["none", "per_head", "head_mean"]))
            lse, ent = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
            kw["threads"] = int(rng.integers(1, 4))
            with self.subTest(trial=trial):
                res = attn.scaled_dot_product_attention(
                    to_layout(q, layout), to_layout(k, layout), to_layout(v, layout),
                    weights=weights, return_lse=lse, return_entropy=ent, **kw)
                self.check(res, reference(q, k, v, **rk), layout=layout, weights=weights,
                           lse=lse, entropy=ent)

    def test_masked_rows(self):
        rng = np.random.default_rng(4)
        q, k, v = rand(rng, 2, 2, 3, 4), rand(rng, 2, 2, 5, 4), rand(rng, 2, 2, 5, 4)
        for policy in ("zero", "nan"):
            with self.subTest(policy=policy):
                res = attn.scaled_dot_product_attention(
                    q, k, v, kv_lens=[0, 5], is_causal=True, q_offset=-1, masked_rows=policy,
                    weights="per_head", return_lse=True, return_entropy=True)
                ref = reference(q, k, v, kv_lens=[0, 5], causal=True, q_offset=-1,
                                masked_rows=policy)
                self.check(res, ref, weights="per_head", lse=True, entropy=True)
                fill = 0.0 if policy == "zero" else np.nan
                np.testing.assert_array_equal(res.out[0], np.full((2, 3, 4), fill, np.float32))
                np.testing.assert_array_equal(res.out[1, :, 0], np.full((2, 4), fill, np.float32))
                self.assertTrue(np.all(res.lse[0] == -np.inf))
                self.assertTrue(np.all(np.isfinite(res.out[1, :, 1:])))

    def test_three_dimensional_inputs(self):
        rng = np.random.default_rng(5)
        q, k, v = rand(rng, 4, 6, 8), rand(rng, 2, 7, 8), rand(rng, 2, 7, 3)
        res = attn.scaled_dot_product_attention(q, k, v, is_causal=True, weights="head_mean",
                                                return_lse=True, kv_lens=6)
        ref = reference(q[None], k[None], v[None], causal=True, kv_lens=[6])
        self.assertEqual(res.out.shape, (4, 6, 3))
        self.assertEqual(res.weights.shape, (6, 7))
        self.assertEqual(res.lse.shape, (4, 6))
        self.check(attn.Result(res.out[None], res.weights[None], res.lse[None], None), ref,
                   weights="head_mean", lse=True)
        # bshd 3-D: [L, H, D]
        out = attn.scaled_dot_product_attention(q.transpose(1, 0, 2), k.transpose(1, 0, 2),
                                                v.transpose(1, 0, 2), layout="bshd")
        self.check(out[None], reference(q[None], k[None], v[None]), layout="bshd")

    def test_shared_kv_batch(self):
        """k and v with a batch of 1 serve every batch of q (a zero batch stride)."""
        rng = np.random.default_rng(6)
        q, k, v = rand(rng, 3, 2, 4, 8), rand(rng, 1, 1, 5, 8), rand(rng, 1, 1, 5, 8)
        out = attn.scaled_dot_product_attention(q, k, v)
        self.check(out, reference(q, np.repeat(k, 3, 0), np.repeat(v, 3, 0)))

    def test_float_mask_and_bias_are_summed(self):
        rng = np.random.default_rng(7)
        q, k, v = rand(rng, 1, 2, 3, 4), rand(rng, 1, 2, 6, 4), rand(rng, 1, 2, 6, 4)
        m = rand(rng, 3, 6)
        b = rand(rng, 1, 2, 1, 6)
        m[0, 2] = -np.inf  # -inf hides a key
        out = attn.scaled_dot_product_attention(q, k, v, m, bias=b)
        self.check(out, reference(q, k, v, bias=m.astype(np.float64) + b))

    def test_pytorch_reference_problems(self):
        """The 64 problems of tests/data/reference (PyTorch, float64): the numpy reference
        agrees with them to 1e-9, and attn to the float32 tolerance."""
        with open(os.path.join(DATA_DIR, "manifest.json")) as f:
            manifest = json.load(f)
        self.assertEqual(len(manifest["cases"]), 64)
        for c in manifest["cases"]:
            with self.subTest(case=c["name"]):
                load = lambda name: np.load(os.path.join(DATA_DIR, c["name"], name + ".npy"))
                q, k, v = load("q"), load("k"), load("v")
                mask = load("mask") if c["has_mask"] else None
                bias = load("bias") if c["has_bias"] else None
                window = tuple(None if w < 0 else w for w in (c["window_left"], c["window_right"]))
                rk = {"scale": c["scale"], "causal": c["causal"], "q_offset": c["q_offset"],
                      "window": window, "kv_lens": c["kv_lens"], "mask": mask, "bias": bias}
                ref = reference(q, k, v, **rk)
                for name in ("out", "lse", "entropy", "weights"):
                    want = load(name)
                    fin = np.isfinite(want)
                    np.testing.assert_array_equal(np.isfinite(ref[name]), fin)
                    err = np.abs(ref[name][fin] - want[fin]) / (1 + np.abs(want[fin]))
                    self.assertLess(np.max(err, initial=0), 1e-9, name)
                ctx = attn.Context(c["Hq"], c["Hkv"], c["D"], c["Dv"], scale=c["scale"],
                                   causal=c["causal"], window=window)
                res = ctx.forward(q, k, v, mask if mask is None else mask.astype(bool),
                                  q_offset=c["q_offset"], kv_lens=c["kv_lens"], bias=bias,
                                  weights="per_head", return_lse=True, return_entropy=True)
                for name, got in (("out", res.out), ("lse", res.lse), ("entropy", res.entropy),
                                  ("weights", res.weights)):
                    self.assert_close(got, load(name), ref["tol_" + name], f"{c['name']} {name}")


# ---- strides and copies ---------------------------------------------------------------------


class TestStrides(Case):
    def test_packed_qkv_is_read_in_place(self):
        """Slices of a packed [B, L, 3, H, D] buffer: bshd views with a row stride of 3*H*D."""
        rng = np.random.default_rng(10)
        B, L, H, D = 2, 7, 3, 8
        packed = rand(rng, B, L, 3, H, D)
        q, k, v = packed[:, :, 0], packed[:, :, 1], packed[:, :, 2]
        self.assertFalse(q.flags.c_contiguous)
        for x in (q, k, v):
            view = attn._float_input(x, "x", rows_axis=1)
            self.assertIs(view, x)  # no copy made
            self.assertTrue(np.shares_memory(view, packed))
        res = attn.scaled_dot_product_attention(q, k, v, layout="bshd", is_causal=True,
                                                return_lse=True)
        ref = reference(*(x.transpose(0, 2, 1, 3) for x in (q, k, v)), causal=True)
        self.check(res, ref, layout="bshd", lse=True)

    def test_padded_rows_and_head_slices(self):
        rng = np.random.default_rng(11)
        big = rand(rng, 2, 6, 9, 12)
        q = big[:, 1:5, :, :8]          # every stride non-trivial, last axis contiguous
        k = big[:, ::3, 2:8, 4:12]      # head stride 3x
        v = big[:, 2:4, 1:7, :5]
        for x in (q, k, v):
            self.assertIs(attn._float_input(x, "x", rows_axis=2), x)
        out = attn.scaled_dot_product_attention(q, k, v)
        self.check(out, reference(q, k, v))

    def test_the_c_core_reads_strided_buffers_and_never_copies(self):
        """The C core takes the strided view itself (it has no way to copy: it rejects what it
        cannot read in place, as a non-contiguous last axis)."""
        rng = np.random.default_rng(12)
        base = rand(rng, 2, 4, 6, 10)
        q, k, v = base[:, :2, :, :4], base[:, 2:, :, 3:7], base[:, 2:, :, 5:10]
        core = _attn.Context(2, 2, 4, 5, 0.0, False, -1, -1, 0, 1)
        out = np.full((2, 2, 6, 5), 7.0, np.float32)
        core.forward(q, k, v, out)
        self.check(out, reference(q, k, v))
        out = np.full((2, 2, 6, 5), 7.0, np.float32)
        with self.assertRaisesRegex(ValueError, "q: the last axis must be contiguous"):
            core.forward(base[:, :2, :, ::2][..., :4], k, v, out)
        with self.assertRaisesRegex(ValueError, "k: stride .* is negative"):
            core.forward(q, k[:, :, ::-1], v, out)
        with self.assertRaisesRegex(ValueError, "out: not a writable buffer"):
            ro = np.zeros_like(out)
            ro.flags.writeable = False
            core.forward(q, k, v, ro)
        with self.assertRaisesRegex(ValueError, r"v: shape \(2, 2, 6, 4\) does not match"):
            core.forward(q, k, v[..., :4], out)
        with self.assertRaisesRegex(ValueError, "q: expected native float32 elements"):
            core.forward(q.astype(np.float64), k, v, out)
        with self.assertRaisesRegex(ValueError, "lse: must be C-contiguous"):
            core.forward(q, k, v, out, lse=np.zeros((2, 4, 6), np.float32)[:, ::2])
        with self.assertRaisesRegex(ValueError, "lse: the last axis must be contiguous"):
            core.forward(q, k, v, out, lse=np.zeros((2, 2, 12), np.float32)[..., ::2])
        np.testing.assert_array_equal(out, np.full_like(out, 7.0))  # nothing written on failure

    def test_inputs_that_need_one_copy(self):
        """Whatever libattn cannot read in place is copied once, and the result is the same."""
        rng = np.random.default_rng(13)
        q, k, v = rand(rng, 2, 2, 5, 6), rand(rng, 2, 2, 7, 6), rand(rng, 2, 2, 7, 6)
        wide = np.repeat(q, 2, axis=-1)  # every other element is q
        raw = np.zeros(q.size * 4 + 1, np.uint8)
        unaligned = np.frombuffer(raw[1:].data, np.float32).reshape(q.shape)
        unaligned[...] = q
        variants = {
            "float64": q.astype(np.float64),
            "big-endian": q.astype(">f4"),
            "last axis strided": wide[..., ::2],
            "reversed rows": q[:, :, ::-1],
            "reversed heads and features": q[:, ::-1, :, ::-1],
            "overlapping rows": np.lib.stride_tricks.as_strided(q, q.shape, (240, 120, 4, 4)),
            "unaligned": unaligned,
            "list": q.tolist(),
        }
        for name, x in variants.items():
            with self.subTest(variant=name):
                values = np.array(x, np.float32)  # the values the view shows, as a plain array
                self.assertFalse(attn._float_input(x, "q", 2) is x, "not copied")
                self.check(attn.scaled_dot_product_attention(x, k, v), reference(values, k, v))
        # float16 inputs: converted exactly
        h = q.astype(np.float16)
        self.check(attn.scaled_dot_product_attention(h, k, v), reference(h, k, v))

    def test_mask_broadcast_uses_zero_strides(self):
        rng = np.random.default_rng(14)
        B, H, Lq, Lk = 2, 3, 4, 5
        q, k, v = rand(rng, B, H, Lq, 8), rand(rng, B, H, Lk, 8), rand(rng, B, H, Lk, 8)
        m = rng.random((1, H, 1, Lk)) < 0.6
        m[..., 0] = True
        view = attn._broadcast_pairwise(m, "attn_mask", (B, H, Lq, Lk), True, True)
        self.assertEqual(view.strides[0], 0)
        self.assertEqual(view.strides[2], 0)
        self.assertTrue(np.shares_memory(view, m))
        out = attn.scaled_dot_product_attention(q, k, v, m)
        self.check(out, reference(q, k, v, mask=m))
        # a key axis of 1 broadcast over Lk keys is materialised along that axis only
        col = rng.random((B, 1, Lq, 1)) < 0.5
        view = attn._broadcast_pairwise(col, "attn_mask", (B, H, Lq, Lk), True, True)
        self.assertEqual(view.strides[1], 0)
        self.assertEqual(view.strides[3], 1)
        res = attn.scaled_dot_product_attention(q, k, v, col, return_lse=True)
        self.check(res, reference(q, k, v, mask=col), lse=True)

    def test_masks_and_biases_that_need_a_copy(self):
        rng = np.random.default_rng(15)
        B, H, Lq, Lk = 2, 2, 3, 6
        q, k, v = rand(rng, B, H, Lq, 4), rand(rng, B, H, Lk, 4), rand(rng, B, H, Lk, 4)
        b = rand(rng, B, 1, Lq, Lk)
        packed = np.zeros(b.shape, dtype=[("x", "<f4"), ("pad", "u1")])  # 5-byte strides
        packed["x"] = b
        m = rng.random((1, H, Lq, Lk)) < 0.7
        m[..., 0] = m[..., -1] = True
        biases = {"float64": b.astype(np.float64), "big-endian": b.astype(">f4"),
                  "reversed keys": b[..., ::-1], "reversed rows": b[:, :, ::-1],
                  "5-byte strides": packed["x"], "list": b.tolist()}
        for name, x in biases.items():
            with self.subTest(bias=name):
                values = np.array(x, np.float64)
                self.check(attn.scaled_dot_product_attention(q, k, v, bias=x),
                           reference(q, k, v, bias=values))
        masks = {"reversed keys": m[..., ::-1], "every other key": np.repeat(m, 2, -1)[..., ::2]}
        for name, x in masks.items():
            with self.subTest(mask=name):
                self.check(attn.scaled_dot_product_attention(q, k, v, x),
                           reference(q, k, v, mask=np.array(x)))


# ---- Context and threads ---------------------------------------------------------------------


class TestContext(Case):
    def test_repeated_calls_with_any_lengths(self):
        rng = np.random.default_rng(20)
        ctx = attn.Context(4, 2, 16, 8, causal=True, window=(5, None), threads=2)
        self.assertIn("q_heads=4", repr(ctx))
        for Lq, Lk in ((1, 1), (3, 40), (17, 17), (1, 700)):
            q, k, v = rand(rng, 2, 4, Lq, 16), rand(rng, 2, 2, Lk, 16), rand(rng, 2, 2, Lk, 8)
            with self.subTest(Lq=Lq, Lk=Lk):
                res = ctx.forward(q, k, v, return_entropy=True)
                self.check(res, reference(q, k, v, causal=True, window=(5, None)),
                           entropy=True)
        q = rand(rng, 1, 2, 3, 16)
        with self.assertRaisesRegex(ValueError, "query heads = 2, this Context was made for 4"):
            ctx.forward(q, q, q)
        q = rand(rng, 1, 4, 3, 8)
        with self.assertRaisesRegex(ValueError, "qk_dim = 8, this Context was made for 16"):
            ctx.forward(q, q[:, :2], q[:, :2])

    def test_close(self):
        q = np.ones((1, 1, 2, 4), np.float32)
        with attn.Context(1, 1, 4) as ctx:
            ctx.forward(q, q, q)
        self.assertTrue(ctx.closed)
        with self.assertRaisesRegex(ValueError, "the Context is closed"):
            ctx.forward(q, q, q)
        ctx.close()  # twice is fine

    def test_gil_is_released_during_the_call(self):
        """With a huge switch interval a second thread can only run while the main thread
        blocks or releases the GIL; it must get to run during the calls."""
        rng = np.random.default_rng(21)
        q, k, v = rand(rng, 1, 8, 256, 64), rand(rng, 1, 8, 1024, 64), rand(rng, 1, 8, 1024, 64)
        ctx = attn.Context(8, 8, 64, threads=1)
        self.assertTrue(other_thread_ran(lambda: ctx.forward(q, k, v), 50),
                        "no other thread ran during 50 calls: the GIL was held")

    def test_threads_sharing_one_context_take_turns(self):
        rng = np.random.default_rng(22)
        ctx = attn.Context(2, 1, 8, threads=2)
        problems = [(rand(rng, 1, 2, 9, 8), rand(rng, 1, 1, 300, 8), rand(rng, 1, 1, 300, 8))
                    for _ in range(6)]
        alone = [ctx.forward(*p, return_lse=True) for p in problems]
        results = [[None] * len(problems) for _ in range(4)]
        errors = []

        def work(t):
            try:
                for r in range(3):
                    for i, p in enumerate(problems):
                        results[t][i] = ctx.forward(*p, return_lse=True)
            except Exception as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        for per_thread in results:
            for got, want in zip(per_thread, alone):
                np.testing.assert_array_equal(got.out, want.out)
                np.testing.assert_array_equal(got.lse, want.lse)


# ---- backward, dropout, 16-bit K/V and merge -----------------------------------------------


def reference_grad(q, k, v, dout, *, scale=None, causal=False, q_offset=None,
                   window=(None, None), kv_lens=None, mask=None, bias=None, keep=None, p=0.0):
    """Forward and backward of attention in float64 on logical [B, H, L, D] arrays, written
    out from the definition: P = softmax(scale q kᵀ + bias) over the visible keys,
    out = (P ∘ keep / (1 - p)) v, and the chain rule through each step. keep: the dropout
    keep-mask [B, Hq, Lq, Lk] (None = no dropout). Returns out, lse, the weights after dropout,
    dq, dk, dv (summed over the query heads sharing a kv head), dbias ([B, Hq, Lq, Lk]) and,
    for each gradient, a float32 tolerance tol_* from the same products on absolute values."""
    q, k, v, dout = (np.asarray(x, np.float64) for x in (q, k, v, dout))
    B, Hq, Lq, Dk = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    g = Hq // Hkv
    kk, vv = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    scale = 1.0 / np.sqrt(Dk) if scale is None else float(scale)
    bias = np.zeros((B, Hq, Lq, Lk)) if bias is None else \
        np.broadcast_to(np.asarray(bias, np.float64), (B, Hq, Lq, Lk))
    s = scale * (q @ kk.swapaxes(-1, -2)) + bias
    off = Lk - Lq if q_offset is None else q_offset
    i, j = np.arange(Lq)[:, None], np.arange(Lk)[None, :]
    vis = np.ones((B, Hq, Lq, Lk), bool)
    if causal:
        vis &= j <= i + off
    if window[0] is not None:
        vis &= j >= i + off - window[0]
    if window[1] is not None:
        vis &= j <= i + off + window[1]
    if kv_lens is not None:
        vis &= j[None, None] < np.asarray(kv_lens)[:, None, None, None]
    if mask is not None:
        vis &= np.broadcast_to(np.asarray(mask).astype(bool), vis.shape)
    vis &= bias != -np.inf
    s = np.where(vis, s, -np.inf)
    empty = ~vis.any(-1)
    m = np.where(empty, 0.0, s.max(-1, initial=-np.inf))
    e = np.where(vis, np.exp(s - m[..., None]), 0.0)
    z = np.where(empty, 1.0, e.sum(-1))
    P = e / z[..., None]
    lse = np.where(empty, -np.inf, m + np.log(z))
    drop = np.ones_like(P) if keep is None else np.asarray(keep, np.float64) / (1.0 - p)
    Pd = P * drop
    out = Pd @ vv
    dv = Pd.swapaxes(-1, -2) @ dout                          # per query head
    dP = (dout @ vv.swapaxes(-1, -2)) * drop
    dS = P * (dP - (dout * out).sum(-1, keepdims=True))
    dq = scale * dS @ kk
    dk = scale * dS.swapaxes(-1, -2) @ q

    def per_kv_head(x):
        return x.reshape(B, Hkv, g, Lk, x.shape[-1]).sum(2)

    # Bounds: the same products on absolute values, times the rounding of sums of up to
    # Lq·g + Lk + D terms and the relative error of the weights (scores of size |s|).
    sa = np.where(vis, np.abs(s), 0.0).max(-1, keepdims=True)
    rel = (4 * (Lk + Dk + 16) * (1 + sa) + 4 * (Lq * g + 16)) * U
    dP_abs = (np.abs(dout) @ np.abs(vv).swapaxes(-1, -2)) * drop
    dS_abs = rel * P * (dP_abs + (np.abs(dout) * (np.abs(Pd) @ np.abs(vv))).sum(-1,
                                                                                  keepdims=True))
    tiny = 1e-30
    return {"out": out, "lse": lse, "weights": Pd, "dq": dq, "dk": per_kv_head(dk),
            "dv": per_kv_head(dv), "dbias": dS,
            "tol_out": 2 * rel * (np.abs(Pd) @ np.abs(vv)) + tiny,
            "tol_dv": per_kv_head(2 * (rel * np.abs(Pd)).swapaxes(-1, -2) @ np.abs(dout)) + tiny,
            "tol_dq": 2 * abs(scale) * dS_abs @ np.abs(kk) + tiny,
            "tol_dk": per_kv_head(2 * abs(scale) * dS_abs.swapaxes(-1, -2) @ np.abs(q)) + tiny,
            "tol_dbias": 2 * dS_abs + tiny}


def philox4x32_10(ctr, key):
    """Philox4x32-10 (Random123's definition) on Python integers."""
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    mask = 0xFFFFFFFF
    for r in range(10):
        if r:
            k0, k1 = (k0 + 0x9E3779B9) & mask, (k1 + 0xBB67AE85) & mask
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & mask, (p0 >> 32) ^ c3 ^ k1, p0 & mask
    return c0, c1, c2, c3


def keep_mask(p, seed, offset, q_heads, b, h, rows, cols, row0=0, col0=0):
    """The pinned dropout keep-mask of docs/guide.md, element by element."""
    threshold = int(float(np.float32(p)) * 2**32)
    keep = np.empty((rows, cols), np.uint8)
    for r in range(rows):
        for c in range(cols):
            i, j = row0 + r, col0 + c
            words = philox4x32_10((j // 4 % 2**32, i, (b * q_heads + h) % 2**32, offset),
                                  (seed % 2**32, seed >> 32))
            keep[r, c] = words[j % 4] >= threshold
    return keep


def full_keep(p, seed, offset, B, Hq, Lq, Lk):
    """[B, Hq, Lq, Lk] keep-mask from attn.dropout_mask, one (batch, head) at a time."""
    return np.stack([np.stack([attn.dropout_mask(p, seed, offset, Hq, b, h, Lq, Lk)
                               for h in range(Hq)]) for b in range(B)])


def widen_bf16(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


class TestBackward(Case):
    def test_against_reference(self):
        rng = np.random.default_rng(40)
        cases = [
            dict(),
            dict(causal=True),
            dict(causal=True, window=(3, 1), q_offset=2),
            dict(kv_lens=[9, 4]),
            dict(mask=rng.random((2, 4, 6, 9)) < 0.7),
            dict(bias=rand(rng, 6, 9), dbias=True),
            dict(bias=rand(rng, 2, 1, 6, 9), causal=True, dbias=True),
            dict(bias=rand(rng, 4, 1, 9), kv_lens=[3, 9], dbias=True),
            dict(bias=rand(rng, 6, 1), dbias=True),  # along the keys: materialised, summed back
            dict(mask=np.zeros((6, 9), bool) | (np.arange(6)[:, None] > 1)),  # empty rows
        ]
        for layout in ("bhsd", "bshd"):
            for case in cases:
                case = dict(case)
                need_dbias = case.pop("dbias", False)
                q, k, v = rand(rng, 2, 4, 6, 8), rand(rng, 2, 2, 9, 8), rand(rng, 2, 2, 9, 5)
                dout = rand(rng, 2, 4, 6, 5)
                with self.subTest(layout=layout, **{x: case[x] for x in case
                                                    if x in ("causal", "window", "kv_lens")}):
                    ctx = attn.Context(4, 2, 8, 5, causal=case.get("causal", False),
                                       window=case.get("window"), backward=True, threads=2)
                    call = dict(layout=layout, kv_lens=case.get("kv_lens"),
                                q_offset=case.get("q_offset"), bias=case.get("bias"))
                    ql, kl, vl, dl = (to_layout(x, layout) for x in (q, k, v, dout))
                    res = ctx.forward(ql, kl, vl, case.get("mask"), return_lse=True, **call)
                    got = ctx.backward(ql, kl, vl, res.out, dl, res.lse, case.get("mask"),
                                       need_dbias=need_dbias, **call)
                    if layout == "bshd":
                        got = tuple(x.transpose(0, 2, 1, 3) for x in got[:3]) + got[3:]
                    ref = reference_grad(q, k, v, dout, **{x: case[x] for x in case
                                                           if x != "dbias"})
                    self.check_grads(got, ref, str(case.keys()),
                                     np.shape(case["bias"]) if need_dbias else None)

    def test_three_dimensional_and_shared_kv(self):
        rng = np.random.default_rng(41)
        ctx = attn.Context(2, 1, 4, backward=True)
        q, k, v, dout = rand(rng, 2, 5, 4), rand(rng, 1, 7, 4), rand(rng, 1, 7, 4), \
            rand(rng, 2, 5, 4)
        res = ctx.forward(q, k, v, return_lse=True)
        got = ctx.backward(q, k, v, res.out, dout, res.lse)
        self.assertEqual([x.shape for x in got], [(2, 5, 4), (1, 7, 4), (1, 7, 4)])
        ref = reference_grad(q[None], k[None], v[None], dout[None])
        self.check_grads(tuple(x[None] for x in got), ref, "3-D")
        # one K/V for a batch of 3: its gradient sums over the batch
        q3, d3 = rand(rng, 3, 2, 5, 4), rand(rng, 3, 2, 5, 4)
        res = ctx.forward(q3, k[None], v[None], return_lse=True)
        got = ctx.backward(q3, k[None], v[None], res.out, d3, res.lse)
        self.assertEqual(got[1].shape, (1, 1, 7, 4))
        kb, vb = np.broadcast_to(k, (3, 1, 7, 4)), np.broadcast_to(v, (3, 1, 7, 4))
        ref = reference_grad(q3, kb, vb, d3)
        for name in ("dk", "dv"):
            ref[name] = ref[name].sum(0, keepdims=True)
            ref["tol_" + name] = ref["tol_" + name].sum(0, keepdims=True)
        self.check_grads(got, ref, "shared K/V")

    @unittest.skipIf(torch is None, "PyTorch is not installed (Debian: python3-torch)")
    def test_against_pytorch_autograd(self):
        """The float64 reference above and libattn's gradients both agree with PyTorch's
        autograd in float64 (GQA, causal, a bias whose gradient is asked for)."""
        rng = np.random.default_rng(42)
        q, k, v, dout = rand(rng, 2, 4, 6, 8), rand(rng, 2, 2, 9, 8), rand(rng, 2, 2, 9, 5), \
            rand(rng, 2, 4, 6, 5)
        bias = rand(rng, 1, 4, 6, 9)
        tq, tk, tv, tb = (torch.tensor(np.asarray(x, np.float64), requires_grad=True)
                          for x in (q, k, v, bias))
        s = tq @ tk.repeat_interleave(2, dim=1).transpose(-1, -2) / np.sqrt(8) + tb
        causal = torch.ones(6, 9, dtype=torch.bool).tril(diagonal=3)
        s = s.masked_fill(~causal, float("-inf"))
        out = torch.softmax(s, -1) @ tv.repeat_interleave(2, dim=1)
        out.backward(torch.from_numpy(np.asarray(dout, np.float64)))
        want = {"dq": tq.grad.numpy(), "dk": tk.grad.numpy(), "dv": tv.grad.numpy(),
                "dbias": tb.grad.numpy()}
        ref = reference_grad(q, k, v, dout, causal=True, bias=bias)
        for name in ("dq", "dk", "dv"):
            np.testing.assert_allclose(ref[name], want[name], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(ref["dbias"].sum(0, keepdims=True), want["dbias"],
                                   rtol=1e-12, atol=1e-12)
        ctx = attn.Context(4, 2, 8, 5, causal=True, backward=True)
        res = ctx.forward(q, k, v, bias=bias, return_lse=True)
        got = ctx.backward(q, k, v, res.out, dout, res.lse, bias=bias, need_dbias=True)
        for name, x in zip(("dq", "dk", "dv", "dbias"), got):
            tol = ref["tol_" + name]
            if name == "dbias":
                tol = tol.sum(0, keepdims=True)
            self.assert_close(x, want[name], tol, f"against autograd: {name}")

    def test_gradient_of_a_broadcast_view_bias(self):
        """A bias passed as a numpy broadcast view has one gradient per element of the view,
        not one per element of the memory behind it."""
        rng = np.random.default_rng(49)
        q, k, v, dout = rand(rng, 2, 2, 3, 4), rand(rng, 2, 2, 5, 4), rand(rng, 2, 2, 5, 4), \
            rand(rng, 2, 2, 3, 4)
        bias = np.broadcast_to(rand(rng, 3, 5), (2, 3, 5))
        ctx = attn.Context(2, 2, 4, backward=True)
        res = ctx.forward(q, k, v, bias=bias, return_lse=True)
        got = ctx.backward(q, k, v, res.out, dout, res.lse, bias=bias, need_dbias=True)
        ref = reference_grad(q, k, v, dout, bias=bias)
        self.check_grads(got, ref, "broadcast view", (2, 3, 5))

    def test_float_attn_mask_gradient(self):
        rng = np.random.default_rng(43)
        q, k, v, dout = rand(rng, 1, 2, 3, 4), rand(rng, 1, 2, 5, 4), rand(rng, 1, 2, 5, 4), \
            rand(rng, 1, 2, 3, 4)
        fm = rand(rng, 3, 5)
        ctx = attn.Context(2, 2, 4, backward=True)
        res = ctx.forward(q, k, v, fm, return_lse=True)
        got = ctx.backward(q, k, v, res.out, dout, res.lse, fm, need_dbias=True)
        self.assertEqual(got[3].shape, (3, 5))
        ref = reference_grad(q, k, v, dout, bias=fm)
        self.check_grads(got[:3] + (got[3][None, None],), ref, "float attn_mask", (1, 1, 3, 5))


class TestDropout(Case):
    def test_mask_is_the_pinned_philox_mask(self):
        # Random123's known answer for counter 0, key 0
        self.assertEqual(philox4x32_10((0, 0, 0, 0), (0, 0)),
                         (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8))
        for p, seed, offset, qh, b, h, rows, cols, row0, col0 in (
                (0.3, 7, 0, 4, 1, 2, 3, 11, 0, 0), (0.5, 2**40 + 3, 9, 2, 5, 1, 2, 7, 13, 6),
                (0.0, 1, 1, 1, 0, 0, 2, 3, 0, 0), (0.9, 2**64 - 1, 2**32 - 1, 3, 2**32 - 1, 2,
                                                    2, 5, 2**32 - 2, 2**32 - 5)):
            with self.subTest(p=p, seed=seed):
                got = attn.dropout_mask(p, seed, offset, qh, b, h, rows, cols, row0, col0)
                self.assertEqual(got.dtype, np.uint8)
                np.testing.assert_array_equal(
                    got, keep_mask(p, seed, offset, qh, b, h, rows, cols, row0, col0))

    def test_forward_and_backward_against_numpy(self):
        rng = np.random.default_rng(44)
        p, seed, offset = 0.25, 12345, 3
        q, k, v, dout = rand(rng, 2, 4, 6, 8), rand(rng, 2, 2, 9, 8), rand(rng, 2, 2, 9, 5), \
            rand(rng, 2, 4, 6, 5)
        keep = full_keep(p, seed, offset, 2, 4, 6, 9)
        self.assertTrue(0 < keep.mean() < 1)
        ctx = attn.Context(4, 2, 8, 5, causal=True, dropout=p, backward=True)
        res = ctx.forward(q, k, v, weights="per_head", return_lse=True, dropout_seed=seed,
                          dropout_offset=offset)
        ref = reference_grad(q, k, v, dout, causal=True, keep=keep, p=p)
        self.assert_close(res.out, ref["out"], ref["tol_out"], "dropout out")
        self.assert_close(res.weights, ref["weights"], 8 * (9 + 8 + 16) * U * ref["weights"]
                          + 1e-30, "dropout weights")
        plain = reference(q, k, v, causal=True)  # lse is that of the weights before dropout
        self.assert_close(res.lse, plain["lse"], plain["tol_lse"], "dropout lse")
        got = ctx.backward(q, k, v, res.out, dout, res.lse, dropout_seed=seed,
                           dropout_offset=offset)
        self.check_grads(got, ref, "dropout")
        # another offset is another mask
        other = ctx.forward(q, k, v, dropout_seed=seed, dropout_offset=offset + 1)
        self.assertGreater(np.abs(other - res.out).max(), 1e-3)


class TestKvDtypes(Case):
    def test_f16_and_bf16_against_the_widened_values(self):
        rng = np.random.default_rng(45)
        q, dout = rand(rng, 2, 4, 6, 8), rand(rng, 2, 4, 6, 5)
        k16, v16 = rand(rng, 2, 2, 9, 8).astype(np.float16), rand(rng, 2, 2, 9, 5).astype(np.float16)
        kb = (rand(rng, 2, 2, 9, 8).view(np.uint32) >> 16).astype(np.uint16)
        vb = (rand(rng, 2, 2, 9, 5).view(np.uint32) >> 16).astype(np.uint16)
        for kv_dtype, k, v, kw, vw in (("f16", k16, v16, k16.astype(np.float32),
                                        v16.astype(np.float32)),
                                       ("bf16", kb, vb, widen_bf16(kb), widen_bf16(vb))):
            for layout in ("bhsd", "bshd"):
                with self.subTest(kv_dtype=kv_dtype, layout=layout):
                    ctx = attn.Context(4, 2, 8, 5, causal=True, kv_dtype=kv_dtype, backward=True)
                    ql, kl, vl, dl = (to_layout(x, layout) for x in (q, k, v, dout))
                    res = ctx.forward(ql, kl, vl, return_lse=True, layout=layout)
                    ref = reference_grad(q, kw, vw, dout, causal=True)
                    out = res.out if layout == "bhsd" else res.out.transpose(0, 2, 1, 3)
                    self.assert_close(out, ref["out"], ref["tol_out"], "out")
                    got = ctx.backward(ql, kl, vl, res.out, dl, res.lse, layout=layout)
                    if layout == "bshd":
                        got = tuple(x.transpose(0, 2, 1, 3) for x in got)
                    self.check_grads(got, ref, kv_dtype)

    def test_f16_arrays_are_read_in_place(self):
        """A strided float16 view goes to the C core as it is (its buffer is the caller's)."""
        rng = np.random.default_rng(46)
        kv = rand(rng, 1, 2, 7, 16).astype(np.float16)
        k, v = kv[..., :8], kv[..., 8:]
        q = rand(rng, 1, 2, 3, 8)
        ctx = attn.Context(2, 2, 8, kv_dtype="f16")
        seen = []
        real = ctx._core

        class Spy:
            def forward(self, q, k, v, *rest):
                seen.append((k, v))
                return real.forward(q, k, v, *rest)

        ctx._core = Spy()
        out = ctx.forward(q, k, v)
        self.assertTrue(np.shares_memory(seen[0][0], kv) and np.shares_memory(seen[0][1], kv))
        ref = reference(q, k.astype(np.float32), v.astype(np.float32))
        self.assert_close(out, ref["out"], ref["tol_out"], "strided f16")


class TestMerge(Case):
    def test_merge_equals_attention_over_the_union(self):
        rng = np.random.default_rng(47)
        q, k, v = rand(rng, 2, 3, 5, 8), rand(rng, 2, 3, 20, 8), rand(rng, 2, 3, 20, 6)
        mask = rng.random((2, 3, 5, 20)) < 0.6
        mask[0, 1, 2] = False           # a row that sees no key at all
        mask[1, 0, 3, :7] = False       # a row that sees no key of the first part
        ctx = attn.Context(3, 3, 8, 6)
        outs, lses = [], []
        for a, b in ((0, 7), (7, 8), (8, 20)):
            r = ctx.forward(q, k[:, :, a:b], v[:, :, a:b], mask[..., a:b], return_lse=True)
            outs.append(r.out)
            lses.append(r.lse)
        out, lse = attn.merge(outs, lses)
        ref = reference(q, k, v, mask=mask)
        self.assert_close(out, ref["out"], 2 * ref["tol_out"], "merged out")
        self.assert_close(lse, ref["lse"], 2 * ref["tol_lse"], "merged lse")
        out, lse = attn.merge(outs, lses, masked_rows="nan")
        self.assertTrue(np.isnan(out[0, 1, 2]).all())
        self.assertEqual(np.isnan(out).sum(), 6)
        # 3-D parts
        out3, lse3 = attn.merge([o[1] for o in outs], [x[1] for x in lses])
        self.assert_close(out3, ref["out"][1], 2 * ref["tol_out"][1], "merged 3-D out")


class TestNewErrors(unittest.TestCase):
    def test_context_options(self):
        with self.assertRaisesRegex(ValueError, r"dropout = 1 .*\(ATTN_ERR_BAD_OPTION\)"):
            attn.Context(1, 1, 4, dropout=1.0)
        with self.assertRaisesRegex(ValueError, r"dropout .*\(ATTN_ERR_BAD_OPTION\)"):
            attn.Context(1, 1, 4, dropout=float("nan"))
        with self.assertRaisesRegex(ValueError, "kv_dtype = 'f8' is not one of 'f32', 'f16', "
                                                "'bf16'"):
            attn.Context(1, 1, 4, kv_dtype="f8")
        with self.assertRaisesRegex(ValueError, "dropout = 'x' must be a number"):
            attn.Context(1, 1, 4, dropout="x")

    def test_backward_arguments(self):
        q = np.ones((1, 2, 3, 4), np.float32)
        k = np.ones((1, 2, 5, 4), np.float32)
        lse = np.zeros((1, 2, 3), np.float32)
        fwd = attn.Context(2, 2, 4)
        with self.assertRaisesRegex(ValueError, r"without ATTN_OP_BACKWARD .*"
                                                r"\(ATTN_ERR_BAD_OPTION\)") as cm:
            fwd.backward(q, k, k, q, q, lse)
        self.assertEqual(cm.exception.status, 10)
        ctx = attn.Context(2, 2, 4, backward=True)
        with self.assertRaisesRegex(ValueError, r"dout: shape \(1, 2, 3, 3\), expected"):
            ctx.backward(q, k, k, q, q[..., :3], lse)
        with self.assertRaisesRegex(ValueError, r"lse: shape \(1, 2, 4\), expected \(1, 2, 3\)"):
            ctx.backward(q, k, k, q, q, np.zeros((1, 2, 4)))
        with self.assertRaisesRegex(ValueError, "lse: expected a floating-point array"):
            ctx.backward(q, k, k, q, q, lse.astype(int))
        with self.assertRaisesRegex(ValueError, "need_dbias: no bias"):
            ctx.backward(q, k, k, q, q, lse, np.ones((3, 5), bool), need_dbias=True)
        with self.assertRaisesRegex(ValueError, r"args->kv_lens\[0\] = 6 is outside .*"
                                                r"\(ATTN_ERR_KV_LENS\)"):
            ctx.backward(q, k, k, q, q, lse, kv_lens=[6])
        with self.assertRaisesRegex(ValueError, "dropout_seed = -1 is outside"):
            ctx.backward(q, k, k, q, q, lse, dropout_seed=-1)
        with self.assertRaisesRegex(ValueError, "dropout_offset = 4294967296 is outside"):
            ctx.forward(q, k, k, dropout_offset=2**32)
        # the C core's own checks
        dq = np.empty_like(q)
        with self.assertRaisesRegex(ValueError, "dbias given without bias"):
            ctx._core.backward(q, k, k, q, q, lse, dq, np.empty_like(k), np.empty_like(k),
                               dbias=np.empty((1, 1, 3, 5), np.float32))
        with self.assertRaisesRegex(ValueError, r"dk: shape \(1, 2, 4, 4\) does not match"):
            ctx._core.backward(q, k, k, q, q, lse, dq, np.empty((1, 2, 4, 4), np.float32),
                               np.empty_like(k))
        with self.assertRaisesRegex(ValueError, r"dbias: shape \(1, 2, 3, 5\) does not match the "
                                                r"bias's broadcast shape = \(1, 1, 3, 5\)"):
            ctx._core.backward(q, k, k, q, q, lse, dq, np.empty_like(k), np.empty_like(k),
                               bias=np.broadcast_to(np.ones((3, 5), np.float32), (1, 2, 3, 5)),
                               dbias=np.empty((1, 2, 3, 5), np.float32))
        dkv = np.empty_like(k)
        with self.assertRaisesRegex(ValueError, r"\(ATTN_ERR_ALIAS\)"):
            ctx._core.backward(q, k, k, q, q, lse, dq, dkv, dkv)

    def test_kv_dtype_inputs(self):
        q = np.ones((1, 1, 2, 4), np.float32)
        with self.assertRaisesRegex(ValueError, "k: expected a uint16 array of bfloat16 bits for "
                                                "kv_dtype 'bf16', got dtype float32"):
            attn.Context(1, 1, 4, kv_dtype="bf16").forward(q, q, q)
        with self.assertRaisesRegex(ValueError, "k: expected a floating-point array for kv_dtype "
                                                "'f16'"):
            attn.Context(1, 1, 4, kv_dtype="f16").forward(q, q.astype(np.uint16), q)
        with self.assertRaisesRegex(ValueError, "k: expected native float16 elements, got "
                                                "format 'f'"):
            attn.Context(1, 1, 4, kv_dtype="f16")._core.forward(q, q, q, np.empty_like(q))
        with self.assertRaisesRegex(ValueError, "k: expected native float32 elements, got "
                                                "format 'e'"):
            attn.Context(1, 1, 4)._core.forward(q, q.astype(np.float16), q, np.empty_like(q))

    def test_dropout_mask_arguments(self):
        with self.assertRaisesRegex(ValueError, r"p = 1.5 is outside \[0, 1\) "
                                                r"\(ATTN_ERR_BAD_OPTION\)"):
            attn.dropout_mask(1.5, 0, 0, 1, 0, 0, 2, 2)
        with self.assertRaisesRegex(ValueError, r"\(ATTN_ERR_BAD_OPTION\)"):
            attn.dropout_mask(float("nan"), 0, 0, 1, 0, 0, 2, 2)
        with self.assertRaisesRegex(ValueError, r"head = 2 .*\(ATTN_ERR_LIMIT\)"):
            attn.dropout_mask(0.5, 0, 0, 2, 0, 2, 2, 2)
        with self.assertRaisesRegex(ValueError, r"cols is 0 \(ATTN_ERR_ZERO_SIZE\)"):
            attn.dropout_mask(0.5, 0, 0, 1, 0, 0, 2, 0)
        with self.assertRaisesRegex(ValueError, r"\(ATTN_ERR_LIMIT\)"):
            attn.dropout_mask(0.5, 0, 0, 1, 0, 0, 2**40, 2)
        with self.assertRaisesRegex(ValueError, r"\(ATTN_ERR_LIMIT\)"):
            attn.dropout_mask(0.5, 0, 0, 1, 0, 0, 2, 2, row0=-1)
        with self.assertRaisesRegex(ValueError, "seed = -1 is outside"):
            attn.dropout_mask(0.5, -1, 0, 1, 0, 0, 2, 2)
        with self.assertRaisesRegex(ValueError, "keep: 3 bytes, the block needs 4"):
            _attn.dropout_mask(0.5, 0, 0, 1, 0, 0, 0, 2, 0, 2, np.empty(3, np.uint8), 2)

    def test_merge_arguments(self):
        o, l = np.zeros((1, 2, 3, 4), np.float32), np.zeros((1, 2, 3), np.float32)
        with self.assertRaisesRegex(ValueError, "no parts to merge"):
            attn.merge([], [])
        with self.assertRaisesRegex(ValueError, "2 outs and 1 lses"):
            attn.merge([o, o], [l])
        with self.assertRaisesRegex(ValueError, r"outs\[1\]: shape \(1, 2, 3, 5\) does not "
                                                "match"):
            attn.merge([o, np.zeros((1, 2, 3, 5))], [l, l])
        with self.assertRaisesRegex(ValueError, r"lses\[1\]: shape \(1, 2, 2\) does not match"):
            attn.merge([o, o], [l, l[..., :2]])
        with self.assertRaisesRegex(ValueError, "part 1: outs.1. is 3-D"):
            attn.merge([o, o[0]], [l, l])
        with self.assertRaisesRegex(ValueError, "masked_rows = 'inf' is not one of"):
            attn.merge([o], [l], masked_rows="inf")
        with self.assertRaisesRegex(ValueError, r"\(ATTN_ERR_BAD_OPTION\)"):
            _attn.merge([o], [l], np.empty_like(o), np.empty_like(l), 7)
        with self.assertRaisesRegex(ValueError, r"\(ATTN_ERR_ALIAS\)"):
            _attn.merge([o, o], [l, l], o, np.empty_like(l), 0)

    def test_gil_is_released_during_backward(self):
        rng = np.random.default_rng(48)
        q, k = rand(rng, 1, 4, 256, 64), rand(rng, 1, 4, 512, 64)
        ctx = attn.Context(4, 4, 64, threads=1, backward=True)
        res = ctx.forward(q, k, k, return_lse=True)
        self.assertTrue(other_thread_ran(lambda: ctx.backward(q, k, k, res.out, res.out,
                                                              res.lse), 20),
                        "no other thread ran during 20 backward calls: the GIL was held")


# ---- references and memory -----------------------------------------------------------------


class TestNoLeaks(unittest.TestCase):
    def test_the_c_core_releases_every_buffer(self):
        """Each buffer taken by forward() holds a reference to its array until released: the
        reference counts must be back where they were after successes and failures alike."""
        rng = np.random.default_rng(50)
        q, k, v = rand(rng, 2, 2, 3, 4), rand(rng, 2, 1, 5, 4), rand(rng, 2, 1, 5, 4)
        out = np.empty((2, 2, 3, 4), np.float32)
        mask = np.ones((2, 2, 3, 5), bool)
        bias = np.zeros((2, 2, 3, 5), np.float32)
        lens = np.array([5, 3], np.int32)
        w = np.empty((2, 2, 3, 5), np.float32)
        lse = np.empty((2, 2, 3), np.float32)
        ent = np.empty((2, 2, 3), np.float32)
        arrays = (q, k, v, out, mask, bias, lens, w, lse, ent)
        core = _attn.Context(2, 1, 4, 4, 0.0, True, -1, -1, 0, 1)
        before = [sys.getrefcount(a) for a in arrays]
        for _ in range(3):
            core.forward(q, k, v, out, None, lens, mask, bias, 1, w, lse, ent)
            with self.assertRaises(ValueError):  # libattn rejects: kv_lens above kv_len
                core.forward(q, k, v, out, None, np.array([9, 9], np.int32), mask, bias, 1, w,
                             lse, ent)
            with self.assertRaises(ValueError):  # the core rejects: the last buffer's shape
                core.forward(q, k, v, out, None, lens, mask, bias, 1, w, lse, ent[:1])
            with self.assertRaises(ValueError):  # the core rejects: a buffer's dtype
                core.forward(q, k, v, out, None, lens, mask.astype(np.float32), bias, 1, w)
        self.assertEqual([sys.getrefcount(a) for a in arrays], before)

    def test_backward_merge_and_dropout_mask_release_every_buffer(self):
        rng = np.random.default_rng(52)
        q, k, v = rand(rng, 2, 2, 3, 4), rand(rng, 2, 1, 5, 4), rand(rng, 2, 1, 5, 4)
        out, dout = rand(rng, 2, 2, 3, 4), rand(rng, 2, 2, 3, 4)
        lse = np.zeros((2, 2, 3), np.float32)
        dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
        mask = np.ones((2, 2, 3, 5), bool)
        bias = np.zeros((2, 2, 3, 5), np.float32)
        dbias = np.empty_like(bias)
        lens = np.array([5, 3], np.int32)
        keep = np.empty(12, np.uint8)
        mo, ml = np.empty_like(out), np.empty_like(lse)
        arrays = (q, k, v, out, dout, lse, dq, dk, dv, mask, bias, dbias, lens, keep, mo, ml)
        core = _attn.Context(2, 1, 4, 4, 0.0, True, -1, -1, 0, 1, 3)
        parts_o, parts_l = [out, dout], [lse, lse]
        before = [sys.getrefcount(a) for a in arrays]
        for _ in range(3):
            core.backward(q, k, v, out, dout, lse, dq, dk, dv, None, lens, mask, bias, dbias)
            with self.assertRaises(ValueError):  # libattn rejects: kv_lens above kv_len
                core.backward(q, k, v, out, dout, lse, dq, dk, dv, None,
                              np.array([9, 9], np.int32), mask, bias, dbias)
            with self.assertRaises(ValueError):  # the core rejects: the last buffer's shape
                core.backward(q, k, v, out, dout, lse, dq, dk, dv, None, lens, mask, bias,
                              dbias[:1])
            _attn.dropout_mask(0.5, 1, 2, 2, 0, 1, 0, 3, 0, 4, keep, 4)
            with self.assertRaises(ValueError):
                _attn.dropout_mask(0.5, 1, 2, 2, 0, 2, 0, 3, 0, 4, keep, 4)
            _attn.merge(parts_o, parts_l, mo, ml, 0)
            with self.assertRaises(ValueError):  # libattn rejects: out is part 1's out
                _attn.merge(parts_o, parts_l, dout, ml, 0)
            with self.assertRaises(ValueError):  # the core rejects: a part's shape
                _attn.merge(parts_o, [lse, lse[:1]], mo, ml, 0)
        self.assertEqual([sys.getrefcount(a) for a in arrays], before)

    def test_repeated_calls_keep_no_memory(self):
        """Python-level allocations (numpy's included) after 300 calls, half of them failing,
        stay where they were after the first ones."""
        import gc
        import tracemalloc
        rng = np.random.default_rng(51)
        q, k, v = rand(rng, 2, 4, 16, 32), rand(rng, 2, 2, 16, 32), rand(rng, 2, 2, 16, 32)
        ctx = attn.Context(4, 2, 32)

        def calls(n):
            for _ in range(n):
                ctx.forward(q, k, v, return_lse=True, weights="per_head")
                try:
                    ctx.forward(q, k, v, kv_lens=[3, 99])
                except ValueError:
                    pass

        tracemalloc.start()
        try:
            calls(20)
            gc.collect()
            first = tracemalloc.get_traced_memory()[0]
            calls(150)
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - first
        finally:
            tracemalloc.stop()
        # one leaked output per call would be 150 * 16 KiB
        self.assertLess(grown, 64 << 10, f"{grown} bytes more after 300 calls")


# ---- bad inputs -------------------------------------------------------------------------------


class TestErrors(unittest.TestCase):
    def setUp(self):
        rng = np.random.default_rng(30)
        self.q, self.k, self.v = rand(rng, 2, 4, 3, 8), rand(rng, 2, 2, 5, 8), rand(rng, 2, 2, 5, 8)

    def call(self, **kw):
        args = {"query": self.q, "key": self.k, "value": self.v}
        args.update(kw)
        return attn.scaled_dot_product_attention(**args)

    def raises(self, exc, pattern, status=None, **kw):
        with self.assertRaisesRegex(exc, pattern) as cm:
            self.call(**kw)
        if status is not None:
            self.assertEqual(cm.exception.status, status)

    def test_dtype_and_ndim(self):
        self.raises(ValueError, "q: expected a floating-point array .* got dtype int64",
                    query=np.ones((2, 4, 3, 8), np.int64))
        self.raises(ValueError, "v: expected a floating-point array .* got dtype complex64",
                    value=np.ones((2, 2, 5, 8), np.complex64))
        self.raises(ValueError, "got dtype <U1", key=np.full((2, 2, 5, 8), "a"))
        self.raises(ValueError, "all be 4-D .* got 2-D, 4-D, 4-D", query=np.ones((3, 8)))
        self.raises(ValueError, "got 5-D, 5-D, 5-D", query=self.q[None], key=self.k[None],
                    value=self.v[None])
        self.raises(ValueError, "got 4-D, 3-D, 4-D", key=self.k[0])
        self.raises(ValueError, "attn_mask: dtype int64 is neither bool",
                    attn_mask=np.ones((3, 5), np.int64))
        self.raises(ValueError, "bias: expected a floating-point array, got dtype bool",
                    bias=np.ones((3, 5), bool))
        self.raises(ValueError, "kv_lens: expected integers, got dtype float64",
                    kv_lens=[1.0, 2.0])

    def test_shapes(self):
        self.raises(ValueError, r"the feature sizes differ \(8 and 7\)", key=self.k[..., :7],
                    value=self.v[..., :7])
        self.raises(ValueError, "query has 4 heads, key has 3: the query head count must be "
                    "a multiple", key=np.ones((2, 3, 5, 8), np.float32),
                    value=np.ones((2, 3, 5, 8), np.float32))
        self.raises(ValueError, r"k \(2, 2, 5, 8\) and v \(2, 2, 4, 8\) \(B, H, L, D\): the head "
                    "counts and lengths must match", value=self.v[:, :, :4])
        self.raises(ValueError, "q and k: batch sizes 2 and 3 differ",
                    key=np.ones((3, 2, 5, 8), np.float32), value=np.ones((3, 2, 5, 8), np.float32))
        self.raises(ValueError, "k and v: batch sizes 2 and 1 differ", value=self.v[:1])
        self.raises(ValueError, r"attn_mask: shape \(3, 4\) does not broadcast to \(2, 4, 3, 5\)",
                    attn_mask=np.ones((3, 4), bool))
        self.raises(ValueError, r"bias: 5 dimensions, expected at most 4",
                    bias=np.ones((1, 2, 4, 3, 5), np.float32))
        self.raises(ValueError, r"attn_mask: shape \(2,\) does not broadcast to",
                    attn_mask=np.zeros(2), bias=np.zeros(5))
        self.raises(ValueError, r"bias: shape \(3, 4\) does not broadcast to",
                    attn_mask=np.zeros(5), bias=np.zeros((3, 4)))
        self.raises(ValueError, r"kv_lens: shape \(3,\), expected \(2,\)", kv_lens=[1, 2, 3])
        self.raises(ValueError, "q_len is 0", 2, query=np.ones((2, 4, 0, 8), np.float32))
        self.raises(ValueError, "feature sizes must be at least 1",
                    query=np.ones((2, 4, 3, 0)), key=np.ones((2, 2, 5, 0)))

    def test_options(self):
        self.raises(ValueError, "layout = 'sbhd' is not one of 'bhsd', 'bshd'", layout="sbhd")
        self.raises(ValueError, "weights = 'all' is not one of 'none', 'per_head', 'head_mean'",
                    weights="all")
        self.raises(ValueError, "weights = True is not one of", weights=True)
        self.raises(ValueError, "masked_rows = 'inf' is not one of 'zero', 'nan'",
                    masked_rows="inf")
        self.raises(ValueError, "window = 3 must be a pair", window=3)
        self.raises(ValueError, "window left = 'a' must be an integer", window=("a", 1))
        self.raises(ValueError, r"desc->window_left = -5 .*\(ATTN_ERR_WINDOW\)", 7, window=(-5, 1))
        self.raises(ValueError, r"q_offset = 1.5 must be an integer", q_offset=1.5)
        self.raises(ValueError, r"args->q_offset = 4294967296 is outside .*\(ATTN_ERR_OFFSET\)",
                    8, q_offset=2**32)
        self.raises(ValueError, r"q_offset = 9223372036854775808 is outside", q_offset=2**63)
        self.raises(ValueError, r"args->kv_lens\[1\] = 6 is outside \[0, kv_len = 5\] "
                    r"\(ATTN_ERR_KV_LENS\)", 6, kv_lens=[5, 6])
        self.raises(ValueError, r"kv_lens\[0\] = -1 is outside", 6, kv_lens=[-1, 2])
        self.raises(ValueError, r"kv_lens\[1\] = 4294967296 is outside", kv_lens=[0, 2**32])
        self.raises(ValueError, r"desc->threads = 1000 .*\(ATTN_ERR_LIMIT\)", 12, threads=1000)
        self.raises(ValueError, r"threads = -1 is outside", threads=-1)
        self.raises(ValueError, "scale = 0 is not supported", scale=0.0)
        self.raises(ValueError, "scale = nan is not finite", scale=float("nan"))
        self.raises(ValueError, "scale = 1e\\+39 is not finite in float32", scale=1e39)
        self.raises(ValueError, "dropout_p = 0.1: dropout is not supported", dropout_p=0.1)
        with self.assertRaisesRegex(ValueError, r"desc->qk_dim = 20000 exceeds .*ATTN_ERR_LIMIT"):
            attn.Context(1, 1, 20000)
        with self.assertRaisesRegex(ValueError, r"ATTN_ERR_HEADS"):
            attn.Context(3, 2, 8)
        with self.assertRaisesRegex(ValueError, r"ATTN_ERR_ZERO_SIZE"):
            attn.Context(0, 1, 8)

    def test_status_to_exception(self):
        cases = {1: ValueError, 2: ValueError, 6: ValueError, 13: ValueError, 15: ValueError,
                 16: MemoryError, 17: RuntimeError, 99: RuntimeError}
        for status, exc_type in cases.items():
            e = _attn._error(status, "some text")
            self.assertIs(type(e), exc_type, status)
            self.assertEqual(e.status, status)
            self.assertTrue(str(e).startswith("some text ("), str(e))
        # without a message: the status's own description
        self.assertRegex(str(_attn._error(16, "")),
                         r"^ATTN_ERR_NO_MEMORY: .+ \(ATTN_ERR_NO_MEMORY\)$")

    @unittest.skipUnless(sys.platform.startswith("linux"), "needs RLIMIT_AS and /proc")
    def test_real_allocation_and_thread_failures(self):
        """Under an address-space limit 256 MiB above what the process uses: a 524 MiB
        workspace gives MemoryError, 255 worker stacks give RuntimeError, each with libattn's
        message (in a child process, so that the limit stays there)."""
        code = ("import resource, attn\n"
                "soft, hard = resource.getrlimit(resource.RLIMIT_AS)\n"
                "used = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()\n"
                "resource.setrlimit(resource.RLIMIT_AS, (used + (256 << 20), hard))\n"
                "for kw in (dict(qk_dim=16384, threads=64), dict(qk_dim=64, threads=256)):\n"
                "    try:\n"
                "        attn.Context(1, 1, **kw)\n"
                "        print('created', kw)\n"
                "    except Exception as e:\n"
                "        print(type(e).__name__, e.status, e)\n")
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                           timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()
        self.assertEqual(len(lines), 2, r.stdout)
        self.assertRegex(lines[0], r"^MemoryError 16 allocating the \d+-byte workspace failed "
                         r"\(ATTN_ERR_NO_MEMORY\)$")
        self.assertRegex(lines[1], r"^RuntimeError 17 starting 255 worker threads failed "
                         r"\(ATTN_ERR_THREADS\)$")


# ---- PyTorch ---------------------------------------------------------------------------------


def torch_attention(q, k, v, mask=None, causal=False, scale=None):
    """PyTorch in float64: F.scaled_dot_product_attention where it exists (torch >= 2.0), else
    the same formula in torch operations. Causal is PyTorch's top-left alignment."""
    q, k, v = (torch.from_numpy(np.asarray(x, np.float64)) for x in (q, k, v))
    g = q.shape[-3] // k.shape[-3]
    k, v = k.repeat_interleave(g, dim=-3), v.repeat_interleave(g, dim=-3)
    if mask is not None:
        mask = torch.from_numpy(np.asarray(mask) if np.asarray(mask).dtype == bool
                                else np.asarray(mask, np.float64))
    if hasattr(F, "scaled_dot_product_attention"):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                              scale=scale).numpy()
    s = (q @ k.transpose(-1, -2)) * (1 / q.shape[-1] ** 0.5 if scale is None else scale)
    if causal:
        s = s.masked_fill(~torch.ones(s.shape[-2:], dtype=torch.bool).tril(), float("-inf"))
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask
    return (torch.softmax(s, dim=-1) @ v).numpy()


@unittest.skipIf(torch is None, "PyTorch is not installed (Debian: python3-torch)")
class TestAgainstPyTorch(Case):
    def compare(self, got, want, rtol=2e-5, atol=2e-6):
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol, atol=atol)

    def test_same_calls(self):
        rng = np.random.default_rng(40)
        for B, Hq, Hkv, Lq, Lk, D, Dv in ((2, 4, 4, 16, 16, 32, 32), (1, 8, 2, 5, 33, 16, 8),
                                          (3, 2, 1, 1, 100, 64, 64)):
            q, k, v = rand(rng, B, Hq, Lq, D), rand(rng, B, Hkv, Lk, D), rand(rng, B, Hkv, Lk, Dv)
            bmask = rng.random((B, 1, Lq, Lk)) < 0.7
            bmask[..., 0] = True  # PyTorch gives NaN for rows that see no key
            fmask = rand(rng, Lq, Lk)
            with self.subTest(shape=(B, Hq, Hkv, Lq, Lk, D, Dv)):
                self.compare(attn.scaled_dot_product_attention(q, k, v),
                             torch_attention(q, k, v))
                self.compare(attn.scaled_dot_product_attention(q, k, v, bmask),
                             torch_attention(q, k, v, bmask))
                self.compare(attn.scaled_dot_product_attention(q, k, v, fmask, scale=0.5),
                             torch_attention(q, k, v, fmask, scale=0.5))
                # PyTorch aligns is_causal top-left: q_offset=0 here
                self.compare(attn.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                               q_offset=0),
                             torch_attention(q, k, v, causal=True))

    def test_torch_tensors_are_read_in_place(self):
        rng = np.random.default_rng(41)
        qkv = torch.from_numpy(rand(rng, 2, 9, 3, 4, 16))  # packed [B, L, 3, H, D]
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        self.assertTrue(np.shares_memory(attn._float_input(q, "q", 1), qkv.numpy()))
        out = attn.scaled_dot_product_attention(q, k, v, layout="bshd", is_causal=True)
        want = torch_attention(*(x.numpy().transpose(0, 2, 1, 3) for x in (q, k, v)),
                               causal=True)
        self.compare(out.transpose(0, 2, 1, 3), want)


# ---- running under ctest ----------------------------------------------------------------------


def main():
    suite = unittest.defaultTestLoader.loadTestsFromModule(sys.modules[__name__])
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    print(f"attn {attn.__version__} ({attn.kernel_isa()} kernels), numpy {np.__version__}, "
          f"torch {torch.__version__ if torch else 'absent'}")
    print(f"python tests: {result.testsRun} run, {len(result.failures)} failed, "
          f"{len(result.errors)} errors, {len(result.skipped)} skipped; {WORST['arrays']} arrays "
          f"compared with float64, largest error / tolerance {WORST['ratio']:.3g}")
    sys.exit(0 if result.wasSuccessful() else 1)


if __name__ == "__main__":
    main()
