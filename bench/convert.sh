#!/bin/bash
# bench/convert.sh - time `qcowkit convert -O raw` against `qemu-img convert -O raw`
# on two 1 GiB qcow2 images made here at run time: one half allocated (1 MiB of
# data every 2 MiB), one with the same data zlib-compressed. Each time is the
# best of 3 runs (warm page cache); the ratio is qcowkit/qemu-img (< 1 = faster).
# The outputs are checked to be identical. Everything lives in a temp dir that
# is removed at exit.
#
# Env: QCOWKIT (default: build/qcowkit next to this script), BENCH_RUNS (3),
#      BENCH_SIZE_MB (1024).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
QCOWKIT=${QCOWKIT:-$here/../build/qcowkit}
RUNS=${BENCH_RUNS:-3}
SIZE_MB=${BENCH_SIZE_MB:-1024}

for t in qemu-img "$QCOWKIT"; do
    if ! command -v "$t" >/dev/null 2>&1; then
        echo "bench/convert.sh: $t not found" >&2
        exit 77
    fi
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/qk-bench-convert.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# Source data: 1 MiB blocks of base64 text (compresses to about 3/4) at every
# other MiB of a sparse raw file, then qcow2 copies of it.
half_mb=$((SIZE_MB / 2))
head -c $((half_mb * 3 / 4))M /dev/urandom | base64 -w0 | head -c ${half_mb}M > "$tmp/data"
truncate -s ${SIZE_MB}M "$tmp/src.raw"
for ((i = 0; i < half_mb; i++)); do
    dd if="$tmp/data" of="$tmp/src.raw" bs=1M skip=$i seek=$((2 * i)) count=1 conv=notrunc status=none
done
rm -f "$tmp/data"
qemu-img convert -O qcow2 "$tmp/src.raw" "$tmp/half.qcow2"
qemu-img convert -c -W -m 16 -O qcow2 "$tmp/src.raw" "$tmp/zlib.qcow2"
rm -f "$tmp/src.raw"

# best_of CMD...: the smallest wall time of $RUNS runs, in seconds.
best_of() {
    local best="" t0 t1 ms
    for ((r = 0; r < RUNS; r++)); do
        rm -f "$tmp/out.raw"
        t0=$(date +%s%N)
        "$@" >/dev/null
        t1=$(date +%s%N)
        ms=$(((t1 - t0) / 1000000))
        if [[ -z $best || $ms -lt $best ]]; then best=$ms; fi
    done
    echo "$best"
}

fail=0
for img in half zlib; do
    src="$tmp/$img.qcow2"
    # Warm the page cache so both tools start equal.
    cat "$src" >/dev/null
    q=$(best_of qemu-img convert -O raw "$src" "$tmp/out.raw")
    mv "$tmp/out.raw" "$tmp/ref.raw"
    k=$(best_of "$QCOWKIT" convert -O raw "$src" "$tmp/out.raw")
    if ! cmp -s "$tmp/ref.raw" "$tmp/out.raw"; then
        echo "bench/convert.sh: $img: qcowkit output differs from qemu-img's" >&2
        fail=1
    fi
    rm -f "$tmp/ref.raw" "$tmp/out.raw"
    case $img in
    half) label="${SIZE_MB} MiB qcow2, half allocated" ;;
    zlib) label="${SIZE_MB} MiB qcow2, zlib-compressed" ;;
    esac
    awk -v l="$label" -v k="$k" -v q="$q" 'BEGIN {
        printf "convert -O raw, %-32s qcowkit %6.3f s  qemu-img %6.3f s  ratio %.2f\n",
               l ":", k / 1000, q / 1000, (q > 0 ? k / q : 0) }'
done
exit $fail
