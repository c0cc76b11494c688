#!/usr/bin/env python3
"""Writes the seed corpus of the .npy parser's fuzz target (tests/fuzz/npy_corpus/): files that
numpy itself writes (every accepted dtype, 0-D to 4-D, format versions 1.0 and 2.0) and one of
each kind the parser must refuse. Run from anywhere: python3 tests/fuzz/make_npy_seeds.py"""
import io
import os
import struct

import numpy as np

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "npy_corpus")
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(7)


def saved(a, version=None):
    buf = io.BytesIO()
    if version is None:
        np.save(buf, a)
    else:
        np.lib.format.write_array(buf, a, version=version)
    return buf.getvalue()


def raw(header, data=b"", version=1):
    header = header.encode("latin1")
    if version == 1:
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data
    return b"\x93NUMPY" + bytes([version, 0]) + struct.pack("<I", len(header)) + header + data


seeds = {
    "f4-2d": saved(rng.standard_normal((3, 4)).astype("<f4")),
    "f4-1d": saved(np.arange(5, dtype="<f4")),
    "f4-0d": saved(np.float32(1.5)),
    "f4-4d": saved(rng.standard_normal((1, 2, 2, 3)).astype("<f4")),
    "f4-empty": saved(np.zeros((0, 3), dtype="<f4")),
    "f8-2d": saved(rng.standard_normal((2, 3))),
    "f2-special": saved(np.array([0, -0.0, 1e-7, 65504, np.inf, -np.inf, np.nan, 3.14], "<f2")),
    "u1-mask": saved((rng.random((2, 5)) > 0.5).astype(np.uint8)),
    "b1-mask": saved(rng.random((3, 3)) > 0.5),
    "f4-v2": saved(np.ones((2, 2), "<f4"), version=(2, 0)),
    "fortran": saved(np.asfortranarray(rng.standard_normal((3, 2)).astype("<f4"))),
    "big-endian": saved(np.ones(3, ">f4")),
    "int32": saved(np.arange(4, dtype="<i4")),
    "structured": saved(np.zeros(2, dtype=[("a", "<f4"), ("b", "<i2")])),
    "truncated-data": saved(np.ones((4, 4), "<f4"))[:-5],
    "trailing-data": saved(np.ones(2, "<f4")) + b"\x00\x00\x00\x00",
    "truncated-header": saved(np.ones(2, "<f4"))[:40],
    "bad-magic": b"\x93NUMPZ\x01\x00" + saved(np.ones(2, "<f4"))[8:],
    "version-3": raw("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }\n",
                     b"\x00" * 4, version=3),
    "double-quotes": raw('{"descr": "<f4", "fortran_order": False, "shape": (2, 1)}\n',
                         b"\x00" * 8),
    "missing-key": raw("{'descr': '<f4', 'shape': (1,), }\n", b"\x00" * 4),
    "huge-shape": raw("{'descr': '<f4', 'fortran_order': False, "
                      "'shape': (4294967296, 4294967296, 4294967296), }\n"),
    "python2-long": raw("{'descr': '<f4', 'fortran_order': False, 'shape': (2L,), }\n",
                        b"\x00" * 8),
}
for name, data in seeds.items():
    with open(os.path.join(out, name + ".npy"), "wb") as f:
        f.write(data)
print(f"{len(seeds)} seeds in {out}")
