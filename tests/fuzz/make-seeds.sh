#!/bin/bash
# make-seeds.sh DIR - small seed images for the fuzz targets, made with
# qemu-img/qemu-io at run time (no binaries in the repository): v2/v3, 512 B
# and 16 KiB clusters, compressed (zlib and zstd), extended L2, snapshots,
# bitmaps (dirty, disabled, several), zero clusters, refcount widths 1 and 64,
# a backing file name, lazy refcounts, a v2 snapshot and a 2 MiB-cluster header.
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
qemu-img bitmap --add -g 4k bitmaps.qcow2 b2; q bitmaps.qcow2 'write -P 7 8k 8k'
for bits in 1 64; do
    qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=$bits rc$bits.qcow2 64k
    q rc$bits.qcow2 'write -P 8 0 1536'
done
qemu-img create -q -f qcow2 -o cluster_size=512 -u -b base.raw -F raw backing.qcow2 64k
qemu-io -c "write -P 9 512 512" "json:{\"driver\":\"qcow2\",\"backing\":null,\"file\":{\"driver\":\"file\",\"filename\":\"backing.qcow2\"}}" >/dev/null
qemu-img create -q -f qcow2 -o cluster_size=512,lazy_refcounts=on lazy.qcow2 64k
q lazy.qcow2 'write -P 10 0 1k'
qemu-img create -q -f qcow2 -o cluster_size=512,compat=0.10 v2snap.qcow2 64k
q v2snap.qcow2 'write -P 11 0 1k'; qemu-img snapshot -c s1 v2snap.qcow2; q v2snap.qcow2 'write -P 12 0 512'
qemu-img create -q -f qcow2 -o cluster_size=16k,extended_l2=on,compression_type=zstd extl2z.qcow2 256k
q extl2z.qcow2 'write -P 13 0 3k'; q extl2z.qcow2 'write -c -P 14 64k 16k'; q extl2z.qcow2 'write -z 40k 4k'
qemu-img create -q -f qcow2 -o cluster_size=2M big.qcow2 4M
head -c 65536 big.qcow2 > "$tmp/b" && mv "$tmp/b" bigcluster-head.qcow2 && rm big.qcow2
ls -1 "$dir" | wc -l
