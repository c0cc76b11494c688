#!/bin/sh
# How often the forward fuzz target's oracle lets a spoiled result through: every input of the
# given files and directories is replayed twice, once with out multiplied by 1.01 and once with
# 0.01 added to lse (FUZZ_SABOTAGE, see fuzz_forward.c), and the calls that still pass are
# counted per logit amplitude and per value mode (exact-score inputs or not). Calls in which no
# row sees a key are left out (there is nothing to spoil); for lse, so are calls without lse.
#
#   sh tests/fuzz/sabotage_rates.sh build/tests/fuzz/fuzz_replay tests/fuzz/corpus more-inputs/
#
# A pass rate of 0 % means the oracle catches every such error. See docs/testing.md.
set -eu
replay=$1
shift
for kind in out lse; do
  echo "$kind sabotaged ($( [ $kind = out ] && echo 'out x 1.01' || echo 'lse + 0.01' )): calls that still pass"
  FUZZ_VERBOSE=1 FUZZ_COUNT_FAILURES=1 FUZZ_SABOTAGE=$kind OPENBLAS_NUM_THREADS=1 \
    "$replay" "$@" 2>&1 | grep '^oracle:' | awk -v kind=$kind '
    {
      n = split($0, a, "no key "); split(a[n], b, " of ");
      if (b[1] == b[2]) next;                     # no row sees a key
      if (kind == "lse" && $4 != "lse=1") next;   # no lse written
      key = sprintf("%-13s %-10s", $6, $3);
      calls[key]++; if ($2 == "pass") passed[key]++;
    }
    END {
      for (k in calls)
        printf "  %s %5d calls checked, %4d passed (%.1f%%)\n", k, calls[k], passed[k],
               100.0 * passed[k] / calls[k] | "sort";
    }'
done
