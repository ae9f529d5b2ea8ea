#!/usr/bin/env bats
# map.bats - `qcowkit map` against `qemu-img map` on images made here.

load img_helpers

setup() {
    img_setup
}

same_map_text() {
    same_outputs map "$@"
}

# A three-layer chain with data, zeros and holes at every depth.
make_chain() {
    qemu-img create -q -f raw base.raw 10M
    qemu-io -f raw -c 'write -P 7 1M 2M' base.raw >/dev/null
    qemu-img create -q -f qcow2 -b base.raw -F raw mid.qcow2
    qemu-io -c 'write -P 1 0 64k' -c 'write -z 4M 1M' -c 'write -P 2 5M 100k' mid.qcow2 >/dev/null
    qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
    qemu-io -c 'write -P 3 2M 64k' -c 'discard 5M 64k' top.qcow2 >/dev/null
}

@test "map: empty image is one unallocated zero range" {
    qemu-img create -q -f qcow2 e.qcow2 1G
    same_map_text e.qcow2
    run "$QCOWKIT" map --output=json e.qcow2
    same_json "$output" '[{"start":0,"length":1073741824,"depth":0,"present":false,"zero":true,"data":false}]'
}

@test "map: JSON equals qemu-img's for a backing chain (depth, present, offsets)" {
    make_chain
    same_json "$(qemu-img map --output=json top.qcow2)" "$("$QCOWKIT" map --output=json top.qcow2)"
    run "$QCOWKIT" map --output=json top.qcow2
    [ "$(echo "$output" | jq '[.[].depth] | max')" = 2 ]
}

@test "map: JSON text is byte-identical (one object per line, qemu's spacing)" {
    make_chain
    same_map_text top.qcow2
    run "$QCOWKIT" map --output=json top.qcow2
    [[ "${lines[0]}" == '[{ "start": 0, "length": '* ]]
    [ "${lines[-1]: -2}" = '}]' ]
}

@test "map: human table lists data ranges with their file" {
    make_chain
    same_map_text top.qcow2
    run "$QCOWKIT" map top.qcow2
    [ "${lines[0]}" = "Offset          Length          Mapped to       File" ]
    [[ "$output" == *"base.raw"* ]]
}

@test "map: adjacent extents merge only when host offsets continue" {
    qemu-img create -q -f qcow2 f.qcow2 10M
    # written out of order: guest-contiguous, host-discontiguous
    qemu-io -c 'write 1M 64k' -c 'write 0 64k' -c 'write 64k 64k' f.qcow2 >/dev/null
    same_map_text f.qcow2
}

@test "map: zero clusters and discarded ranges" {
    qemu-img create -q -f qcow2 z.qcow2 10M
    qemu-io -c 'write 0 1M' -c 'write -z 256k 128k' -c 'discard 512k 64k' -c 'write -z -u 2M 1M' z.qcow2 >/dev/null
    same_map_text z.qcow2
}

@test "map: small clusters and partial writes" {
    qemu-img create -q -f qcow2 -o cluster_size=512 s.qcow2 4M
    qemu-io -c 'write 0 3k' -c 'write 10k 1k' -c 'write -z 20k 2k' s.qcow2 >/dev/null
    same_map_text s.qcow2
}

@test "map: compressed image: JSON has no offsets, human refuses" {
    qemu-img create -q -f qcow2 src.qcow2 4M
    qemu-io -c 'write -P 5 0 1M' src.qcow2 >/dev/null
    qemu-img convert -c -O qcow2 src.qcow2 c.qcow2
    same_map_text c.qcow2
    run "$QCOWKIT" map c.qcow2
    [ "$status" -eq 1 ]
    [[ "$output" == *"qcowkit: File contains external, encrypted or compressed clusters."* ]]
}

@test "map: external data file maps to the data file" {
    qemu-img create -q -f qcow2 -o data_file=d.raw,data_file_raw=on d.qcow2 1M
    same_map_text d.qcow2
}

@test "map: raw image" {
    qemu-img create -q -f raw r.raw 4M
    qemu-io -f raw -c 'write 1M 1M' r.raw >/dev/null
    same_map_text r.raw
}

@test "map: --start-offset and --max-length clip the range" {
    make_chain
    same_map_text --start-offset=1M --max-length=3M top.qcow2
    same_map_text --start-offset=1000 --max-length=5000 top.qcow2
}

@test "map: a start offset past the end prints one empty entry" {
    qemu-img create -q -f qcow2 e.qcow2 1M
    same_map_text --start-offset=5G e.qcow2
    run "$QCOWKIT" map --output=json --start-offset=5G e.qcow2
    [ "$output" = '[{ "start": 5368709120, "length": 0, "depth": 0, "present": false, "zero": false, "data": false}]' ]
}

@test "map: invalid --start-offset and --max-length are refused with qemu's text" {
    qemu-img create -q -f qcow2 e.qcow2 1M
    same_map_text --start-offset=x e.qcow2
    same_map_text --max-length=-1 e.qcow2
    run "$QCOWKIT" map --start-offset=x e.qcow2
    [ "$status" -eq 1 ]
    [ "${lines[0]}" = "qcowkit: Invalid start offset specified. You may use k, M, G, T, P or E suffixes for" ]
}

@test "map: missing image and missing argument" {
    same_map_text nosuch.qcow2
    run "$QCOWKIT" map
    [ "$status" -eq 1 ]
    [ "${lines[0]}" = "qcowkit: Expecting one image file name" ]
}

@test "map: 2 MiB extended-L2 clusters with partial writes (host holes read as zero)" {
    # QEMU flags the image as metadata-preallocated (many more refcounted
    # clusters than allocated host blocks) and then asks the host file for
    # holes inside allocated subclusters (qcow2_detect_metadata_preallocation).
    qemu-img create -q -f qcow2 -o cluster_size=2M,extended_l2=on x.qcow2 100M
    qemu-io -c 'write 0 3k' -c 'write 70k 1k' -c 'write -z 4M 64k' x.qcow2 >/dev/null
    # small writes into many more clusters keep the image far from the
    # heuristic's threshold (allocated bytes vs refcounted clusters)
    for i in $(seq 3 12); do qemu-io -c "write $((i * 2))M 3k" x.qcow2 >/dev/null; done
    # The heuristic reads the file's allocated size, which changes while the
    # page cache writes back: settle it so that both tools see the same.
    sync x.qcow2
    same_map_text x.qcow2
}

@test "map: a missing backing file fails like qemu-img" {
    qemu-img create -q -f qcow2 -u -b gone.qcow2 -F qcow2 top.qcow2 1M
    same_map_text top.qcow2
    run "$QCOWKIT" map top.qcow2
    [ "$status" -eq 1 ]
}

@test "map: an image a writer holds is refused without -U and mapped with it" {
    qemu-img create -q -f qcow2 a.qcow2 64M
    qemu-io -c 'write 0 1M' a.qcow2 >/dev/null
    qemu-io -c 'sleep 4000' a.qcow2 &
    writer=$!
    sleep 0.5
    same_map_text a.qcow2
    run "$QCOWKIT" map a.qcow2
    [ "$status" -eq 1 ]
    same_map_text -U a.qcow2
    kill "$writer" 2>/dev/null || true
    wait "$writer" 2>/dev/null || true
}

@test "map: the metadata-preallocation heuristic flips where qemu-img's does" {
    # Six clusters in use; with 4 of them allocated on the host QEMU asks the
    # file for holes inside data clusters, with 5 it does not.
    qemu-img create -q -f qcow2 v.qcow2 1M
    qemu-io -c 'write -P 1 0 4k' v.qcow2 >/dev/null
    sync v.qcow2
    for kb in 192 256 300 320; do
        cp --sparse=always v.qcow2 u.qcow2
        fallocate -o 0 -l $((kb * 1024)) u.qcow2
        same_map_text u.qcow2
    done
    # Both sides of the flip were seen: the outputs differ between them.
    cp --sparse=always v.qcow2 a.qcow2; fallocate -o 0 -l 262144 a.qcow2
    cp --sparse=always v.qcow2 b.qcow2; fallocate -o 0 -l 327680 b.qcow2
    [ "$("$QCOWKIT" map --output=json a.qcow2)" != "$("$QCOWKIT" map --output=json b.qcow2)" ]
}
