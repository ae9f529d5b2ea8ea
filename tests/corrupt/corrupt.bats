#!/usr/bin/env bats
# tests/corrupt/corrupt.bats - malformed images (hostile-inputs.md), each with the error it must
# produce. Every case patches a pristine qemu-img image (lib.bash), asks qemu-img 7.2 what it says
# (the reference message; where qemu-img accepts the image, the design's stricter rule applies and
# the test says so), then asserts that qcowkit exits 1 with a one-line message naming the problem
# and that no sanitizer report appears (make check SANITIZE=1).

load ../cli/helpers
load lib

setup_file() {
    # 46 short tests: one process is faster than GNU parallel's per-test start-up
    export BATS_NO_PARALLELIZE_WITHIN_FILE=true
    require_peer qemu-img qemu-io perl || return 0
    qk_bin_ok
    export CORRUPT_BASES="$BATS_FILE_TMPDIR/bases"
    corrupt_bases "$CORRUPT_BASES"
}

setup() {
    require_peer qemu-img qemu-io perl
    [[ -f "${CORRUPT_BASES:-/nonexistent}/b.qcow2" ]]
    cd "$BATS_TEST_TMPDIR"
    OUT="$BATS_TEST_TMPDIR/out.raw"
}

# ---- header ---------------------------------------------------------------------------------

@test "truncated header (50 bytes)" {
    mk trunc b.qcow2
    truncate -s 50 "$IMG"
    qemu_fails 'qcow2 header too short' info "$IMG"
    qk_refuses 'header too short' "$IMG"
}

@test "bad magic (info -f qcow2)" {
    mk magic b.qcow2
    put_u32 "$IMG" 0 0x514649fa
    qemu_fails 'Image is not in qcow2 format' info -f qcow2 "$IMG"
    qk_refuses 'Image is not in qcow2 format' -f qcow2 "$IMG"
}

@test "version 1 (info -f qcow2; qemu-img would probe the qcow v1 driver)" {
    mk v1 b.qcow2
    put_u32 "$IMG" 4 1
    qemu_fails 'Unsupported qcow2 version 1' info -f qcow2 "$IMG"
    qk_refuses 'Unsupported qcow2 version 1' -f qcow2 "$IMG"
}

@test "version 4" {
    mk v4 b.qcow2
    put_u32 "$IMG" 4 4
    qemu_fails 'Unsupported qcow2 version 4' info "$IMG"
    qk_refuses 'Unsupported qcow2 version 4' "$IMG"
}

@test "cluster_bits 8" {
    mk cb8 b.qcow2
    put_u32 "$IMG" 20 8
    qemu_fails 'Unsupported cluster size: 2\^8' info "$IMG"
    qk_refuses 'Unsupported cluster size: 2\^8' "$IMG"
}

@test "cluster_bits 22" {
    mk cb22 b.qcow2
    put_u32 "$IMG" 20 22
    qemu_fails 'Unsupported cluster size: 2\^22' info "$IMG"
    qk_refuses 'Unsupported cluster size: 2\^22' "$IMG"
}

@test "header_length 96 (shorter than a v3 header)" {
    mk hl96 b.qcow2
    put_u32 "$IMG" 100 96
    qemu_fails 'qcow2 header too short' info "$IMG"
    qk_refuses 'header too short' "$IMG"
}

@test "header_length 108 (not a multiple of 8)" {
    mk hl108 b.qcow2
    put_u32 "$IMG" 100 108
    # qemu-img does not check the multiple of 8; it then misreads the extensions
    qemu_fails 'Header extension too large' info "$IMG"
    qk_refuses 'Header extension too large|multiple of 8' "$IMG"
}

@test "header_length larger than the cluster" {
    mk hlbig b.qcow2
    put_u32 "$IMG" 100 65544
    qemu_fails 'qcow2 header exceeds cluster size' info "$IMG"
    qk_refuses 'header exceeds cluster size' "$IMG"
}

@test "header extension running past its area" {
    mk extlen b.qcow2
    [[ "$(get_u32 "$IMG" 112)" == $((0x6803f857)) ]] # the feature table comes first
    put_u32 "$IMG" 116 70000
    qemu_fails 'Header extension too large' info "$IMG"
    qk_refuses 'Header extension too large' "$IMG"
}

@test "unknown incompatible bit without a name" {
    mk inc5 b.qcow2
    put_u64 "$IMG" 72 $((1 << 5))
    qemu_fails 'Unsupported qcow2 feature\(s\): Unknown incompatible feature: 20' info "$IMG"
    qk_refuses 'Unsupported qcow2 feature\(s\): Unknown incompatible feature: 20' "$IMG"
}

@test "unknown incompatible bit named in the feature table" {
    mk named b.qcow2
    # feature-table entry 0 (type 0, bit 0, "dirty bit") becomes bit 5 "frobnication"
    [[ "$(get_u8 "$IMG" 121)" == 0 ]]
    put_u8 "$IMG" 121 5
    put_bytes "$IMG" 122 'frobnication\0\0\0\0\0\0\0\0\0\0'
    put_u64 "$IMG" 72 $(((1 << 5) | (1 << 9)))
    qemu_fails 'Unsupported qcow2 feature\(s\): frobnication, Unknown incompatible feature: 200' info "$IMG"
    qk_refuses 'Unsupported qcow2 feature\(s\): frobnication, Unknown incompatible feature: 200' "$IMG"
}

@test "compression_type 2" {
    mk ct2 b.qcow2
    put_u8 "$IMG" 104 2
    put_u64 "$IMG" 72 8
    qemu_fails 'unknown compression type: 2' info "$IMG"
    qk_refuses 'unknown compression type: 2' "$IMG"
}

@test "compression bit set with compression_type zlib" {
    mk ctbit b.qcow2
    put_u64 "$IMG" 72 8
    qemu_fails 'Compression type incompatible feature bit must not be set' info "$IMG"
    qk_refuses 'Compression type incompatible feature bit must not be set' "$IMG"
}

@test "compression_type zstd without the compression bit" {
    mk ctnobit zs.qcow2
    [[ "$(get_u64 "$IMG" 72)" == 8 ]]
    put_u64 "$IMG" 72 0
    qemu_fails 'Compression type incompatible feature bit must be set' info "$IMG"
    qk_refuses 'Compression type incompatible feature bit must be set' "$IMG"
}

@test "refcount_order 7" {
    mk ro7 b.qcow2
    put_u32 "$IMG" 96 7
    qemu_fails 'Reference count entry width too large' info "$IMG"
    qk_refuses 'Reference count entry width too large' "$IMG"
}

@test "crypt_method 1 (AES): reading refused" {
    mk aes b.qcow2
    put_u32 "$IMG" 32 1
    qemu_fails 'encrypt' convert -O raw "$IMG" "$OUT"
    qk_survives info "$IMG" # qemu-img info shows "encrypted: yes"
    qk_fails '[Ee]ncrypt|AES|crypt' convert -O raw "$IMG" "$OUT"
}

@test "crypt_method 2 (LUKS) without a crypto header" {
    mk luks b.qcow2
    put_u32 "$IMG" 32 2
    qemu_fails 'Missing CRYPTO header for crypt method 2' convert -O raw "$IMG" "$OUT"
    qk_survives info "$IMG" # qemu-img 7.2 info segfaults here
    qk_fails 'CRYPTO header|[Ee]ncrypt|crypt' convert -O raw "$IMG" "$OUT"
}

@test "extended L2 with 8 KiB clusters (subclusters of 256 bytes)" {
    mk el2 e.qcow2
    put_u32 "$IMG" 20 13
    qemu_fails 'Unsupported subcluster size: 256' info "$IMG"
    qk_refuses 'Unsupported subcluster size: 256' "$IMG"
}

@test "external-data-file bit without a data-file name" {
    mk dfbit b.qcow2
    put_u64 "$IMG" 72 4
    qemu_fails "'data-file' is required for this image" convert -O raw "$IMG" "$OUT"
    qk_fails "'data-file' is required for this image" convert -O raw "$IMG" "$OUT"
}

# ---- bitmaps extension --------------------------------------------------------------------------
# QEMU refuses the whole image (qcow2_read_extensions). The design salvages instead (design.md 4,
# "what we do beyond QEMU"): the image opens with a one-line warning that carries QEMU's message,
# the bitmaps are not used, and the guest data reads as before.

_bitmap_ext() { mk "$1" bm.qcow2; BE="$(find_ext $((0x23852875)))"; }

@test "bitmaps extension with length 16" {
    _bitmap_ext blen
    put_u32 "$IMG" $((BE + 4)) 16
    qemu_fails 'bitmaps_ext: Invalid extension length' info "$IMG"
    qk_salvages 'bitmaps_ext: Invalid extension length' "$IMG"
}

@test "bitmaps extension with a non-zero reserved field" {
    _bitmap_ext bres
    put_u32 "$IMG" $((BE + 12)) 1
    qemu_fails 'bitmaps_ext: Reserved field is not zero' info "$IMG"
    qk_salvages 'bitmaps_ext: Reserved field is not zero' "$IMG"
}

@test "bitmaps extension with 65536 bitmaps" {
    _bitmap_ext bnb
    put_u32 "$IMG" $((BE + 8)) 65536
    qemu_fails 'Image has 65536 bitmaps, exceeding the QEMU supported maximum of 65535' info "$IMG"
    qk_salvages 'Image has 65536 bitmaps, exceeding the QEMU supported maximum of 65535' "$IMG"
}

@test "bitmaps extension with zero bitmaps" {
    _bitmap_ext bnb0
    put_u32 "$IMG" $((BE + 8)) 0
    qemu_fails 'found bitmaps extension with zero bitmaps' info "$IMG"
    qk_salvages 'found bitmaps extension with zero bitmaps' "$IMG"
}

@test "bitmap directory offset unaligned" {
    _bitmap_ext bdoff
    put_u64 "$IMG" $((BE + 24)) $(($(get_u64 "$IMG" $((BE + 24))) + 512))
    qemu_fails 'bitmaps_ext: invalid bitmap directory offset' info "$IMG"
    qk_salvages 'bitmaps_ext: invalid bitmap directory offset' "$IMG"
}

@test "bitmap directory size above 64 MiB" {
    _bitmap_ext bdsz
    put_u64 "$IMG" $((BE + 16)) 67107841
    qemu_fails 'bitmap directory size \(67107841\) exceeds the maximum supported size \(67107840\)' info "$IMG"
    qk_salvages 'bitmap directory size( \(67107841\))? exceeds the maximum supported size \(67107840\)' "$IMG"
}

# ---- backing file name ---------------------------------------------------------------------

@test "backing file name longer than 1023 bytes" {
    mk blong bk.qcow2
    put_u32 "$IMG" 16 1024
    qemu_fails 'Backing file name too long' info "$IMG"
    qk_refuses 'Backing file name too long' "$IMG"
}

@test "backing file name crossing the end of the first cluster" {
    mk bcross bk.qcow2
    put_u64 "$IMG" 8 65000
    put_u32 "$IMG" 16 1000
    qemu_fails 'Backing file name too long' info "$IMG"
    qk_refuses 'Backing file name too long' "$IMG"
}

@test "backing file offset past the first cluster" {
    mk boff bk.qcow2
    put_u64 "$IMG" 8 70000
    qemu_fails 'Invalid backing file offset' info "$IMG"
    qk_refuses 'Invalid backing file offset' "$IMG"
}

@test "backing file name past the end of the file (qemu reads a truncated name)" {
    mk beof bk.qcow2
    truncate -s 530 "$IMG" # the name is at 528..534
    qemu_fails "Could not open '[^']*b\.'" convert -O raw "$IMG" "$OUT"
    qk_refuses '[Bb]acking|end of (the )?file|EOF|truncated' "$IMG"
}

@test "backing loop a.qcow2 -> b.qcow2 -> a.qcow2 (qemu-img convert hangs on it)" {
    qemu-img create -q -f qcow2 -u -b b.qcow2 -F qcow2 a.qcow2 4M
    qemu-img create -q -f qcow2 -u -b a.qcow2 -F qcow2 b.qcow2 4M
    qemu_fails "Backing file 'a.qcow2' creates an infinite loop" info --backing-chain a.qcow2
    qk_fails 'loop' info --backing-chain a.qcow2
    qk_fails 'loop' convert -O raw a.qcow2 "$OUT"
    qk_fails 'loop' map --output=json a.qcow2
}

@test "backing chain 1000 deep: refused by the depth limit" {
    make_deep_chain "$BATS_TEST_TMPDIR/deep" 1000
    cd "$BATS_TEST_TMPDIR/deep"
    [[ -f d1000.qcow2 ]]
    qemu_accepts info --backing-chain d0003.qcow2 # the chain itself is valid
    qk_fails 'deep|depth|chain .*(longer|more) than [0-9]+' info --backing-chain d1000.qcow2
    qk_fails 'deep|depth|chain .*(longer|more) than [0-9]+' convert -O raw d1000.qcow2 "$OUT"
    # a short part of the same chain reads fine
    _qk_run convert -O raw d0003.qcow2 "$OUT"
    [[ $QK_RC == 0 ]]
    cmp -n 512 "$OUT" <(head -c 512 /dev/zero | tr '\0' '\176')
}

@test "backing file named with a json: protocol prefix is refused" {
    qemu-img create -q -f qcow2 -u -F raw \
        -b 'json:{"driver":"raw","file":{"driver":"file","filename":"/etc/hostname"}}' js.qcow2 4M
    qemu_accepts convert -O raw js.qcow2 "$OUT" # qemu-img follows it and reads a host file
    qk_fails 'json:|protocol' info --backing-chain js.qcow2
    qk_fails 'json:|protocol' convert -O raw js.qcow2 "$OUT"
}

@test "backing file named with an nbd: protocol prefix is refused" {
    qemu-img create -q -f qcow2 -u -F raw -b 'nbd://localhost:10999/x' nbd.qcow2 4M
    qk_fails 'nbd:|protocol' info --backing-chain nbd.qcow2
    qk_fails 'nbd:|protocol' convert -O raw nbd.qcow2 "$OUT"
}

# ---- L1 / refcount / snapshot tables ----------------------------------------------------------

@test "l1_size too small for the virtual size" {
    mk l1small b.qcow2
    put_u32 "$IMG" 36 0
    qemu_fails 'L1 table is too small' info "$IMG"
    qk_refuses 'L1 table is too small' "$IMG"
}

@test "l1_size huge (0x2000000 entries, 256 MiB)" {
    mk l1huge b.qcow2
    put_u32 "$IMG" 36 $((0x2000000))
    qemu_fails 'Active L1 table too large' info "$IMG"
    qk_refuses 'Active L1 table too large' "$IMG"
}

@test "l1_size just above 32 MiB of entries" {
    mk l1huge2 b.qcow2
    put_u32 "$IMG" 36 $((0x400001))
    qemu_fails 'Active L1 table too large' info "$IMG"
    qk_refuses 'Active L1 table too large' "$IMG"
}

@test "L1 table offset unaligned" {
    mk l1un b.qcow2
    put_u64 "$IMG" 40 $(($(get_u64 "$IMG" 40) + 8))
    qemu_fails 'Active L1 table offset invalid' info "$IMG"
    qk_refuses 'Active L1 table offset invalid' "$IMG"
}

@test "L1 table past the end of the file (qemu reads zeros)" {
    mk l1eof b.qcow2
    put_u64 "$IMG" 40 $((1 << 40))
    qemu_accepts info "$IMG"
    qk_refuses 'L1 table' "$IMG"
    qk_fails 'L1 table' convert -O raw "$IMG" "$OUT"
}

@test "refcount table offset unaligned" {
    mk rtun b.qcow2
    put_u64 "$IMG" 48 $(($(get_u64 "$IMG" 48) + 512))
    qemu_fails 'Reference count table offset invalid' info "$IMG"
    qk_refuses 'Reference count table offset invalid' "$IMG"
}

@test "refcount table huge (0x100000 clusters)" {
    mk rthuge b.qcow2
    put_u32 "$IMG" 56 $((0x100000))
    qemu_fails 'Reference count table too large' info "$IMG"
    qk_refuses 'Reference count table too large' "$IMG"
}

@test "refcount_table_clusters 0" {
    mk rt0 b.qcow2
    put_u32 "$IMG" 56 0
    qemu_fails 'Image does not contain a reference count table' info "$IMG"
    qk_refuses 'does not contain a reference count table' "$IMG"
}

@test "snapshot table offset unaligned" {
    mk snun s.qcow2
    put_u64 "$IMG" 64 $(($(get_u64 "$IMG" 64) + 8))
    qemu_fails 'Snapshot table offset invalid' info "$IMG"
    qk_refuses 'Snapshot table offset invalid' "$IMG"
}

@test "snapshot table past the end of the file (qemu reads zeros)" {
    mk sneof s.qcow2
    put_u64 "$IMG" 64 $((1 << 40))
    qemu_accepts info "$IMG"
    qk_refuses '[Ss]napshot table' "$IMG"
}

@test "snapshot entry whose id and name run past the end of the file (oversized table)" {
    mk snbig s.qcow2
    local o
    o="$(get_u64 "$IMG" 64)"
    put_u16 "$IMG" $((o + 12)) 65535
    put_u16 "$IMG" $((o + 14)) 65535
    qemu_accepts info "$IMG"
    qk_refuses '[Ss]napshot' "$IMG"
}

@test "nb_snapshots 65537" {
    mk snnb s.qcow2
    put_u32 "$IMG" 60 65537
    qemu_fails 'Snapshot table too large' info "$IMG"
    qk_refuses 'Snapshot table too large' "$IMG"
}

@test "snapshot entry with 100000 bytes of extra data" {
    mk snextra s.qcow2
    put_u32 "$IMG" $(($(get_u64 "$IMG" 64) + 36)) 100000
    qemu_fails 'Too much extra metadata in snapshot table entry 0' info "$IMG"
    qk_refuses 'Too much extra metadata in snapshot table entry 0' "$IMG"
}

# ---- damage beyond the header: info works, reading fails ----------------------------------------

@test "L2 table offset unaligned" {
    mk l2un b.qcow2
    local l1
    l1="$(get_u64 "$IMG" 40)"
    put_u64 "$IMG" "$l1" $(($(get_u64 "$IMG" "$l1") + 512))
    qemu_fails 'L2 table offset 0x[0-9a-f]+ unaligned \(L1 index: 0\)' map --output=json "$IMG"
    qk_survives info "$IMG"
    qk_fails 'L2 table offset 0x[0-9a-f]+ unaligned' map --output=json "$IMG"
    qk_fails 'L2 table offset 0x[0-9a-f]+ unaligned' convert -O raw "$IMG" "$OUT"
}

@test "extended L2 entry with a subcluster both allocated and zero" {
    mk el2inv e.qcow2
    qemu-io -c 'write -P 0x21 0 4k' "$IMG" >/dev/null
    local l1 l2 e
    read -r l1 l2 e <<<"$(l2_entry0)"
    [[ "$(get_u64 "$IMG" $((l2 + 8)))" == 3 ]] # subclusters 0 and 1 allocated
    put_u64 "$IMG" $((l2 + 8)) $(((1 << 32) | 1))
    qemu_fails 'Invalid cluster entry found' convert -O raw "$IMG" "$OUT"
    qk_survives info "$IMG"
    qk_fails 'Invalid cluster entry found' convert -O raw "$IMG" "$OUT"
    qk_fails 'Invalid cluster entry found' map --output=json "$IMG"
}

@test "compressed-cluster descriptor past the end of the file" {
    mk ceof z.qcow2
    local l1 l2 e
    read -r l1 l2 e <<<"$(l2_entry0)"
    (((e >> 62) & 1)) # compressed
    put_u64 "$IMG" "$l2" $(((e & ~((1 << 54) - 1)) | (1 << 40)))
    qemu_fails 'error while reading at byte 0' convert -O raw "$IMG" "$OUT"
    qk_survives info "$IMG"
    qk_fails 'error while reading at byte 0' convert -O raw "$IMG" "$OUT"
    qk_fails 'read failed' io -c 'read 0 64k' "$IMG"
}

_garble_compressed() { # fill the host sectors of compressed cluster 0 with 0xff
    local l1 l2 e co ns
    read -r l1 l2 e <<<"$(l2_entry0)"
    (((e >> 62) & 1))
    co=$((e & ((1 << 54) - 1)))
    ns=$((((e >> 54) & 0xff) + 1))
    head -c $((ns * 512 - co % 512)) /dev/zero | tr '\0' '\377' | dd of="$IMG" bs=1 seek="$co" conv=notrunc status=none
}

@test "deflate garbage in a zlib-compressed cluster" {
    mk zgarb z.qcow2
    _garble_compressed
    qemu_fails 'error while reading at byte 0' convert -O raw "$IMG" "$OUT"
    qk_survives info "$IMG"
    qk_fails 'error while reading at byte 0' convert -O raw "$IMG" "$OUT"
    qk_fails 'read failed' io -c 'read 0 64k' "$IMG"
}

@test "zstd garbage in a zstd-compressed cluster" {
    mk zsgarb zs.qcow2
    _garble_compressed
    qemu_fails 'error while reading at byte 0' convert -O raw "$IMG" "$OUT"
    qk_survives info "$IMG"
    qk_fails 'error while reading at byte 0' convert -O raw "$IMG" "$OUT"
    qk_fails 'read failed' io -c 'read 0 64k' "$IMG"
}

@test "the pristine bases read fine (the cases above fail because of their patch)" {
    local b
    cp -f "$CORRUPT_BASES"/*.qcow2 .
    for b in b bk s z zs e bm; do
        _qk_run info "$b.qcow2"
        [[ $QK_RC == 0 && "$QK_OUT" == *"file format: qcow2"* ]] || { echo "info $b.qcow2: $QK_ERR"; false; }
        _qk_run convert -O raw "$b.qcow2" "$OUT"
        [[ $QK_RC == 0 ]] || { echo "convert $b.qcow2: $QK_ERR"; false; }
        qemu-img convert -O raw "$b.qcow2" ref.raw
        cmp "$OUT" ref.raw
    done
}
