#!/bin/bash
# bench/convert-write.sh - the write side of convert: `qcowkit convert -O qcow2` against
# `qemu-img convert -O qcow2` (both with their default options), measured side by side in one
# run, as bench/convert.sh does (best of BENCH_RUNS runs, the two tools alternating, warm page
# cache; wall and CPU time; ratio qcowkit/qemu-img, < 1 = faster):
#   - raw -> qcow2 of a 2 GiB half-sparse raw file (1 MiB of data every 2 MiB, holes between);
#   - qcow2 -> qcow2 of the same data;
#   - convert -c (zlib), and -c -o compression_type=zstd, of 512 MiB of compressible data.
# Targets: ratio <= 1.0 for the plain conversions, <= 0.7 for the compressed ones. Every output
# is checked with `qemu-img compare` against the source. Everything lives in a temp dir that is
# removed at exit.
#
# Env: QCOWKIT (default: build/qcowkit next to this script), BENCH_RUNS (3), BENCH_SIZE_MB (2048,
#      the half-sparse file), BENCH_COMPRESS_MB (512), BENCH_PRIORITY=1 (see bench/common.bash).
set -euo pipefail

# shellcheck source=common.bash
source "$(dirname "$0")/common.bash"
bench_init convert-write
SIZE_MB=${BENCH_SIZE_MB:-2048}
COMP_MB=${BENCH_COMPRESS_MB:-512}

# Half-sparse source: 1 MiB of base64 text at every other MiB of a sparse raw file.
make_half_sparse "$tmp/half.raw" "$SIZE_MB"
qemu-img convert -O qcow2 "$tmp/half.raw" "$tmp/half.qcow2"
# Compressible source: text (numbers and words, about 4:1 with zlib) with a quarter of random
# base64 (about 4:3), fully allocated.
{
    for ((i = 0; i < COMP_MB / 8; i++)); do
        seq $((i * 100000)) $((i * 100000 + 700000)) | head -c 6M
        head -c 1536K /dev/urandom | base64 -w0 | head -c 2M
    done
} >"$tmp/text.raw"
sync # the sources' dirty pages would otherwise slow the first runs' writes


# bench LABEL TARGET SRC OPTIONS...: time `convert OPTIONS SRC out.qcow2` with both tools,
# compare both outputs with SRC and print one line; TARGET is the highest acceptable ratio.
fail=0
bench() {
    local label=$1 target=$2 src=$3
    shift 3
    time_convert qcow2 "$src" "$@"
    for f in ref out; do
        if ! qemu-img compare -q "$src" "$tmp/$f.qcow2" || ! qemu-img check -q "$tmp/$f.qcow2"; then
            echo "bench/convert-write.sh: $label: the $f output differs from the source or is not clean" >&2
            fail=1
        fi
    done
    local ksz qsz
    ksz=$(stat -c %s "$tmp/out.qcow2") qsz=$(stat -c %s "$tmp/ref.qcow2")
    rm -f "$tmp/ref.qcow2" "$tmp/out.qcow2"
    awk -v l="$label" -v k="$K" -v q="$Q" -v kc="$KC" -v qc="$QC" -v t="$target" -v ks="$ksz" -v qs="$qsz" 'BEGIN {
        r = q > 0 ? k / q : 0
        printf "convert %-44s qcowkit %6.3f s  qemu-img %6.3f s  ratio %.2f (target <= %s%s)   (CPU: qcowkit %.3f s, qemu-img %.3f s; file %d / %d MiB)\n",
               l ":", k / 1000, q / 1000, r, t, r <= t ? "" : ", MISSED", kc / 1000, qc / 1000, ks / 1048576, qs / 1048576 }'
}

bench "-O qcow2, ${SIZE_MB} MiB raw, half sparse" 1.0 "$tmp/half.raw" -O qcow2
bench "-O qcow2, ${SIZE_MB} MiB qcow2, half allocated" 1.0 "$tmp/half.qcow2" -O qcow2
bench "-c -O qcow2 (zlib), ${COMP_MB} MiB text" 0.7 "$tmp/text.raw" -c -O qcow2
bench "-c -O qcow2 (zstd), ${COMP_MB} MiB text" 0.7 "$tmp/text.raw" -c -O qcow2 -o compression_type=zstd

cpu_pressure
exit $fail
