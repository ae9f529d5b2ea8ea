#!/usr/bin/env bats
# create.bats - `qcowkit create` against `qemu-img create`: same output, exit
# code and files (byte for byte, same host allocation), run in twin folders.

load img_helpers

setup() {
    img_setup
}

# Both twin folders get the same backing files before each create.
create_fixture() {
    qemu-img create -q -f qcow2 base.qcow2 64M &&
    qemu-img create -q -f raw base.raw 3M &&
    mkdir -p sub && qemu-img create -q -f qcow2 sub/b.qcow2 5M &&
    echo hello > exist.img
}

@test "create: default qcow2 image is byte-identical to qemu-img's" {
    both_create -f qcow2 x.qcow2 1G
    run "$QCOWKIT" create -f qcow2 y.qcow2 1G
    [ "$output" = "Formatting 'y.qcow2', fmt=qcow2 cluster_size=65536 extended_l2=off compression_type=zlib size=1073741824 lazy_refcounts=off refcount_bits=16" ]
}

@test "create: first cluster has the feature-name table and header_length 112" {
    "$QCOWKIT" create -q -f qcow2 x.qcow2 1M
    qemu-img create -q -f qcow2 y.qcow2 1M
    cmp -n 65536 x.qcow2 y.qcow2
    [ "$(od -An -tx1 -j100 -N4 x.qcow2 | tr -d ' ')" = 00000070 ]
    grep -q "lazy refcounts" x.qcow2
}

@test "create: 4 KiB clusters have no feature table" {
    both_create -f qcow2 -o cluster_size=4k x.qcow2 1M
    ! grep -q "lazy refcounts" k/x.qcow2
}

@test "create: compat=0.10 writes a v2 header" {
    both_create -f qcow2 -o compat=0.10 x.qcow2 1G
    [ "$(od -An -tx1 -j4 -N4 k/x.qcow2 | tr -d ' ')" = 00000002 ]
}

@test "create: compat=v3 and compat=v2 spellings" {
    both_create -f qcow2 -o compat=v3 x.qcow2 1M
    both_create -f qcow2 -o compat=v2 x.qcow2 1M
}

@test "create: every cluster size from 512 to 2M" {
    for cs in 512 1k 4k 16k 64k 256k 2M; do
        both_create -f qcow2 -o cluster_size=$cs x.qcow2 100M
    done
}

@test "create: every refcount width" {
    for rb in 1 2 4 8 16 32 64; do
        both_create -f qcow2 -o refcount_bits=$rb x.qcow2 100M
        both_create -f qcow2 -o cluster_size=512,refcount_bits=$rb x.qcow2 300M
    done
}

@test "create: big disks on small clusters grow the refcount structures like QEMU" {
    both_create -f qcow2 -o cluster_size=512 x.qcow2 1G
    both_create -f qcow2 -o cluster_size=512,refcount_bits=64 x.qcow2 10G
    # the refcount table has moved off cluster 1
    [ "$(od -An -tx1 -j48 -N8 k/x.qcow2 | tr -d ' ')" != 0000000000000200 ]
    run qemu-img check k/x.qcow2
    [ "$status" -eq 0 ]
}

@test "create: lazy_refcounts, zstd and extended_l2 set their feature bits" {
    both_create -f qcow2 -o lazy_refcounts=on,compression_type=zstd,extended_l2=on,cluster_size=2M x.qcow2 1G
    run "$QCOWKIT" info --output=json k/x.qcow2
    [ "$(echo "$output" | jq -c '.["format-specific"].data | [.["lazy-refcounts"], .["compression-type"], .["extended-l2"]]')" = '[true,"zstd",true]' ]
}

@test "create: boolean options keep the spelling the user gave in the Formatting line" {
    both_create -f qcow2 -o lazy_refcounts=true,extended_l2=yes,cluster_size=16k x.qcow2 1M
    both_create -f qcow2 -o lazy_refcounts x.qcow2 1M
    both_create -f qcow2 -o nolazy_refcounts x.qcow2 1M
}

@test "create: info of the new image equals info of qemu-img's twin" {
    for o in compat=0.10 compat=1.1,refcount_bits=8 cluster_size=512,lazy_refcounts=on; do
        rm -f x.qcow2 y.qcow2
        "$QCOWKIT" create -q -f qcow2 -o $o x.qcow2 5G
        qemu-img create -q -f qcow2 -o $o y.qcow2 5G
        same_json "$(qemu-img info --output=json x.qcow2 | jq 'del(.filename)')" \
                  "$(qemu-img info --output=json y.qcow2 | jq 'del(.filename)')"
        run qemu-img check x.qcow2
        [ "$status" -eq 0 ]
    done
}

@test "create: -b/-F backing file; the size comes from the backing file" {
    both_create -f qcow2 -b base.qcow2 -F qcow2 x.qcow2
    run qemu-img info --output=json k/x.qcow2
    [ "$(echo "$output" | jq '.["virtual-size"]')" = 67108864 ]
}

@test "create: -b with an explicit size" {
    both_create -f qcow2 -b base.qcow2 -F qcow2 x.qcow2 2G
}

@test "create: backing_file and backing_fmt as -o options" {
    both_create -f qcow2 -o backing_file=base.qcow2,backing_fmt=qcow2,size=5M x.qcow2
    both_create -f qcow2 -b base.qcow2 -F qcow2 -o backing_fmt=raw x.qcow2
}

@test "create: relative backing names resolve against the new image's folder" {
    both_create -f qcow2 -b b.qcow2 -F qcow2 sub/x.qcow2
    both_create -f qcow2 -b ../base.raw -F raw sub/x.qcow2
    both_create -f qcow2 -b base.qcow2 -F qcow2 sub/x.qcow2
}

@test "create: raw backing file, and -F raw on a qcow2 file" {
    both_create -f qcow2 -b base.raw -F raw x.qcow2
    both_create -f qcow2 -b base.qcow2 -F raw x.qcow2
}

@test "create: -u skips the backing check but needs a size" {
    both_create -f qcow2 -u -b nonexist.qcow2 -F qcow2 x.qcow2 1M
    both_create -f qcow2 -u -b nonexist.qcow2 -F qcow2 x.qcow2
}

@test "create: external data file, with and without data_file_raw" {
    both_create -f qcow2 -o data_file=x.data x.qcow2 1M
    both_create -f qcow2 -o data_file=x.data,data_file_raw=on x.qcow2 1M
    both_create -f qcow2 -o data_file=x.data,data_file_raw=on,extended_l2=on x.qcow2 1000k
    cd k    # QEMU opens the data file relative to the working folder
    run qemu-img check x.qcow2
    [ "$status" -eq 0 ]
}

@test "create: raw images, sizes rounded up to 512 like qemu-img" {
    both_create -f raw x.raw 1M
    both_create -f raw x.raw 100
    both_create -f raw x.raw 0
    both_create x.raw 1M
    [ "$(stat -c %s k/x.raw)" = 1048576 ]
}

@test "create: qcow2 size not a multiple of 512 is rounded up" {
    both_create -f qcow2 x.qcow2 1000
    run qemu-img info --output=json k/x.qcow2
    [ "$(echo "$output" | jq '.["virtual-size"]')" = 1024 ]
}

@test "create: size suffixes and notations" {
    for s in 1.5G 512b 512B 0x100 5k 5K 1.5k 1.0001k 1P 0 100 " 5"; do
        both_create -f qcow2 x.qcow2 "$s"
    done
}

@test "create: invalid sizes give qemu-img's messages" {
    for s in 1.5 1e3 0x1.8k 5KiB 5x 5kb "" 0.5 8E 16E; do
        both_create -f qcow2 x.qcow2 "$s"
    done
    run "$QCOWKIT" create -f qcow2 x.qcow2 1.5
    [ "$status" -eq 1 ]
    [ "${lines[0]}" = "qcowkit: Invalid image size specified. You may use k, M, G, T, P or E suffixes for" ]
}

@test "create: -q prints nothing" {
    run "$QCOWKIT" create -q -f qcow2 x.qcow2 1M
    [ "$status" -eq 0 ]
    [ -z "$output" ]
    [ -f x.qcow2 ]
}

@test "create: bad cluster sizes are refused and leave no file" {
    for cs in 1000 256 4M; do
        both_create -f qcow2 -o cluster_size=$cs x.qcow2 1M
    done
    run "$QCOWKIT" create -f qcow2 -o cluster_size=1000 x.qcow2 1M
    [ "$status" -eq 1 ]
    [ "${lines[1]}" = "qcowkit: x.qcow2: Cluster size must be a power of two between 512 and 2048k" ]
    [ ! -e x.qcow2 ]
}

@test "create: refcount_bits errors (width, compat=0.10)" {
    both_create -f qcow2 -o compat=0.10,refcount_bits=8 x.qcow2 1M
    both_create -f qcow2 -o refcount_bits=3 x.qcow2 1M
    both_create -f qcow2 -o refcount_bits=128 x.qcow2 1M
    both_create -f qcow2 -o refcount_bits=abc x.qcow2 1M
    both_create -f qcow2 -o refcount_bits=0x10 x.qcow2 1M
}

@test "create: extended_l2 needs 16k clusters and compat 1.1" {
    both_create -f qcow2 -o extended_l2=on,cluster_size=8k x.qcow2 1M
    both_create -f qcow2 -o compat=0.10,extended_l2=on x.qcow2 1M
}

@test "create: v3-only features with compat=0.10" {
    both_create -f qcow2 -o compat=0.10,lazy_refcounts=on x.qcow2 1M
    both_create -f qcow2 -o compat=0.10,compression_type=zstd x.qcow2 1M
    both_create -f qcow2 -o compat=0.10,data_file=x.data x.qcow2 1M
}

@test "create: too large for the cluster size" {
    both_create -f qcow2 x.qcow2 3P
    both_create -f qcow2 x.qcow2 2P
    both_create -f qcow2 -o cluster_size=512 x.qcow2 129G
    run "$QCOWKIT" create -f qcow2 x.qcow2 3P
    [ "${lines[1]}" = "qcowkit: x.qcow2: The image size is too large for file format 'qcow2' (try using a larger cluster size)" ]
}

@test "create: sizes past INT64_MAX" {
    both_create -f qcow2 -o size=16E x.qcow2
    both_create -f raw x.raw 9223372036854775807
    both_create -f qcow2 x.qcow2 9223372036854775807
    # qemu-img takes 8E as an option value and fails later ("Image size
    # cannot be negative"); our size parser stops at INT64_MAX
    run "$QCOWKIT" create -f qcow2 -o size=8E x.qcow2
    [ "$status" -eq 1 ]
    [ ! -e x.qcow2 ]
}

@test "create: hex sizes, with qemu's warning for a suffix" {
    both_create -f raw x.raw 0x10000
    both_create -f raw x.raw 0x10k
}

@test "create: missing size without a backing file" {
    both_create -f qcow2 x.qcow2
    run "$QCOWKIT" create -f qcow2 x.qcow2
    [ "$status" -eq 1 ]
    [ "$output" = "qcowkit: x.qcow2: Image creation needs a size parameter" ]
}

@test "create: backing file not found" {
    both_create -f qcow2 -b nonexist.qcow2 -F qcow2 x.qcow2
    both_create -f qcow2 -b nonexist.qcow2 -F qcow2 x.qcow2 1M
}

@test "create: backing file without a backing format" {
    both_create -f qcow2 -b base.qcow2 x.qcow2
    both_create -f qcow2 -b base.raw x.qcow2
    both_create -f qcow2 -u -b nonexist.qcow2 x.qcow2 1M
}

@test "create: backing checks: same name, empty name, -F alone, raw target" {
    both_create -f qcow2 -b x.qcow2 -F qcow2 x.qcow2
    both_create -f qcow2 -b "" -F qcow2 x.qcow2
    both_create -f qcow2 -F qcow2 x.qcow2 1M
    both_create -f raw -b base.qcow2 x.raw 1M
    both_create -f raw -F raw x.raw 1M
}

@test "create: option values QEMU does not accept" {
    both_create -f qcow2 -o compat=0.9 x.qcow2 1M
    both_create -f qcow2 -o lazy_refcounts=maybe x.qcow2 1M
    both_create -f qcow2 -o compression_type=lz4 x.qcow2 1M
    both_create -f qcow2 -o preallocation=bogus x.qcow2 1M
    both_create -f raw -o preallocation=bogus x.raw 1M
    both_create -f qcow2 -u -b base.qcow2 -F bogus x.qcow2 1M
    both_create -f qcow2 -o cluster_size=abc x.qcow2 1M
}

@test "create: a late error removes an existing file, as qemu-img does" {
    both_create -f qcow2 -o compat=0.9 exist.img 1M
    [ ! -e k/exist.img ]
    both_create -f qcow2 -o lazy_refcounts=maybe exist.img 1M
    [ -e k/exist.img ]
}

@test "create: data_file_raw needs a data file and no backing file" {
    both_create -f qcow2 -o data_file_raw=on x.qcow2 1M
    both_create -f qcow2 -o data_file=x.data,backing_file=base.qcow2,backing_fmt=qcow2,data_file_raw=on x.qcow2 1M
}

@test "create: option list syntax and unknown options" {
    both_create -f qcow2 -o foo=bar x.qcow2 1M
    both_create -f qcow2 -o "" x.qcow2 1M
    both_create -f qcow2 -o "size=1M," x.qcow2
    both_create -f qcow2 -o "size=1M,," x.qcow2
    both_create -f qcow2 -o "cluster_size=64k,,x" x.qcow2 1M
    both_create -f qcow2 -o size=1M x.qcow2 2M
    both_create -f raw -o cluster_size=4k x.raw 1M
    both_create -f qcow2 -o backing_file=a,,b,backing_fmt=qcow2 -u x.qcow2 1M
}

@test "create: unknown format, missing file name, extra argument" {
    both_create -f foo x.qcow2 1M
    run "$QCOWKIT" create -f qcow2
    [ "$status" -eq 1 ]
    [ "${lines[0]}" = "qcowkit: Expecting image file name" ]
    run "$QCOWKIT" create -f qcow2 x.qcow2 1M extra
    [ "$status" -eq 1 ]
    [ "${lines[0]}" = "qcowkit: Unexpected argument: extra" ]
}

@test "create: a folder that does not exist" {
    both_create -f qcow2 /nonexistent-dir/x.qcow2 1M
}

@test "create: an image another process has open is refused and left untouched" {
    qemu-img create -q -f qcow2 held.qcow2 10M
    cp held.qcow2 before.qcow2
    qemu-io -c 'sleep 4000' held.qcow2 &
    writer=$!
    sleep 0.5
    theirs=$(run_both_text qemu-img create -f qcow2 held.qcow2 20M)
    ours=$(run_both_text "$QCOWKIT" create -f qcow2 held.qcow2 20M)
    kill "$writer" 2>/dev/null || true
    wait "$writer" 2>/dev/null || true
    same_text "$theirs" "$ours"
    [[ "$ours" == *'Failed to get "write" lock'* ]]
    cmp held.qcow2 before.qcow2
}

@test "create: qcow2 preallocation=metadata maps every cluster (L2 then data, per L2 table)" {
    both_create -f qcow2 -o preallocation=metadata x.qcow2 1G
    both_create -f qcow2 -o preallocation=metadata x.qcow2 1000k
    both_create -f qcow2 -o preallocation=metadata,cluster_size=512 x.qcow2 3M
    both_create -f qcow2 -o preallocation=metadata,extended_l2=on x.qcow2 5001k
    run qemu-img check k/x.qcow2
    [ "$status" -eq 0 ]
}

@test "create: qcow2 preallocation=falloc and full reserve the data area" {
    for p in falloc full; do
        both_create -f qcow2 -o preallocation=$p x.qcow2 64M
        both_create -f qcow2 -o preallocation=$p x.qcow2 1000k
        both_create -f qcow2 -o preallocation=$p,cluster_size=4k,extended_l2=off x.qcow2 3M
    done
    run qemu-img check k/x.qcow2
    [ "$status" -eq 0 ]
}

@test "create: preallocation with a backing file needs extended_l2" {
    both_create -f qcow2 -o preallocation=metadata -b base.qcow2 -F qcow2 x.qcow2
    both_create -f qcow2 -o preallocation=metadata,extended_l2=on -b base.qcow2 -F qcow2 x.qcow2
    both_create -f qcow2 -o preallocation=full,extended_l2=on -b base.qcow2 -F qcow2 x.qcow2
}

@test "create: preallocation with an external data file" {
    for p in metadata falloc full; do
        both_create -f qcow2 -o preallocation=$p,data_file=x.data x.qcow2 3M
        both_create -f qcow2 -o preallocation=$p,data_file=x.data x.qcow2 3001k
    done
    both_create -f qcow2 -o data_file=x.data,data_file_raw=on x.qcow2 1000k
}

@test "create: raw preallocation falloc and full; metadata is refused" {
    both_create -f raw -o preallocation=falloc x.raw 5M
    both_create -f raw -o preallocation=full x.raw 5M
    both_create -f raw -o preallocation=metadata x.raw 5M
    [ "$(stat -c %s k/x.raw)" = 0 ]
}
