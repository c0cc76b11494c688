"""libattn from Python: attention on the CPU in float32, on numpy arrays, without copies.

    import numpy as np, attn
    out = attn.scaled_dot_product_attention(q, k, v, is_causal=True)

`scaled_dot_product_attention` follows torch.nn.functional.scaled_dot_product_attention where
the two overlap and adds every libattn option; `Context` keeps one libattn context for repeated
calls; `KVCache` keeps the keys and values of sequences between decoding steps, for
`Context.forward_cache`. Arrays are [B, H, L, D] (layout="bhsd") or [B, L, H, D]
(layout="bshd"); float32 arrays whose last axis is contiguous are used in place whatever their
other strides. See docs/python.md.
"""

import collections
import operator

import numpy as np

from . import _attn

__all__ = ["scaled_dot_product_attention", "Context", "Result", "dropout_mask", "merge",
           "MultiheadAttention", "KVCache", "CapacityError", "kernel_isa", "__version__"]

__version__ = _attn.version
"""Version of the libattn library loaded ("MAJOR.MINOR.PATCH")."""

Result = collections.namedtuple("Result", ["out", "weights", "lse", "entropy"])
Result.__doc__ = """What a call returns when an extra output is asked for.

out:     like q's layout, [B, Hq, Lq, Dv] (bhsd) or [B, Lq, Hq, Dv] (bshd), float32
weights: [B, Hq, Lq, Lk] (weights="per_head"), [B, Lq, Lk] ("head_mean"), else None
lse:     [B, Hq, Lq] natural-log log-sum-exp of the visible scores, or None
entropy: [B, Hq, Lq] natural-log entropy of each row's weights, or None
(without the leading B when the inputs were 3-D)"""

_WEIGHTS = {"none": 0, "per_head": 1, "head_mean": 2}
_MASKED_ROWS = {"zero": 0, "nan": 1}
_KV_DTYPES = {"f32": 0, "f16": 1, "bf16": 2}
_OP_FORWARD, _OP_BACKWARD = 0x1, 0x2
_LAYOUTS = ("bhsd", "bshd")
_F32 = np.dtype(np.float32)


def kernel_isa():
    """The softmax kernel variant libattn runs on this CPU: "scalar", "avx2" or "avx512"."""
    return _attn.kernel_isa()


# ---- argument conversion ------------------------------------------------------------------


def _fits_view(a, rows_axis, dtype=_F32):
    """True if libattn can read the array in place: native `dtype` (float32 unless told),
    aligned, non-negative strides that are whole elements, a contiguous last axis and (for
    Q/K/V, rows_axis given) rows that do not overlap. Strides of length-1 axes never matter."""
    if a.dtype != dtype or not a.flags.aligned:
        return False
    item = a.itemsize
    for axis, (n, s) in enumerate(zip(a.shape, a.strides)):
        if n <= 1:
            continue
        if s < 0 or s % item:
            return False
        if axis == a.ndim - 1 and s != item:
            return False
    if rows_axis is not None and a.shape[rows_axis] > 1:
        s = a.strides[rows_axis] // item
        if s < a.shape[-1] or s > 2147483647:
            return False
    return True


def _float_input(x, name, rows_axis=None):
    """x as a float32 ndarray libattn can read: x itself (a view, no copy) when it fits, else
    one C-ordered float32 copy. Floating dtypes are converted; anything else raises."""
    a = np.asarray(x)
    if a.dtype.kind != "f":
        raise ValueError(f"{name}: expected a floating-point array (float32 is used in place), "
                         f"got dtype {a.dtype}")
    if not _fits_view(a, rows_axis):
        a = np.array(a, dtype=np.float32, order="C")  # always a new, aligned array
    return a


def _kv_input(x, name, rows_axis, kv_dtype):
    """K or V in the context's storage type: float32 as _float_input; "f16": float16 arrays in
    place (other floating dtypes are rounded to float16 in one copy); "bf16": uint16 arrays
    holding bfloat16 bits (numpy has no bfloat16), in place when they fit."""
    if kv_dtype == "f32":
        return _float_input(x, name, rows_axis)
    a = np.asarray(x)
    if kv_dtype == "f16":
        if a.dtype.kind != "f":
            raise ValueError(f"{name}: expected a floating-point array for kv_dtype 'f16' "
                             f"(float16 is used in place), got dtype {a.dtype}")
        want = np.dtype(np.float16)
    else:
        if a.dtype != np.uint16:
            raise ValueError(f"{name}: expected a uint16 array of bfloat16 bits for kv_dtype "
                             f"'bf16', got dtype {a.dtype}")
        want = np.dtype(np.uint16)
    if not _fits_view(a, rows_axis, want):
        a = np.array(a, dtype=want, order="C")
    return a


def _sum_to(g, shape):
    """The gradient g of a broadcast operand, summed back to the operand's own shape."""
    target = (1,) * (g.ndim - len(shape)) + tuple(shape)
    for axis in range(g.ndim):
        if target[axis] == 1 and g.shape[axis] != 1:
            g = g.sum(axis, keepdims=True)
    return np.array(np.broadcast_to(g, target), np.float32, order="C").reshape(shape)


def _int_arg(x, name, lo, hi):
    try:
        value = operator.index(x)
    except TypeError:
        raise ValueError(f"{name} = {x!r} must be an integer") from None
    if not lo <= value <= hi:
        raise ValueError(f"{name} = {value} is outside [{lo}, {hi}]")
    return value


def _probability(value, name):
    """A float for libattn's dropout fields (libattn checks the range [0, 1) and NaN)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} = {value!r} must be a number in [0, 1)") from None


def _choice(value, name, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} = {value!r} is not one of {', '.join(map(repr, choices))}")
    return choices[value] if isinstance(choices, dict) else value


def _window(window):
    """(left, right) -> libattn's bounds; None (or -1) on a side = unbounded on that side."""
    if window is None:
        return -1, -1
    try:
        left, right = window
    except (TypeError, ValueError):
        raise ValueError(f"window = {window!r} must be a pair (left, right); "
                         "None on a side means unbounded") from None
    bounds = []
    for side, w in (("left", left), ("right", right)):
        if w is None:
            bounds.append(-1)
            continue
        bounds.append(_int_arg(w, f"window {side}", -2**63, 2**63 - 1))  # libattn checks it
    return tuple(bounds)


def _broadcast_pairwise(x, name, shape, logical_4d, is_mask):
    """A mask or bias as a read-only [B, Hq, Lq, Lk] view: size-1 axes broadcast through zero
    strides. Only a broadcast along the key axis (which libattn needs contiguous) is
    materialised, and only over the array's own extent."""
    a = np.asarray(x)
    if a.ndim > len(shape):
        raise ValueError(f"{name}: {a.ndim} dimensions, expected at most {len(shape)} "
                         f"broadcastable to {shape}")
    try:
        if np.broadcast_shapes(a.shape, shape) != shape:
            raise ValueError
    except ValueError:
        raise ValueError(f"{name}: shape {a.shape} does not broadcast to {shape} "
                         "(batch, heads, q_len, kv_len)" if len(shape) == 4 else
                         f"{name}: shape {a.shape} does not broadcast to {shape} "
                         "(heads, q_len, kv_len)") from None
    if is_mask:
        if a.dtype != np.bool_ and a.dtype != np.uint8:
            a = a.astype(np.bool_)
    elif a.dtype != _F32:
        a = a.astype(np.float32)
    lk = shape[-1]
    if a.ndim == 0 or a.shape[-1] != lk or (lk > 1 and a.strides[-1] != a.itemsize) \
            or any(s < 0 or s % a.itemsize for s in a.strides) or not a.flags.aligned:
        a = np.array(np.broadcast_to(a, a.shape[:-1] + (lk,) if a.ndim else (lk,)), order="C")
    a = np.broadcast_to(a, shape)
    return a if logical_4d else a[np.newaxis]


def _attn_mask(attn_mask, bias, shape, logical_4d):
    """PyTorch's attn_mask (bool: True = takes part; float: added to the scores) and libattn's
    bias -> (mask, bias) views. A float attn_mask and a bias are summed into one array (of
    their broadcast shape, not the full one)."""
    mask_view = None
    if bias is not None:
        bias = np.asarray(bias)
        if bias.dtype.kind != "f":
            raise ValueError(f"bias: expected a floating-point array, got dtype {bias.dtype}")
        bias_view = _broadcast_pairwise(bias, "bias", shape, logical_4d, False)
    if attn_mask is not None:
        m = np.asarray(attn_mask)
        if m.dtype == np.bool_:
            mask_view = _broadcast_pairwise(m, "attn_mask", shape, logical_4d, True)
        elif m.dtype.kind == "f":
            _broadcast_pairwise(m, "attn_mask", shape, logical_4d, False)  # checks the shape
            if bias is not None:
                m = np.add(m, bias, dtype=np.float64)
            bias, bias_view = m, _broadcast_pairwise(m, "attn_mask", shape, logical_4d, False)
        else:
            raise ValueError(f"attn_mask: dtype {m.dtype} is neither bool (True = the key takes "
                             "part in attention) nor floating (added to the scores)")
    return mask_view, (bias_view if bias is not None else None)


# ---- Context ------------------------------------------------------------------------------


class Context:
    """One libattn context for repeated calls with the same heads, dims and structured masks.

    Context(q_heads, kv_heads=None, qk_dim=64, v_dim=None, *, scale=None, causal=False,
            window=None, masked_rows="zero", threads=None, dropout=0.0, kv_dtype="f32",
            backward=False)

    kv_heads defaults to q_heads and must divide it (grouped-query attention); v_dim defaults
    to qk_dim; scale None = 1/sqrt(qk_dim); window (left, right) limits row i to the keys
    i + q_offset - left .. i + q_offset + right (None on a side: unbounded); masked_rows "zero"
    or "nan" for rows that see no key; threads None = every processor this process may use.
    dropout: attention dropout probability p, 0 <= p < 1 (the mask of dropout_mask(), keyed by
    each call's dropout_seed and dropout_offset). kv_dtype: how K and V are stored, "f32",
    "f16" (numpy float16) or "bf16" (numpy uint16 holding bfloat16 bits). backward: also
    reserve the workspace of backward() (a forward-only context refuses backward calls).

    The context (its workspace and worker threads) is created once. It is used by one call at
    a time: calls from several Python threads on one Context take turns (an internal lock);
    use one Context per thread to run them in parallel. close() or a `with` block releases it
    early.
    """

    def __init__(self, q_heads, kv_heads=None, qk_dim=64, v_dim=None, *, scale=None,
                 causal=False, window=None, masked_rows="zero", threads=None, dropout=0.0,
                 kv_dtype="f32", backward=False):
        # Ranges that fit the C fields; libattn checks the values (and names the bound broken).
        q_heads = _int_arg(q_heads, "q_heads", 0, 2**32 - 1)
        kv_heads = q_heads if kv_heads is None else _int_arg(kv_heads, "kv_heads", 0, 2**32 - 1)
        qk_dim = _int_arg(qk_dim, "qk_dim", 0, 2**32 - 1)
        v_dim = qk_dim if v_dim is None else _int_arg(v_dim, "v_dim", 0, 2**32 - 1)
        if scale is None:
            scale_c = 0.0
        else:
            scale_c = float(scale)
            if scale_c == 0.0:
                raise ValueError("scale = 0 is not supported (libattn reads 0 as the default "
                                 "1/sqrt(qk_dim)); pass None for that default")
            if not abs(scale_c) <= float(np.finfo(np.float32).max):
                raise ValueError(f"scale = {scale!r} is not finite in float32")
        dropout_c = _probability(dropout, "dropout")
        kv_code = _choice(kv_dtype, "kv_dtype", _KV_DTYPES)
        left, right = _window(window)
        threads_c = 0 if threads is None else _int_arg(threads, "threads", 0, 2**32 - 1)
        self.q_heads, self.kv_heads, self.qk_dim, self.v_dim = q_heads, kv_heads, qk_dim, v_dim
        self.scale = float(np.float32(scale_c)) if scale is not None else 1.0 / np.sqrt(qk_dim)
        self.causal = bool(causal)
        self.window = (None if left < 0 else left, None if right < 0 else right)
        self.masked_rows = masked_rows
        self.threads = threads
        self.dropout = dropout_c
        self.kv_dtype = kv_dtype
        self.backward_enabled = bool(backward)
        ops = _OP_FORWARD | (_OP_BACKWARD if backward else 0)
        self._core = _attn.Context(q_heads, kv_heads, qk_dim, v_dim, scale_c, self.causal,
                                   left, right, _choice(masked_rows, "masked_rows", _MASKED_ROWS),
                                   threads_c, ops, dropout_c, kv_code)

    def __repr__(self):
        return (f"attn.Context(q_heads={self.q_heads}, kv_heads={self.kv_heads}, "
                f"qk_dim={self.qk_dim}, v_dim={self.v_dim}, scale={self.scale!r}, "
                f"causal={self.causal}, window={self.window}, "
                f"masked_rows={self.masked_rows!r}, threads={self.threads}, "
                f"dropout={self.dropout!r}, kv_dtype={self.kv_dtype!r}, "
                f"backward={self.backward_enabled})")

    def close(self):
        """Releases the C context (waits for a call in progress); later calls raise."""
        self._core.close()

    @property
    def closed(self):
        return self._core.closed

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _prepare(self, q, k, v, attn_mask, layout, kv_lens, q_offset, bias):
        """Checks and converts the inputs a forward and a backward call share. Returns a dict:
        logical [B, H, L, D] views q, k, v (k and v broadcast to q's batch), the mask, bias,
        kv_lens and q_offset for the C core, and what is needed to shape the outputs."""
        layout = _choice(layout, "layout", {name: name for name in _LAYOUTS})
        ndim = np.ndim(q)
        if ndim not in (3, 4) or np.ndim(k) != ndim or np.ndim(v) != ndim:
            raise ValueError(f"q, k and v must all be 4-D [B, H, L, D] (or [B, L, H, D]) or all "
                             f"3-D without B; got {np.ndim(q)}-D, {np.ndim(k)}-D, {np.ndim(v)}-D")
        seq_axis = ndim - 2 if layout == "bhsd" else ndim - 3
        q = _float_input(q, "q", seq_axis)
        k = _kv_input(k, "k", seq_axis, self.kv_dtype)
        v = _kv_input(v, "v", seq_axis, self.kv_dtype)
        if ndim == 3:
            q, k, v = q[np.newaxis], k[np.newaxis], v[np.newaxis]
        # Logical [B, H, L, D] views: for bshd only the strides are permuted.
        if layout == "bshd":
            q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
        B, Hq, Lq, Dk = q.shape
        _, Hkv, Lk, Dk2 = k.shape
        names = "(B, H, L, D)" if layout == "bhsd" else "(B, L, H, D)"
        if ndim == 3:
            names = names.replace("B, ", "")

        def shape_of(x):  # as the caller wrote it
            s = x.shape if layout == "bhsd" else (x.shape[0], x.shape[2], x.shape[1], x.shape[3])
            return s[1:] if ndim == 3 else s

        if Dk2 != Dk:
            raise ValueError(f"q {shape_of(q)} and k {shape_of(k)} {names}: the feature sizes "
                             f"differ ({Dk} and {Dk2})")
        if v.shape[1:3] != (Hkv, Lk):
            raise ValueError(f"k {shape_of(k)} and v {shape_of(v)} {names}: the head counts and "
                             "lengths must match")
        if k.shape[0] != v.shape[0]:
            raise ValueError(f"k and v: batch sizes {k.shape[0]} and {v.shape[0]} differ")
        if k.shape[0] not in (1, B):
            raise ValueError(f"q and k: batch sizes {B} and {k.shape[0]} differ "
                             "(k and v may have a batch of 1, shared by every batch of q)")
        if Hkv == 0 or Hq % Hkv:
            raise ValueError(f"q has {Hq} heads, k and v have {Hkv}: the query head count must "
                             "be a multiple of the key/value head count")
        Dv = v.shape[3]
        expected = ((self.q_heads, Hq, "query heads"), (self.kv_heads, Hkv, "key/value heads"),
                    (self.qk_dim, Dk, "qk_dim"), (self.v_dim, Dv, "v_dim"))
        for want, got, what in expected:
            if want != got:
                raise ValueError(f"the arrays have {what} = {got}, this Context was made for "
                                 f"{want}: {self!r}")
        kv_batch = k.shape[0]
        if kv_batch != B:  # one K/V for the whole batch: a zero batch stride
            k = np.broadcast_to(k, (B,) + k.shape[1:])
            v = np.broadcast_to(v, (B,) + v.shape[1:])

        pair_shape = (B, Hq, Lq, Lk) if ndim == 4 else (Hq, Lq, Lk)
        mask_view, bias_view = _attn_mask(attn_mask, bias, pair_shape, ndim == 4)

        lens = None
        if kv_lens is not None:
            kl = np.asarray(kv_lens)
            if kl.ndim == 0 and ndim == 3:
                kl = kl.reshape(1)
            if kl.ndim != 1 or kl.shape[0] != B:
                raise ValueError(f"kv_lens: shape {kl.shape}, expected ({B},): one key count per "
                                 "batch")
            if kl.dtype.kind not in "iu":
                raise ValueError(f"kv_lens: expected integers, got dtype {kl.dtype}")
            bad = (kl < -2**31) | (kl > 2**31 - 1)  # would wrap in int32; libattn checks the rest
            if bad.any():
                b = int(np.argmax(bad))
                raise ValueError(f"kv_lens[{b}] = {int(kl[b])} is outside [0, kv_len = {Lk}]")
            lens = np.ascontiguousarray(kl, dtype=np.int32)

        offset = None
        if q_offset is not None:
            offset = _int_arg(q_offset, "q_offset", -2**63 + 1, 2**63 - 1)  # libattn checks it
        return {"layout": layout, "ndim": ndim, "seq_axis": seq_axis, "q": q, "k": k, "v": v,
                "B": B, "Hq": Hq, "Hkv": Hkv, "Lq": Lq, "Lk": Lk, "Dk": Dk, "Dv": Dv,
                "kv_batch": kv_batch, "mask": mask_view, "bias": bias_view, "kv_lens": lens,
                "q_offset": offset, "names": names}

    @staticmethod
    def _new_output(shape, layout):
        """A new float32 array in the caller's layout and its logical [B, H, L, D] view."""
        B, H, L, D = shape
        if layout == "bhsd":
            a = np.empty((B, H, L, D), np.float32)
            return a, a
        a = np.empty((B, L, H, D), np.float32)
        return a, a.transpose(0, 2, 1, 3)

    def forward(self, q, k, v, attn_mask=None, *, layout="bhsd", kv_lens=None, q_offset=None,
                bias=None, weights="none", return_lse=False, return_entropy=False,
                dropout_seed=0, dropout_offset=0):
        """Attention of q over k and v with this context's heads, dims and options.

        q [B, Hq, Lq, Dk], k [B, Hkv, Lk, Dk], v [B, Hkv, Lk, Dv] for layout="bhsd";
        [B, L, H, D] for "bshd"; 3-D arrays (no B) are a batch of one. k and v may have a
        batch of 1, shared by every batch of q; their dtype follows the context's kv_dtype.
        attn_mask, bias: broadcastable to [B, Hq, Lq, Lk] whatever the layout; a bool
        attn_mask keeps the keys where it is True, a float one is added to the scores, as
        bias is. kv_lens: B key counts (key j of batch b visible only if j < kv_lens[b]).
        q_offset: position of query row 0 on the key axis, for causal and window; None =
        Lk - Lq (the last query sees the last key). weights: "none", "per_head" or
        "head_mean". dropout_seed (0 .. 2**64 - 1) and dropout_offset (0 .. 2**32 - 1) select
        the dropout mask when the context has dropout (ignored otherwise). Returns out, or a
        Result(out, weights, lse, entropy) when weights, lse or entropy is asked for (the ones
        not asked for are None).
        """
        weights_mode = _choice(weights, "weights", _WEIGHTS)
        seed = _int_arg(dropout_seed, "dropout_seed", 0, 2**64 - 1)
        doff = _int_arg(dropout_offset, "dropout_offset", 0, 2**32 - 1)
        p = self._prepare(q, k, v, attn_mask, layout, kv_lens, q_offset, bias)
        B, Hq, Lq, Lk, Dv = p["B"], p["Hq"], p["Lq"], p["Lk"], p["Dv"]
        out, out_view = self._new_output((B, Hq, Lq, Dv), p["layout"])
        w = None
        if weights_mode == 1:
            w = np.empty((B, Hq, Lq, Lk), np.float32)
        elif weights_mode == 2:
            w = np.empty((B, Lq, Lk), np.float32)
        lse = np.empty((B, Hq, Lq), np.float32) if return_lse else None
        ent = np.empty((B, Hq, Lq), np.float32) if return_entropy else None

        self._core.forward(p["q"], p["k"], p["v"], out_view, p["q_offset"], p["kv_lens"],
                           p["mask"], p["bias"], weights_mode, w, lse, ent, seed, doff)

        if p["ndim"] == 3:
            out = out[0]
            w, lse, ent = (None if x is None else x[0] for x in (w, lse, ent))
        if w is None and lse is None and ent is None:
            return out
        return Result(out, w, lse, ent)

    def backward(self, q, k, v, out, dout, lse, attn_mask=None, *, layout="bhsd",
                 kv_lens=None, q_offset=None, bias=None, dropout_seed=0, dropout_offset=0,
                 need_dbias=False):
        """Gradients of a loss with respect to q, k, v (and the bias) from dout = dloss/dout.

        q, k, v, attn_mask, layout, kv_lens, q_offset, bias, dropout_seed, dropout_offset: the
        forward call's (the context must be made with backward=True). out and dout: the
        forward's output and the gradient at it, in q's layout; lse: the forward's lse
        ([B, Hq, Lq], from return_lse=True). Returns (dq, dk, dv), new float32 arrays in the
        layouts and shapes of q, k and v (a k shared by the whole batch gets the gradient
        summed over the batch), plus dbias with need_dbias=True: the gradient of the bias (of
        a floating attn_mask when no bias is given), in that array's own shape.
        """
        seed = _int_arg(dropout_seed, "dropout_seed", 0, 2**64 - 1)
        doff = _int_arg(dropout_offset, "dropout_offset", 0, 2**32 - 1)
        p = self._prepare(q, k, v, attn_mask, layout, kv_lens, q_offset, bias)
        B, Hq, Hkv, Lq, Lk, Dk, Dv = (p[x] for x in ("B", "Hq", "Hkv", "Lq", "Lk", "Dk", "Dv"))
        ndim, lay = p["ndim"], p["layout"]
        grad_of = None
        if need_dbias:
            if bias is not None:
                grad_of = np.shape(bias)
            elif attn_mask is not None and np.asarray(attn_mask).dtype.kind == "f":
                grad_of = np.shape(attn_mask)
            else:
                raise ValueError("need_dbias: no bias (or floating attn_mask) was given")

        def logical(x, name):
            if np.ndim(x) != ndim:
                raise ValueError(f"{name}: {np.ndim(x)}-D, expected {ndim}-D like q")
            a = _float_input(x, name, p["seq_axis"])
            if ndim == 3:
                a = a[np.newaxis]
            if lay == "bshd":
                a = a.transpose(0, 2, 1, 3)
            if a.shape != (B, Hq, Lq, Dv):
                want = (B, Hq, Lq, Dv) if lay == "bhsd" else (B, Lq, Hq, Dv)
                raise ValueError(f"{name}: shape {np.shape(x)}, expected "
                                 f"{want[1:] if ndim == 3 else want} {p['names']}")
            return a

        out_l = logical(out, "out")
        dout_l = logical(dout, "dout")
        lse_a = np.asarray(lse)
        if lse_a.dtype.kind != "f":
            raise ValueError(f"lse: expected a floating-point array, got dtype {lse_a.dtype}")
        want = (B, Hq, Lq) if ndim == 4 else (Hq, Lq)
        if lse_a.shape != want:
            raise ValueError(f"lse: shape {lse_a.shape}, expected {want} (B, Hq, Lq)"
                             if ndim == 4 else f"lse: shape {lse_a.shape}, expected {want} "
                             "(Hq, Lq)")
        lse_a = np.ascontiguousarray(lse_a.reshape((B, Hq, Lq)), dtype=np.float32)

        dq, dq_view = self._new_output((B, Hq, Lq, Dk), lay)
        dk, dk_view = self._new_output((B, Hkv, Lk, Dk), lay)
        dv, dv_view = self._new_output((B, Hkv, Lk, Dv), lay)
        dbias = None
        if grad_of is not None:
            bv = p["bias"]
            target = (1,) * (4 - len(grad_of)) + tuple(grad_of)
            if any(target[i] > 1 and bv.strides[i] == 0 for i in range(3)):
                # a broadcast view given as the bias: libattn would sum its gradient over the
                # shared memory; each element of the view needs its own
                bv = p["bias"] = np.array(bv, order="C")
            dshape = tuple(1 if bv.shape[i] == 1 or bv.strides[i] == 0 else bv.shape[i]
                           for i in range(3)) + (Lk,)
            dbias = np.empty(dshape, np.float32)

        self._core.backward(p["q"], p["k"], p["v"], out_l, dout_l, lse_a, dq_view, dk_view,
                            dv_view, p["q_offset"], p["kv_lens"], p["mask"], p["bias"], dbias,
                            seed, doff)

        if p["kv_batch"] != B:  # k and v were shared by the batch: so is their gradient
            dk = dk.sum(0, keepdims=True, dtype=np.float32)
            dv = dv.sum(0, keepdims=True, dtype=np.float32)
        if ndim == 3:
            dq, dk, dv = dq[0], dk[0], dv[0]
        if dbias is None:
            return dq, dk, dv
        return dq, dk, dv, _sum_to(dbias if ndim == 4 else dbias[0], grad_of)


    def forward_cache(self, q, cache, seq_ids, attn_mask=None, *, layout="bhsd", kv_len=None,
                      q_offset=None, bias=None, weights="none", return_lse=False,
                      return_entropy=False, dropout_seed=0, dropout_offset=0):
        """Attention of q over the keys and values of sequences of a KVCache (libattn's
        attn_forward_cache): batch entry b reads all cache.len(seq_ids[b]) tokens of sequence
        seq_ids[b] (repeats allowed).

        q [B, Hq, Lq, Dk] (layout="bhsd") or [B, Lq, Hq, Dk] ("bshd"), or 3-D without B for
        one sequence (seq_ids then an int or a list of one). The context's kv_heads, qk_dim,
        v_dim and kv_dtype must be the cache's. q_offset: None = per sequence len - Lq (the
        queries are the sequence's last Lq tokens, appended before the call: decoding,
        speculative verification, chunked prefill); an int applies to every sequence. kv_len:
        the key extent of attn_mask, bias and the weights, at least the longest chosen
        sequence; None (or 0) = that longest length. attn_mask, bias: broadcastable to
        [B, Hq, Lq, kv_len] as in forward() (keys beyond a sequence's length are never
        visible). Causal and window come from the context. Returns out, or a Result(out,
        weights, lse, entropy) as forward() does; weights have kv_len keys.
        """
        if not isinstance(cache, KVCache):
            raise ValueError(f"cache: expected an attn.KVCache, got {type(cache).__name__}")
        weights_mode = _choice(weights, "weights", _WEIGHTS)
        seed = _int_arg(dropout_seed, "dropout_seed", 0, 2**64 - 1)
        doff = _int_arg(dropout_offset, "dropout_offset", 0, 2**32 - 1)
        layout = _choice(layout, "layout", {name: name for name in _LAYOUTS})
        ndim = np.ndim(q)
        if ndim not in (3, 4):
            raise ValueError(f"q must be 4-D [B, H, L, D] (or [B, L, H, D]) or 3-D without B; "
                             f"got {ndim}-D")
        seq_axis = ndim - 2 if layout == "bhsd" else ndim - 3
        qa = _float_input(q, "q", seq_axis)
        if ndim == 3:
            qa = qa[np.newaxis]
        if layout == "bshd":
            qa = qa.transpose(0, 2, 1, 3)
        B, Hq, Lq, Dk = qa.shape
        if (Hq, Dk) != (self.q_heads, self.qk_dim):
            raise ValueError(f"q has {Hq} heads of {Dk} features, this Context was made for "
                             f"{self.q_heads} of {self.qk_dim}: {self!r}")
        ids = _u32_ids(seq_ids, "seq_ids")
        if ids.shape[0] != B:
            raise ValueError(f"seq_ids: {ids.shape[0]} ids for a batch of {B}")
        if (cache.kv_heads, cache.qk_dim, cache.v_dim, cache.dtype) != \
                (self.kv_heads, self.qk_dim, self.v_dim, self.kv_dtype):
            try:  # libattn refuses it: its message, with what to change
                self._core.forward_cache(qa, cache._core, ids, np.empty((B, Hq, Lq, self.v_dim),
                                                                        np.float32))
            except ValueError as e:
                err = ValueError(f"{self!r} cannot read {cache!r}: make the Context with "
                                 f"kv_heads={cache.kv_heads}, qk_dim={cache.qk_dim}, "
                                 f"v_dim={cache.v_dim}, kv_dtype={cache.dtype!r} ({e})")
                err.status = getattr(e, "status", None)
                raise err from None
        if kv_len is None:
            kv_len = 0
        kv_len = _int_arg(kv_len, "kv_len", 0, 2**32 - 1)
        longest = 0
        for s in ids:
            try:
                longest = max(longest, cache.len(int(s)))
            except ValueError:
                pass  # an id >= max_seqs: libattn names it
        Lk = kv_len or longest
        pair_shape = (B, Hq, Lq, Lk) if ndim == 4 else (Hq, Lq, Lk)
        mask_view, bias_view = _attn_mask(attn_mask, bias, pair_shape, ndim == 4)
        offset = None
        if q_offset is not None:
            offset = _int_arg(q_offset, "q_offset", -2**63 + 1, 2**63 - 1)  # libattn checks it
        out, out_view = self._new_output((B, Hq, Lq, self.v_dim), layout)
        w = None
        if weights_mode == 1:
            w = np.empty((B, Hq, Lq, Lk), np.float32)
        elif weights_mode == 2:
            w = np.empty((B, Lq, Lk), np.float32)
        lse = np.empty((B, Hq, Lq), np.float32) if return_lse else None
        ent = np.empty((B, Hq, Lq), np.float32) if return_entropy else None

        self._core.forward_cache(qa, cache._core, ids, out_view, offset, kv_len, mask_view,
                                 bias_view, weights_mode, w, lse, ent, seed, doff)

        if ndim == 3:
            out = out[0]
            w, lse, ent = (None if x is None else x[0] for x in (w, lse, ent))
        if w is None and lse is None and ent is None:
            return out
        return Result(out, w, lse, ent)

# ---- the K/V cache ------------------------------------------------------------------------

CapacityError = _attn.CapacityError
CapacityError.__module__ = "attn"
CapacityError.__doc__ = """A KVCache has no free blocks for an append (libattn's ATTN_ERR_CAPACITY).

A subclass of MemoryError; the cache is unchanged (nothing of the append was stored). `status`
holds the numeric status (20)."""

_KV_DTYPE_NAMES = {code: name for name, code in _KV_DTYPES.items()}
_KV_LAYOUTS = ("bshd", "bhsd")


def _u32_ids(ids, name, lo_count=0):
    """A list of sequence ids as a C-contiguous uint32 array (each checked to fit 32 bits;
    libattn checks them against max_seqs)."""
    a = np.asarray(ids)
    if a.ndim == 0:
        a = a.reshape(1)
    if a.ndim != 1:
        raise ValueError(f"{name}: shape {a.shape}, expected a list of sequence ids")
    if a.size and a.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected integers, got dtype {a.dtype}")
    if a.size < lo_count:
        raise ValueError(f"{name}: at least {lo_count} id(s) needed")
    bad = (a < 0) | (a > 2**32 - 1) if a.size else np.zeros(0, bool)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{name}[{i}] = {int(a[i])} is outside [0, 2**32 - 1]")
    return np.ascontiguousarray(a, dtype=np.uint32)


class KVCache:
    """libattn's paged key/value cache: the keys and values of up to max_seqs sequences, kept
    between calls in float32, float16 or bfloat16, for Context.forward_cache.

    KVCache(kv_heads, qk_dim=64, v_dim=None, *, dtype="f32", max_seqs=1, capacity=4096,
            block_tokens=None, max_len=None)

    dtype: "f32", "f16" or "bf16" (appends take float32 and round to nearest even). capacity:
    tokens of storage over all sequences, as ceil(capacity / block_tokens) blocks of
    block_tokens tokens (None = 256), allocated once here; a sequence of n tokens holds
    ceil(n / block_tokens) blocks, blocks shared by forks counted once. max_len: the longest
    one sequence may grow (None = capacity). Sequence ids are 0 .. max_seqs - 1.

    append() raises CapacityError (a MemoryError) when the free blocks do not suffice, and
    changes nothing then; every failing call changes nothing. Calls on one cache (and
    Context.forward_cache calls reading it) take turns: one at a time, the GIL released while
    they wait and run. close() or a `with` block releases the memory early.
    """

    def __init__(self, kv_heads, qk_dim=64, v_dim=None, *, dtype="f32", max_seqs=1,
                 capacity=4096, block_tokens=None, max_len=None):
        kv_heads = _int_arg(kv_heads, "kv_heads", 0, 2**32 - 1)
        qk_dim = _int_arg(qk_dim, "qk_dim", 0, 2**32 - 1)
        v_dim = qk_dim if v_dim is None else _int_arg(v_dim, "v_dim", 0, 2**32 - 1)
        code = _choice(dtype, "dtype", _KV_DTYPES)
        max_seqs = _int_arg(max_seqs, "max_seqs", 0, 2**32 - 1)
        capacity = _int_arg(capacity, "capacity", 0, 2**64 - 1)
        if block_tokens is not None:
            block_tokens = _int_arg(block_tokens, "block_tokens", 1, 2**32 - 1)
        if max_len is not None:
            max_len = _int_arg(max_len, "max_len", 1, 2**64 - 1)
        self._core = _attn.KVCache(kv_heads, qk_dim, v_dim, code, max_seqs, capacity,
                                   block_tokens or 0, max_len or 0)
        (self.kv_heads, self.qk_dim, self.v_dim, _, self.max_seqs, self.capacity,
         self.block_tokens, self.max_len) = self._core.desc
        self.dtype = dtype
        self.nbytes = self._core.nbytes
        """Bytes of memory the cache holds (attn_kv_cache_size)."""

    def __repr__(self):
        return (f"attn.KVCache(kv_heads={self.kv_heads}, qk_dim={self.qk_dim}, "
                f"v_dim={self.v_dim}, dtype={self.dtype!r}, max_seqs={self.max_seqs}, "
                f"capacity={self.capacity}, block_tokens={self.block_tokens}, "
                f"max_len={self.max_len})")

    def close(self):
        """Releases the cache's memory (waits for a call in progress); later calls raise."""
        self._core.close()

    @property
    def closed(self):
        return self._core.closed

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _seq(self, seq, name="seq"):
        return _int_arg(seq, name, 0, 2**32 - 1)  # libattn checks it against max_seqs

    def append(self, seq, k, v, *, layout="bshd"):
        """Appends n tokens' keys and values to sequence seq.

        k [n, kv_heads, qk_dim] and v [n, kv_heads, v_dim] with layout="bshd" (token after
        token, as a projection writes them), [kv_heads, n, dim] with layout="bhsd", or 2-D
        [kv_heads, dim] for one token (either layout). Floating arrays; float32 arrays with a
        contiguous last axis and non-negative strides are read in place (any head and token
        strides), others converted in one float32 copy. The values are rounded to the cache's
        dtype. n = 0 does nothing. Raises CapacityError if the free blocks do not suffice,
        ValueError for a sequence id >= max_seqs or beyond max_len; nothing is appended then.
        """
        layout = _choice(layout, "layout", {name: name for name in _KV_LAYOUTS})
        seq = self._seq(seq)
        views = []
        for name, x, dim in (("k", k, self.qk_dim), ("v", v, self.v_dim)):
            a = np.asarray(x)
            if a.ndim == 2:
                a = a[np.newaxis] if layout == "bshd" else a[:, np.newaxis]
            if a.ndim != 3:
                raise ValueError(f"{name}: {np.ndim(x)}-D, expected [n, kv_heads, dim] "
                                 "(layout 'bshd'), [kv_heads, n, dim] ('bhsd') or "
                                 "[kv_heads, dim] (one token)")
            a = _float_input(a, name)
            logical = a.transpose(1, 0, 2) if layout == "bshd" else a  # [kv_heads, n, dim]
            want = (self.kv_heads, logical.shape[1], dim)
            if logical.shape != want:
                shown = (want[1], want[0], dim) if layout == "bshd" else want
                order = "[n, kv_heads, dim]" if layout == "bshd" else "[kv_heads, n, dim]"
                raise ValueError(f"{name}: shape {np.shape(x)}, expected {shown} for this cache "
                                 f"({order}; kv_heads={self.kv_heads}, dim={dim})")
            views.append(logical)
        if views[0].shape[1] != views[1].shape[1]:
            raise ValueError(f"k and v: {views[0].shape[1]} and {views[1].shape[1]} tokens")
        self._core.append(seq, views[0], views[1])

    def len(self, seq):
        """The number of tokens in sequence seq."""
        return self._core.len(self._seq(seq))

    def lengths(self):
        """The lengths of every sequence, a list of max_seqs ints."""
        return [self._core.len(i) for i in range(self.max_seqs)]

    def free_blocks(self):
        """Blocks used by no sequence: an append of n tokens to a sequence of length L needs
        ceil((L + n) / block_tokens) - ceil(L / block_tokens) of them, plus one when its last
        block is partial and shared with another sequence."""
        return self._core.free_blocks()

    def truncate(self, seq, length):
        """Shortens sequence seq to its first `length` tokens (rollback of rejected speculative
        tokens); blocks no longer used return to the pool. ValueError if length exceeds the
        sequence's length."""
        self._core.truncate(self._seq(seq), _int_arg(length, "length", 0, 2**64 - 1))

    def fork(self, src, dst):
        """Makes sequence dst a copy of sequence src (a shared prompt, a new beam) sharing its
        blocks: no token is copied; the first append into a shared block copies that block."""
        self._core.fork(self._seq(src, "src"), self._seq(dst, "dst"))

    def reorder(self, order):
        """Beam search's survivors: sequence i becomes what sequence order[i] was, for
        i < len(order) (ids may repeat or be missing; a sequence nobody chose is released).
        Sequences len(order) .. max_seqs - 1 are unchanged."""
        self._core.reorder(_u32_ids(order, "order"))

    def reset(self):
        """Empties every sequence."""
        self._core.reset()


# ---- dropout mask and merge ---------------------------------------------------------------


def dropout_mask(p, seed, offset, q_heads, batch, head, rows, cols, row0=0, col0=0):
    """libattn's attention-dropout keep-mask for one (batch, head) and a block of positions.

    Returns a new uint8 array [rows, cols]: element [r, c] is 1 if weight (batch, head,
    row0 + r, col0 + c) is kept under dropout probability p with this seed (0 .. 2**64 - 1)
    and offset (0 .. 2**32 - 1), 0 if it is dropped. q_heads is the problem's query head
    count. This is the mask Context.forward applies with dropout=p, dropout_seed=seed and
    dropout_offset=offset (kept weights are scaled by 1 / (1 - p) there).
    """
    p_c = _probability(p, "p")
    seed = _int_arg(seed, "seed", 0, 2**64 - 1)
    offset = _int_arg(offset, "offset", 0, 2**32 - 1)
    q_heads = _int_arg(q_heads, "q_heads", 0, 2**32 - 1)
    batch = _int_arg(batch, "batch", 0, 2**32 - 1)
    head = _int_arg(head, "head", 0, 2**32 - 1)
    rows = _int_arg(rows, "rows", -2**63, 2**63 - 1)
    cols = _int_arg(cols, "cols", -2**63, 2**63 - 1)
    row0 = _int_arg(row0, "row0", -2**63, 2**63 - 1)
    col0 = _int_arg(col0, "col0", -2**63, 2**63 - 1)
    if 1 <= rows <= 2**32 and 1 <= cols <= 2**32:
        keep = np.empty(rows * cols, np.uint8)
    else:
        keep = np.empty(1, np.uint8)  # libattn refuses these sizes (and names the bound)
    _attn.dropout_mask(p_c, seed, offset, q_heads, batch, head, row0, rows, col0, cols, keep,
                       cols)
    return keep.reshape(rows, cols)


def merge(outs, lses, *, masked_rows="zero"):
    """Combines partial attention results over disjoint key sets into the result over their
    union: outs[i] [B, H, L, D] and lses[i] [B, H, L] (or all without B) as
    Context.forward(..., return_lse=True) gives them. Returns (out, lse), new float32 arrays.
    A row no part saw a key for gets out 0 ("zero") or NaN ("nan") and lse -inf.
    """
    mr = _choice(masked_rows, "masked_rows", _MASKED_ROWS)
    outs, lses = list(outs), list(lses)
    if len(outs) != len(lses):
        raise ValueError(f"{len(outs)} outs and {len(lses)} lses: one lse per part")
    if not outs:
        raise ValueError("no parts to merge")
    ndim = np.ndim(outs[0])
    if ndim not in (3, 4):
        raise ValueError(f"outs[0]: {ndim}-D, expected [B, H, L, D] or [H, L, D]")
    o_views, l_views = [], []
    for i, (o, lse) in enumerate(zip(outs, lses)):
        if np.ndim(o) != ndim or np.ndim(lse) != ndim - 1:
            raise ValueError(f"part {i}: outs[{i}] is {np.ndim(o)}-D and lses[{i}] "
                             f"{np.ndim(lse)}-D, expected {ndim}-D and {ndim - 1}-D like part 0")
        o = _float_input(o, f"outs[{i}]")
        la = np.asarray(lse)
        if la.dtype.kind != "f":
            raise ValueError(f"lses[{i}]: expected a floating-point array, got dtype {la.dtype}")
        la = np.ascontiguousarray(la, dtype=np.float32)
        if ndim == 3:
            o, la = o[np.newaxis], la[np.newaxis]
        o_views.append(o)
        l_views.append(la)
    shape = o_views[0].shape
    if 0 in shape:
        raise ValueError(f"outs[0]: shape {np.shape(outs[0])} has a zero size")
    out = np.empty(shape, np.float32)
    lse = np.empty(shape[:3], np.float32)
    _attn.merge(o_views, l_views, out, lse, mr)
    if ndim == 3:
        return out[0], lse[0]
    return out, lse


# ---- the multi-head attention layer --------------------------------------------------------


def _dense(x, name):
    """x as a C-contiguous, aligned float32 ndarray: x itself when it already is one (no copy),
    else one converted copy. Non-floating dtypes raise."""
    a = np.asarray(x)
    if a.dtype.kind != "f":
        raise ValueError(f"{name}: expected a floating-point array (float32 is used in place), "
                         f"got dtype {a.dtype}")
    if a.dtype != _F32 or not a.flags.c_contiguous or not a.flags.aligned:
        a = np.array(a, dtype=np.float32, order="C")
    return a


def _same_buffer(a, b):
    """True if a and b are the same float32 array memory (pointer and shape)."""
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
            and a.shape == b.shape)


class MultiheadAttention:
    """torch.nn.MultiheadAttention's computation in float32 on numpy arrays (libattn's
    attn_mha layer), forward and backward, with the parameters in PyTorch's layout.

    MultiheadAttention(embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False,
                       add_zero_attn=False, kdim=None, vdim=None, batch_first=False, *,
                       kv_heads=None, causal=False, masked_rows="zero", threads=None,
                       seed=None)

    The arguments up to batch_first are PyTorch's (add_bias_kv and add_zero_attn must be
    False). kv_heads < num_heads gives grouped-query attention (K and V projections of
    kv_heads * head_dim rows); causal hides key j from query i unless j <= i + Lk - Lq;
    masked_rows "zero" or "nan" (PyTorch's) for rows that see no key; threads None = every
    processor; seed initialises the parameters as PyTorch does (Xavier-uniform input
    projections, zero biases). load_state_dict() takes a torch state_dict as it is.

    Parameters are float32 C-contiguous numpy arrays, attributes named as PyTorch's:
    in_proj_weight [E + 2 kvE, E] (when kdim = vdim = E; else q_proj_weight [E, E],
    k_proj_weight [kvE, kdim], v_proj_weight [kvE, vdim]), in_proj_bias [E + 2 kvE],
    out_proj_weight [E, E], out_proj_bias [E]. The layer reads them in place at each call.
    See docs/python.md.
    """

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False,
                 add_zero_attn=False, kdim=None, vdim=None, batch_first=False, *,
                 kv_heads=None, causal=False, masked_rows="zero", threads=None, seed=None):
        if add_bias_kv or add_zero_attn:
            raise ValueError("add_bias_kv and add_zero_attn are not supported (pass False)")
        E = _int_arg(embed_dim, "embed_dim", 0, 2**32 - 1)
        H = _int_arg(num_heads, "num_heads", 0, 2**32 - 1)
        kvh = 0 if kv_heads is None else _int_arg(kv_heads, "kv_heads", 1, 2**32 - 1)
        kd = E if kdim is None else _int_arg(kdim, "kdim", 1, 2**32 - 1)
        vd = E if vdim is None else _int_arg(vdim, "vdim", 1, 2**32 - 1)
        p = _probability(dropout, "dropout")
        mr = _choice(masked_rows, "masked_rows", _MASKED_ROWS)
        th = 0 if threads is None else _int_arg(threads, "threads", 0, 2**32 - 1)
        self._desc = (E, H, kvh, kd, vd, bool(bias), bool(causal), mr, th)
        # libattn validates the descriptor (heads dividing E, limits, dropout range)
        self._cores = {p: _attn.MHA(E, H, kvh, kd, vd, bool(bias), bool(causal), mr, p, th)}
        self.embed_dim, self.num_heads = E, H
        self.kv_heads = kvh or H
        self.head_dim = E // H
        self.kdim, self.vdim = kd, vd
        self.dropout = p
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.causal = bool(causal)
        self.masked_rows = masked_rows
        self.threads = threads
        self.training = True
        self._qkv_same_embed_dim = kd == E and vd == E
        self._saved = None
        kvE = self.kv_heads * self.head_dim
        rng = np.random.default_rng(seed)

        def xavier(rows, cols):
            a = np.sqrt(6.0 / (rows + cols))
            return rng.uniform(-a, a, (rows, cols)).astype(np.float32)

        if self._qkv_same_embed_dim:
            self.in_proj_weight = xavier(E + 2 * kvE, E)
            self.q_proj_weight = self.k_proj_weight = self.v_proj_weight = None
        else:
            self.in_proj_weight = None
            self.q_proj_weight = xavier(E, E)
            self.k_proj_weight = xavier(kvE, kd)
            self.v_proj_weight = xavier(kvE, vd)
        bound = 1.0 / np.sqrt(E)
        self.out_proj_weight = rng.uniform(-bound, bound, (E, E)).astype(np.float32)
        self.in_proj_bias = np.zeros(E + 2 * kvE, np.float32) if bias else None
        self.out_proj_bias = np.zeros(E, np.float32) if bias else None

    # -- parameters ----------------------------------------------------------------------

    _STATE = (("in_proj_weight", "in_proj_weight"), ("q_proj_weight", "q_proj_weight"),
              ("k_proj_weight", "k_proj_weight"), ("v_proj_weight", "v_proj_weight"),
              ("in_proj_bias", "in_proj_bias"), ("out_proj.weight", "out_proj_weight"),
              ("out_proj.bias", "out_proj_bias"))

    def _param_shapes(self):
        E, kvE = self.embed_dim, self.kv_heads * self.head_dim
        shapes = {"in_proj_weight": (E + 2 * kvE, E), "q_proj_weight": (E, E),
                  "k_proj_weight": (kvE, self.kdim), "v_proj_weight": (kvE, self.vdim),
                  "in_proj_bias": (E + 2 * kvE,), "out_proj_weight": (E, E),
                  "out_proj_bias": (E,)}
        names = (["in_proj_weight"] if self._qkv_same_embed_dim else
                 ["q_proj_weight", "k_proj_weight", "v_proj_weight"])
        names += ["in_proj_bias"] * self.bias + ["out_proj_weight"] + ["out_proj_bias"] * self.bias
        return {n: shapes[n] for n in names}

    def state_dict(self):
        """The parameters under torch.nn.MultiheadAttention's state_dict keys (in_proj_weight
        or q/k/v_proj_weight, in_proj_bias, out_proj.weight, out_proj.bias): the arrays
        themselves, not copies."""
        have = self._param_shapes()
        return collections.OrderedDict((key, getattr(self, attr)) for key, attr in self._STATE
                                       if attr in have)

    def load_state_dict(self, state_dict, strict=True):
        """Copies parameters from a mapping with torch's keys (numpy arrays, CPU torch tensors
        or anything numpy.asarray reads) into this layer's arrays, converted to float32.
        strict: every key must be present and no other given. Shapes must match. Nothing is
        changed when something does not fit (ValueError)."""
        have = self._param_shapes()
        keys = {key: attr for key, attr in self._STATE if attr in have}
        given = dict(state_dict)
        if strict:
            missing = [k for k in keys if k not in given]
            extra = [k for k in given if k not in keys]
            if missing or extra:
                raise ValueError(f"load_state_dict: missing keys {missing}, unexpected keys "
                                 f"{extra}")
        new = {}
        for key, attr in keys.items():
            if key not in given:
                continue
            value = given[key]
            if hasattr(value, "detach"):  # a torch tensor (possibly requiring grad)
                value = value.detach().cpu()
            a = np.asarray(value)
            if a.dtype.kind != "f":
                raise ValueError(f"{key}: expected a floating-point array, got dtype {a.dtype}")
            if a.shape != have[attr]:
                raise ValueError(f"{key}: shape {a.shape}, the layer's is {have[attr]}")
            new[attr] = np.array(a, dtype=np.float32, order="C")
        for attr, a in new.items():
            setattr(self, attr, a)

    def train(self, mode=True):
        """Training mode (dropout applied) or, with mode=False, evaluation mode; returns self."""
        self.training = bool(mode)
        return self

    def eval(self):
        """Evaluation mode: no dropout. Returns self."""
        return self.train(False)

    def close(self):
        """Releases the C layers; later calls raise ValueError."""
        for core in self._cores.values():
            core.close()
        self._saved = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return (f"attn.MultiheadAttention(embed_dim={self.embed_dim}, "
                f"num_heads={self.num_heads}, dropout={self.dropout!r}, bias={self.bias}, "
                f"kdim={self.kdim}, vdim={self.vdim}, batch_first={self.batch_first}, "
                f"kv_heads={self.kv_heads}, causal={self.causal}, "
                f"masked_rows={self.masked_rows!r}, threads={self.threads})")

    def _core(self, p):
        core = self._cores.get(p)
        if core is None:  # the evaluation layer: same descriptor, dropout 0
            if next(iter(self._cores.values())).closed:
                raise ValueError("the layer is closed")
            E, H, kvh, kd, vd, bias, causal, mr, th = self._desc
            core = self._cores[p] = _attn.MHA(E, H, kvh, kd, vd, bias, causal, mr, p, th)
        return core

    # -- forward and backward ------------------------------------------------------------

    def _batched(self, x, name, unbatched):
        """An input in the caller's layout -> C-contiguous float32 [B, L, features]."""
        a = np.asarray(x)
        if a.ndim != (2 if unbatched else 3):
            raise ValueError(f"{name}: {a.ndim}-D, expected {2 if unbatched else 3}-D like "
                             "query")
        if unbatched:
            return _dense(a, name)[np.newaxis]
        if not self.batch_first:
            a = a.swapaxes(0, 1)  # [L, B, F] -> [B, L, F]: one copy below
        return _dense(a, name)

    def _unbatch(self, a, unbatched):
        """[B, L, F] -> the caller's layout."""
        if unbatched:
            return a[0]
        return a if self.batch_first else a.swapaxes(0, 1)

    def forward(self, query, key=None, value=None, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False, *, kv_lens=None,
                dropout_seed=0, dropout_offset=0, keep_for_backward=False):
        """The layer's output (and attention weights) as torch.nn.MultiheadAttention.forward.

        query [Lq, B, E] (batch_first=False) or [B, Lq, E], key [Lk, B, kdim], value
        [Lk, B, vdim] likewise, or all 2-D without B (unbatched). key None = query, value
        None = key (self-attention). key_padding_mask [B, Lk]: bool, True = the key is
        ignored (PyTorch's meaning), or float, added to the scores. attn_mask [Lq, Lk] or
        [B * num_heads, Lq, Lk]: bool, True = NOT allowed to attend (PyTorch's meaning), or
        float, added to the scores. need_weights: also return the weights after dropout,
        [B, Lq, Lk] averaged over heads (average_attn_weights) or [B, H, Lq, Lk]. is_causal:
        PyTorch's hint that attn_mask is the causal mask (the mask is used as given); without
        an attn_mask it needs a layer made with causal=True. kv_lens: B key counts (padding).
        dropout_seed, dropout_offset: the dropout mask's key (training mode with dropout).
        keep_for_backward: keep what backward() needs (the layer's last such call).

        Returns (out, weights) with weights None unless need_weights; out in query's layout.
        """
        unbatched = np.ndim(query) == 2
        if np.ndim(query) not in (2, 3):
            raise ValueError(f"query: {np.ndim(query)}-D, expected [L, B, E], [B, L, E] or "
                             "[L, E]")
        seed = _int_arg(dropout_seed, "dropout_seed", 0, 2**64 - 1)
        doff = _int_arg(dropout_offset, "dropout_offset", 0, 2**32 - 1)
        q = self._batched(query, "query", unbatched)
        if key is None or key is query:
            k = q
        else:
            k = self._batched(key, "key", unbatched)
        if value is None:
            v = k
        elif value is query:
            v = q
        elif value is key:
            v = k
        else:
            v = self._batched(value, "value", unbatched)
        B, Lq, _ = q.shape
        if k.shape[0] != B or v.shape[0] != B or k.shape[1] != v.shape[1]:
            raise ValueError(f"query {np.shape(query)}, key {np.shape(key)} and value "
                             f"{np.shape(value)}: the batch sizes or key lengths differ")
        Lk = k.shape[1]
        for x, name, f in ((q, "query", self.embed_dim), (k, "key", self.kdim),
                           (v, "value", self.vdim)):
            if x.shape[2] != f:
                raise ValueError(f"{name}: {x.shape[2]} features, the layer takes {f}")
        H = self.num_heads
        call = {"batch": B, "q_len": Lq, "kv_len": Lk, "query": q, "key": k, "value": v,
                "dropout_seed": seed, "dropout_offset": doff}
        for attr in self._param_shapes():
            a = getattr(self, attr)
            call[attr] = None if a is None else _dense(a, attr)  # None: libattn refuses

        # masks: PyTorch's meanings -> libattn's (visible = nonzero)
        bias3 = None
        if attn_mask is not None:
            m = np.asarray(attn_mask)
            if m.ndim == 2 and m.shape == (Lq, Lk):
                call["mask_shape"] = 0
            elif m.ndim == 3 and m.shape == (B * H, Lq, Lk):
                call["mask_shape"] = 1
            else:
                raise ValueError(f"attn_mask: shape {m.shape}, expected ({Lq}, {Lk}) or "
                                 f"({B * H}, {Lq}, {Lk}) (batch * num_heads, Lq, Lk)")
            if m.dtype == np.bool_:
                call["attn_mask"] = np.ascontiguousarray(~m, dtype=np.uint8)
            elif m.dtype.kind == "f":
                call["attn_bias"] = _dense(m, "attn_mask")
            else:
                raise ValueError(f"attn_mask: dtype {m.dtype} is neither bool (True = not "
                                 "allowed to attend) nor floating (added to the scores)")
        elif is_causal and not self.causal:
            raise ValueError("is_causal=True without attn_mask: make the layer with causal=True "
                             "(or pass the causal attn_mask)")
        if key_padding_mask is not None:
            kpm = np.asarray(key_padding_mask)
            if unbatched and kpm.ndim == 1:
                kpm = kpm[np.newaxis]
            if kpm.shape != (B, Lk):
                raise ValueError(f"key_padding_mask: shape {np.shape(key_padding_mask)}, "
                                 f"expected {(B, Lk) if not unbatched else (Lk,)}")
            if kpm.dtype == np.bool_:
                call["key_visible"] = np.ascontiguousarray(~kpm, dtype=np.uint8)
            elif kpm.dtype.kind == "f":
                # added to the scores: folded with attn_mask into one [B * H, Lq, Lk] bias
                bias3 = np.broadcast_to(kpm.astype(np.float32)[:, None, None, :],
                                        (B, H, Lq, Lk))
                if "attn_bias" in call or "attn_mask" in call:
                    m = (call.pop("attn_bias") if "attn_bias" in call else
                         np.where(call.pop("attn_mask"), 0.0, -np.inf).astype(np.float32))
                    m = m.reshape(B, H, Lq, Lk) if call["mask_shape"] == 1 else m
                    bias3 = bias3 + m
                call["attn_bias"] = np.array(bias3.reshape(B * H, Lq, Lk), np.float32,
                                             order="C")
                call["mask_shape"] = 1
            else:
                raise ValueError(f"key_padding_mask: dtype {kpm.dtype} is neither bool (True = "
                                 "ignore the key) nor floating (added to the scores)")
        if kv_lens is not None:
            kl = np.asarray(kv_lens)
            if kl.shape != (B,) or kl.dtype.kind not in "iu":
                raise ValueError(f"kv_lens: expected {B} integers, got {kl.dtype} {kl.shape}")
            if kl.size and (kl.min() < 0 or kl.max() > Lk):
                b = int(np.argmax((kl < 0) | (kl > Lk)))
                raise ValueError(f"kv_lens[{b}] = {int(kl[b])} is outside [0, kv_len = {Lk}]")
            call["kv_lens"] = np.ascontiguousarray(kl, dtype=np.int32)

        out = np.empty((B, Lq, self.embed_dim), np.float32)
        call["out"] = out
        w = None
        if need_weights:
            call["weights_mode"] = 2 if average_attn_weights else 1
            w = np.empty((B, Lq, Lk) if average_attn_weights else (B, H, Lq, Lk), np.float32)
            call["weights"] = w
        p = self.dropout if self.training else 0.0
        core = self._core(p)
        call["activations"] = np.empty(core.activation_size(B, Lq, Lk), np.uint8)
        if keep_for_backward:
            call["saved"] = np.empty(core.saved_size(B, Lq, Lk), np.uint8)
        core.forward(call)
        del call["activations"], call["out"]
        call.pop("weights", None)
        call.pop("weights_mode", None)
        if keep_for_backward:
            self._saved = (core, call, unbatched)
        if w is not None and unbatched:
            w = w[0]
        return self._unbatch(out, unbatched), w

    __call__ = forward

    def backward(self, dout, *, inputs=True, params=True, grads=None, accumulate=False):
        """Gradients for the last forward call made with keep_for_backward=True (its inputs,
        parameters and masks unchanged since), given dout = dloss/dout in out's layout.

        inputs: True, False or some of "query", "key", "value"; params: True, False or some
        of the state_dict keys. Returns a dict of float32 arrays by those names (gradients of
        the inputs in their layouts; when key or value was the query's (or key's) array, as
        in self-attention, one array holds the sum of the gradients, as autograd gives, under
        each of the names). grads: arrays to write into instead of new ones (float32,
        C-contiguous, the tensor's shape); accumulate=True adds the gradients to what they
        hold (every requested gradient must then be in grads).
        """
        if self._saved is None:
            raise ValueError("backward: no forward call with keep_for_backward=True to "
                             "differentiate")
        core, call, unbatched = self._saved
        B, Lq, Lk = call["batch"], call["q_len"], call["kv_len"]
        E = self.embed_dim
        d = self._batched(dout, "dout", unbatched)
        if d.shape != (B, Lq, E):
            raise ValueError(f"dout: shape {np.shape(dout)}, expected out's")
        pshapes = self._param_shapes()
        pkeys = {key: attr for key, attr in self._STATE if attr in pshapes}
        want_in = (("query", "key", "value") if inputs is True else () if inputs is False
                   else tuple(inputs))
        want_p = (tuple(pkeys) if params is True else () if params is False else tuple(params))
        for n in want_in:
            if n not in ("query", "key", "value"):
                raise ValueError(f"inputs: {n!r} is not 'query', 'key' or 'value'")
        for n in want_p:
            if n not in pkeys:
                raise ValueError(f"params: {n!r} is not one of {', '.join(map(repr, pkeys))}")
        grads = {} if grads is None else dict(grads)
        for n in grads:
            if n not in want_in and n not in want_p:
                raise ValueError(f"grads: {n!r} is not a requested gradient")
        if accumulate:
            missing = [n for n in want_in + want_p if n not in grads]
            if missing:
                raise ValueError(f"accumulate=True: no array in grads for {missing}")

        def target(name, shape):
            a = grads.get(name)
            if a is None:
                return None
            if not (isinstance(a, np.ndarray) and a.dtype == _F32 and a.flags.c_contiguous
                    and a.flags.writeable and a.flags.aligned and a.shape == shape):
                raise ValueError(f"grads[{name!r}]: expected a writable C-contiguous float32 "
                                 f"array of shape {shape}")
            return a

        c = dict(call)
        c["dout"] = d
        c["mode"] = 1 if accumulate else 0
        c["activations"] = np.empty(core.activation_size(B, Lq, Lk), np.uint8)
        result = {}
        for n in want_p:
            attr = pkeys[n]
            a = target(n, pshapes[attr])
            result[n] = a if a is not None else np.empty(pshapes[attr], np.float32)
            c["d_" + attr] = result[n]
        # inputs: the same buffer for query and key (or value) shares one gradient (the sum)
        q, k, v = call["query"], call["key"], call["value"]
        owner = {"query": "query",
                 "key": "query" if _same_buffer(k, q) else "key",
                 "value": ("query" if _same_buffer(v, q) else
                           "key" if _same_buffer(v, k) else "value")}
        tensors = {"query": q, "key": k, "value": v}
        copies = []  # (caller's array, the [B, L, F] gradient to copy or add into it)
        bufs = {}
        for n in want_in:
            o = owner[n]
            if o not in want_in:
                o = n  # the owner's gradient is not asked for: this one gets its own part
                owner[n] = n
            if o in bufs:
                c["d_" + n] = bufs[o]
                continue
            x = tensors[n]
            shape = self._unbatch(x, unbatched).shape
            a = target(n, shape)
            for other in want_in:
                if other != n and owner[other] == o and other in grads and \
                        grads[other] is not grads.get(n):
                    raise ValueError(f"grads[{other!r}] must be grads[{n!r}]: {other} and {n} "
                                     "are one array, whose gradient is their sum")
            if a is not None and (unbatched or self.batch_first):
                buf = a.reshape(x.shape)  # a view: written in place
            elif a is not None:
                buf = np.zeros(x.shape, np.float32) if accumulate else np.empty(x.shape,
                                                                                 np.float32)
                copies.append((a, buf))
            else:
                buf = np.empty(x.shape, np.float32)
            bufs[o] = c["d_" + n] = buf
        core.backward(c)
        for a, buf in copies:
            if accumulate:
                a += self._unbatch(buf, unbatched)
            else:
                np.copyto(a, self._unbatch(buf, unbatched))
        for n in want_in:
            a = grads.get(n)
            if a is None:
                a = grads.get(owner[n])
            result[n] = a if a is not None else self._unbatch(bufs[owner[n]], unbatched)
        # one array object per shared gradient
        for n in want_in:
            if owner[n] != n:
                result[n] = result[owner[n]]
        return result


# ---- the PyTorch-style function -----------------------------------------------------------


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                 is_causal=False, scale=None, *, enable_gqa=False,
                                 layout="bhsd", window=None, kv_lens=None, q_offset=None,
                                 bias=None, weights="none", return_lse=False,
                                 return_entropy=False, masked_rows="zero", threads=None):
    """softmax(query · keyᵀ · scale + mask) · value in float32, as
    torch.nn.functional.scaled_dot_product_attention, plus libattn's options.

    query [B, Hq, Lq, Dk], key [B, Hkv, Lk, Dk], value [B, Hkv, Lk, Dv] (layout="bhsd"), or
    [B, L, H, D] (layout="bshd"), or 3-D without B. Hq must be a multiple of Hkv (grouped-query
    attention is inferred; enable_gqa is accepted and ignored). float32 arrays are read in
    place when their last axis is contiguous; other floating dtypes and other strides cost one
    float32 copy.

    attn_mask: bool (True = the key takes part) or float (added to the scores), broadcastable to
    [B, Hq, Lq, Lk]. dropout_p must be 0. is_causal: key j visible to query i only if
    j <= i + q_offset. scale: None = 1/sqrt(Dk).
    Beyond PyTorch: window=(left, right), kv_lens (B key counts), q_offset (None = Lk - Lq,
    which differs from PyTorch's top-left alignment when Lq != Lk: pass q_offset=0 for that),
    bias (added to the scores), weights="none"|"per_head"|"head_mean", return_lse,
    return_entropy, masked_rows="zero"|"nan" (what a row that sees no key gives), threads
    (None = every processor).

    Returns out (layout of query, float32) or, when weights, lse or entropy is asked for, a
    Result(out, weights, lse, entropy) with None for those not asked for.
    Raises ValueError for bad arguments, MemoryError, RuntimeError (worker threads).
    """
    del enable_gqa
    if dropout_p != 0:
        raise ValueError(f"dropout_p = {dropout_p!r}: dropout is not supported, pass 0")
    ndim = np.ndim(query)
    if ndim not in (3, 4) or np.ndim(key) != ndim or np.ndim(value) != ndim:
        raise ValueError(f"query, key and value must all be 4-D [B, H, L, D] (or [B, L, H, D]) "
                         f"or all 3-D without B; got {np.ndim(query)}-D, {np.ndim(key)}-D, "
                         f"{np.ndim(value)}-D")
    _choice(layout, "layout", {name: name for name in _LAYOUTS})
    head_axis = ndim - 3 if layout == "bhsd" else ndim - 2
    q_heads, kv_heads = np.shape(query)[head_axis], np.shape(key)[head_axis]
    if kv_heads == 0 or q_heads % kv_heads:
        raise ValueError(f"query has {q_heads} heads, key has {kv_heads}: the query head count "
                         "must be a multiple of the key/value head count")
    if q_heads == 0:
        raise ValueError("query has 0 heads")
    qk_dim, v_dim = np.shape(query)[-1], np.shape(value)[-1]
    if qk_dim == 0 or v_dim == 0:
        raise ValueError(f"feature sizes must be at least 1, got qk_dim = {qk_dim}, "
                         f"v_dim = {v_dim}")
    with Context(q_heads, kv_heads, qk_dim, v_dim, scale=scale, causal=is_causal,
                 window=window, masked_rows=masked_rows, threads=threads) as ctx:
        return ctx.forward(query, key, value, attn_mask, layout=layout, kv_lens=kv_lens,
                           q_offset=q_offset, bias=bias, weights=weights,
                           return_lse=return_lse, return_entropy=return_entropy)
