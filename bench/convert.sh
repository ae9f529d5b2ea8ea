#!/bin/bash
# bench/convert.sh - time `qcowkit convert -O raw` against `qemu-img convert -O raw`
# on two 1 GiB qcow2 images made here at run time: one half allocated (1 MiB of
# data every 2 MiB), one with the same data zlib-compressed. Each time is the
# best of 3 runs (warm page cache, runs of the two tools alternating); the
# ratio is qcowkit/qemu-img (< 1 = faster). The CPU time (user + system, best
# of 3) is printed too: it is less sensitive to other load on the machine.
# The outputs are checked to be identical. Everything lives in a temp dir that
# is removed at exit.
#
# Env: QCOWKIT (default: build/qcowkit next to this script), BENCH_RUNS (3),
#      BENCH_SIZE_MB (1024), BENCH_COMPRESS=1 to add `convert -c -O qcow2`
#      (compression speed; the outputs are compared by contents),
#      BENCH_PRIORITY=1 (see bench/common.bash).
set -euo pipefail

# shellcheck source=common.bash
source "$(dirname "$0")/common.bash"
bench_init convert
SIZE_MB=${BENCH_SIZE_MB:-1024}

# Source data: a half-sparse raw file, then qcow2 copies of it.
make_half_sparse "$tmp/src.raw" "$SIZE_MB"
qemu-img convert -O qcow2 "$tmp/src.raw" "$tmp/half.qcow2"
qemu-img convert -c -W -m 16 -O qcow2 "$tmp/src.raw" "$tmp/zlib.qcow2"
rm -f "$tmp/src.raw"

# bench LABEL SRC OPTIONS...: time `convert OPTIONS SRC out` with both tools
# (runs alternating), check the outputs against each other, and print one
# line.
fail=0
bench() {
    local label=$1 src=$2 same
    shift 2
    time_convert raw "$src" "$@"
    # raw outputs must be byte-identical; qcow2 ones must read the same
    if [[ " $* " == *" qcow2 "* ]]; then
        same=(qemu-img compare -q "$tmp/ref.raw" "$tmp/out.raw")
    else
        same=(cmp -s "$tmp/ref.raw" "$tmp/out.raw")
    fi
    if ! "${same[@]}"; then
        echo "bench/convert.sh: $label: qcowkit output differs from qemu-img's" >&2
        fail=1
    fi
    rm -f "$tmp/ref.raw" "$tmp/out.raw"
    awk -v l="$label" -v k="$K" -v q="$Q" -v kc="$KC" -v qc="$QC" 'BEGIN {
        printf "convert %-46s qcowkit %6.3f s  qemu-img %6.3f s  ratio %.2f   (CPU time: qcowkit %.3f s, qemu-img %.3f s)\n",
               l ":", k / 1000, q / 1000, (q > 0 ? k / q : 0), kc / 1000, qc / 1000 }'
}

bench "-O raw, ${SIZE_MB} MiB qcow2, half allocated" "$tmp/half.qcow2" -O raw
bench "-O raw, ${SIZE_MB} MiB qcow2, zlib-compressed" "$tmp/zlib.qcow2" -O raw
if [[ ${BENCH_COMPRESS:-0} == 1 ]]; then
    bench "-c -O qcow2, ${SIZE_MB} MiB qcow2, half allocated" "$tmp/half.qcow2" -c -O qcow2
fi

# Other work on the machine skews these times; say how busy it was.
cpu_pressure
exit $fail
