#!/bin/bash
# make-seeds.sh DIR - small seed images for the fuzz targets, made with
# qemu-img/qemu-io at run time (no binaries in the repository): v2/v3, 512 B
# and 16 KiB clusters, compressed (zlib and zstd), extended L2, snapshots,
# bitmaps, zero clusters.
set -euo pipefail
dir=$(realpath -m "$1")
mkdir -p "$dir"
cd "$dir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
q() { qemu-io -c "$2" "$1" >/dev/null; }
qemu-img create -q -f qcow2 -o cluster_size=512 v3.qcow2 64k
q v3.qcow2 'write -P 1 0 2k'; q v3.qcow2 'write -z 4k 1k'
qemu-img create -q -f qcow2 -o cluster_size=512,compat=0.10 v2.qcow2 64k
q v2.qcow2 'write -P 2 1k 1k'
head -c 4096 /dev/urandom > "$tmp/r"; printf 'hello %.0s' $(seq 300) >> "$tmp/r"
qemu-img convert -c -O qcow2 -o cluster_size=512 -f raw "$tmp/r" zlib.qcow2
qemu-img convert -c -O qcow2 -o cluster_size=512,compression_type=zstd -f raw "$tmp/r" zstd.qcow2
qemu-img create -q -f qcow2 -o cluster_size=16k,extended_l2=on extl2.qcow2 256k
q extl2.qcow2 'write -P 3 1k 1k'
qemu-img create -q -f qcow2 -o cluster_size=512 snap.qcow2 64k
q snap.qcow2 'write -P 4 0 1k'; qemu-img snapshot -c s1 snap.qcow2; q snap.qcow2 'write -P 5 0 512'
qemu-img create -q -f qcow2 -o cluster_size=512 bitmaps.qcow2 64k
qemu-img bitmap --add bitmaps.qcow2 b0; qemu-img bitmap --add -g 512 --disable bitmaps.qcow2 b1
q bitmaps.qcow2 'write -P 6 0 1k'
ls -1 "$dir" | wc -l
