"""The numpy code of docs/guide.md ("Dropout") against the library's attn_dropout_mask.

Usage: dropout_numpy.py TEST_DROPOUT_MASK_BINARY GUIDE_MD
Runs the guide's python block (its functions, without the final example), has the test binary
write 40 masks with their arguments (tests/test_dropout_mask.c, write_cases), and checks that
dropout_keep() reproduces every one of them, and the Random123 known-answer vectors.
"""
import os
import re
import subprocess
import sys
import tempfile

binary, guide = sys.argv[1], sys.argv[2]
with open(guide, encoding="utf-8") as f:
    text = f.read()
block = re.search(r"## Dropout\n.*?```python\n(.*?)```", text, re.S)
if not block:
    sys.exit("no python block in the Dropout section of " + guide)
code = block.group(1)
env = {}
exec(code.split("# the mask of")[0], env)
philox, keep_of = env["philox4x32_10"], env["dropout_keep"]

kat = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]
for ctr, key, want in kat:
    got = tuple(int(w) for w in philox(*ctr, *key))
    if got != want:
        sys.exit("known-answer vector %s %s: got %s" % (ctr, key, [hex(w) for w in got]))

fd, path = tempfile.mkstemp(suffix=".txt")
os.close(fd)
try:
    subprocess.run([binary, path], check=True)
    with open(path, encoding="ascii") as f:
        lines = f.read().split("\n")
finally:
    os.unlink(path)
cases = 0
for line in lines:
    if not line:
        continue
    fields = line.split()
    p = float(fields[0])
    seed, offset, q_heads, b, h, row0, rows, col0, cols = (int(v) for v in fields[1:10])
    mask = fields[10]
    want = keep_of(p, seed, offset, q_heads, b, h, range(row0, row0 + rows),
                   range(col0, col0 + cols))
    got = "".join(str(v) for v in want.reshape(-1))
    if got != mask:
        sys.exit("mask differs for %s:\n  library %s\n  numpy   %s" % (fields[:10], mask, got))
    cases += 1
if cases != 40:
    sys.exit("expected 40 cases, read %d" % cases)
print("the guide's numpy code reproduces %d library masks and the known-answer vectors" % cases)
