"""Tests of attn.KVCache and Context.forward_cache (run by ctest as `python_kv_cache`; by hand:
PYTHONPATH=<build>/python /usr/bin/python3 python/tests/test_kv_cache.py).

A model of the cache written here keeps every sequence's tokens in float64 after rounding them
as the cache must (float16 by numpy, bfloat16 by round-to-nearest-even on the bits), and
follows append, truncate, fork, reorder and reset. Every attention result is compared with
test_attn's float64 reference over the model's tokens, per sequence, with its per-element
tolerance; and with PyTorch in float64 when `import torch` works.
"""

import sys
import threading
import unittest

import numpy as np

import attn
from attn import _attn

import test_attn  # the float64 reference, the comparison and the GIL probe are shared
from test_attn import Case, other_thread_ran, rand, reference

try:
    import torch
except ImportError:  # python3-torch is optional
    torch = None

WORST = test_attn.WORST  # largest error / tolerance and arrays compared with float64
TORCH = {"err": 0.0, "arrays": 0}  # largest absolute error against PyTorch, arrays compared

CAPACITY = 20  # ATTN_ERR_CAPACITY
LIMIT = 12     # ATTN_ERR_LIMIT


# ---- the model of the cache -------------------------------------------------------------------


def rounded(x, dtype):
    """float32 values as the cache stores them, widened exactly to float64."""
    x = np.asarray(x, np.float32)
    if dtype == "f32":
        return x.astype(np.float64)
    if dtype == "f16":
        return x.astype(np.float16).astype(np.float64)  # numpy rounds to nearest even
    bits = x.view(np.uint32).astype(np.uint64)
    r = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16      # round to nearest, ties to even
    r = np.where(np.isnan(x), (bits >> 16) | 0x40, r)   # NaN stays NaN
    return ((r & 0xFFFF).astype(np.uint32) << 16).view(np.float32).astype(np.float64)


class Model:
    """The cache's contents in float64: per sequence K [Hkv, L, Dk] and V [Hkv, L, Dv]."""

    def __init__(self, cache):
        self.c = cache
        self.k = [np.zeros((cache.kv_heads, 0, cache.qk_dim)) for _ in range(cache.max_seqs)]
        self.v = [np.zeros((cache.kv_heads, 0, cache.v_dim)) for _ in range(cache.max_seqs)]

    def append(self, seq, k, v):
        """k [n, Hkv, Dk], v [n, Hkv, Dv] float32: into the cache and the model."""
        self.c.append(seq, k, v)
        dt = self.c.dtype
        self.k[seq] = np.concatenate([self.k[seq], rounded(k, dt).transpose(1, 0, 2)], 1)
        self.v[seq] = np.concatenate([self.v[seq], rounded(v, dt).transpose(1, 0, 2)], 1)

    def truncate(self, seq, n):
        self.c.truncate(seq, n)
        self.k[seq], self.v[seq] = self.k[seq][:, :n], self.v[seq][:, :n]

    def fork(self, src, dst):
        self.c.fork(src, dst)
        self.k[dst], self.v[dst] = self.k[src], self.v[src]

    def reorder(self, order):
        self.c.reorder(order)
        n = len(order)
        self.k[:n] = [self.k[i] for i in order]
        self.v[:n] = [self.v[i] for i in order]

    def lengths(self):
        return [k.shape[1] for k in self.k]

    def reference(self, q, seq_ids, *, Lk=None, q_offset=None, mask=None, bias=None,
                  **options):
        """test_attn.reference per batch entry over the model's tokens, padded to Lk keys (the
        padding hidden by kv_lens), q logical [B, Hq, Lq, Dk]. Returns the stacked dict."""
        B, Hq, Lq, _ = q.shape
        lens = [self.k[s].shape[1] for s in seq_ids]
        Lk = Lk or max(lens)
        parts = []
        for b, s in enumerate(seq_ids):
            L = lens[b]
            pad = ((0, 0), (0, Lk - L), (0, 0))
            k = np.pad(self.k[s], pad)[np.newaxis]
            v = np.pad(self.v[s], pad)[np.newaxis]
            m = None if mask is None else np.broadcast_to(mask, (B, Hq, Lq, Lk))[b:b + 1]
            bb = None if bias is None else np.broadcast_to(bias, (B, Hq, Lq, Lk))[b:b + 1]
            off = L - Lq if q_offset is None else q_offset
            parts.append(reference(q[b:b + 1], k, v, kv_lens=[L], q_offset=off, mask=m, bias=bb,
                                   **options))
        return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def tokens(rng, n, cache, amp=1.0):
    return (rand(rng, n, cache.kv_heads, cache.qk_dim, amp=amp),
            rand(rng, n, cache.kv_heads, cache.v_dim, amp=amp))


class CacheCase(Case):
    def check_call(self, ctx, model, q, seq_ids, *, layout="bhsd", ref_options=None, **kw):
        """ctx.forward_cache(q, ...) against the model's reference; q logical [B, Hq, Lq, D]."""
        ref_options = dict(ref_options or {})
        qa = q if layout == "bhsd" else np.ascontiguousarray(q.transpose(0, 2, 1, 3))
        res = ctx.forward_cache(qa, model.c, seq_ids, layout=layout, **kw)
        mask, bias = kw.get("attn_mask"), kw.get("bias")
        if mask is not None and np.asarray(mask).dtype.kind == "f":  # added to the scores
            bias = mask if bias is None else np.add(mask, bias, dtype=np.float64)
            mask = None
        ref = model.reference(q, list(np.atleast_1d(seq_ids)), Lk=kw.get("kv_len"),
                              q_offset=kw.get("q_offset"), mask=mask, bias=bias,
                              scale=ctx.scale, causal=ctx.causal, window=ctx.window,
                              masked_rows=ctx.masked_rows, **ref_options)
        self.check(res, ref, layout=layout, weights=kw.get("weights", "none"),
                   lse=kw.get("return_lse", False), entropy=kw.get("return_entropy", False))
        return res


# ---- results against the float64 reference ----------------------------------------------------


class TestAgainstReference(CacheCase):
    def test_prefill_verification_decode(self):
        """Three sequences of different lengths in each dtype and block size: a prefill in two
        chunks, a speculative verification of 3 tokens and decode steps, one call for all the
        sequences each time (in a shuffled order, one sequence twice), GQA 4/2 and MQA 3/1."""
        rng = np.random.default_rng(60)
        for dtype in ("f32", "f16", "bf16"):
            for block, (Hq, Hkv), Dk, Dv in ((7, (4, 2), 16, 8), (256, (3, 1), 32, 32),
                                             (1, (4, 2), 8, 12)):
                with self.subTest(dtype=dtype, block=block, heads=(Hq, Hkv)):
                    cache = attn.KVCache(Hkv, Dk, Dv, dtype=dtype, max_seqs=4, capacity=800,
                                         block_tokens=block)
                    m = Model(cache)
                    ctx = attn.Context(Hq, Hkv, Dk, Dv, causal=True, kv_dtype=dtype, threads=2)
                    # prefill: lengths 30, 12, 9, each in two appends, the queries of the
                    # second chunk (its last 6 tokens) attending over everything so far
                    for s, (a, b) in enumerate(((24, 6), (6, 6), (3, 6))):
                        m.append(s, *tokens(rng, a, cache))
                        m.append(s, *tokens(rng, b, cache))
                    ids = [1, 0, 2]
                    self.check_call(ctx, m, rand(rng, 3, Hq, 6, Dk), ids)
                    # verification: 3 drafted tokens per sequence, then the rejected ones
                    # rolled back (different numbers per sequence)
                    for s in range(3):
                        m.append(s, *tokens(rng, 3, cache))
                    self.check_call(ctx, m, rand(rng, 3, Hq, 3, Dk), [0, 1, 2],
                                    return_lse=True)
                    for s, keep in enumerate((1, 3, 0)):
                        m.truncate(s, m.lengths()[s] - 3 + keep)
                    self.assertEqual(cache.lengths(), m.lengths())
                    # decode: one token per sequence per step
                    for step in range(3):
                        for s in range(3):
                            m.append(s, *tokens(rng, 1, cache))
                        self.check_call(ctx, m, rand(rng, 4, Hq, 1, Dk), [2, 0, 1, 0],
                                        weights="per_head", return_entropy=True)
                    self.assertEqual(cache.lengths(), [34, 18, 12, 0])

    def test_every_option(self):
        """Masks and biases (full and broadcast), kv_len above the longest sequence, explicit
        q_offset, windows, head-mean weights, both layouts, 3-D queries, an empty sequence
        with both masked-row policies, a non-causal context and an explicit scale."""
        rng = np.random.default_rng(61)
        for dtype in ("f32", "f16", "bf16"):
            cache = attn.KVCache(2, 16, 16, dtype=dtype, max_seqs=3, capacity=200,
                                 block_tokens=8)
            m = Model(cache)
            m.append(0, *tokens(rng, 21, cache))
            m.append(1, *tokens(rng, 13, cache))
            Lq = 4
            q = rand(rng, 3, 4, Lq, 16)
            ids = [0, 1, 2]  # sequence 2 is empty: its rows see no key
            ctx = attn.Context(4, 2, 16, kv_dtype=dtype, window=(6, 1), scale=0.3)
            ctx_c = attn.Context(4, 2, 16, kv_dtype=dtype, causal=True, masked_rows="nan")
            mask = rng.random((3, 4, Lq, 25)) < 0.7
            bias = rand(rng, 1, 4, 1, 25)
            key_mask = rng.random(21) < 0.8
            for name, c, kw in (
                    ("plain", ctx, {}),
                    ("mask+bias kv_len", ctx, dict(attn_mask=mask, bias=bias, kv_len=25)),
                    ("broadcast mask", ctx_c, dict(attn_mask=key_mask)),
                    ("float mask", ctx_c, dict(attn_mask=rand(rng, Lq, 21))),
                    ("q_offset", ctx_c, dict(q_offset=5, weights="head_mean")),
                    ("outputs", ctx, dict(weights="per_head", return_lse=True,
                                          return_entropy=True)),
                    ("nan rows", ctx_c, dict(weights="per_head", return_lse=True,
                                             return_entropy=True, kv_len=22)),
                    ("bshd", ctx_c, dict(layout="bshd", return_lse=True))):
                with self.subTest(dtype=dtype, case=name):
                    res = self.check_call(c, m, q, ids, **kw)
                    out = res if isinstance(res, np.ndarray) else res.out
                    row = out[2] if kw.get("layout") != "bshd" else out[2].transpose(1, 0, 2)
                    if c.masked_rows == "nan":
                        self.assertTrue(np.isnan(row).all(), "the empty sequence's rows")
                    else:
                        self.assertTrue((row == 0).all(), "the empty sequence's rows")
            # 3-D queries: one sequence, seq_ids an int or a list of one
            q3 = rand(rng, 4, 2, 16)
            for sid in (1, [1], np.array([1], np.int64)):
                res = ctx_c.forward_cache(q3, cache, sid, return_lse=True)
                ref = m.reference(q3[np.newaxis], [1], causal=True, masked_rows="nan")
                self.assert_close(res.out, ref["out"][0], ref["tol_out"][0], "3-D out")
                self.assert_close(res.lse, ref["lse"][0], ref["tol_lse"][0], "3-D lse")

    def test_rounding_of_the_stored_tokens(self):
        """Values whose float16 and bfloat16 roundings differ from float32 (and a tie rounded
        to even) give the result over the rounded values, not over the float32 ones."""
        x = np.array([1 + 2**-11, 1 + 3 * 2**-11, 1 + 2**-8 + 2**-16, 1 + 2**-7 + 2**-8,
                      65519.0, 3.0e-8, -1 - 2**-9, 0.1], np.float32)
        expect = {"f16": [1.0, 1 + 2**-9, 1 + 2**-8 + 2**-16, 1 + 2**-7 + 2**-8, 65504.0,
                          2**-24 * 1.0, -1 - 2**-9, 0.0999755859375],
                  "bf16": [1.0, 1.0, 1 + 2**-7, 1 + 2**-6, 65536.0, 3.0e-8, -1.0,
                           0.10009765625]}
        for dtype, want in expect.items():
            got = rounded(x, dtype)
            # the model's rounding, checked by hand on these values
            np.testing.assert_allclose(got[[0, 1, 3, 4, 6]], np.array(want)[[0, 1, 3, 4, 6]],
                                       rtol=0, atol=0, err_msg=dtype)
        # a value read back through attention: one key, so out = that key's value exactly
        for dtype in ("f16", "bf16"):
            cache = attn.KVCache(1, 1, 8, dtype=dtype, max_seqs=1, capacity=4)
            cache.append(0, np.ones((1, 1, 1), np.float32), x.reshape(1, 1, 8))
            ctx = attn.Context(1, 1, 1, 8, kv_dtype=dtype)
            out = ctx.forward_cache(np.ones((1, 1, 1, 1), np.float32), cache, [0])
            np.testing.assert_array_equal(out.reshape(8), rounded(x, dtype).astype(np.float32),
                                          err_msg=dtype)

    def test_appends_in_every_accepted_form(self):
        """[n, H, D] (bshd), [H, n, D] (bhsd), 2-D single tokens, strided views of a packed
        buffer, float64 and float16 inputs: the same tokens give the same result."""
        rng = np.random.default_rng(62)
        packed = rand(rng, 10, 2, 3, 16)  # [n, k|v, Hkv, D]
        k, v = packed[:, 0], packed[:, 1]
        for dtype in ("f32", "f16", "bf16"):
            ctx = attn.Context(6, 3, 16, kv_dtype=dtype, causal=True)
            q = rand(rng, 1, 6, 2, 16)
            results = []
            for form in ("bshd", "bhsd", "tokens", "float64", "float16"):
                cache = attn.KVCache(3, 16, dtype=dtype, max_seqs=1, capacity=64,
                                     block_tokens=4)
                if form == "bshd":
                    cache.append(0, k, v)
                elif form == "bhsd":
                    cache.append(0, np.ascontiguousarray(k.transpose(1, 0, 2)),
                                 v.transpose(1, 0, 2), layout="bhsd")
                elif form == "tokens":
                    for t in range(10):
                        cache.append(0, k[t], v[t], layout="bhsd" if t % 2 else "bshd")
                elif form == "float64":
                    cache.append(0, k.astype(np.float64), v.astype(np.float64))
                else:
                    k16, v16 = k.astype(np.float16), v.astype(np.float16)
                    cache.append(0, k16, v16)
                self.assertEqual(cache.len(0), 10)
                results.append(ctx.forward_cache(q, cache, [0]))
                m = Model(cache)
                kk, vv = (k.astype(np.float16), v.astype(np.float16)) if form == "float16" \
                    else (k, v)
                m.k[0] = rounded(kk, dtype).transpose(1, 0, 2)
                m.v[0] = rounded(vv, dtype).transpose(1, 0, 2)
                ref = m.reference(q, [0], causal=True)
                with self.subTest(dtype=dtype, form=form):
                    self.check(results[-1], ref)
            for r in results[1:4]:
                np.testing.assert_array_equal(r, results[0])

    def test_strided_appends_are_read_in_place(self):
        """A float32 view of a packed buffer reaches the C core as the caller's memory."""
        rng = np.random.default_rng(63)
        packed = rand(rng, 5, 2, 2, 24)
        k, v = packed[:, 0, :, :8], packed[:, 1, :, 4:12]  # token, head and feature strides
        cache = attn.KVCache(2, 8, dtype="f16", max_seqs=1, capacity=16)
        seen = []
        real = cache._core

        class Spy:
            def append(self, seq, k, v):
                seen.append((k, v))
                return real.append(seq, k, v)

        cache._core = Spy()
        cache.append(0, k, v)
        cache._core = real
        self.assertTrue(np.shares_memory(seen[0][0], packed) and
                        np.shares_memory(seen[0][1], packed))
        m = Model(cache)
        m.k[0], m.v[0] = rounded(k, "f16").transpose(1, 0, 2), rounded(v, "f16").transpose(1, 0, 2)
        ctx = attn.Context(2, 2, 8, kv_dtype="f16")
        self.check_call(ctx, m, rand(rng, 1, 2, 3, 8), [0])


# ---- the cache's operations -----------------------------------------------------------------


class TestOperations(CacheCase):
    def test_fork_truncate_reorder_reset(self):
        """Lengths, free blocks and results after each operation, against the model; a fork's
        append copies only the shared partial block and leaves the source's tokens alone."""
        rng = np.random.default_rng(64)
        for dtype in ("f32", "bf16"):
            B = 4  # tokens per block
            cache = attn.KVCache(2, 8, 8, dtype=dtype, max_seqs=4, capacity=40, block_tokens=B)
            self.assertEqual(cache.free_blocks(), 10)
            m = Model(cache)
            ctx = attn.Context(2, 2, 8, kv_dtype=dtype, causal=True)
            q = rand(rng, 4, 2, 1, 8)
            m.append(0, *tokens(rng, 10, cache))              # 3 blocks, the last partial
            self.assertEqual(cache.free_blocks(), 7)
            m.fork(0, 1)                                      # shares all 3
            m.fork(0, 2)
            self.assertEqual(cache.free_blocks(), 7)
            self.assertEqual(cache.lengths(), [10, 10, 10, 0])
            self.check_call(ctx, m, q[:3], [0, 1, 2])
            m.append(1, *tokens(rng, 1, cache))               # copy on write: one block
            self.assertEqual(cache.free_blocks(), 6)
            m.append(1, *tokens(rng, 2, cache))               # 13 tokens: a fourth block
            self.assertEqual(cache.free_blocks(), 5)
            self.check_call(ctx, m, q[:3], [0, 1, 2])         # 0 and 2 unchanged
            m.truncate(1, 8)                                  # back to 2 whole shared blocks
            self.assertEqual(cache.free_blocks(), 7)
            m.truncate(2, 3)
            self.assertEqual(cache.free_blocks(), 7)          # 2 still shares block 0
            self.check_call(ctx, m, q[:3], [0, 1, 2], weights="per_head")
            m.append(2, *tokens(rng, 1, cache))               # partial shared block: copied
            self.assertEqual(cache.free_blocks(), 6)
            self.check_call(ctx, m, q[:3], [2, 1, 0])
            # beams: 0 <- 2, 1 <- 2, 2 <- 0; 3 untouched (empty)
            m.append(3, *tokens(rng, 5, cache))
            free_before = cache.free_blocks()
            m.reorder([2, 2, 0])
            self.assertEqual(cache.lengths(), m.lengths())
            self.assertEqual(cache.lengths(), [4, 4, 10, 5])
            # the old sequence 1 (8 tokens) was released, but its 2 blocks are the old 0's,
            # now sequence 2's: no block returns, and reorder never allocates
            self.assertEqual(cache.free_blocks(), free_before)
            self.check_call(ctx, m, q, [0, 1, 2, 3], return_lse=True)
            m.append(0, *tokens(rng, 1, cache))
            self.check_call(ctx, m, q, [0, 1, 2, 3])          # 1 unchanged by 0's append
            self.assertEqual(cache.lengths(), [5, 4, 10, 5])
            m.reorder([3])                                    # only sequence 0 replaced
            self.assertEqual(cache.lengths(), [5, 4, 10, 5])
            self.check_call(ctx, m, q, [0, 1, 2, 3])
            m.reorder([])                                     # no change
            self.assertEqual(cache.lengths(), [5, 4, 10, 5])
            cache.reset()
            self.assertEqual(cache.lengths(), [0, 0, 0, 0])
            self.assertEqual(cache.free_blocks(), 10)
            m.k = [x[:, :0] for x in m.k]
            m.v = [x[:, :0] for x in m.v]
            m.append(2, *tokens(rng, 3, cache))
            self.check_call(ctx, m, q[:1], [2])
            cache.fork(2, 2)                                  # src == dst: nothing
            self.assertEqual(cache.len(2), 3)

    def test_capacity_errors_leave_the_cache_unchanged(self):
        rng = np.random.default_rng(65)
        for dtype in ("f32", "f16"):
            cache = attn.KVCache(2, 8, dtype=dtype, max_seqs=2, capacity=12, block_tokens=4,
                                 max_len=10)
            m = Model(cache)
            ctx = attn.Context(4, 2, 8, kv_dtype=dtype, causal=True)
            m.append(0, *tokens(rng, 6, cache))                # 2 blocks
            m.fork(0, 1)
            q = rand(rng, 2, 4, 2, 8)
            before = ctx.forward_cache(q, cache, [0, 1], return_lse=True)
            state = (cache.lengths(), cache.free_blocks())
            self.assertEqual(state, ([6, 6], 1))
            k, v = tokens(rng, 3, cache)
            # 3 tokens into 1's shared partial block: a copy and one more block = 2 > 1 free
            with self.assertRaises(attn.CapacityError) as cm:
                cache.append(1, k, v)
            self.assertIsInstance(cm.exception, MemoryError)
            self.assertEqual(cm.exception.status, CAPACITY)
            self.assertRegex(str(cm.exception), r"^appending 3 tokens to sequence 1 needs 2 free "
                             r"blocks of 4 tokens; 1 are free \(ATTN_ERR_CAPACITY\)$")
            with self.assertRaises(MemoryError):              # caught as a MemoryError too
                cache.append(0, *tokens(rng, 4, cache))
            # beyond max_len: ValueError, also unchanged
            with self.assertRaisesRegex(ValueError, r"appending 5 tokens to sequence 0 of 6 "
                                        r"tokens exceeds max_len = 10 \(ATTN_ERR_LIMIT\)"):
                cache.append(0, *tokens(rng, 5, cache))
            self.assertEqual((cache.lengths(), cache.free_blocks()), state)
            after = ctx.forward_cache(q, cache, [0, 1], return_lse=True)
            np.testing.assert_array_equal(after.out, before.out)
            np.testing.assert_array_equal(after.lse, before.lse)
            self.check_call(ctx, m, q, [0, 1])
            # what fits still fits: 2 tokens into 0's partial block, shared with 1: one copy
            # and no new block
            m.append(0, *tokens(rng, 2, cache))
            self.assertEqual(cache.free_blocks(), 0)
            self.check_call(ctx, m, q, [0, 1])
            # 1's partial block is its own now: 3 tokens need 1 new block, none is free
            with self.assertRaises(attn.CapacityError):
                cache.append(1, *tokens(rng, 3, cache))
            self.assertEqual(cache.lengths(), [8, 6])
            self.check_call(ctx, m, q, [0, 1])

    def test_close(self):
        with attn.KVCache(1, 4, capacity=8) as cache:
            cache.append(0, np.ones((2, 1, 4), np.float32), np.ones((2, 1, 4), np.float32))
        self.assertTrue(cache.closed)
        ctx = attn.Context(1, 1, 4)
        for call in (lambda: cache.len(0), cache.free_blocks, cache.reset,
                     lambda: cache.truncate(0, 0), lambda: cache.fork(0, 0),
                     lambda: cache.reorder([0]),
                     lambda: cache.append(0, np.ones((1, 4)), np.ones((1, 4))),
                     lambda: ctx.forward_cache(np.ones((1, 1, 1, 4)), cache, [0])):
            with self.assertRaisesRegex(ValueError, "the KVCache is closed"):
                call()
        cache.close()  # twice is fine


# ---- bad inputs -------------------------------------------------------------------------------


class TestErrors(unittest.TestCase):
    def setUp(self):
        self.cache = attn.KVCache(2, 8, 4, dtype="f16", max_seqs=2, capacity=32, block_tokens=8)
        self.k, self.v = np.ones((3, 2, 8), np.float32), np.ones((3, 2, 4), np.float32)
        self.cache.append(0, self.k, self.v)
        self.ctx = attn.Context(4, 2, 8, 4, kv_dtype="f16")
        self.q = np.ones((1, 4, 1, 8), np.float32)

    def raises(self, exc, pattern, call, status=None):
        with self.assertRaisesRegex(exc, pattern) as cm:
            call()
        if status is not None:
            self.assertEqual(cm.exception.status, status)
        self.assertEqual(self.cache.lengths(), [3, 0], "a failed call changed the cache")
        self.assertEqual(self.cache.free_blocks(), 3)

    def test_constructor(self):
        for kw, pattern, status in (
                (dict(kv_heads=0), r"desc->kv_heads is 0 \(ATTN_ERR_ZERO_SIZE\)", 2),
                (dict(qk_dim=20000), r"desc->qk_dim = 20000 exceeds .*\(ATTN_ERR_LIMIT\)", 12),
                (dict(capacity=0), r"desc->capacity is 0", 2),
                (dict(max_seqs=0), r"desc->max_seqs is 0", 2),
                (dict(block_tokens=70000), r"block_tokens = 70000 exceeds "
                 r"ATTN_KV_CACHE_MAX_BLOCK", 12),
                (dict(max_len=33), r"desc->max_len = 33 exceeds capacity = 32", 12)):
            args = dict(kv_heads=2, qk_dim=8, capacity=32)
            args.update(kw)
            with self.subTest(kw=kw):
                with self.assertRaisesRegex(ValueError, pattern) as cm:
                    attn.KVCache(**args)
                self.assertEqual(cm.exception.status, status)
        for kw, pattern in ((dict(dtype="f64"), r"dtype = 'f64' is not one of 'f32', 'f16', "
                             "'bf16'"),
                            (dict(kv_heads=-1), r"kv_heads = -1 is outside"),
                            (dict(capacity=2**64), r"capacity = 18446744073709551616 is outside"),
                            (dict(block_tokens=0), r"block_tokens = 0 is outside \[1, "),
                            (dict(max_len=1.5), r"max_len = 1.5 must be an integer")):
            args = dict(kv_heads=2, qk_dim=8)
            args.update(kw)
            with self.subTest(kw=kw):
                with self.assertRaisesRegex(ValueError, pattern):
                    attn.KVCache(**args)
        with self.assertRaisesRegex(ValueError, r"the cache's size .* does not fit the "
                                    r"address space \(ATTN_ERR_OVERFLOW\)"):
            attn.KVCache(64, 1024, capacity=2**46, block_tokens=65536)
        with self.assertRaisesRegex(MemoryError, r"allocating the \d+-byte cache failed "
                                    r"\(ATTN_ERR_NO_MEMORY\)") as cm:
            attn.KVCache(64, 1024, capacity=2**33, block_tokens=65536)
        self.assertNotIsInstance(cm.exception, attn.CapacityError)

    def test_append(self):
        c, k, v = self.cache, self.k, self.v
        self.raises(ValueError, r"seq = 2 is outside \[0, max_seqs = 2\) \(ATTN_ERR_LIMIT\)",
                    lambda: c.append(2, k, v), LIMIT)
        self.raises(ValueError, r"seq = -1 is outside", lambda: c.append(-1, k, v))
        self.raises(ValueError, r"k: shape \(3, 2, 7\), expected \(3, 2, 8\) for this cache",
                    lambda: c.append(0, k[..., :7], v))
        self.raises(ValueError, r"v: shape \(3, 3, 4\), expected \(3, 2, 4\)",
                    lambda: c.append(0, k, np.ones((3, 3, 4), np.float32)))
        self.raises(ValueError, r"k: shape \(3, 2, 8\), expected \(2, 2, 8\) .*\[kv_heads, n, "
                    r"dim\]", lambda: c.append(0, k, v, layout="bhsd"))
        self.raises(ValueError, r"k and v: 3 and 2 tokens", lambda: c.append(0, k, v[:2]))
        self.raises(ValueError, r"k: expected a floating-point array .* got dtype int64",
                    lambda: c.append(0, k.astype(np.int64), v))
        self.raises(ValueError, r"v: 4-D, expected \[n, kv_heads, dim\]",
                    lambda: c.append(0, k, v[None]))
        self.raises(ValueError, r"layout = 'sbhd' is not one of 'bshd', 'bhsd'",
                    lambda: c.append(0, k, v, layout="sbhd"))
        # the C core's own checks (the Python layer never sends these)
        core = c._core
        self.raises(ValueError, r"k: shape \(2, 3, 7\) does not match \(kv_heads, n, qk_dim\)",
                    lambda: core.append(0, np.ones((2, 3, 7), np.float32),
                                        np.ones((2, 3, 4), np.float32)))
        self.raises(ValueError, r"k: the last axis must be contiguous",
                    lambda: core.append(0, np.ones((2, 3, 16), np.float32)[..., ::2],
                                        np.ones((2, 3, 4), np.float32)))
        self.raises(ValueError, r"v: expected native float32 elements",
                    lambda: core.append(0, np.ones((2, 3, 8), np.float32),
                                        np.ones((2, 3, 4), np.float64)))
        c.append(1, k[:0], v[:0])  # n = 0 does nothing
        self.assertEqual(c.lengths(), [3, 0])

    def test_truncate_fork_reorder_len(self):
        c = self.cache
        self.raises(ValueError, r"\(ATTN_ERR_LIMIT\)", lambda: c.truncate(0, 4), LIMIT)
        self.raises(ValueError, r"\(ATTN_ERR_LIMIT\)", lambda: c.truncate(2, 0), LIMIT)
        self.raises(ValueError, r"length = -1 is outside", lambda: c.truncate(0, -1))
        self.raises(ValueError, r"src = 5 is outside \[0, max_seqs = 2\) \(ATTN_ERR_LIMIT\)",
                    lambda: c.fork(5, 0), LIMIT)
        self.raises(ValueError, r"dst = 2 is outside", lambda: c.fork(0, 2), LIMIT)
        self.raises(ValueError, r"n = 3 exceeds max_seqs = 2 \(ATTN_ERR_LIMIT\)",
                    lambda: c.reorder([0, 0, 0]), LIMIT)
        self.raises(ValueError, r"from\[1\] = 7 is outside \[0, max_seqs = 2\)",
                    lambda: c.reorder([1, 7]), LIMIT)
        self.raises(ValueError, r"order\[0\] = -1 is outside", lambda: c.reorder([-1]))
        self.raises(ValueError, r"order: expected integers", lambda: c.reorder([0.5]))
        self.raises(ValueError, r"order: shape \(1, 1\)", lambda: c.reorder([[0]]))
        self.raises(ValueError, r"seq = 2 is outside \[0, max_seqs = 2\)", lambda: c.len(2))

    def test_forward_cache(self):
        c, ctx, q = self.cache, self.ctx, self.q
        for other, what in ((attn.Context(4, 2, 8, 4), "kv_heads 2, qk_dim 8, v_dim 4, kv_dtype ATTN_KV_F32"),
                            (attn.Context(4, 2, 8, 4, kv_dtype="bf16"),
                             "kv_heads 2, qk_dim 8, v_dim 4, kv_dtype ATTN_KV_BF16"),
                            (attn.Context(4, 4, 8, 4, kv_dtype="f16"),
                             "kv_heads 4, qk_dim 8, v_dim 4, kv_dtype ATTN_KV_F16")):
            with self.subTest(context=repr(other)):
                self.raises(ValueError, r"cannot read attn.KVCache.*: make the Context with "
                            r"kv_heads=2, qk_dim=8, v_dim=4, kv_dtype='f16' \(the cache "
                            r"\(kv_heads 2, qk_dim 8, v_dim 4, dtype ATTN_KV_F16\) does not match the "
                            r"context \(" + what + r"\) \(ATTN_ERR_BAD_OPTION\)\)",
                            lambda: other.forward_cache(q, c, [0]), 10)
        # the C library's own refusal, straight through the core
        self.raises(ValueError, r"^the cache \(.*dtype ATTN_KV_F16\) does not match the context \(.*"
                    r"kv_dtype ATTN_KV_F32\) \(ATTN_ERR_BAD_OPTION\)$",
                    lambda: attn.Context(4, 2, 8, 4)._core.forward_cache(
                        q, c._core, np.zeros(1, np.uint32), np.empty((1, 4, 1, 4), np.float32)),
                    10)
        self.raises(ValueError, r"seq_ids\[1\] = 2 is outside \[0, max_seqs = 2\) "
                    r"\(ATTN_ERR_LIMIT\)", lambda: ctx.forward_cache(
                        np.ones((2, 4, 1, 8), np.float32), c, [0, 2]), LIMIT)
        self.raises(ValueError, r"seq_ids: 1 ids for a batch of 2",
                    lambda: ctx.forward_cache(np.ones((2, 4, 1, 8), np.float32), c, [0]))
        self.raises(ValueError, r"seq_ids\[0\] = -3 is outside",
                    lambda: ctx.forward_cache(q, c, [-3]))
        self.raises(ValueError, r"args->kv_len = 2 is below the 3 tokens of a chosen sequence "
                    r"\(ATTN_ERR_KV_LENS\)", lambda: ctx.forward_cache(q, c, [0], kv_len=2), 6)
        self.raises(ValueError, r"every chosen sequence is empty and args->kv_len is 0: .* "
                    r"\(ATTN_ERR_ZERO_SIZE\)",
                    lambda: ctx.forward_cache(q, c, [1], weights="per_head"), 2)
        self.raises(ValueError, r"attn_mask: shape \(4,\) does not broadcast to \(1, 4, 1, 3\)",
                    lambda: ctx.forward_cache(q, c, [0], attn_mask=np.ones(4, bool)))
        self.raises(ValueError, r"q has 2 heads of 8 features, this Context was made for 4 of 8",
                    lambda: ctx.forward_cache(q[:, :2], c, [0]))
        self.raises(ValueError, r"q must be 4-D .* got 2-D",
                    lambda: ctx.forward_cache(q[0, 0], c, [0]))
        self.raises(ValueError, r"cache: expected an attn.KVCache, got dict",
                    lambda: ctx.forward_cache(q, {}, [0]))
        self.raises(ValueError, r"kv_len = -1 is outside",
                    lambda: ctx.forward_cache(q, c, [0], kv_len=-1))
        self.raises(ValueError, r"args->q_offset = 4294967296 is outside .*ATTN_ERR_OFFSET",
                    lambda: ctx.forward_cache(q, c, [0], q_offset=2**32), 8)
        # the C core checks the key extent against the lengths it sees
        core = ctx._core
        self.raises(ValueError, r"mask: shape \(1, 4, 1, 5\) does not match \(batch, q_heads, "
                    r"q_len, kv_len\) = \(1, 4, 1, 3\)",
                    lambda: core.forward_cache(q, c._core, np.zeros(1, np.uint32),
                                               np.empty((1, 4, 1, 4), np.float32),
                                               mask=np.ones((1, 4, 1, 5), bool)))
        self.raises(ValueError, r"weights: shape \(1, 1, 4\) does not match \(batch, q_len, "
                    r"kv_len\) = \(1, 1, 3\)",
                    lambda: core.forward_cache(q, c._core, np.zeros(1, np.uint32),
                                               np.empty((1, 4, 1, 4), np.float32),
                                               weights_mode=2,
                                               weights=np.empty((1, 1, 4), np.float32)))
        self.raises(ValueError, r"seq_ids: expected native uint32 elements",
                    lambda: core.forward_cache(q, c._core, np.zeros(1, np.int64),
                                               np.empty((1, 4, 1, 4), np.float32)))
        self.raises(TypeError, r"must be attn._attn.KVCache",
                    lambda: core.forward_cache(q, object(), np.zeros(1, np.uint32),
                                               np.empty((1, 4, 1, 4), np.float32)))

    def test_status_to_exception(self):
        e = _attn._error(CAPACITY, "no room")
        self.assertIs(type(e), attn.CapacityError)
        self.assertIsInstance(e, MemoryError)
        self.assertEqual(e.status, CAPACITY)
        self.assertEqual(str(e), "no room (ATTN_ERR_CAPACITY)")
        self.assertIs(type(_attn._error(16, "x")), MemoryError)


# ---- threads, the GIL and references ------------------------------------------------------------


class TestThreads(CacheCase):
    def test_gil_is_released(self):
        """With a huge switch interval a second thread runs only if the calls release the GIL:
        forward_cache over a long sequence, and appends of many tokens. The C core is called
        with its arguments prepared, since numpy's own loops in the Python layer may release
        the GIL too."""
        rng = np.random.default_rng(66)
        cache = attn.KVCache(4, 64, dtype="f16", max_seqs=1, capacity=20 * 1024)
        k, v = tokens(rng, 1024, cache)
        kl, vl = k.transpose(1, 0, 2), v.transpose(1, 0, 2)  # the core's [kv_heads, n, dim]
        self.assertTrue(other_thread_ran(lambda: cache._core.append(0, kl, vl), 20),
                        "no other thread ran during 20 appends: the GIL was held")
        ctx = attn.Context(8, 4, 64, kv_dtype="f16", threads=1)
        q = rand(rng, 1, 8, 64, 64)
        ids, out = np.zeros(1, np.uint32), np.empty((1, 8, 64, 64), np.float32)
        self.assertTrue(other_thread_ran(
            lambda: ctx._core.forward_cache(q, cache._core, ids, out), 50),
            "no other thread ran during 50 forward_cache calls: the GIL was held")

    def test_readers_and_a_writer_take_turns(self):
        """Two threads, each with its own context, read sequence 0 (40 tokens, 5 blocks) while
        the main thread, over and over, drops its last block, appends other tokens to
        sequence 1 (which takes that block and overwrites it) and empties sequence 1 again,
        then appends sequence 0's last 8 tokens back. A reader may see sequence 0 with 40 or
        with 32 tokens, so every result must be, bitwise, one of those two and nothing else."""
        rng = np.random.default_rng(67)
        cache = attn.KVCache(2, 16, dtype="bf16", max_seqs=2, capacity=40, block_tokens=8)
        k, v = tokens(rng, 40, cache)
        junk_k, junk_v = tokens(rng, 8, cache, amp=30.0)
        cache.append(0, k, v)
        q = rand(rng, 1, 4, 1, 16, amp=3.0)
        ctxs = [attn.Context(4, 2, 16, kv_dtype="bf16", threads=1) for _ in range(2)]
        full = ctxs[0].forward_cache(q, cache, [0], weights="per_head", kv_len=40)
        cache.truncate(0, 32)
        short = ctxs[0].forward_cache(q, cache, [0], weights="per_head", kv_len=40)
        cache.append(0, k[32:], v[32:])
        stop = threading.Event()
        errors, seen = [], [0, 0]

        def same(r, want):
            return np.array_equal(r.out, want.out) and np.array_equal(r.weights, want.weights)

        def read(ctx):
            try:
                while not stop.is_set():
                    r = ctx.forward_cache(q, cache, [0], weights="per_head", kv_len=40)
                    if same(r, full):
                        seen[0] += 1
                    elif same(r, short):
                        seen[1] += 1
                    else:
                        errors.append("a result over neither the 40 nor the first 32 tokens")
                        return
            except Exception as e:  # reported below
                errors.append(e)

        readers = [threading.Thread(target=read, args=(c,)) for c in ctxs]
        for t in readers:
            t.start()
        try:
            for _ in range(2000):
                cache.truncate(0, 32)
                cache.append(1, junk_k, junk_v)
                cache.truncate(1, 0)
                cache.append(0, k[32:], v[32:])
                if errors:
                    break
        finally:
            stop.set()
            for t in readers:
                t.join()
        self.assertEqual(errors, [])
        self.assertGreater(sum(seen), 0)
        self.assertEqual(cache.lengths(), [40, 0])

    def test_the_c_core_releases_every_buffer(self):
        rng = np.random.default_rng(68)
        cache = attn.KVCache(1, 4, dtype="f32", max_seqs=2, capacity=8, block_tokens=4)
        core = cache._core
        k, v = rand(rng, 1, 3, 4), rand(rng, 1, 3, 4)
        big_k, big_v = rand(rng, 1, 5, 4), rand(rng, 1, 5, 4)
        ctx = attn.Context(2, 1, 4)._core
        q, out = rand(rng, 2, 2, 1, 4), np.empty((2, 2, 1, 4), np.float32)
        ids, bad_ids = np.array([0, 1], np.uint32), np.array([0, 5], np.uint32)
        w, lse = np.empty((2, 2, 1, 3), np.float32), np.empty((2, 2, 1), np.float32)
        order = np.array([1, 0], np.uint32)
        arrays = (k, v, big_k, big_v, q, out, ids, bad_ids, w, lse, order)
        before = [sys.getrefcount(a) for a in arrays]
        for _ in range(3):
            core.reset()
            core.append(0, k, v)
            with self.assertRaises(attn.CapacityError):
                core.append(1, big_k, big_v)
            with self.assertRaises(ValueError):
                core.append(1, k, v[:, :2])
            ctx.forward_cache(q, core, ids, out, None, 0, None, None, 1, w, lse)
            with self.assertRaises(ValueError):  # libattn rejects the id
                ctx.forward_cache(q, core, bad_ids, out, None, 0, None, None, 1, w, lse)
            with self.assertRaises(ValueError):  # the core rejects the extent of weights
                ctx.forward_cache(q, core, ids, out, None, 5, None, None, 1, w, lse)
            core.reorder(order)
            with self.assertRaises(ValueError):
                core.reorder(bad_ids)
        self.assertEqual([sys.getrefcount(a) for a in arrays], before)


# ---- PyTorch ---------------------------------------------------------------------------------


@unittest.skipIf(torch is None, "PyTorch is not installed (Debian: python3-torch)")
class TestAgainstPyTorch(CacheCase):
    def test_decode_step(self):
        """One decode step over three f16 sequences of different lengths (GQA 8/2) against
        PyTorch in float64 on the rounded tokens: F.scaled_dot_product_attention where it
        exists (PyTorch >= 2.0), the softmax written in torch operations otherwise."""
        rng = np.random.default_rng(69)
        cache = attn.KVCache(2, 32, 16, dtype="f16", max_seqs=3, capacity=512, block_tokens=16)
        m = Model(cache)
        for s, n in enumerate((100, 37, 1)):
            m.append(s, *tokens(rng, n, cache))
        ctx = attn.Context(8, 2, 32, 16, kv_dtype="f16", causal=True)
        q = rand(rng, 3, 8, 1, 32)
        out = ctx.forward_cache(q, cache, [0, 1, 2])
        F = torch.nn.functional
        for b in range(3):
            qt = torch.from_numpy(q[b].astype(np.float64))                   # [8, 1, 32]
            kt = torch.from_numpy(m.k[b]).repeat_interleave(4, dim=0)         # [8, L, 32]
            vt = torch.from_numpy(m.v[b]).repeat_interleave(4, dim=0)
            if hasattr(F, "scaled_dot_product_attention"):
                want = F.scaled_dot_product_attention(qt, kt, vt).numpy()  # the last query
            else:                                                        # sees every key
                s = (qt @ kt.transpose(-1, -2)) / 32 ** 0.5
                want = (torch.softmax(s, dim=-1) @ vt).numpy()
            np.testing.assert_allclose(out[b].astype(np.float64), want, rtol=2e-5, atol=2e-6)
            TORCH["err"] = max(TORCH["err"], float(np.abs(out[b] - want).max()))
            TORCH["arrays"] += 1
        self.check_call(ctx, m, q, [0, 1, 2])


def main():
    suite = unittest.defaultTestLoader.loadTestsFromModule(sys.modules[__name__])
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    print(f"attn {attn.__version__} ({attn.kernel_isa()} kernels), numpy {np.__version__}, "
          f"torch {torch.__version__ if torch else 'absent'}")
    print(f"python kv_cache tests: {result.testsRun} run, {len(result.failures)} failed, "
          f"{len(result.errors)} errors, {len(result.skipped)} skipped; {WORST['arrays']} arrays "
          f"compared with float64, largest error / tolerance {WORST['ratio']:.3g}; "
          f"{TORCH['arrays']} arrays compared with PyTorch, largest error {TORCH['err']:.3g}")
    sys.exit(0 if result.wasSuccessful() else 1)


if __name__ == "__main__":
    main()
