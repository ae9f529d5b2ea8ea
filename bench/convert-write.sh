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
#      the half-sparse file), BENCH_COMPRESS_MB (512), BENCH_PRIORITY=1 (as in bench/convert.sh).
set -euo pipefail

if [[ ${BENCH_PRIORITY:-0} == 1 && -z ${_QK_BENCH_SESSION:-} && -w /proc/self/autogroup ]]; then
    exec env _QK_BENCH_SESSION=1 setsid -w bash -c 'echo -15 >/proc/self/autogroup; exec bash "$0"' "$0"
fi

here=$(cd "$(dirname "$0")" && pwd)
QCOWKIT=${QCOWKIT:-$here/../build/qcowkit}
RUNS=${BENCH_RUNS:-3}
SIZE_MB=${BENCH_SIZE_MB:-2048}
COMP_MB=${BENCH_COMPRESS_MB:-512}

for t in qemu-img "$QCOWKIT"; do
    if ! command -v "$t" >/dev/null 2>&1; then
        echo "bench/convert-write.sh: $t not found" >&2
        exit 77
    fi
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/qk-bench-convert-write.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# Half-sparse source: 1 MiB blocks of base64 text at every other MiB of a sparse raw file.
half_mb=$((SIZE_MB / 2))
head -c $((half_mb * 3 / 4))M /dev/urandom | base64 -w0 | head -c ${half_mb}M >"$tmp/data"
truncate -s ${SIZE_MB}M "$tmp/half.raw"
for ((i = 0; i < half_mb; i++)); do
    dd if="$tmp/data" of="$tmp/half.raw" bs=1M skip=$i seek=$((2 * i)) count=1 conv=notrunc status=none
done
rm -f "$tmp/data"
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

# run_timed CMD...: run CMD once; prints "WALL_MS CPU_MS" (CPU = user + system).
run_timed() {
    local TIMEFORMAT='%3R %3U %3S' r u s
    rm -f "$tmp/out.qcow2"
    { time "$@" >/dev/null 2>"$tmp/err"; } 2>"$tmp/time" || { cat "$tmp/err" >&2; return 1; }
    read -r r u s <"$tmp/time"
    awk -v r="$r" -v u="$u" -v s="$s" 'BEGIN { printf "%d %d\n", r * 1000, (u + s) * 1000 }'
}

min() { if [[ -z $1 || $2 -lt $1 ]]; then echo "$2"; else echo "$1"; fi; }

# bench LABEL TARGET SRC OPTIONS...: time `convert OPTIONS SRC out.qcow2` with both tools,
# compare both outputs with SRC and print one line; TARGET is the highest acceptable ratio.
fail=0
bench() {
    local label=$1 target=$2 src=$3 q="" qc="" k="" kc="" w c r
    shift 3
    cat "$src" >/dev/null # warm the page cache so both tools start equal
    for ((r = 0; r < RUNS; r++)); do
        read -r w c < <(run_timed qemu-img convert "$@" "$src" "$tmp/out.qcow2")
        q=$(min "$q" "$w"); qc=$(min "$qc" "$c")
        mv "$tmp/out.qcow2" "$tmp/ref.qcow2"
        read -r w c < <(run_timed "$QCOWKIT" convert "$@" "$src" "$tmp/out.qcow2")
        k=$(min "$k" "$w"); kc=$(min "$kc" "$c")
    done
    for f in ref out; do
        if ! qemu-img compare -q "$src" "$tmp/$f.qcow2" || ! qemu-img check -q "$tmp/$f.qcow2"; then
            echo "bench/convert-write.sh: $label: the $f output differs from the source or is not clean" >&2
            fail=1
        fi
    done
    local ksz qsz
    ksz=$(stat -c %s "$tmp/out.qcow2") qsz=$(stat -c %s "$tmp/ref.qcow2")
    rm -f "$tmp/ref.qcow2" "$tmp/out.qcow2"
    awk -v l="$label" -v k="$k" -v q="$q" -v kc="$kc" -v qc="$qc" -v t="$target" -v ks="$ksz" -v qs="$qsz" 'BEGIN {
        r = q > 0 ? k / q : 0
        printf "convert %-44s qcowkit %6.3f s  qemu-img %6.3f s  ratio %.2f (target <= %s%s)   (CPU: qcowkit %.3f s, qemu-img %.3f s; file %d / %d MiB)\n",
               l ":", k / 1000, q / 1000, r, t, r <= t ? "" : ", MISSED", kc / 1000, qc / 1000, ks / 1048576, qs / 1048576 }'
}

bench "-O qcow2, ${SIZE_MB} MiB raw, half sparse" 1.0 "$tmp/half.raw" -O qcow2
bench "-O qcow2, ${SIZE_MB} MiB qcow2, half allocated" 1.0 "$tmp/half.qcow2" -O qcow2
bench "-c -O qcow2 (zlib), ${COMP_MB} MiB text" 0.7 "$tmp/text.raw" -c -O qcow2
bench "-c -O qcow2 (zstd), ${COMP_MB} MiB text" 0.7 "$tmp/text.raw" -c -O qcow2 -o compression_type=zstd

if [[ -r /proc/pressure/cpu ]]; then
    echo "(CPU pressure during the run: $(sed -n 's/^some avg10=\([0-9.]*\).*/\1/p' /proc/pressure/cpu)% of the time some task waited for a CPU)"
fi
exit $fail
