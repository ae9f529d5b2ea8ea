#!/usr/bin/env bats
# info.bats - `qcowkit info` against `qemu-img info` on images made here.

load img_helpers

setup() {
    img_setup
}

same_info_text() {
    same_outputs info "$@"
}

@test "info: default v3 image, JSON equals qemu-img's" {
    qemu-img create -q -f qcow2 a.qcow2 1G
    both_info_json a.qcow2
}

@test "info: JSON text is byte-identical to qemu-img's (member order, indentation)" {
    qemu-img create -q -f qcow2 a.qcow2 1G
    same_text "$(qemu-img info --output=json a.qcow2)" "$("$QCOWKIT" info --output=json a.qcow2)"
}

@test "info: human output of a v3 image equals qemu-img's" {
    qemu-img create -q -f qcow2 a.qcow2 1G
    same_info_text a.qcow2
    run "$QCOWKIT" info a.qcow2
    [ "${lines[3]}" = "disk size: 196 KiB" ]
}

@test "info: v2 image shows compat 0.10 and only v2 keys" {
    qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 100M
    both_info_json v2.qcow2
    run "$QCOWKIT" info --output=json v2.qcow2
    [ "$(echo "$output" | jq -c '.["format-specific"].data | keys')" = '["compat","compression-type","refcount-bits"]' ]
}

@test "info: 512-byte and 2 MiB clusters" {
    qemu-img create -q -f qcow2 -o cluster_size=512 c512.qcow2 64M
    qemu-img create -q -f qcow2 -o cluster_size=2M c2m.qcow2 64M
    same_info_text c512.qcow2
    same_info_text c2m.qcow2
}

@test "info: zstd, extended L2, lazy refcounts, 64-bit refcounts" {
    qemu-img create -q -f qcow2 -o compression_type=zstd,extended_l2=on,lazy_refcounts=on,refcount_bits=64 x.qcow2 1G
    same_info_text x.qcow2
    run "$QCOWKIT" info --output=json x.qcow2
    [ "$(echo "$output" | jq -r '.["format-specific"].data["compression-type"]')" = zstd ]
    [ "$(echo "$output" | jq -r '.["format-specific"].data["extended-l2"]')" = true ]
}

@test "info: internal snapshots, JSON and the human table" {
    qemu-img create -q -f qcow2 s.qcow2 64M
    qemu-io -c 'write -P 1 0 1M' s.qcow2 >/dev/null
    qemu-img snapshot -c first s.qcow2
    qemu-img snapshot -c 'a much longer snapshot name' s.qcow2
    same_info_text s.qcow2
    run "$QCOWKIT" info s.qcow2
    [[ "$output" == *"Snapshot list:"* ]]
    [ "$(echo "$output" | grep -c '^ID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT$')" = 1 ]
}

@test "info: bitmaps, enabled and disabled, with granularity" {
    qemu-img create -q -f qcow2 b.qcow2 64M
    qemu-img bitmap --add b.qcow2 b0
    qemu-img bitmap --add --disable -g 512 b.qcow2 off
    same_info_text b.qcow2
    run "$QCOWKIT" info --output=json b.qcow2
    [ "$(echo "$output" | jq -c '.["format-specific"].data.bitmaps[1].flags')" = '[]' ]
}

@test "info: an in-use bitmap left by a crash is listed with flags in-use, auto" {
    qemu-img create -q -f qcow2 b.qcow2 64M
    qemu-img bitmap --add b.qcow2 crashed
    qemu-io -c 'write 0 64k' -c 'sigraise 9' b.qcow2 >/dev/null 2>&1 || true
    both_info_json b.qcow2
    run "$QCOWKIT" info --output=json b.qcow2
    [ "$(echo "$output" | jq -c '.["format-specific"].data.bitmaps[0].flags')" = '["in-use","auto"]' ]
}

@test "info: human output gives an inconsistent bitmap's reason on one extra line" {
    qemu-img create -q -f qcow2 b.qcow2 64M
    qemu-img bitmap --add b.qcow2 crashed
    qemu-io -c 'write 0 64k' -c 'sigraise 9' b.qcow2 >/dev/null 2>&1 || true
    qemu-img bitmap --add b.qcow2 fine
    ours=$("$QCOWKIT" info b.qcow2)
    theirs=$(qemu-img info b.qcow2)
    # exactly one more line, right after the bad bitmap's granularity
    same_text "$theirs" "$(echo "$ours" | grep -v '^            reason: ')"
    [ "$(echo "$ours" | grep -c '^            reason: ')" = 1 ]
    echo "$ours" | grep -A1 'name: crashed' | grep -q 'granularity: 65536'
    echo "$ours" | grep -A2 'name: crashed' | grep -q '^            reason: in use'
}

@test "info: --help mentions the bitmap reason line" {
    run "$QCOWKIT" info --help
    [ "$status" -eq 0 ]
    [[ "$output" == *'"reason:"'* ]]
}

@test "info: lazy-refcounts image left dirty reports dirty-flag and 'cleanly shut down: no'" {
    qemu-img create -q -f qcow2 -o lazy_refcounts=on l.qcow2 16M
    qemu-io -c 'write 0 1M' -c 'sigraise 9' l.qcow2 >/dev/null 2>&1 || true
    same_info_text l.qcow2
    run "$QCOWKIT" info --output=json l.qcow2
    [ "$(echo "$output" | jq '.["dirty-flag"]')" = true ]
    run "$QCOWKIT" info l.qcow2
    [[ "$output" == *"cleanly shut down: no"* ]]
}

@test "info: backing file in a subfolder, relative names and full-backing-filename" {
    mkdir -p sub
    qemu-img create -q -f raw base.raw 10M
    qemu-img create -q -f qcow2 -b ../base.raw -F raw sub/mid.qcow2
    qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 sub/top.qcow2
    same_info_text sub/top.qcow2
    run "$QCOWKIT" info --output=json sub/top.qcow2
    [ "$(echo "$output" | jq -r '.["full-backing-filename"]')" = sub/mid.qcow2 ]
}

@test "info: --backing-chain JSON is a list, top first, down to a raw base" {
    mkdir -p sub
    qemu-img create -q -f raw base.raw 10M
    qemu-img create -q -f qcow2 -b ../base.raw -F raw sub/mid.qcow2
    qemu-img create -q -f qcow2 -b sub/mid.qcow2 -F qcow2 top.qcow2
    same_json "$(qemu-img info --output=json --backing-chain top.qcow2)" \
              "$("$QCOWKIT" info --output=json --backing-chain top.qcow2)"
    run "$QCOWKIT" info --output=json --backing-chain top.qcow2
    [ "$(echo "$output" | jq -r '[.[].format] | join(",")')" = qcow2,qcow2,raw ]
}

@test "info: --backing-chain human output separates images with a blank line" {
    qemu-img create -q -f qcow2 base.qcow2 10M
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
    same_info_text --backing-chain top.qcow2
    run "$QCOWKIT" info --backing-chain top.qcow2
    [ "$(echo "$output" | grep -c '^image: ')" = 2 ]
    [ "$(echo "$output" | grep -c '^$')" = 1 ]
}

# Point the header of v2 image $1 at backing file name $2, with no format
# extension (as images written before backing formats existed).
set_backing_name_only() {
    local img=$1 name=$2 len=${#2}
    printf '%s' "$name" | dd of="$img" bs=1 seek=512 conv=notrunc status=none
    printf '\x00\x00\x00\x00\x00\x00\x02\x00' | dd of="$img" bs=1 seek=8 conv=notrunc status=none
    printf "\\x$(printf %02x $((len >> 24 & 255)))\\x$(printf %02x $((len >> 16 & 255)))\\x$(printf %02x $((len >> 8 & 255)))\\x$(printf %02x $((len & 255)))" |
        dd of="$img" bs=1 seek=16 conv=notrunc status=none
}

@test "info: backing file without a recorded format" {
    qemu-img create -q -f raw base.raw 10M
    qemu-img create -q -f qcow2 -o compat=0.10 top.qcow2 10M
    set_backing_name_only top.qcow2 base.raw
    run qemu-img info --output=json top.qcow2
    [ "$(echo "$output" | jq -r '.["backing-filename"]')" = base.raw ]
    [ "$(echo "$output" | jq 'has("backing-filename-format")')" = false ]
    same_info_text top.qcow2
    same_info_text --backing-chain top.qcow2
}

@test "info: external data file (data-file, data-file-raw)" {
    qemu-img create -q -f qcow2 -o data_file=d.raw,data_file_raw=on d.qcow2 1M
    same_info_text d.qcow2
    run "$QCOWKIT" info --output=json d.qcow2
    [ "$(echo "$output" | jq -r '.["format-specific"].data["data-file"]')" = d.raw ]
    [ "$(echo "$output" | jq -r '.["format-specific"].data["data-file-raw"]')" = true ]
}

@test "info: raw image reports format raw and no cluster size" {
    qemu-img create -q -f raw r.raw 3M
    same_info_text r.raw
    run "$QCOWKIT" info --output=json r.raw
    [ "$(echo "$output" | jq -r .format)" = raw ]
    [ "$(echo "$output" | jq 'has("cluster-size")')" = false ]
}

@test "info: -f raw on a qcow2 file describes the file as raw" {
    qemu-img create -q -f qcow2 a.qcow2 1G
    same_info_text -f raw a.qcow2
}

@test "info: -U reads an image a writer holds" {
    qemu-img create -q -f qcow2 a.qcow2 64M
    qemu-io -c 'sleep 4000' a.qcow2 &
    writer=$!
    sleep 0.5
    run qemu-img info a.qcow2
    [ "$status" -eq 1 ]     # the writer really holds it
    same_info_text a.qcow2  # refused the same way without -U
    same_info_text -U a.qcow2
    kill "$writer" 2>/dev/null || true
    wait "$writer" 2>/dev/null || true
}

@test "info: missing file gives qemu-img's message and exit code 1" {
    same_info_text nosuch.qcow2
    run "$QCOWKIT" info nosuch.qcow2
    [ "$status" -eq 1 ]
    [ "$output" = "qcowkit: Could not open 'nosuch.qcow2': Could not open 'nosuch.qcow2': No such file or directory" ]
}

@test "info: -f qcow2 on a file that is not qcow2 fails like qemu-img" {
    head -c 1M /dev/zero > plain.img
    same_info_text -f qcow2 plain.img
}

@test "info: an unsupported qcow2 version fails with 'Could not open' and exit 1" {
    printf 'QFI\xfb\x00\x00\x00\x07' > bad.qcow2
    truncate -s 1M bad.qcow2
    same_info_text bad.qcow2
}

@test "info: wrong --output value and wrong argument count" {
    qemu-img create -q -f qcow2 a.qcow2 1M
    same_info_text --output=xml a.qcow2
    run "$QCOWKIT" info
    [ "$status" -eq 1 ]
    [ "${lines[0]}" = "qcowkit: Expecting one image file name" ]
    run "$QCOWKIT" info a.qcow2 b.qcow2
    [ "$status" -eq 1 ]
}

@test "info: --backing-chain refuses a loop like qemu-img" {
    qemu-img create -q -f qcow2 -u -b b.qcow2 -F qcow2 a.qcow2 1M
    qemu-img create -q -f qcow2 -u -b a.qcow2 -F qcow2 b.qcow2 1M
    same_info_text --backing-chain a.qcow2
    run "$QCOWKIT" info --backing-chain a.qcow2
    [ "$status" -eq 1 ]
    [ "$output" = "qcowkit: Backing file 'a.qcow2' creates an infinite loop." ]
}

@test "info: --backing-chain with a missing backing file prints nothing and fails" {
    qemu-img create -q -f qcow2 -u -b gone.qcow2 -F qcow2 top.qcow2 1M
    same_info_text top.qcow2
    same_info_text --backing-chain top.qcow2
    run "$QCOWKIT" info --backing-chain top.qcow2
    [ "$status" -eq 1 ]
    [[ "$output" != *"image:"* ]]
}

@test "info: corrupt bit is reported as corrupt: true" {
    qemu-img create -q -f qcow2 c.qcow2 1M
    printf '\x02' | dd of=c.qcow2 bs=1 seek=79 conv=notrunc status=none
    same_info_text c.qcow2
    run "$QCOWKIT" info --output=json c.qcow2
    [ "$(echo "$output" | jq '.["format-specific"].data.corrupt')" = true ]
}

@test "info: an unknown incompatible feature bit fails the open with qemu's text" {
    qemu-img create -q -f qcow2 u.qcow2 1M
    printf '\x20' | dd of=u.qcow2 bs=1 seek=79 conv=notrunc status=none
    same_info_text u.qcow2
}

# Write the big-endian bytes HEX (e.g. 0000036af44c5c00) at OFFSET of FILE.
poke_be() {
    local file=$1 off=$2 hex=$3 esc="" i
    for ((i = 0; i < ${#hex}; i += 2)); do esc+="\\x${hex:i:2}"; done
    printf "$esc" | dd of="$file" bs=1 seek="$off" conv=notrunc status=none
}

@test "info: snapshot with VM state, VM clock and no icount; names needing escapes" {
    qemu-img create -q -f qcow2 s.qcow2 64M
    qemu-img snapshot -c "$(printf 'snap "quoted" \xc3\xa9\ttab')" s.qcow2
    qemu-img snapshot -c s2 s.qcow2
    qemu-img bitmap --add s.qcow2 "$(printf 'bm "q" \\ \xc3\xa9 \xe2\x98\x83 \x01')"
    off=$(od -An -tu8 --endian=big -j64 -N8 s.qcow2 | tr -d ' ')
    poke_be s.qcow2 $((off + 24)) 0000036af44c5c00   # vm clock 3757.9 s
    poke_be s.qcow2 $((off + 32)) 075bcd15           # vm state size (32 bit)
    poke_be s.qcow2 $((off + 40)) 00000000075bcd15   # vm state size (64 bit)
    poke_be s.qcow2 $((off + 56)) ffffffffffffffff   # icount off
    same_info_text s.qcow2
    run "$QCOWKIT" info s.qcow2
    [[ "$output" == *" 118 MiB "*" 01:02:37.900 "* ]]
    run "$QCOWKIT" info --output=json s.qcow2
    [ "$(echo "$output" | jq '.snapshots[0] | has("icount")')" = false ]
    [[ "$output" == *'"bm \"q\" \\ \u00E9 \u2603 \u0001"'* ]]
}
