#!/usr/bin/env bash
# bench/write.sh - 4 KiB writes to a fresh 1 GiB qcow2 image (default
# options, writeback cache): `qcowkit bench -w` vs `qemu-img bench -w` with
# the same parameters, best of 5 runs each, each run on a new image.
#
# Requests are 4 KiB, 257 x 4 KiB apart (-S 1052672, an odd multiple of
# 4 KiB, so that with the wrap at 1 GiB the offsets scatter over the disk and
# nearly every write allocates a cluster). Two times per tool: the run time
# `bench` itself prints (first request to last completion), and the wall
# time of the whole command (open, run, final flush and close). Target:
# ratios <= 1.0. The last two rows time our --random extension (the same
# count at pseudo-random 4 KiB multiples; qemu-img bench has no random mode)
# against qemu-img's step pattern: not the same work, as the random offsets
# allocate about twice the clusters (the MiB the image takes on disk are
# printed), so the whole command, which ends with a flush, is slower.
set -eu

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
QCOWKIT=${QCOWKIT:-$here/../build/qcowkit}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
count=${WRITE_BENCH_COUNT:-20000}
args=(-w -c "$count" -s 4K -S 1052672)

# best TOOL ARGS...: "RUN_MS WALL_MS DISK_MIB", the best of 5 runs on fresh
# images, and the disk space the last image takes.
best() {
    local br= bw= t0 t1 out run wall
    for _ in 1 2 3 4 5; do
        rm -f "$dir/img.qcow2"
        qemu-img create -q -f qcow2 "$dir/img.qcow2" 1G
        t0=$(date +%s%N)
        out=$("$@" "$dir/img.qcow2")
        t1=$(date +%s%N)
        run=$(echo "$out" | sed -n 's/^Run completed in \([0-9.]*\) seconds\./\1/p' | awk '{ printf "%d", $1 * 1000 }')
        wall=$(((t1 - t0) / 1000000))
        [ -n "$run" ] || { echo "write: no run time from $1: $out" >&2; return 1; }
        if [ -z "$br" ] || [ "$run" -lt "$br" ]; then br=$run; fi
        if [ -z "$bw" ] || [ "$wall" -lt "$bw" ]; then bw=$wall; fi
    done
    qemu-img check -q "$dir/img.qcow2" || { echo "write: qemu-img check failed after $1" >&2; return 1; }
    echo "$br $bw $(($(stat -c %b "$dir/img.qcow2") * $(stat -c %B "$dir/img.qcow2") / 1048576))"
}

ratio() { echo "$1 $2" | awk '{ printf "%.2f", ($2 > 0 ? $1 / $2 : 0) }'; }

# The two tools must write the same guest data.
qemu-img create -q -f qcow2 "$dir/q.qcow2" 1G
qemu-img create -q -f qcow2 "$dir/k.qcow2" 1G
qemu-img bench "${args[@]}" -c 2000 --pattern=7 "$dir/q.qcow2" >/dev/null
"$QCOWKIT" bench "${args[@]}" -c 2000 --pattern=7 "$dir/k.qcow2" >/dev/null
qemu-img compare -q "$dir/q.qcow2" "$dir/k.qcow2" || { echo "write: contents differ from qemu-img's" >&2; exit 1; }
rm -f "$dir/q.qcow2" "$dir/k.qcow2"

read -r qr qw qd < <(best qemu-img bench "${args[@]}")
read -r kr kw kd < <(best "$QCOWKIT" bench "${args[@]}")
read -r rr rw rd < <(best "$QCOWKIT" bench -w -c "$count" -s 4K --random 1)

printf '%-44s %10s %10s %8s\n' "$count 4 KiB writes, fresh 1 GiB image" "qemu-img" "qcowkit" "ratio"
printf '%-44s %7d ms %7d ms %8s\n' "step 1028 KiB: run time" "$qr" "$kr" "$(ratio "$kr" "$qr")"
printf '%-44s %7d ms %7d ms %8s\n' "step 1028 KiB: whole command" "$qw" "$kw" "$(ratio "$kw" "$qw")"
printf '%-44s %7d ms %7d ms %8s\n' "qcowkit --random vs qemu-img step: run time" "$qr" "$rr" "$(ratio "$rr" "$qr")"
printf '%-44s %7d ms %7d ms %8s\n' "qcowkit --random vs qemu-img step: command" "$qw" "$rw" "$(ratio "$rw" "$qw")"
printf '%-44s %6d MiB %6d MiB   (--random: %d MiB)\n' "image on disk after the run (step)" "$qd" "$kd" "$rd"
