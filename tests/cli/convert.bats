#!/usr/bin/env bats
# qcowkit convert -O raw against qemu-img convert -O raw 7.2: the same bytes,
# a sparse output, and the same messages and exit codes.

load oracle

teardown() {
    release_image
}

setup() {
    oracle_setup
}

@test "convert: half-allocated image" {
    mk a.qcow2 16M
    for i in 0 2 4 6 8 10 12 14; do wr a.qcow2 "write -P $((i + 1)) ${i}M 1M"; done
    same_convert a.qcow2
}

@test "convert: output is sparse where the source is unallocated" {
    mk a.qcow2 64M
    wr a.qcow2 'write -P 1 32M 64k'
    same_convert a.qcow2
    (( $(stat -c %s out.raw) == 64 * 1024 * 1024 ))
    (( $(allocated_kib out.raw) <= 64 + 4 ))
}

@test "convert: an empty image becomes a hole of its virtual size" {
    mk a.qcow2 100M
    same_convert a.qcow2
    (( $(stat -c %s out.raw) == 100 * 1024 * 1024 ))
    # at most the first block, which QEMU's raw create allocates too
    (( $(allocated_kib out.raw) <= 4 ))
}

@test "convert: zero clusters and zero data become holes" {
    mk a.qcow2 4M
    wr a.qcow2 'write -z 0 1M' 'write -P 0 1M 1M' 'write -P 1 2M 4k'
    same_convert a.qcow2
    (( $(allocated_kib out.raw) <= 8 ))
}

@test "convert: backing chain" {
    mk base.qcow2 4M
    wr base.qcow2 'write -P 0x11 0 1M' 'write -P 0x22 3M 512k'
    mk top.qcow2 -b base.qcow2 -F qcow2 6M
    wr top.qcow2 'write -P 0x33 512k 64k' 'write -z 3M 64k' 'write -P 0x44 5M 4k'
    same_convert top.qcow2
}

@test "convert: zlib-compressed clusters" {
    mk a.qcow2 4M
    wr a.qcow2 'write -c -P 0x55 0 64k' 'write -c -P 0x56 1M 64k' 'write -P 0x57 2M 64k'
    same_convert a.qcow2
}

@test "convert: zstd-compressed clusters" {
    mk a.qcow2 -o compression_type=zstd 2M
    wr a.qcow2 'write -c -P 0x77 0 64k' 'write -c -P 0x78 128k 64k'
    same_convert a.qcow2
}

@test "convert: compressed image made by qemu-img convert -c" {
    mk a.qcow2 8M
    for i in 0 1 2 3; do wr a.qcow2 "write -P $((i + 0x30)) $((i * 2))M 1536k"; done
    qemu-img convert -c -O qcow2 a.qcow2 c.qcow2
    same_convert c.qcow2
}

@test "convert: extended L2 subclusters" {
    mk a.qcow2 -o extended_l2=on,cluster_size=128k 3M
    wr a.qcow2 'write -P 0x55 4k 4k' 'write -P 0x66 1M 12345' 'write -z 1052672 8k'
    same_convert a.qcow2
}

@test "convert: version 2 image" {
    mk a.qcow2 -o compat=0.10 2M
    wr a.qcow2 'write -P 0x79 7 100000'
    same_convert a.qcow2
}

@test "convert: 512-byte clusters" {
    mk a.qcow2 -o cluster_size=512 1M
    wr a.qcow2 'write -P 0x7a 1000 100000'
    same_convert a.qcow2
}

@test "convert: 2 MiB clusters" {
    mk a.qcow2 -o cluster_size=2M 5M
    wr a.qcow2 'write -P 0x7b 3M 100000'
    same_convert a.qcow2
}

@test "convert: virtual size not a multiple of the cluster size" {
    mk a.qcow2 1000448
    wr a.qcow2 'write -P 0x7c 999424 1024'
    same_convert a.qcow2
}

@test "convert: zero-size image" {
    mk a.qcow2 0
    same_convert a.qcow2
    [[ $(stat -c %s out.raw) == 0 ]]
}

@test "convert: the active layer of an image with an internal snapshot" {
    mk a.qcow2 1M
    wr a.qcow2 'write -P 1 0 64k'
    qemu-img snapshot -c s1 a.qcow2
    wr a.qcow2 'write -P 2 0 32k'
    same_convert a.qcow2
}

@test "convert: raw source" {
    head -c 1M /dev/urandom > a.raw
    truncate -s 3M a.raw
    same_convert a.raw
    same_convert a.raw -f raw
}

@test "convert: raw source whose size is not a multiple of 512" {
    head -c 100000 /dev/urandom > a.raw
    same_convert a.raw
}

@test "convert: one thread and many threads give the same bytes" {
    mk a.qcow2 16M
    for i in 1 5 9 13; do wr a.qcow2 "write -P $i ${i}M 1536k"; done
    same_convert a.qcow2 -m 1
    same_convert a.qcow2 -m 16
}

@test "convert: an existing larger output is replaced" {
    mk a.qcow2 1M
    wr a.qcow2 'write -P 3 0 4k'
    head -c 3M /dev/urandom > out.raw
    same_convert a.qcow2
    [[ $(stat -c %s out.raw) == 1048576 ]]
}

@test "convert: -O defaults to raw" {
    mk a.qcow2 1M
    wr a.qcow2 'write -P 3 0 4k'
    qemu-img convert a.qcow2 ref.raw
    "$QCOWKIT" convert a.qcow2 out.raw
    cmp ref.raw out.raw
}

@test "convert -p: progress meter from 0 to 100" {
    mk a.qcow2 4M
    wr a.qcow2 'write -P 3 0 1M' 'write -P 4 3M 1M'
    run "$QCOWKIT" convert -p -O raw a.qcow2 out.raw
    [[ $status == 0 ]]
    [[ $output == "    (0.00/100%)"$'\r'*"    (100.00/100%)"$'\r' ]]
}

@test "convert -q -p: quiet wins" {
    mk a.qcow2 1M
    same_img convert -q -p -O raw a.qcow2 out.raw
    [[ -z $k_out ]]
}

# same_qcow2 SRC [OPTIONS...]: `qcowkit convert -O qcow2 OPTIONS SRC` makes an
# image with SRC's contents that passes qemu-img check.
same_qcow2() {
    local src=$1
    shift
    rm -f out.qcow2
    run "$QCOWKIT" convert -O qcow2 "$@" "$src" out.qcow2
    [[ $status -eq 0 && -z $output ]] || { echo "qcowkit convert failed: $output" >&2; return 1; }
    qemu-img check -q out.qcow2
    run qemu-img compare "$src" out.qcow2
    [[ $status -eq 0 ]] || { echo "$output" >&2; return 1; }
    [[ $(qemu-img info --output=json out.qcow2 | jq -r '."virtual-size"') == \
       $(qemu-img info --output=json "$src" | jq -r '."virtual-size"') ]]
}

@test "convert -O qcow2: half-allocated image with a backing file, flattened" {
    mk base.qcow2 8M
    wr base.qcow2 'write -P 0x11 0 2M' 'write -P 0x12 5M 1M'
    mk top.qcow2 -b base.qcow2 -F qcow2
    wr top.qcow2 'write -P 0x13 1M 64k' 'write -z 5M 64k'
    same_qcow2 top.qcow2
    [[ $(qemu-img info --output=json out.qcow2 | jq -r '."backing-filename" // "none"') == none ]]
}

@test "convert -O qcow2: zero data is not allocated" {
    mk a.qcow2 4M
    wr a.qcow2 'write -P 0 0 1M' 'write -P 1 2M 64k'
    same_qcow2 a.qcow2
    run qemu-img map --output=json out.qcow2
    [[ $(jq '[.[] | select(.data) | .length] | add' <<<"$output") == 65536 ]]
}

@test "convert -O qcow2: from raw, with a size not a multiple of the cluster size" {
    head -c 100k /dev/urandom > a.raw
    truncate -s 1000448 a.raw
    same_qcow2 a.raw
}

@test "convert -O qcow2: source with small clusters and subclusters" {
    mk a.qcow2 -o cluster_size=512 1M
    wr a.qcow2 'write -P 0x7a 1000 100000'
    same_qcow2 a.qcow2 -m 4
    mk b.qcow2 -o extended_l2=on,cluster_size=128k 3M
    wr b.qcow2 'write -P 0x55 4k 4k' 'write -P 0x66 1M 12345'
    same_qcow2 b.qcow2
}

@test "convert -O qcow2 -c: compressed clusters" {
    mk a.qcow2 4M
    wr a.qcow2 'write -P 0x21 0 1M' 'write -P 0x22 2M 100k'
    same_qcow2 a.qcow2 -c
    run qemu-img check --output=json out.qcow2
    (( $(jq '."compressed-clusters"' <<<"$output") == 18 ))
}

@test "convert -O qcow2 -c: incompressible clusters are stored plain" {
    head -c 256k /dev/urandom > a.raw
    same_qcow2 a.raw -c
    run qemu-img check --output=json out.qcow2
    [[ $(jq '."compressed-clusters" // 0' <<<"$output") == 0 ]]
}

@test "convert -O qcow2 -c: the last cluster of a disk that ends mid-cluster" {
    head -c 100k /dev/zero | tr '\0' 'q' > a.raw
    truncate -s 99840 a.raw
    same_qcow2 a.raw -c
}

@test "convert -O qcow2 -c: one thread and many threads give the same contents" {
    mk a.qcow2 16M
    for i in 1 5 9 13; do wr a.qcow2 "write -P $i ${i}M 1536k"; done
    same_qcow2 a.qcow2 -c -m 1
    same_qcow2 a.qcow2 -c -m 16
}

@test "convert -c -O raw: compression needs a format that has it" {
    mk a.qcow2 1M
    same_img convert -c -O raw a.qcow2 out.raw
}

@test "convert -O qcow2: output cannot be created" {
    mk a.qcow2 1M
    same_img convert -O qcow2 a.qcow2 nosuchdir/out.qcow2
}

@test "convert: unknown output format" {
    mk a.qcow2 1M
    same_img convert -O nosuchfmt a.qcow2 out.raw
}

@test "convert: unknown input driver" {
    mk a.qcow2 1M
    same_img convert -f nosuchfmt -O raw a.qcow2 out.raw
}

@test "convert: missing source" {
    same_img convert -O raw nosuch.qcow2 out.raw
    [[ $k_rc == 1 ]]
}

@test "convert: -f qcow2 on a raw file" {
    truncate -s 1M a.raw
    same_img convert -f qcow2 -O raw a.raw out.raw
}

@test "convert: no output file name" {
    mk a.qcow2 1M
    same_img convert -O raw a.qcow2
}

@test "convert: output cannot be created" {
    mk a.qcow2 1M
    same_img convert -O raw a.qcow2 nosuchdir/out.raw
}

@test "convert: onto its own source fails on QEMU's lock and keeps the source" {
    mk a.qcow2 1M
    wr a.qcow2 'write -P 5 0 64k'
    cp a.qcow2 b.qcow2
    same_img convert -O raw a.qcow2 a.qcow2
    cmp a.qcow2 b.qcow2
    same_img convert -O qcow2 a.qcow2 a.qcow2
    cmp a.qcow2 b.qcow2
}

@test "convert: bad -m" {
    mk a.qcow2 1M
    same_img convert -m 0 -O raw a.qcow2 out.raw
    same_img convert -m 17 -O raw a.qcow2 out.raw
}

@test "convert: unknown option and missing argument" {
    same_img convert -x a b
    same_img convert -O
}

@test "convert: a cluster that cannot be read is an I/O error" {
    mk a.qcow2 1M
    wr a.qcow2 'write -c -P 0x55 0 64k'
    corrupt_first_compressed a.qcow2
    same_img convert -O raw a.qcow2 out.raw || true
    [[ $k_rc == 1 && $q_rc == 1 ]]
    [[ ${k_err%%$'\n'*} == "$q_err" ]]
}

@test "convert: an image a writer holds needs -U" {
    mk a.qcow2 1M
    wr a.qcow2 'write -P 5 0 64k'
    hold_image a.qcow2
    same_img convert -O raw a.qcow2 out.raw
    [[ $k_rc == 1 ]]
    same_convert a.qcow2 -U
}
