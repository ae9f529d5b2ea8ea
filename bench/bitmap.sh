#!/usr/bin/env bash
# bench/bitmap.sh - persistent bitmap operations, qcowkit vs QEMU, measured
# side by side in one run (best of 3 wall times each, ratio = qcowkit/QEMU):
#  - qemu-img bitmap --add / --merge / --clear / --remove on a 1 TiB image
#    (4 KiB granularity: 32 MiB of bitmap data, scattered dirty ranges);
#  - the dump of a bitmap: `qcowkit bitmap --dump` vs `qemu-nbd -B` +
#    `nbdinfo --map`;
#  - the cost of tracking: 10,000 random 4 KiB writes with an enabled bitmap
#    versus without (qcowkit io both times; ratio = with/without).
set -eu

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
QCOWKIT=${QCOWKIT:-$here/../build/qcowkit}
dir=$(mktemp -d)
trap 'rm -rf "$dir"; [ -z "${nbd_pid:-}" ] || kill -9 "$nbd_pid" 2>/dev/null || true' EXIT
cd "$dir"

PREP=:   # run, untimed, before each timed run
ms() { # CMD...: wall milliseconds of the best of 3 runs
    local b= t0 t1 t
    for _ in 1 2 3; do
        $PREP
        t0=$(date +%s%N); "$@" >/dev/null 2>&1; t1=$(date +%s%N)
        t=$(((t1 - t0) / 1000000)); [ "$t" -gt 0 ] || t=1
        if [ -z "$b" ] || [ "$t" -lt "$b" ]; then b=$t; fi
    done
    echo "$b"
}
row() { # LABEL QEMU_MS QCOWKIT_MS
    printf '%-44s %9s ms %9s ms   %s\n' "$1" "$2" "$3" "$(awk -v a="$3" -v b="$2" 'BEGIN { printf "%.2f", a / b }')"
}

# A 1 TiB image with data at 64 scattered places, a dirtied 4 KiB bitmap "d".
qemu-img create -q -f qcow2 base.qcow2 1T
qemu-img bitmap --add -g 4k base.qcow2 d
cmds=()
for ((i = 0; i < 64; i++)); do cmds+=(-c "write -P 1 $((i * 17179869184 + i * 65536)) 1M"); done
qemu-io "${cmds[@]}" base.qcow2 >/dev/null

# Each op runs on a fresh copy of base.qcow2, made before (outside) every timed run.
fresh_copy() { cp --sparse=always base.qcow2 w.qcow2; }
bench_op() { # LABEL ARGS (with IMG for the image)
    local label=$1; shift
    local q k
    PREP=fresh_copy
    q=$(ms qemu-img bitmap "${@/IMG/w.qcow2}")
    k=$(ms "$QCOWKIT" bitmap "${@/IMG/w.qcow2}")
    PREP=:
    row "$label" "$q" "$k"
}

echo "bitmaps, 1 TiB image, 4 KiB granularity       qemu-img      qcowkit   ratio"
bench_op "bitmap --add (4 KiB granularity)" --add -g 4k IMG n
bench_op "bitmap --merge d into a new bitmap" --add -g 4k --merge d IMG n
bench_op "bitmap --clear" --clear IMG d
bench_op "bitmap --remove" --remove IMG d

sock=$dir/nbd.sock
nbd_dump() {
    qemu-nbd -r -B d -k "$sock" -f qcow2 base.qcow2 & nbd_pid=$!
    local i
    for ((i = 0; i < 200; i++)); do
        [ -S "$sock" ] && nbdinfo --map=qemu:dirty-bitmap:d "nbd+unix:///?socket=$sock" >/dev/null 2>&1 && break
        sleep 0.01
    done
    kill -9 "$nbd_pid" 2>/dev/null; wait "$nbd_pid" 2>/dev/null || true; nbd_pid=
}
q=$(ms nbd_dump)
k=$(ms "$QCOWKIT" bitmap --dump --output=json base.qcow2 d)
row "dump: qemu-nbd -B + nbdinfo --map vs --dump" "$q" "$k"

# Tracking overhead: 10,000 random 4 KiB writes on a 16 GiB image.
wcmds=()
for ((i = 0; i < 10000; i++)); do wcmds+=(-c "write -P 3 $(( (RANDOM * 32768 + RANDOM) % 4194304 * 4096 )) 4k"); done
new_image() { # with|without a bitmap
    rm -f t.qcow2
    qemu-img create -q -f qcow2 t.qcow2 16G
    [ "$1" = without ] || "$QCOWKIT" bitmap --add t.qcow2 b
}
PREP="new_image without"
a=$(ms "$QCOWKIT" io "${wcmds[@]}" t.qcow2)
PREP="new_image with"
b=$(ms "$QCOWKIT" io "${wcmds[@]}" t.qcow2)
PREP=:
printf '%-44s %9s ms %9s ms   %s\n' "10,000 random 4 KiB writes: without / with" "$a" "$b" \
    "$(awk -v a="$b" -v b="$a" 'BEGIN { printf "%.2f (with/without)", a / b }')"
