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
#      BENCH_PRIORITY=1 (see below).
set -euo pipefail

# BENCH_PRIORITY=1: run in a session of its own whose autogroup gets nice -15,
# so that other sessions' load on a shared machine weighs less on both tools
# (needs root; the times are then close to an idle machine's).
if [[ ${BENCH_PRIORITY:-0} == 1 && -z ${_QK_BENCH_SESSION:-} && -w /proc/self/autogroup ]]; then
    exec env _QK_BENCH_SESSION=1 setsid -w bash -c 'echo -15 >/proc/self/autogroup; exec bash "$0"' "$0"
fi

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

# run_timed CMD...: run CMD once; prints "WALL_MS CPU_MS" (CPU = user + system).
run_timed() {
    local TIMEFORMAT='%3R %3U %3S' r u s
    rm -f "$tmp/out.raw"
    { time "$@" >/dev/null 2>"$tmp/err"; } 2>"$tmp/time" || { cat "$tmp/err" >&2; return 1; }
    read -r r u s <"$tmp/time"
    awk -v r="$r" -v u="$u" -v s="$s" 'BEGIN { printf "%d %d\n", r * 1000, (u + s) * 1000 }'
}

min() { if [[ -z $1 || $2 -lt $1 ]]; then echo "$2"; else echo "$1"; fi; }

# bench LABEL SRC OPTIONS...: time `convert OPTIONS SRC out` with both tools
# (runs alternating), check the outputs against each other, and print one
# line.
fail=0
bench() {
    local label=$1 src=$2 q="" qc="" k="" kc="" w c r same
    shift 2
    cat "$src" >/dev/null # warm the page cache so both tools start equal
    for ((r = 0; r < RUNS; r++)); do
        read -r w c < <(run_timed qemu-img convert "$@" "$src" "$tmp/out.raw")
        q=$(min "$q" "$w"); qc=$(min "$qc" "$c")
        mv "$tmp/out.raw" "$tmp/ref.raw"
        read -r w c < <(run_timed "$QCOWKIT" convert "$@" "$src" "$tmp/out.raw")
        k=$(min "$k" "$w"); kc=$(min "$kc" "$c")
    done
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
    awk -v l="$label" -v k="$k" -v q="$q" -v kc="$kc" -v qc="$qc" 'BEGIN {
        printf "convert %-46s qcowkit %6.3f s  qemu-img %6.3f s  ratio %.2f   (CPU time: qcowkit %.3f s, qemu-img %.3f s)\n",
               l ":", k / 1000, q / 1000, (q > 0 ? k / q : 0), kc / 1000, qc / 1000 }'
}

bench "-O raw, ${SIZE_MB} MiB qcow2, half allocated" "$tmp/half.qcow2" -O raw
bench "-O raw, ${SIZE_MB} MiB qcow2, zlib-compressed" "$tmp/zlib.qcow2" -O raw
if [[ ${BENCH_COMPRESS:-0} == 1 ]]; then
    bench "-c -O qcow2, ${SIZE_MB} MiB qcow2, half allocated" "$tmp/half.qcow2" -c -O qcow2
fi

# Other work on the machine skews these times; say how busy it was.
if [[ -r /proc/pressure/cpu ]]; then
    echo "(CPU pressure during the run: $(sed -n 's/^some avg10=\([0-9.]*\).*/\1/p' /proc/pressure/cpu)% of the time some task waited for a CPU)"
fi
exit $fail
