#!/usr/bin/python3
"""Tests of the attn command-line tool, run by ctest:
    test_cli.py ATTN_BINARY run|npy|heatmap|info
run:     attn run on arrays written here, against an attention computed in float64 with numpy,
         every option at least once, and its argument and shape errors.
npy:     every kind of bad .npy file: exit status 2, a one-line message naming the file, no
         output left behind (and an existing output untouched).
heatmap: the SVG parses as XML and has one cell per weight, the labels, the entropies and the
         colour bar; the terminal rendering; its errors.
info:    the version, kernels, BLAS lines and the workspace size."""
import math
import os
import struct
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

import numpy as np

ATTN = os.path.abspath(sys.argv[1])
WHAT = sys.argv[2]
failures = 0
checks = 0


def check(ok, what):
    global failures, checks
    checks += 1
    if not ok:
        failures += 1
        print("FAIL:", what)


def attn(*args, env=None):
    e = dict(os.environ)
    if env:
        e.update(env)
    return subprocess.run([ATTN, *map(str, args)], capture_output=True, text=True, env=e)


# ---- float64 reference ------------------------------------------------------------------------

def reference(q, k, v, scale=0.0, causal=False, q_offset=None, window=(-1, -1), kv_lens=None,
              mask=None, bias=None, nan_rows=False):
    """q [B,H,Sq,D], k [B,G,Skv,D], v [B,G,Skv,E] (float64); mask/bias broadcastable to
    [B,H,Sq,Skv]. Returns out [B,H,Sq,E], weights [B,H,Sq,Skv], lse and entropy [B,H,Sq]."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    B, H, Sq, D = q.shape
    G, Skv, E = k.shape[1], k.shape[2], v.shape[3]
    scale = scale or 1.0 / math.sqrt(D)
    off = Skv - Sq if q_offset is None else q_offset
    i = np.arange(Sq)[:, None]
    j = np.arange(Skv)[None, :]
    vis = np.ones((B, H, Sq, Skv), bool)
    if causal:
        vis &= j <= i + off
    if window[0] >= 0:
        vis &= j >= i + off - window[0]
    if window[1] >= 0:
        vis &= j <= i + off + window[1]
    if kv_lens is not None:
        vis &= np.arange(Skv)[None, None, None, :] < np.asarray(kv_lens)[:, None, None, None]
    if mask is not None:
        vis &= np.broadcast_to(np.asarray(mask) != 0, vis.shape)
    out = np.zeros((B, H, Sq, E))
    w = np.zeros((B, H, Sq, Skv))
    lse = np.full((B, H, Sq), -np.inf)
    ent = np.zeros((B, H, Sq))
    bias_b = np.zeros(vis.shape) if bias is None else np.broadcast_to(
        np.asarray(bias, np.float64), vis.shape)
    for b in range(B):
        for h in range(H):
            g = h // (H // G)
            s = q[b, h] @ k[b, g].T * scale + bias_b[b, h]
            s = np.where(vis[b, h], s, -np.inf)
            for r in range(Sq):
                if not np.isfinite(s[r]).any() and np.all(s[r] == -np.inf):
                    if nan_rows:
                        out[b, h, r] = np.nan
                        w[b, h, r] = np.nan
                        ent[b, h, r] = np.nan
                    continue
                m = s[r].max()
                e = np.exp(s[r] - m)
                p = e / e.sum()
                w[b, h, r] = p
                out[b, h, r] = p @ v[b, g]
                lse[b, h, r] = m + math.log(e.sum())
                nz = p[p > 0]
                ent[b, h, r] = -(nz * np.log(nz)).sum()
    return out, w, lse, ent


def close(got, want, what, atol=3e-5, rtol=3e-4):
    ok = got.shape == want.shape and np.allclose(got, want, atol=atol, rtol=rtol, equal_nan=True)
    if not ok and got.shape == want.shape:
        err = np.nanmax(np.abs(got.astype(np.float64) - want))
        what = f"{what} (max abs error {err:.3g})"
    elif not ok:
        what = f"{what} (shape {got.shape}, expected {want.shape})"
    check(ok, what)


# ---- attn run -----------------------------------------------------------------------------------

def test_run(d):
    rng = np.random.default_rng(42)
    P = lambda name: os.path.join(d, name)

    def save(name, a):
        np.save(P(name), a)
        return P(name)

    def case(name, q, k, v, layout="bhsd", opts=(), ref_kw=None, outputs=("out",),
             head_mean=False, env=None):
        """q, k, v as saved (layout order); ref_kw for the reference; checks each output."""
        args = ["run", "--q", save("q.npy", q), "--k", save("k.npy", k), "--v", save("v.npy", v),
                "--out", P("o.npy"), "--layout", layout, *opts]
        for o in ("weights", "lse", "entropy"):
            if o in outputs:
                args += [f"--{o}", P(o + ".npy")]
        if head_mean:
            args.append("--head-mean")
        for f in ("o.npy", "weights.npy", "lse.npy", "entropy.npy"):
            if os.path.exists(P(f)):
                os.remove(P(f))
        r = attn(*args, env=env)
        check(r.returncode == 0, f"{name}: exit {r.returncode}: {r.stderr.strip()}")
        if r.returncode != 0:
            return r
        # To the reference's [B,H,S,D] from the saved layout, and the output back.
        def to4(a):
            a = np.asarray(a, np.float64)
            if a.ndim == 2:
                return a[None, None]
            if a.ndim == 3:
                return a[None].transpose(0, 2, 1, 3) if layout == "bshd" else a[None]
            return a.transpose(0, 2, 1, 3) if layout == "bshd" else a
        # The tool computes on the float32 values of what it read.
        q32, k32, v32 = (to4(np.asarray(x).astype(np.float32)) for x in (q, k, v))
        out, w, lse, ent = reference(q32, k32, v32, **(ref_kw or {}))
        got = np.load(P("o.npy"))
        check(got.dtype == np.float32, f"{name}: out dtype {got.dtype}")
        want = out
        if q.ndim == 4 and layout == "bshd":
            want = out.transpose(0, 2, 1, 3)
        elif q.ndim == 3:
            want = out[0].transpose(1, 0, 2) if layout == "bshd" else out[0]
        elif q.ndim == 2:
            want = out[0, 0]
        close(got, want, f"{name}: out")
        drop = 4 - q.ndim  # leading axes the inputs lacked
        if "weights" in outputs:
            got = np.load(P("weights.npy"))
            if head_mean:
                wm = w.mean(axis=1)
                close(got, wm if q.ndim == 4 else wm[0], f"{name}: head-mean weights")
            else:
                close(got, w.reshape(w.shape[drop:]) if drop else w, f"{name}: weights")
        if "lse" in outputs:
            got = np.load(P("lse.npy"))
            close(got, lse.reshape(lse.shape[drop:]), f"{name}: lse")
        if "entropy" in outputs:
            got = np.load(P("entropy.npy"))
            close(got, ent.reshape(ent.shape[drop:]), f"{name}: entropy")
        return r

    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)
    all_out = ("out", "weights", "lse", "entropy")

    # GQA (4 query heads over 2 kv heads), v_dim != qk_dim, Lq != Lk, every output.
    case("gqa", f32(2, 4, 5, 16), f32(2, 2, 7, 16), f32(2, 2, 7, 8), outputs=all_out)
    # [B, S, H, D] layout with causal and an explicit query offset.
    case("bshd causal q-offset", f32(2, 6, 4, 8), f32(2, 9, 1, 8), f32(2, 9, 1, 8), "bshd",
         ["--causal", "--q-offset", "1"], {"causal": True, "q_offset": 1}, all_out)
    # Default query offset (kv_len - q_len) with causal.
    case("causal default offset", f32(1, 2, 3, 8), f32(1, 2, 6, 8), f32(1, 2, 6, 8), "bhsd",
         ["--causal"], {"causal": True}, all_out)
    # 3-D [H, S, D], a sliding window and an explicit scale.
    case("3-D window scale", f32(3, 8, 8), f32(3, 8, 8), f32(3, 8, 4), "bhsd",
         ["--window", "2,1", "--scale", "0.3"],
         {"window": (2, 1), "scale": 0.3, "q_offset": 0}, all_out)
    case("3-D bshd window left only", f32(8, 2, 4), f32(8, 2, 4), f32(8, 2, 4), "bshd",
         ["--window", "3,-1", "--q-offset", "0"], {"window": (3, -1), "q_offset": 0}, all_out)
    # 2-D [S, D]: one batch, one head; broadcast mask [Sq, Skv] and bias [1, 1, 1, Skv].
    mask2 = rng.random((5, 9)) > 0.3
    mask2[:, 0] = True
    save("mask.npy", mask2)
    bias = f32(1, 1, 1, 9)
    save("bias.npy", bias)
    case("2-D mask bias", f32(5, 8), f32(9, 8), f32(9, 8), "bhsd",
         ["--mask", P("mask.npy"), "--bias", P("bias.npy")],
         {"mask": mask2, "bias": bias}, all_out)
    # head-mean weights; a uint8 mask per head broadcast over batch and the key axis
    # ([1, H, Sq, 1]: expanded along the keys), kv_lens per batch.
    mask3 = (rng.random((1, 4, 6, 1)) > 0.2).astype(np.uint8)
    mask3[0, :, 0, 0] = 1
    save("mask.npy", mask3)
    case("head-mean kv-lens mask", f32(3, 4, 6, 8), f32(3, 2, 10, 8), f32(3, 2, 10, 8), "bhsd",
         ["--mask", P("mask.npy"), "--kv-lens", "10,4,7"],
         {"mask": mask3, "kv_lens": [10, 4, 7]}, ("out", "weights"), head_mean=True)
    # A batch larger than any fixed-size list: 1500 kv_lens, zeros among them (rows that see
    # no key).
    lens = rng.integers(0, 4, 1500)
    case("1500 kv-lens", f32(1500, 1, 2, 4), f32(1500, 1, 3, 4), f32(1500, 1, 3, 4), "bhsd",
         ["--kv-lens", ",".join(map(str, lens))], {"kv_lens": lens}, ("out", "lse"))
    # A float bias with -inf entries (hides keys) broadcast over heads: [B, 1, Sq, Skv].
    biasinf = f32(2, 1, 4, 6)
    biasinf[:, :, :, 2] = -np.inf
    save("bias.npy", biasinf)
    case("bias -inf", f32(2, 2, 4, 8), f32(2, 2, 6, 8), f32(2, 2, 6, 8), "bhsd",
         ["--bias", P("bias.npy")], {"bias": biasinf}, all_out)
    # Fully masked rows: zeros by default, NaN with --masked-rows nan.
    mask4 = np.ones((4, 6), bool)
    mask4[1] = False
    save("mask.npy", mask4)
    for policy in ("zero", "nan"):
        case(f"masked rows {policy}", f32(1, 1, 4, 8), f32(1, 1, 6, 8), f32(1, 1, 6, 8), "bhsd",
             ["--mask", P("mask.npy"), "--masked-rows", policy],
             {"mask": mask4, "nan_rows": policy == "nan"}, all_out)
    # MQA with 3-D Q and 2-D K, V (one kv head); threads; leaving the BLAS alone.
    case("mqa threads blas-untouched", f32(4, 5, 8), f32(7, 8), f32(7, 8), "bhsd",
         ["--threads", "2", "--blas-untouched"], None, all_out)
    # float64 and float16 inputs are converted, with a note.
    q64 = rng.standard_normal((1, 2, 3, 8))
    r = case("float64 and float16", q64, f32(1, 2, 4, 8).astype(np.float16), f32(1, 2, 4, 8))
    check(r.returncode == 0 and "'<f8' converted" in r.stderr and "'<f2' converted" in r.stderr,
          f"conversion notes: {r.stderr!r}")
    # Each kernel variant through --isa (the summary line names the variant in use; a variant
    # this CPU lacks falls back, so only scalar, which every CPU has, must be named exactly).
    for isa in ("scalar", "avx2", "avx512"):
        r = case(f"--isa {isa}", f32(2, 2, 33, 16), f32(2, 2, 40, 16), f32(2, 2, 40, 16),
                 opts=["--isa", isa, "--causal"], ref_kw={"causal": True}, outputs=all_out)
        if isa == "scalar":
            check("(scalar kernels)" in r.stdout, f"--isa scalar not in effect: {r.stdout!r}")
    # --isa overrides an ATTN_ISA from the environment.
    r = case("--isa over ATTN_ISA", f32(1, 1, 2, 8), f32(1, 1, 3, 8), f32(1, 1, 3, 8),
             opts=["--isa", "scalar"], env={"ATTN_ISA": "avx512"})
    check("(scalar kernels)" in r.stdout, f"--isa did not override ATTN_ISA: {r.stdout!r}")
    # -q prints nothing; the summary names the files otherwise.
    r = case("quiet", f32(1, 1, 2, 8), f32(1, 1, 3, 8), f32(1, 1, 3, 8), opts=["-q"])
    check(r.stdout == "", f"--quiet printed {r.stdout!r}")

    # Errors: exit status 2, a message, no output file.
    save("q.npy", f32(2, 4, 5, 8))
    save("k.npy", f32(2, 2, 7, 8))
    save("v.npy", f32(2, 2, 7, 8))
    base = ["run", "--q", P("q.npy"), "--k", P("k.npy"), "--v", P("v.npy"), "--out", P("o.npy")]

    def bad(name, extra, contains, replace=None, status=2):
        args = list(base)
        for key, val in (replace or {}).items():
            args[args.index(key) + 1] = val
        for f in ("o.npy", "weights.npy"):
            if os.path.exists(P(f)):
                os.remove(P(f))
        r = attn(*args, *extra)
        check(r.returncode == status, f"{name}: exit {r.returncode}, expected {status}")
        check(contains in r.stderr, f"{name}: {contains!r} not in {r.stderr!r}")
        left = [f for f in os.listdir(d) if f.startswith(("o.npy", "weights.npy"))]
        check(not left, f"{name}: left {left}")

    save("k3.npy", f32(2, 3, 7, 8))
    bad("heads do not divide", [], "divide", {"--k": P("k3.npy"), "--v": P("k3.npy")})
    save("kb.npy", f32(3, 2, 7, 8))
    bad("batch differs", [], "batch sizes differ", {"--k": P("kb.npy")})
    save("kd.npy", f32(2, 2, 7, 6))
    bad("qk_dim differs", [], "qk_dim", {"--k": P("kd.npy")})
    save("vl.npy", f32(2, 2, 6, 8))
    bad("kv lengths differ", [], "differ in heads or length", {"--v": P("vl.npy")})
    save("q5.npy", f32(1, 2, 4, 5, 8))
    bad("5-D", [], "2-D, 3-D or 4-D", {"--q": P("q5.npy")})
    save("q0.npy", f32(2, 4, 0, 8))
    bad("empty axis", [], "empty axis", {"--q": P("q0.npy")})
    save("mbad.npy", np.ones((3, 7), bool))
    bad("mask does not broadcast", ["--mask", P("mbad.npy")], "does not broadcast")
    save("mf.npy", np.ones((5, 7), np.float32))
    bad("float mask", ["--mask", P("mf.npy")], "boolean or uint8")
    save("bu.npy", np.ones((5, 7), np.uint8))
    bad("uint8 bias", ["--bias", P("bu.npy")], "floating-point")
    bad("uint8 q", [], "floating-point", {"--q": P("bu.npy")})
    bad("kv-lens count", ["--kv-lens", "3"], "batch is 2")
    bad("kv-lens value", ["--kv-lens", "3,8"], "kv_lens")
    bad("kv-lens syntax", ["--kv-lens", "3,x"], "--kv-lens")
    bad("window syntax", ["--window", "3"], "--window")
    bad("window value", ["--window", "-2,1"], "--window")
    bad("q-offset syntax", ["--q-offset", "1.5"], "--q-offset")
    bad("q-offset range", ["--q-offset", "99999999999"], "q_offset")
    bad("scale syntax", ["--scale", "abc"], "--scale")
    bad("scale nan", ["--scale", "nan"], "scale")
    bad("threads", ["--threads", "300"], "--threads")
    bad("isa", ["--isa", "sse2"], "--isa")
    bad("layout", ["--layout", "bsdh"], "--layout")
    bad("masked-rows", ["--masked-rows", "ignore"], "--masked-rows")
    bad("head-mean without weights", ["--head-mean"], "--head-mean needs --weights")
    bad("same output twice", ["--weights", P("o.npy")], "two outputs")
    bad("unknown option", ["--frobnicate"], "unknown option")
    bad("missing value", ["--scale"], "needs a value")
    bad("missing input", [], "No such file", {"--q": P("nonexistent.npy")})
    r = attn("run", "--q", P("q.npy"))
    check(r.returncode == 2 and "required" in r.stderr, "missing --k --v --out")
    # A failed write leaves nothing: the output's directory does not exist (exit 1).
    r = attn(*base[:-1], P("nodir/o.npy"), "--weights", P("weights.npy"))
    check(r.returncode == 1, f"unwritable output: exit {r.returncode}")
    check(not os.path.exists(P("weights.npy")), "weights written although out failed")
    check(not [f for f in os.listdir(d) if ".tmp-" in f], "temporary file left behind")
    # An existing output is untouched by a failed run.
    with open(P("o.npy"), "wb") as f:
        f.write(b"old")
    r = attn(*base, "--kv-lens", "1,99")
    check(r.returncode == 2 and open(P("o.npy"), "rb").read() == b"old",
          "existing output changed by a failed run")
    r = attn("run", "--help")
    check(r.returncode == 0 and r.stdout.startswith("Usage: attn run"), "run --help")


# ---- .npy reader errors -------------------------------------------------------------------------

def npy_bytes(header, data=b"", version=(1, 0), hlen=None):
    h = header.encode("latin1")
    n = len(h) if hlen is None else hlen
    if version[0] == 1:
        pre = b"\x93NUMPY" + bytes(version) + struct.pack("<H", n)
    else:
        pre = b"\x93NUMPY" + bytes(version) + struct.pack("<I", n)
    return pre + h + data


def test_npy(d):
    P = lambda name: os.path.join(d, name)
    good = np.ones((1, 1, 2, 4), np.float32)
    np.save(P("k.npy"), good)
    np.save(P("v.npy"), good)
    hdr = lambda descr="<f4", fo="False", shape="(1, 1, 2, 4)": (
        "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }\n" % (descr, fo, shape))
    data = good.tobytes()
    cases = {
        "empty file": b"",
        "not npy": b"PK\x03\x04 this is a zip file, not an array" * 3,
        "magic only": b"\x93NUMPY",
        "truncated header": npy_bytes(hdr(), hlen=500),
        "version 3.0": npy_bytes(hdr(), data, version=(3, 0)),
        "version 1.1": npy_bytes(hdr(), data, version=(1, 1)),
        "not a dict": npy_bytes("['descr', '<f4']\n", data),
        "missing shape": npy_bytes("{'descr': '<f4', 'fortran_order': False}\n", data),
        "unknown key": npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (8,), "
                                 "'extra': 1}\n", data),
        "duplicate key": npy_bytes("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, "
                                   "'shape': (8,)}\n", data),
        "fortran_order not bool": npy_bytes(hdr(fo="0"), data),
        "shape not a tuple": npy_bytes(hdr(shape="[1, 1, 2, 4]"), data),
        "shape negative": npy_bytes(hdr(shape="(-1, 4)"), data),
        "shape (n)": npy_bytes(hdr(shape="(8)"), data),
        "shape overflow": npy_bytes(hdr(shape="(99999999999999999999,)"), data),
        "shape product overflow": npy_bytes(hdr(shape="(4294967296, 4294967296, 4294967296)")),
        "text after dict": npy_bytes(hdr().rstrip("\n") + " x\n", data),
        "unterminated string": npy_bytes("{'descr: '<f4'\n", data),
        "fortran order": npy_bytes(hdr(fo="True"), data),
        "big-endian": npy_bytes(hdr(descr=">f4"), data),
        "int32": npy_bytes(hdr(descr="<i4"), data),
        "complex": npy_bytes(hdr(descr="<c8", shape="(1, 1, 1, 4)"), data),
        "structured": npy_bytes("{'descr': [('a', '<f4')], 'fortran_order': False, "
                                "'shape': (8,)}\n", data),
        "truncated data": npy_bytes(hdr(), data[:-3]),
        "extra data": npy_bytes(hdr(), data + b"\x00" * 4),
        "3-D shape that does not fit": npy_bytes(hdr(shape="(2, 2, 2, 1)"), data),
    }
    expect = {
        "empty file": "not a .npy file", "not npy": "not a .npy file",
        "magic only": "truncated header", "truncated header": "truncated header",
        "version 3.0": "version 3.0", "version 1.1": "version 1.1",
        "not a dict": "malformed header", "missing shape": "missing key 'shape'",
        "unknown key": "unknown key 'extra'", "duplicate key": "given twice",
        "fortran_order not bool": "True or False", "shape not a tuple": "not a tuple",
        "shape negative": "non-negative", "shape (n)": "not a tuple",
        "shape overflow": "64 bits", "shape product overflow": "too large",
        "text after dict": "after the closing", "unterminated string": "malformed header",
        "fortran order": "Fortran-ordered", "big-endian": "big-endian",
        "int32": "unsupported dtype '<i4'", "complex": "unsupported dtype '<c8'",
        "structured": "structured", "truncated data": "truncated data",
        "extra data": "after the data", "3-D shape that does not fit": "differ",
    }
    for name, blob in cases.items():
        path = P("bad.npy")
        with open(path, "wb") as f:
            f.write(blob)
        for f in os.listdir(d):
            if f.startswith("o.npy"):
                os.remove(P(f))
        r = attn("run", "--q", path, "--k", P("k.npy"), "--v", P("v.npy"), "--out", P("o.npy"))
        lines = r.stderr.strip().split("\n")
        check(r.returncode == 2, f"{name}: exit {r.returncode}")
        check(len(lines) == 1 and expect[name] in lines[0],
              f"{name}: message {r.stderr!r} lacks {expect[name]!r}")
        if name != "3-D shape that does not fit":
            check(lines[0].startswith(f"attn run: {path}: "), f"{name}: file not named first")
        check(not [f for f in os.listdir(d) if f.startswith("o.npy")],
              f"{name}: output left behind")
    # Version 2.0 headers and double quotes are read, and give the same result as 1.0.
    for name, blob in (("v2.0", npy_bytes(hdr(), data, version=(2, 0))),
                       ("double quotes", npy_bytes(hdr().replace("'", '"'), data))):
        with open(P("q.npy"), "wb") as f:
            f.write(blob)
        r = attn("run", "--q", P("q.npy"), "--k", P("k.npy"), "--v", P("v.npy"), "--out",
                 P("o.npy"))
        check(r.returncode == 0, f"{name}: {r.stderr}")
        if r.returncode == 0:
            close(np.load(P("o.npy")), np.ones((1, 1, 2, 4)), f"{name}: result")
    # The output is a file numpy reads back with the expected header.
    with open(P("o.npy"), "rb") as f:
        major, minor = np.lib.format.read_magic(f)
        shape, fortran, dtype = np.lib.format._read_array_header(f, (major, minor))
        check(f.tell() % 64 == 0, "data offset not a multiple of 64")
    check((major, shape, fortran, dtype) == (1, (1, 1, 2, 4), False, np.dtype("<f4")),
          f"written header: {major} {shape} {fortran} {dtype}")
    # The output gets the permissions a newly created file gets.
    mode = os.stat(P("o.npy")).st_mode & 0o777
    um = os.umask(0)
    os.umask(um)
    check(mode == 0o666 & ~um, f"output mode {oct(mode)}")


# ---- attn heatmap -------------------------------------------------------------------------------

def test_heatmap(d):
    P = lambda name: os.path.join(d, name)
    rng = np.random.default_rng(5)
    w = rng.random((2, 3, 5, 7)).astype(np.float32)
    w /= w.sum(-1, keepdims=True)
    w[1, 2, 3] = 0
    w[1, 2, 3, 4] = 1  # one certain row: entropy 0, the largest value
    np.save(P("w.npy"), w)
    rows = ["the", "black", "cat & <dog>", "schläft", "\"on\""]
    cols = ["die", "schwarze", "Katze", "'s", "auf", "der", "Matte"]
    with open(P("r.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(rows) + "\n")
    with open(P("c.txt"), "w", encoding="utf-8") as f:
        f.write("\r\n".join(cols))  # CRLF and no final newline
    r = attn("heatmap", "--weights", P("w.npy"), "--batch", 1, "--head", 2, "--rows-labels",
             P("r.txt"), "--cols-labels", P("c.txt"), "--out", P("w.svg"))
    check(r.returncode == 0, f"heatmap: exit {r.returncode}: {r.stderr}")
    ns = "{http://www.w3.org/2000/svg}"
    root = ET.parse(P("w.svg")).getroot()
    check(root.tag == ns + "svg", f"root element {root.tag}")
    texts = lambda cls: [t.text for t in root.iter(ns + "text") if t.get("class") == cls]
    cells = [c for c in root.iter(ns + "rect") if c.get("class") == "cell"]
    check(len(cells) == 5 * 7, f"{len(cells)} cells")
    check(texts("rowlabel") == rows, f"row labels {texts('rowlabel')}")
    check(texts("collabel") == cols, f"column labels {texts('collabel')}")
    sl = w[1, 2].astype(np.float64)
    ent = [-(p[p > 0] * np.log(p[p > 0])).sum() for p in sl]
    got = [float(t) for t in texts("entropy")]
    check(len(got) == 5 and all(abs(a - b) < 6e-4 for a, b in zip(got, ent)),
          f"entropies {got} vs {ent}")
    check(len([c for c in root.iter(ns + "rect") if c.get("class") == "colourbar"]) == 1,
          "colour bar")
    # Tooltips carry the values; the largest value gets the top colour, zero the bottom one.
    tips = [c.find(ns + "title").text for c in cells]
    vals = [float(t.rsplit(": ", 1)[1]) for t in tips]
    check(np.allclose(vals, sl.ravel(), atol=6e-5), "tooltip values")
    check(tips[3 * 7 + 4].startswith("schläft → auf"), f"tooltip label {tips[3 * 7 + 4]!r}")
    check(cells[3 * 7 + 4].get("fill") == "#fde725", "largest value not the top colour")
    check(cells[3 * 7 + 0].get("fill") == "#440154", "zero not the bottom colour")
    check(root.find(ns + "text").text == "w.npy: batch 1, head 2", "default title")

    # 2-D and 3-D arrays, default labels, a title; hostile label text.
    np.save(P("w2.npy"), w[0, 0])
    np.save(P("w3.npy"), w[1])
    with open(P("bad.txt"), "wb") as f:
        f.write(b"\xff\xfe\n\x01ctrl\n\xed\xa0\x80\n]]>\n" + b"x" * 100)
    r = attn("heatmap", "--weights", P("w2.npy"), "--rows-labels", P("bad.txt"), "--title",
             "a <b> & c", "--out", P("w2.svg"))
    check(r.returncode == 0, f"2-D heatmap: {r.stderr}")
    root = ET.parse(P("w2.svg")).getroot()
    check(texts("collabel") == [str(j) for j in range(7)], "default column labels")
    rl = texts("rowlabel")
    check(rl[:4] == ["??", "?ctrl", "???", "]]>"] and rl[4] == "x" * 32 + "…",
          f"hostile labels {rl}")
    check(root.find(ns + "text").text == "a <b> & c", "title")
    r = attn("heatmap", "--weights", P("w3.npy"), "--head", 2, "--out", P("w3.svg"))
    root = ET.parse(P("w3.svg")).getroot()
    got = [float(c.find(ns + "title").text.rsplit(": ", 1)[1])
           for c in root.iter(ns + "rect") if c.get("class") == "cell"]
    check(r.returncode == 0 and np.allclose(got, w[1, 2].ravel(), atol=6e-5), "3-D --head")

    # NaN weights (a fully masked row under --masked-rows nan) are grey and have entropy nan.
    wn = w[0, 0].copy()
    wn[2] = np.nan
    np.save(P("wn.npy"), wn)
    r = attn("heatmap", "--weights", P("wn.npy"), "--out", P("wn.svg"))
    root = ET.parse(P("wn.svg")).getroot()
    check(texts("entropy")[2] == "nan", "NaN row entropy")
    check(r.returncode == 0 and [c for c in root.iter(ns + "rect")
                                 if c.get("class") == "cell"][14].get("fill") == "#bbbbbb",
          "NaN cell colour")

    # The terminal rendering: one coloured cell per weight plus the colour bar.
    r = attn("heatmap", "--weights", P("w.npy"), "--batch", 1, "--head", 2, "--rows-labels",
             P("r.txt"), "--out", "-")
    check(r.returncode == 0, f"terminal: {r.stderr}")
    check(r.stdout.count("\x1b[48;5;") == 5 * 7 + 17, "terminal cells")
    check(all(lbl in r.stdout for lbl in ("the", "black", "schläft")), "terminal labels")
    check("0.000" in r.stdout, "terminal entropy")

    def bad(name, args, contains):
        for f in os.listdir(d):
            if f.startswith("out.svg"):
                os.remove(P(f))
        r = attn("heatmap", *args, "--out", P("out.svg"))
        check(r.returncode == 2, f"heatmap {name}: exit {r.returncode}")
        check(contains in r.stderr, f"heatmap {name}: {contains!r} not in {r.stderr!r}")
        check(not [f for f in os.listdir(d) if f.startswith("out.svg")], f"{name}: output left")

    bad("label count", ["--weights", P("w.npy"), "--rows-labels", P("c.txt")],
        "7 labels for 5 rows")
    bad("column label count", ["--weights", P("w.npy"), "--cols-labels", P("r.txt")],
        "5 labels for 7 columns")
    bad("labels missing", ["--weights", P("w.npy"), "--rows-labels", P("none.txt")],
        "No such file")
    bad("batch out of range", ["--weights", P("w.npy"), "--batch", 2], "outside")
    bad("head out of range", ["--weights", P("w3.npy"), "--head", 3], "outside")
    bad("both on 3-D", ["--weights", P("w3.npy"), "--head", 1, "--batch", 1], "not both")
    bad("index on 2-D", ["--weights", P("w2.npy"), "--head", 1], "no batch or head")
    np.save(P("w1.npy"), np.ones(4, np.float32))
    bad("1-D", ["--weights", P("w1.npy")], "2-D, 3-D or 4-D")
    np.save(P("wbig.npy"), np.zeros((1001, 1000), np.float16))
    bad("too many cells", ["--weights", P("wbig.npy")], "too many")
    bad("negative head", ["--weights", P("w.npy"), "--head", -1], "--head")
    np.save(P("wb.npy"), np.ones((3, 3), bool))
    bad("bool weights", ["--weights", P("wb.npy")], "floating-point")
    r = attn("heatmap", "--weights", P("w.npy"))
    check(r.returncode == 2 and "required" in r.stderr, "heatmap without --out")
    r = attn("heatmap", "--help")
    check(r.returncode == 0 and r.stdout.startswith("Usage: attn heatmap"), "heatmap --help")


# ---- attn info ------------------------------------------------------------------------------------

def test_info(d):
    r = attn("info")
    check(r.returncode == 0, f"info: exit {r.returncode}")
    lines = dict(l.split(":", 1) for l in r.stdout.splitlines() if ":" in l)
    version = sys.argv[3] if len(sys.argv) > 3 else None
    check(lines.get("libattn", "").split()[0] == version, f"version line {lines.get('libattn')}")
    check(lines.get("kernels", "").split()[0] in ("scalar", "avx2", "avx512"), "kernels line")
    blas = lines.get("BLAS", "").strip()
    check(blas.startswith(("OpenBLAS", "BLIS", "unknown")) and blas, f"BLAS line {blas!r}")
    check("BLAS threads" in lines, "BLAS threads line")
    check("workspace" not in lines, "workspace without dims")
    r = attn("info", env={"ATTN_ISA": "scalar"})
    check("kernels:      scalar (ATTN_ISA=scalar)" in r.stdout, f"ATTN_ISA: {r.stdout}")

    def ws(*args):
        r = attn("info", *args)
        check(r.returncode == 0, f"info {args}: {r.stderr}")
        line = [l for l in r.stdout.splitlines() if l.startswith("workspace:")]
        check(len(line) == 1, f"info {args}: no workspace line")
        return int(line[0].split()[1]) if line else 0
    one = ws("--q-heads", 32, "--kv-heads", 8, "--qk-dim", 128, "--v-dim", 128, "--threads", 1)
    two = ws("--q-heads", 32, "--kv-heads", 8, "--qk-dim", 128, "--v-dim", 128, "--threads", 2)
    small = ws("--qk-dim", 16, "--v-dim", 16, "--threads", 1)
    check(0 < small < one < two, f"workspace sizes {small} {one} {two}")
    check(one >= 128 * 4, "workspace smaller than one row")
    r = attn("info", "--q-heads", 4, "--kv-heads", 3)
    check(r.returncode == 2 and "kv_heads" in r.stderr, f"bad dims: {r.stderr}")
    r = attn("info", "--qk-dim", "x")
    check(r.returncode == 2 and "--qk-dim" in r.stderr, "bad number")
    r = attn("info", "--help")
    check(r.returncode == 0 and r.stdout.startswith("Usage: attn info"), "info --help")
    r = attn("--version")
    check(r.returncode == 0 and r.stdout.strip() == f"attn {version}", "--version")
    r = attn("frob")
    check(r.returncode == 2 and "unknown command" in r.stderr, "unknown command")
    r = attn()
    check(r.returncode == 2 and "Usage" in r.stderr, "no command")
    r = attn("--help")
    check(r.returncode == 0 and "heatmap" in r.stdout, "--help")


with tempfile.TemporaryDirectory() as tmp:
    {"run": test_run, "npy": test_npy, "heatmap": test_heatmap, "info": test_info}[WHAT](tmp)
print(f"{WHAT}: {checks - failures} passed, {failures} failed")
sys.exit(1 if failures else 0)
