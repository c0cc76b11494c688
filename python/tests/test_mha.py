"""Tests of attn.MultiheadAttention (run by ctest as `python_mha`; by hand:
PYTHONPATH=<build>/python /usr/bin/python3 python/tests/test_mha.py).

Every output and gradient is compared with a float64 layer written here in numpy from the
definitions (forward and a hand-written backward), and with torch.nn.MultiheadAttention in
float64 when `import torch` works. The tolerance of an element is a multiple of the float32
unit roundoff times the same computation on absolute values (the size of the sums it rounds).
"""

import sys
import unittest

import numpy as np

import attn
from attn import _attn

import test_attn  # the comparison, its statistics and the GIL probe are shared
from test_attn import U, Case, other_thread_ran, rand

try:
    import torch
except ImportError:  # python3-torch is optional
    torch = None

WORST = test_attn.WORST  # largest error / tolerance and arrays compared with float64
TORCH = {"err": 0.0, "arrays": 0}


# ---- the float64 reference layer --------------------------------------------------------------


def reference(params, query, key, value, *, heads, kv_heads=None, causal=False, kv_lens=None,
              key_visible=None, mask=None, bias=None, dropout=0.0, keep=None, dout=None,
              masked_rows="zero"):
    """The layer in float64 on batch-first arrays. params: the state_dict-style names without
    "out_proj." (in_proj_weight or q/k/v_proj_weight, in_proj_bias, out_proj_weight,
    out_proj_bias). mask: bool [B, H, Lq, Lk] (True = visible); bias: float, broadcast to it.
    keep: the dropout keep mask [B, H, Lq, Lk]. Returns a dict of out, weights (per head),
    mean and, with dout, the gradients d_query, d_key, d_value and d_<param>; and for each the
    tolerance tol_<name>."""
    f64 = {n: None if a is None else np.asarray(a, np.float64) for n, a in params.items()}
    xq, xk, xv = (np.asarray(x, np.float64) for x in (query, key, value))
    B, Lq, E = xq.shape
    Lk = xk.shape[1]
    H = heads
    Hkv = kv_heads or H
    D = E // H
    kvE = Hkv * D
    if f64.get("in_proj_weight") is not None:
        W = f64["in_proj_weight"]
        Wq, Wk, Wv = W[:E], W[E:E + kvE], W[E + kvE:]
    else:
        Wq, Wk, Wv = f64["q_proj_weight"], f64["k_proj_weight"], f64["v_proj_weight"]
    bin_ = f64.get("in_proj_bias")
    bq, bk, bv = ((bin_[:E], bin_[E:E + kvE], bin_[E + kvE:]) if bin_ is not None
                  else (np.zeros(E), np.zeros(kvE), np.zeros(kvE)))
    Wo = f64["out_proj_weight"]
    bo = f64.get("out_proj_bias")
    bo = np.zeros(E) if bo is None else bo
    g = H // Hkv
    scale = 1.0 / np.sqrt(D)

    vis = np.ones((B, H, Lq, Lk), bool)
    i, j = np.arange(Lq)[:, None], np.arange(Lk)[None, :]
    if causal:
        vis &= j <= i + Lk - Lq
    if kv_lens is not None:
        vis &= j[None, None] < np.asarray(kv_lens)[:, None, None, None]
    if key_visible is not None:
        vis &= np.asarray(key_visible, bool)[:, None, None, :]
    if mask is not None:
        vis &= np.broadcast_to(mask, vis.shape)
    bias = np.zeros(vis.shape) if bias is None else np.broadcast_to(
        np.asarray(bias, np.float64), vis.shape)
    vis &= bias != -np.inf
    empty = ~vis.any(-1)
    keep = np.ones(vis.shape) if keep is None else np.asarray(keep, np.float64)
    kscale = keep / (1.0 - dropout)

    def run(absolute):
        A = np.abs if absolute else (lambda t: t)
        Q = (A(xq) @ A(Wq).T + A(bq)).reshape(B, Lq, H, D).transpose(0, 2, 1, 3)
        K = (A(xk) @ A(Wk).T + A(bk)).reshape(B, Lk, Hkv, D).transpose(0, 2, 1, 3)
        V = (A(xv) @ A(Wv).T + A(bv)).reshape(B, Lk, Hkv, D).transpose(0, 2, 1, 3)
        Kr, Vr = np.repeat(K, g, 1), np.repeat(V, g, 1)
        s = scale * (Q @ Kr.swapaxes(-1, -2)) + A(np.where(vis, bias, 0.0))
        if absolute:
            P = P_real
        else:
            s = np.where(vis, s, -np.inf)
            m = np.where(empty, 0.0, s.max(-1, initial=-np.inf))
            e = np.where(vis, np.exp(s - m[..., None]), 0.0)
            P = e / np.where(empty, 1.0, e.sum(-1))[..., None]
        Pd = P * kscale
        O = (Pd @ Vr).transpose(0, 2, 1, 3).reshape(B, Lq, E)
        out = O @ A(Wo).T + A(bo)
        r = {"out": out, "weights": Pd, "mean": Pd.mean(1), "P": P, "sabs": s}
        if dout is None:
            return r
        dY = A(np.asarray(dout, np.float64))
        r["d_out_proj_weight"] = dY.reshape(-1, E).T @ O.reshape(-1, E)
        r["d_out_proj_bias"] = dY.reshape(-1, E).sum(0)
        dO = (dY @ A(Wo)).reshape(B, Lq, H, D).transpose(0, 2, 1, 3)
        dPd = dO @ Vr.swapaxes(-1, -2)
        dVr = Pd.swapaxes(-1, -2) @ dO
        dP = dPd * kscale
        if absolute:
            dS = P * (np.abs(dP) + (np.abs(dP) * P).sum(-1, keepdims=True))
        else:
            dS = P * (dP - (dP * P).sum(-1, keepdims=True))
        dQ = scale * dS @ Kr
        dKr = scale * dS.swapaxes(-1, -2) @ Q
        dK = dKr.reshape(B, Hkv, g, Lk, D).sum(2)
        dV = dVr.reshape(B, Hkv, g, Lk, D).sum(2)
        dQf = dQ.transpose(0, 2, 1, 3).reshape(B * Lq, E)
        dKf = dK.transpose(0, 2, 1, 3).reshape(B * Lk, kvE)
        dVf = dV.transpose(0, 2, 1, 3).reshape(B * Lk, kvE)
        r["d_query"] = (dQf @ A(Wq)).reshape(B, Lq, -1)
        r["d_key"] = (dKf @ A(Wk)).reshape(B, Lk, -1)
        r["d_value"] = (dVf @ A(Wv)).reshape(B, Lk, -1)
        dWq = dQf.T @ A(xq).reshape(B * Lq, -1)
        dWk = dKf.T @ A(xk).reshape(B * Lk, -1)
        dWv = dVf.T @ A(xv).reshape(B * Lk, -1)
        r["d_q_proj_weight"], r["d_k_proj_weight"], r["d_v_proj_weight"] = dWq, dWk, dWv
        if dWq.shape[1] == dWk.shape[1] == dWv.shape[1]:
            r["d_in_proj_weight"] = np.concatenate([dWq, dWk, dWv])
        r["d_in_proj_bias"] = np.concatenate([dQf.sum(0), dKf.sum(0), dVf.sum(0)])
        return r

    P_real = None
    r = run(False)
    P_real = r["P"]
    a = run(True)
    # first-order float32 bound: each value is a chain of sums of products whose lengths are
    # at most E, kdim, vdim, Lk and B * L: one U per term of the chains, doubled.
    n = 2 * (E + max(xk.shape[2], xv.shape[2]) + Lk + B * max(Lq, Lk) + 16)
    out = {}
    for name, val in r.items():
        if name in ("P", "sabs"):
            continue
        mag = a[name]
        if name in ("weights", "mean"):
            # a weight's relative error: that of the scores it comes from
            srow = np.where(vis, np.abs(a["sabs"]), 0.0).max(-1, keepdims=True)
            mag = (P_real * kscale) * (1 + srow)
            mag = mag.mean(1) if name == "mean" else mag
        out[name] = val
        out["tol_" + name] = n * U * mag + 1e-30
    if masked_rows == "nan":
        nanrow = empty.any(1)[..., None]  # [B, Lq, 1]: a row no head saw a key for
        out["out"] = np.where(empty.transpose(0, 2, 1).any(-1)[..., None], np.nan, out["out"])
        out["weights"] = np.where(empty[..., None], np.nan, out["weights"])
        out["mean"] = np.where(nanrow, np.nan, r["mean"])
    return out


def params_of(layer):
    """The layer's parameters under the reference's names."""
    return {attr: getattr(layer, attr) for attr in layer._param_shapes()}


def make_layer(rng, E, H, *, kv_heads=None, kdim=None, vdim=None, bias=True, **kw):
    layer = attn.MultiheadAttention(E, H, bias=bias, kdim=kdim, vdim=vdim, kv_heads=kv_heads,
                                    seed=int(rng.integers(1 << 30)), **kw)
    if bias:  # nonzero biases (PyTorch initialises them to 0)
        layer.in_proj_bias[:] = rand(rng, *layer.in_proj_bias.shape, amp=0.5)
        layer.out_proj_bias[:] = rand(rng, *layer.out_proj_bias.shape, amp=0.5)
    return layer


# configurations: (name, layer kwargs, call kwargs builder)
CONFIGS = [
    ("self", dict(E=16, H=4), dict(self_attn=True, Lq=6)),
    ("cross", dict(E=16, H=2), dict(Lq=5, Lk=9)),
    ("kdim_vdim", dict(E=12, H=3, kdim=7, vdim=10), dict(Lq=4, Lk=6)),
    ("no_bias", dict(E=8, H=2, bias=False), dict(Lq=5, Lk=5)),
    ("gqa", dict(E=24, H=6, kv_heads=2), dict(Lq=7, Lk=8)),
    ("mqa_kdim", dict(E=16, H=4, kv_heads=1, kdim=5, vdim=6), dict(Lq=3, Lk=6)),
    ("causal", dict(E=16, H=4, causal=True), dict(self_attn=True, Lq=7)),
    ("causal_cross", dict(E=8, H=2, causal=True), dict(Lq=3, Lk=7)),
    ("kpm_bool", dict(E=16, H=4), dict(Lq=5, Lk=8, kpm="bool")),
    ("kpm_float", dict(E=16, H=4), dict(Lq=5, Lk=8, kpm="float")),
    ("mask_bool_2d", dict(E=16, H=4), dict(Lq=5, Lk=8, mask="bool2")),
    ("mask_bool_3d", dict(E=16, H=4), dict(Lq=5, Lk=8, mask="bool3")),
    ("mask_float_2d", dict(E=16, H=4), dict(Lq=5, Lk=8, mask="float2")),
    ("mask_float_3d_gqa", dict(E=16, H=4, kv_heads=2), dict(Lq=5, Lk=8, mask="float3")),
    ("kpm_and_mask", dict(E=16, H=4), dict(Lq=5, Lk=8, kpm="bool", mask="bool3")),
    ("kpm_float_and_mask", dict(E=16, H=4), dict(Lq=5, Lk=8, kpm="float", mask="bool2")),
    ("kv_lens", dict(E=16, H=2, causal=True), dict(Lq=4, Lk=9, kv_lens=True)),
    ("seq_first", dict(E=16, H=4, batch_first=False), dict(Lq=5, Lk=7)),
    ("unbatched", dict(E=16, H=4), dict(B=0, Lq=5, Lk=7, mask="bool3")),
    ("threads2", dict(E=32, H=4, threads=2), dict(B=3, Lq=17, Lk=33)),
]


def build_call(rng, layer, *, B=2, Lq=5, Lk=None, self_attn=False, kpm=None, mask=None,
               kv_lens=False):
    """Inputs in the layer's layout, the call's kwargs, and the reference's batch-first view."""
    unbatched = B == 0
    Bn = 1 if unbatched else B
    Lk = Lq if self_attn or Lk is None else Lk
    H = layer.num_heads
    q = rand(rng, Bn, Lq, layer.embed_dim)
    k = q if self_attn else rand(rng, Bn, Lk, layer.kdim)
    v = q if self_attn else rand(rng, Bn, Lk, layer.vdim)
    ref = {}
    kw = {}
    if kpm == "bool":
        ignore = rng.random((Bn, Lk)) < 0.3
        ignore[:, 0] = False
        kw["key_padding_mask"] = ignore
        ref["key_visible"] = ~ignore
    elif kpm == "float":
        f = rand(rng, Bn, Lk)
        f[:, -1] = -np.inf
        kw["key_padding_mask"] = f
        ref["bias"] = f[:, None, None, :]
    if mask is not None:
        shape = (Lq, Lk) if mask.endswith("2") else (Bn * H, Lq, Lk)
        full = (lambda m: np.broadcast_to(m, (Bn, H, Lq, Lk)) if m.ndim == 2
                else m.reshape(Bn, H, Lq, Lk))
        if mask.startswith("bool"):
            banned = rng.random(shape) < 0.3
            banned[..., 0] = False
            kw["attn_mask"] = banned
            ref["mask"] = full(~banned)
        else:
            f = rand(rng, *shape)
            f[..., 1] = -np.inf
            kw["attn_mask"] = f
            ref["bias"] = full(f) + ref.get("bias", 0.0)
    if kv_lens:
        lens = rng.integers(1, Lk + 1, Bn)
        kw["kv_lens"] = lens
        ref["kv_lens"] = lens
    if unbatched:
        kw = {n: (a[0] if n in ("key_padding_mask",) else a) for n, a in kw.items()}
        args = (q[0], k[0], v[0])
    elif not layer.batch_first:
        args = tuple(np.ascontiguousarray(x.swapaxes(0, 1)) for x in (q, k, v))
        if self_attn:
            args = (args[0], args[0], args[0])
    else:
        args = (q, k, v)
    return args, kw, (q, k, v), ref


def to_batch_first(layer, a, unbatched):
    a = np.asarray(a)
    if unbatched:
        return a[np.newaxis]
    return a if layer.batch_first else a.swapaxes(0, 1)


class TestAgainstReference(Case):
    def check_config(self, lkw, ckw, seed, need="mean", dropout=0.0):
        rng = np.random.default_rng(seed)
        lkw = dict(lkw)
        E, H = lkw.pop("E"), lkw.pop("H")
        layer = make_layer(rng, E, H, dropout=dropout, **lkw)
        args, kw, (q, k, v), ref = build_call(rng, layer, **ckw)
        unbatched = ckw.get("B") == 0
        Lq = q.shape[1]
        seed_d, off_d = 1234 + seed, 7
        res_out, res_w = layer(*args, **kw, need_weights=need != "none",
                               average_attn_weights=need == "mean", keep_for_backward=True,
                               dropout_seed=seed_d, dropout_offset=off_d)
        keep = None
        if dropout:
            B, Lk = q.shape[0], k.shape[1]
            keep = np.stack([np.stack([attn.dropout_mask(dropout, seed_d, off_d, H, b, h, Lq,
                                                         Lk) for h in range(H)])
                             for b in range(B)])
        dout = rand(rng, *q.shape)
        r = reference(params_of(layer), q, k, v, heads=H, kv_heads=layer.kv_heads,
                      causal=layer.causal, dropout=dropout, keep=keep, dout=dout, **ref)
        self.assert_close(to_batch_first(layer, res_out, unbatched), r["out"], r["tol_out"],
                          "out")
        if need == "none":
            self.assertIsNone(res_w)
        else:
            w = np.asarray(res_w)[np.newaxis] if unbatched else res_w
            name = "mean" if need == "mean" else "weights"
            self.assert_close(w, r[name], r["tol_" + name], name)
        g = layer.backward(dout[0] if unbatched else dout if layer.batch_first
                           else dout.swapaxes(0, 1))
        self.check_grads(layer, g, r, unbatched, shared=ckw.get("self_attn", False))
        return layer, args, kw, dout, r

    def check_grads(self, layer, g, r, unbatched, shared=False):
        want_keys = {"query", "key", "value"} | set(layer.state_dict())
        self.assertEqual(set(g), want_keys)
        for key, attr in layer._STATE:
            if key in g:
                self.assert_close(g[key], r["d_" + attr], r["tol_d_" + attr], "d_" + attr)
        if shared:
            self.assertIs(g["key"], g["query"])
            self.assertIs(g["value"], g["query"])
            total = r["d_query"] + r["d_key"] + r["d_value"]
            tol = r["tol_d_query"] + r["tol_d_key"] + r["tol_d_value"]
            self.assert_close(to_batch_first(layer, g["query"], unbatched), total, tol,
                              "d_input (sum)")
        else:
            for n in ("query", "key", "value"):
                self.assert_close(to_batch_first(layer, g[n], unbatched), r["d_" + n],
                                  r["tol_d_" + n], "d_" + n)

    def test_configurations(self):
        for seed, (name, lkw, ckw) in enumerate(CONFIGS):
            for need in ("mean", "per_head", "none"):
                with self.subTest(config=name, weights=need):
                    self.check_config(lkw, ckw, 100 * seed + len(need), need)

    def test_dropout(self):
        for seed, (lkw, ckw) in enumerate([(dict(E=16, H=4), dict(self_attn=True, Lq=9)),
                                           (dict(E=12, H=3, kv_heads=1, kdim=5),
                                            dict(Lq=6, Lk=11, mask="bool3", kpm="bool"))]):
            with self.subTest(seed=seed):
                layer, args, kw, dout, r = self.check_config(lkw, ckw, 900 + seed, "per_head",
                                                             dropout=0.25)
                # some weights were dropped; eval mode drops none
                self.assertTrue((layer(*args, **kw, average_attn_weights=False)[1] == 0).any())
                layer.eval()
                w = layer(*args, **kw, average_attn_weights=False)[1]
                q = to_batch_first(layer, args[0], False)
                k = to_batch_first(layer, args[1], False)
                v = to_batch_first(layer, args[2], False)
                r0 = reference(params_of(layer), q, k, v, heads=layer.num_heads,
                               kv_heads=layer.kv_heads,
                               key_visible=~kw["key_padding_mask"] if "key_padding_mask" in kw
                               else None,
                               mask=(~kw["attn_mask"]).reshape(w.shape) if "attn_mask" in kw
                               else None)
                self.assert_close(w, r0["weights"], r0["tol_weights"], "eval weights")

    def test_masked_rows_nan(self):
        rng = np.random.default_rng(5)
        layer = make_layer(rng, 8, 2, masked_rows="nan", batch_first=True)
        q, k, v = rand(rng, 2, 4, 8), rand(rng, 2, 5, 8), rand(rng, 2, 5, 8)
        banned = np.zeros((4, 5), bool)
        banned[2] = True  # query 2 sees no key
        out, w = layer(q, k, v, attn_mask=banned, average_attn_weights=False)
        r = reference(params_of(layer), q, k, v, heads=2, mask=~banned, masked_rows="nan")
        self.assert_close(out, r["out"], r["tol_out"], "out")
        self.assert_close(w, r["weights"], r["tol_weights"], "weights")
        layer2 = attn.MultiheadAttention(8, 2, batch_first=True)
        layer2.load_state_dict(layer.state_dict())
        out0, _ = layer2(q, k, v, attn_mask=banned)
        np.testing.assert_array_equal(out0[:, 2], np.broadcast_to(layer.out_proj_bias, (2, 8)))

    def test_accumulate_and_subsets(self):
        rng = np.random.default_rng(8)
        layer = make_layer(rng, 16, 4, kdim=6, vdim=9, batch_first=False)
        q, k, v = rand(rng, 5, 2, 16), rand(rng, 7, 2, 6), rand(rng, 7, 2, 9)
        layer(q, k, v, keep_for_backward=True)
        dout = rand(rng, 5, 2, 16)
        full = layer.backward(dout)
        # add mode: into caller arrays holding a start value (the seq-first input gradients
        # go through a temporary, the parameters' are written in place)
        start = {n: rand(rng, *a.shape) for n, a in full.items()}
        buf = {n: a.copy() for n, a in start.items()}
        got = layer.backward(dout, grads=buf, accumulate=True)
        for n in full:
            self.assertIs(got[n], buf[n])
            np.testing.assert_allclose(got[n], start[n] + full[n], rtol=1e-5, atol=1e-5)
        # set mode into caller arrays: overwritten
        buf2 = {n: np.full(a.shape, 7.0, np.float32) for n, a in full.items()}
        got = layer.backward(dout, grads=buf2)
        for n in full:
            self.assertIs(got[n], buf2[n])
            np.testing.assert_array_equal(got[n], full[n])
        # subsets: only what is asked for, and the same values (bitwise: same products)
        got = layer.backward(dout, inputs=("key",), params=("out_proj.weight",))
        self.assertEqual(set(got), {"key", "out_proj.weight"})
        np.testing.assert_array_equal(got["key"], full["key"])
        np.testing.assert_array_equal(got["out_proj.weight"], full["out_proj.weight"])
        self.assertEqual(layer.backward(dout, inputs=False, params=False), {})

    def test_self_attention_parts_when_asked_separately(self):
        rng = np.random.default_rng(9)
        layer = make_layer(rng, 8, 2, batch_first=True)
        x = rand(rng, 2, 5, 8)
        layer(x, x, x, keep_for_backward=True)
        dout = rand(rng, 2, 5, 8)
        only_key = layer.backward(dout, inputs=("key",), params=False)["key"]
        r = reference(params_of(layer), x, x, x, heads=2, dout=dout)
        self.assert_close(only_key, r["d_key"], r["tol_d_key"], "d_key alone")

    def test_zero_copy_and_threads_bitwise(self):
        rng = np.random.default_rng(10)
        x = rand(rng, 2, 6, 16)
        self.assertIs(attn._dense(x, "x"), x)
        self.assertIsNot(attn._dense(x[:, ::2], "x"), x)
        self.assertIsNot(attn._dense(x.astype(np.float64), "x"), x)
        outs = []
        for threads in (1, 2, 3):
            layer = attn.MultiheadAttention(16, 4, batch_first=True, threads=threads, seed=3)
            out, w = layer(x, keep_for_backward=True)
            outs.append((out, w, layer.backward(x)))
        for out, w, g in outs[1:]:
            np.testing.assert_array_equal(out, outs[0][0])
            np.testing.assert_array_equal(w, outs[0][1])
            for n in g:
                np.testing.assert_array_equal(g[n], outs[0][2][n])

    def test_gil_is_released_during_forward_and_backward(self):
        """With a switch interval of 1000 s the interpreter never takes the GIL from a thread
        that holds it: another thread can run only if the layer's calls release it."""
        rng = np.random.default_rng(11)
        x = rand(rng, 2, 256, 64)
        layer = attn.MultiheadAttention(64, 4, batch_first=True, threads=1)
        for call in (lambda: layer(x, keep_for_backward=True),
                     lambda: layer.backward(x, inputs=False)):
            layer(x, keep_for_backward=True)
            self.assertTrue(other_thread_ran(call, 20),
                            "no other thread ran during 20 calls: the GIL was held")

    def test_state_dict_round_trip(self):
        a = attn.MultiheadAttention(12, 3, kdim=5, vdim=7, seed=1)
        b = attn.MultiheadAttention(12, 3, kdim=5, vdim=7, seed=2)
        self.assertEqual(list(a.state_dict()), ["q_proj_weight", "k_proj_weight",
                                                "v_proj_weight", "in_proj_bias",
                                                "out_proj.weight", "out_proj.bias"])
        b.load_state_dict({n: np.asarray(p, np.float64) for n, p in a.state_dict().items()})
        for n, p in a.state_dict().items():
            np.testing.assert_array_equal(b.state_dict()[n], p)
        c = attn.MultiheadAttention(8, 2, bias=False, kv_heads=1)
        self.assertEqual({n: p.shape for n, p in c.state_dict().items()},
                         {"in_proj_weight": (16, 8), "out_proj.weight": (8, 8)})


# ---- PyTorch --------------------------------------------------------------------------------


@unittest.skipIf(torch is None, "PyTorch is not installed (Debian: python3-torch)")
class TestAgainstPyTorch(Case):
    CASES = [
        dict(E=16, H=4, self_attn=True),
        dict(E=16, H=2, Lk=9),
        dict(E=12, H=3, kdim=7, vdim=10, Lk=6),
        dict(E=8, H=2, bias=False, Lk=5),
        dict(E=16, H=4, Lk=8, kpm=True),
        dict(E=16, H=4, Lk=8, kpm="float"),
        dict(E=16, H=4, Lk=8, mask="bool2"),
        dict(E=16, H=4, Lk=8, mask="bool3", kpm=True),
        dict(E=16, H=4, Lk=8, mask="float2"),
        dict(E=16, H=4, Lk=8, mask="float3"),
        dict(E=16, H=4, Lk=8, batch_first=False),
        dict(E=16, H=4, Lk=8, unbatched=True, mask="bool2"),
        dict(E=16, H=4, Lk=8, masked_rows="nan", mask="bool2", empty_row=True),
    ]

    def compare(self, got, want, what):
        want = want.detach().numpy()
        got = np.asarray(got, np.float64)
        self.assertEqual(got.shape, want.shape, what)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), f"{what}: NaN positions")
        fin = ~np.isnan(want)
        err = np.abs(got[fin] - want[fin])
        scale = max(1.0, float(np.abs(want[fin]).max()) if fin.any() else 1.0)
        self.assertLess(float(err.max()) if err.size else 0.0, 1e-4 * scale, what)
        TORCH["arrays"] += 1
        if err.size:
            TORCH["err"] = max(TORCH["err"], float(err.max()) / scale)

    def test_layer_against_torch(self):
        for n, case in enumerate(self.CASES):
            with self.subTest(case=case):
                self.run_case(n, dict(case))

    def run_case(self, n, c):
        rng = np.random.default_rng(300 + n)
        torch.manual_seed(300 + n)
        E, H = c.pop("E"), c.pop("H")
        bf = c.pop("batch_first", True)
        unb = c.pop("unbatched", False)
        B, Lq = (1 if unb else 2), 6
        Lk = Lq if c.get("self_attn") else c.pop("Lk", Lq)
        t = torch.nn.MultiheadAttention(E, H, bias=c.get("bias", True), kdim=c.get("kdim"),
                                        vdim=c.get("vdim"), batch_first=bf).double()
        with torch.no_grad():  # nonzero biases
            for name, p in t.named_parameters():
                if "bias" in name:
                    p.copy_(torch.randn(p.shape, dtype=torch.float64) * 0.5)
        layer = attn.MultiheadAttention(E, H, bias=c.get("bias", True), kdim=c.get("kdim"),
                                        vdim=c.get("vdim"), batch_first=bf,
                                        masked_rows=c.get("masked_rows", "zero"))
        layer.load_state_dict(t.state_dict())  # as it is: float64 torch tensors
        kd, vd = c.get("kdim") or E, c.get("vdim") or E
        q = rand(rng, B, Lq, E)
        k = q if c.get("self_attn") else rand(rng, B, Lk, kd)
        v = q if c.get("self_attn") else rand(rng, B, Lk, vd)
        lay = (lambda x: x[0]) if unb else (lambda x: x) if bf else (lambda x: np.ascontiguousarray(
            x.swapaxes(0, 1)))
        qa, ka, va = lay(q), lay(k), lay(v)
        if c.get("self_attn"):
            ka = va = qa
        kw = {}
        if c.get("kpm") is True:
            kpm = rng.random((B, Lk)) < 0.3
            kpm[:, 0] = False
            kw["key_padding_mask"] = kpm[0] if unb else kpm
        elif c.get("kpm") == "float":
            kpm = rand(rng, B, Lk)
            kw["key_padding_mask"] = kpm
        mask = c.get("mask")
        if mask:
            shape = (Lq, Lk) if mask.endswith("2") else (B * H, Lq, Lk)
            if mask.startswith("bool"):
                m = rng.random(shape) < 0.3
                m[..., 0] = False
                if c.get("empty_row"):
                    m[2] = True
            else:
                m = rand(rng, *shape)
            kw["attn_mask"] = m
        tq = torch.tensor(qa.astype(np.float64), requires_grad=True)
        if c.get("self_attn"):
            tk = tv = tq
        else:
            tk = torch.tensor(ka.astype(np.float64), requires_grad=True)
            tv = torch.tensor(va.astype(np.float64), requires_grad=True)
        tkw = {n: torch.from_numpy(np.asarray(a, np.float64) if a.dtype.kind == "f" else a)
               for n, a in kw.items()}
        for avg in (True, False):
            out, w = layer(qa, ka, va, **kw, average_attn_weights=avg, keep_for_backward=True)
            to, tw = t(tq, tk, tv, **tkw, average_attn_weights=avg)
            self.compare(out, to, "out")
            self.compare(w, tw, "weights")
        dout = rand(rng, *out.shape)
        t.zero_grad()
        to.backward(torch.from_numpy(dout.astype(np.float64)))
        g = layer.backward(dout)
        tparams = dict(t.named_parameters())
        if c.get("empty_row"):
            # PyTorch's NaN row spreads through the softmax backward into every gradient;
            # libattn's passes none into the attention (docs/python.md): only the output
            # projection's gradients are comparable
            self.compare(g["out_proj.bias"], tparams["out_proj.bias"].grad, "d_out_proj.bias")
            self.compare(g["out_proj.weight"], tparams["out_proj.weight"].grad,
                         "d_out_proj.weight")
            return
        for name in layer.state_dict():
            tg = tparams[name].grad
            self.compare(g[name], tg if tg is not None else torch.zeros(tparams[name].shape),
                         "d_" + name)
        self.compare(g["query"], tq.grad, "d_query")
        if not c.get("self_attn"):
            self.compare(g["key"], tk.grad, "d_key")
            self.compare(g["value"], tv.grad, "d_value")

    def test_torch_tensors_in_and_state_dict_with_grad(self):
        t = torch.nn.MultiheadAttention(8, 2, batch_first=True)
        layer = attn.MultiheadAttention(8, 2, batch_first=True)
        sd = {n: p for n, p in t.named_parameters()}  # requiring grad
        sd["out_proj.weight"] = t.out_proj.weight
        layer.load_state_dict(sd)
        x = torch.randn(2, 5, 8)
        out, _ = layer(x)  # CPU float32 tensors are read in place
        self.compare(out, t(x, x, x)[0].double(), "out from torch tensors")


# ---- errors -------------------------------------------------------------------------------


class TestErrors(unittest.TestCase):
    def raises(self, exc, text, fn, *a, **kw):
        with self.assertRaises(exc) as cm:
            fn(*a, **kw)
        self.assertIn(text, str(cm.exception))
        return cm.exception

    def test_constructor(self):
        e = self.raises(ValueError, "does not divide embed_dim", attn.MultiheadAttention, 10, 3)
        self.assertIn("ATTN_ERR_HEADS", str(e))
        self.assertIsInstance(e.status, int)
        self.raises(ValueError, "ATTN_ERR_HEADS", attn.MultiheadAttention, 12, 4, kv_heads=3)
        self.raises(ValueError, "ATTN_ERR_ZERO_SIZE", attn.MultiheadAttention, 0, 1)
        self.raises(ValueError, "dropout", attn.MultiheadAttention, 8, 2, dropout=1.0)
        self.raises(ValueError, "dropout", attn.MultiheadAttention, 8, 2, dropout="x")
        self.raises(ValueError, "ATTN_ERR_LIMIT", attn.MultiheadAttention, 8, 2,
                    kdim=2**21)
        self.raises(ValueError, "add_bias_kv", attn.MultiheadAttention, 8, 2, add_bias_kv=True)
        self.raises(ValueError, "masked_rows", attn.MultiheadAttention, 8, 2, masked_rows="x")
        self.raises(ValueError, "num_heads", attn.MultiheadAttention, 8, -1)

    def test_forward_inputs(self):
        rng = np.random.default_rng(1)
        layer = attn.MultiheadAttention(8, 2, batch_first=True, kdim=5)
        q, k, v = rand(rng, 2, 4, 8), rand(rng, 2, 6, 5), rand(rng, 2, 6, 8)
        before = layer.state_dict()["q_proj_weight"].copy()
        self.raises(ValueError, "floating-point", layer, q.astype(np.int32), k, v)
        self.raises(ValueError, "key: 8 features", layer, q, v, v)
        self.raises(ValueError, "batch sizes or key lengths", layer, q, k, v[:1])
        self.raises(ValueError, "batch sizes or key lengths", layer, q, k, v[:, :5])
        self.raises(ValueError, "expected 3-D", layer, q, k[0], v)
        self.raises(ValueError, "expected [L, B, E]", layer, q[0, 0], k, v)
        self.raises(ValueError, "attn_mask: shape", layer, q, k, v,
                    attn_mask=np.zeros((4, 5), bool))
        self.raises(ValueError, "attn_mask: dtype", layer, q, k, v,
                    attn_mask=np.zeros((4, 6), np.int64))
        self.raises(ValueError, "key_padding_mask: shape", layer, q, k, v,
                    key_padding_mask=np.zeros((2, 5), bool))
        self.raises(ValueError, "key_padding_mask: dtype", layer, q, k, v,
                    key_padding_mask=np.zeros((2, 6), np.int32))
        self.raises(ValueError, "kv_lens[1] = 7", layer, q, k, v, kv_lens=[1, 7])
        self.raises(ValueError, "kv_lens: expected 2", layer, q, k, v, kv_lens=[1.0, 2.0])
        self.raises(ValueError, "is_causal=True without attn_mask", layer, q, k, v,
                    is_causal=True)
        self.raises(ValueError, "dropout_seed", layer, q, k, v, dropout_seed=-1)
        self.raises(ValueError, "dropout_offset", layer, q, k, v, dropout_offset=2**32)
        layer.q_proj_weight = np.zeros((8, 7), np.float32)  # a wrong parameter shape
        self.raises(ValueError, "q_proj_weight: shape does not match (8, 8)", layer, q, k, v)
        layer.q_proj_weight = before
        layer.out_proj_bias = None  # a missing parameter: libattn's status
        self.raises(ValueError, "ATTN_ERR_NULL_POINTER", layer, q, k, v)

    def test_backward_misuse(self):
        rng = np.random.default_rng(2)
        layer = attn.MultiheadAttention(8, 2, batch_first=True)
        q = rand(rng, 2, 4, 8)
        self.raises(ValueError, "no forward call", layer.backward, q)
        layer(q)  # without keep_for_backward
        self.raises(ValueError, "no forward call", layer.backward, q)
        layer(q, keep_for_backward=True)
        self.raises(ValueError, "dout: shape", layer.backward, q[:, :3])
        self.raises(ValueError, "inputs: 'x'", layer.backward, q, inputs=("x",))
        self.raises(ValueError, "params: 'out_proj_weight'", layer.backward, q,
                    params=("out_proj_weight",))
        self.raises(ValueError, "accumulate=True: no array", layer.backward, q, accumulate=True)
        bad = {"out_proj.weight": np.zeros((8, 8), np.float64)}
        self.raises(ValueError, "grads['out_proj.weight']", layer.backward, q, grads=bad)
        bad = {"out_proj.weight": np.zeros((8, 8), np.float32)[:, ::1].T}
        self.raises(ValueError, "grads['out_proj.weight']", layer.backward, q, grads=bad)
        self.raises(ValueError, "not a requested gradient", layer.backward, q, params=False,
                    grads={"out_proj.weight": np.zeros((8, 8), np.float32)})
        g = {"query": np.zeros((2, 4, 8), np.float32), "key": np.zeros((2, 4, 8), np.float32)}
        self.raises(ValueError, "grads['key'] must be grads['query']", layer.backward, q,
                    params=False, grads=g)
        # nothing written on failure
        g = {"out_proj.weight": np.full((8, 8), 3.0, np.float32)}
        self.raises(ValueError, "dout: shape", layer.backward, q[:, :3], grads=g)
        self.assertTrue((g["out_proj.weight"] == 3.0).all())

    def test_core_statuses(self):
        """The C core's own checks and libattn's statuses on direct calls."""
        core = _attn.MHA(8, 2, 0, 0, 0, True, False, 0, 0.0, 1)
        rng = np.random.default_rng(3)
        x = rand(rng, 1, 3, 8)
        call = {"batch": 1, "q_len": 3, "kv_len": 3, "query": x, "key": x, "value": x,
                "in_proj_weight": rand(rng, 24, 8), "in_proj_bias": rand(rng, 24),
                "out_proj_weight": rand(rng, 8, 8), "out_proj_bias": rand(rng, 8),
                "out": np.empty((1, 3, 8), np.float32),
                "activations": np.empty(core.activation_size(1, 3, 3), np.uint8)}
        core.forward(call)
        self.raises(ValueError, "activations: ", core.forward,
                    dict(call, activations=np.empty(16, np.uint8)))
        self.raises(ValueError, "ATTN_ERR_NULL_POINTER", core.forward,
                    dict(call, activations=None))
        e = self.raises(ValueError, "out overlaps", core.forward, dict(call, out=x))
        self.assertIn("ATTN_ERR_ALIAS", str(e))
        self.raises(ValueError, "must be C-contiguous", core.forward,
                    dict(call, query=np.ones((1, 6, 8), np.float32)[:, ::2]))
        self.raises(ValueError, "the call has no batch", core.forward, {})
        ro = np.empty((1, 3, 8), np.float32)
        ro.setflags(write=False)
        self.raises(ValueError, "not a writable buffer", core.forward, dict(call, out=ro))
        self.raises(ValueError, "ATTN_ERR_NULL_POINTER", core.backward, dict(call))  # no saved
        self.raises(ValueError, "ATTN_ERR_BAD_OPTION", core.backward,
                    dict(call, saved=np.empty(core.saved_size(1, 3, 3), np.uint8),
                         dout=x.copy(), mode=2))
        core.close()
        self.raises(ValueError, "closed", core.forward, call)

    def test_load_state_dict(self):
        layer = attn.MultiheadAttention(8, 2, seed=0)
        before = {n: p.copy() for n, p in layer.state_dict().items()}
        sd = {n: np.zeros_like(p) for n, p in before.items()}
        self.raises(ValueError, "missing keys ['out_proj.bias']", layer.load_state_dict,
                    {n: p for n, p in sd.items() if n != "out_proj.bias"})
        self.raises(ValueError, "unexpected keys ['bias_k']", layer.load_state_dict,
                    dict(sd, bias_k=np.zeros(8)))
        bad = dict(sd)
        bad["out_proj.bias"] = np.zeros(9)
        self.raises(ValueError, "out_proj.bias: shape (9,)", layer.load_state_dict, bad)
        bad["out_proj.bias"] = np.zeros(8, np.int32)
        self.raises(ValueError, "out_proj.bias: expected a floating", layer.load_state_dict, bad)
        for n, p in layer.state_dict().items():  # nothing changed
            np.testing.assert_array_equal(p, before[n])

    def test_closed(self):
        layer = attn.MultiheadAttention(8, 2)
        layer.close()
        self.raises(ValueError, "closed", layer, np.zeros((3, 1, 8), np.float32))
        with attn.MultiheadAttention(8, 2, dropout=0.5) as layer:
            layer.eval()
        self.raises(ValueError, "closed", layer, np.zeros((3, 1, 8), np.float32))

    def test_no_references_kept(self):
        rng = np.random.default_rng(4)
        layer = attn.MultiheadAttention(8, 2, batch_first=True)
        q, k = rand(rng, 2, 4, 8), rand(rng, 2, 5, 8)
        counts = [sys.getrefcount(a) for a in (q, k)]
        for _ in range(3):
            layer(q, k, k)
            try:
                layer(q, k, k, attn_mask=np.zeros((3, 3), bool))
            except ValueError:
                pass
            try:
                layer(q, k, k, kv_lens=[9, 9])
            except ValueError:
                pass
        self.assertEqual([sys.getrefcount(a) for a in (q, k)], counts)


def main():
    suite = unittest.defaultTestLoader.loadTestsFromModule(sys.modules[__name__])
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    print(f"attn {attn.__version__}, numpy {np.__version__}, "
          f"torch {torch.__version__ if torch else 'absent'}")
    print(f"python MultiheadAttention tests: {result.testsRun} run, {len(result.failures)} "
          f"failed, {len(result.errors)} errors, {len(result.skipped)} skipped; "
          f"{WORST['arrays']} arrays compared with float64, largest error / tolerance "
          f"{WORST['ratio']:.3g}; {TORCH['arrays']} arrays compared with PyTorch, largest "
          f"error {TORCH['err']:.3g} (relative to max(1, |largest value|))")
    sys.exit(0 if result.wasSuccessful() else 1)


if __name__ == "__main__":
    main()
