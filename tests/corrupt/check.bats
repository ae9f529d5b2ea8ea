#!/usr/bin/env bats
# tests/corrupt/check.bats - a corruption corpus made at run time: images
# written by qemu-img/qemu-io, then damaged byte by byte. On each:
#  - `qcowkit check --output=json` reports the same corruptions, leaks and
#    check-errors as `qemu-img check` (and the same diagnostic lines, exit code);
#  - after `qcowkit check -r all` on a copy, `qemu-img check` is clean and the
#    guest data equals what `qemu-img check -r all` leaves on a twin, or the
#    test says why ours kept more.
# Base layout (64 KiB clusters): 0 header, 1 refcount table, 2 refcount block,
# 3 L1, 4 L2, 5-8 data of 0..256k, 9 data at 1M, 10-11 data at 40M.

load check_helpers

setup() {
    need_peers
    cd "$BATS_TEST_TMPDIR"
    base img.qcow2
}

both() {
    same_counters img.qcow2
    repair_compare img.qcow2 "${1:-}"
}

@test "clean image" {
    run same_counters img.qcow2
    [ "$status" -eq 0 ]
    [ "$output" = "[0,0,0] rc=0" ]
}

@test "leaked clusters past the last used one" {
    truncate -s +128k img.qcow2
    set_rc img.qcow2 12 1
    set_rc img.qcow2 13 1
    run same_counters img.qcow2
    [ "$output" = "[0,2,0] rc=3" ]
    repair_compare img.qcow2
}

@test "leak: an L2 entry dropped (its cluster stays allocated)" {
    poke img.qcow2 $(($(l2off img.qcow2 0) + 8)) 8 0
    both
}

@test "refcount too high on a data cluster" {
    set_rc img.qcow2 5 2
    both
}

@test "refcount too high on the L2 table" {
    set_rc img.qcow2 4 3
    both
}

@test "refcount 0 on a data cluster (rebuild)" {
    set_rc img.qcow2 6 0
    both
}

@test "refcount 0 on the L1 table (rebuild)" {
    set_rc img.qcow2 3 0
    both
}

@test "a cluster referenced twice (refcount too low)" {
    poke img.qcow2 $(($(l2off img.qcow2 0) + 8)) 8 $((0x8000000000050000))
    both
}

@test "two L1 entries share one L2 table" {
    poke img.qcow2 $(($(hdr img.qcow2 l1) + 8)) 8 $(l1e img.qcow2 0)
    qemu-img resize -q img.qcow2 1G 2>/dev/null || true
    both
}

@test "an L2 table pointing into the refcount table" {
    poke img.qcow2 "$(hdr img.qcow2 l1)" 8 $((0x8000000000010000))
    both
}

@test "an L1 entry pointing at the header" {
    poke img.qcow2 "$(hdr img.qcow2 l1)" 8 $((0x8000000000000000 | 0))
    poke img.qcow2 "$(hdr img.qcow2 l1)" 8 $((0x8000000000000200 & ~0x200))
    both
}

@test "an unaligned L2 offset" {
    poke img.qcow2 "$(hdr img.qcow2 l1)" 8 $((0x8000000000040200))
    # Why the data differs: qemu-img's repair leaves the L1 entry: every read of the range fails (EIO); ours drops it and the range reads as unallocated.
    both "twin unreadable"
}

@test "an L2 table past the end of the file" {
    poke img.qcow2 "$(hdr img.qcow2 l1)" 8 $((0x8000000010000000))
    both
}

@test "reserved bits in an L1 entry" {
    poke img.qcow2 "$(hdr img.qcow2 l1)" 8 $((0x8000000000040000 | 0x0100000000000000))
    both
}

@test "reserved bits in an L2 entry" {
    poke img.qcow2 "$(l2off img.qcow2 0)" 8 $((0x8000000000050000 | 2))
    both
}

@test "reserved bits in the refcount table (rebuild)" {
    poke img.qcow2 "$(hdr img.qcow2 reftable)" 8 $((0x20000 | 1))
    both
}

@test "COPIED missing on a data cluster" {
    poke img.qcow2 "$(l2off img.qcow2 0)" 8 $((0x50000))
    both
}

@test "COPIED missing on an L2 table" {
    poke img.qcow2 "$(hdr img.qcow2 l1)" 8 $((0x40000))
    both
}

@test "a missing refcount block (rebuild)" {
    poke img.qcow2 "$(hdr img.qcow2 reftable)" 8 0
    both
}

@test "the active L1 table past the end of the file" {
    poke img.qcow2 40 8 $((0x10000000))
    # Both repairs keep what QEMU reads there (zeros: an empty disk); ours
    # also writes the table inside the file, which qemu-img's repair cannot.
    both
}

@test "the refcount table past the end of the file (rebuild)" {
    poke img.qcow2 48 8 $((0x10000000))
    both
}

@test "a refcount table entry past the end of the file" {
    poke img.qcow2 $(($(hdr img.qcow2 reftable) + 8)) 8 $((0x1000000))
    both
}

@test "the refcount block referenced as data too (rebuild)" {
    poke img.qcow2 $(($(l2off img.qcow2 0) + 8)) 8 $((0x8000000000020000))
    both
}

@test "a data cluster past the end of the file" {
    poke img.qcow2 $(($(l2off img.qcow2 0) + 8)) 8 $((0x8000000010000000))
    both
}

@test "an unaligned data cluster offset" {
    poke img.qcow2 $(($(l2off img.qcow2 0) + 8)) 8 $((0x8000000000060200))
    # Why the data differs: qemu-img's repair leaves the entry: reading that cluster fails; ours makes it a zero cluster.
    both "twin unreadable"
}

@test "an unaligned preallocated zero cluster" {
    poke img.qcow2 $(($(l2off img.qcow2 0) + 8)) 8 $((0x8000000000060201))
    both
}

@test "the corrupt bit on a sound image" {
    poke img.qcow2 72 8 2
    both
    run qemu-img info --output=json "$BATS_TEST_TMPDIR/ours.qcow2"
    [[ $output == *'"corrupt": false'* ]]
}

@test "refcount overflow (refcount_bits=1, a cluster referenced twice)" {
    base img.qcow2 -o refcount_bits=1
    poke img.qcow2 $(($(l2off img.qcow2 0) + 8)) 8 $((0x8000000000050000))
    both
}

@test "refcount overflow of an L2 table (refcount_bits=1, two L1 entries share it)" {
    base img.qcow2 -o refcount_bits=1
    qemu-img resize -q img.qcow2 2G
    poke img.qcow2 $(($(hdr img.qcow2 l1) + 8)) 8 "$(l1e img.qcow2 0)"
    # qemu-img cannot count the second reference and keeps reporting it;
    # ours gives L1 entry 1 its own copy of the table (the guest sees the
    # same data at both ranges, as it did), then its data clusters copies.
    same_counters img.qcow2
    repair_compare img.qcow2
}

@test "leaks with 64-bit refcounts" {
    base img.qcow2 -o refcount_bits=64
    poke img.qcow2 $(($(l2off img.qcow2 0) + 16)) 8 0
    both
}

@test "leaks and a refcount too low with 512-byte clusters" {
    base img.qcow2 -o cluster_size=512
    poke img.qcow2 $(($(l2off img.qcow2 0) + 16)) 8 0
    poke img.qcow2 $(($(l2off img.qcow2 0) + 24)) 8 $(l2e img.qcow2 0 0)
    both
}

@test "compressed cluster with COPIED set" {
    qemu-img create -q -f qcow2 img.qcow2 64M
    qemu-io -c "write -c -P 0x44 0 64k" -c "write -c -P 0x55 64k 64k" img.qcow2 >/dev/null
    e=$(l2e img.qcow2 0 1)
    poke img.qcow2 $(($(l2off img.qcow2 0) + 8)) 8 $((e | 0x8000000000000000))
    both
}

@test "compressed descriptor past the end of the file" {
    qemu-img create -q -f qcow2 img.qcow2 64M
    qemu-io -c "write -c -P 0x44 0 64k" img.qcow2 >/dev/null
    e=$(l2e img.qcow2 0 0)
    poke img.qcow2 "$(l2off img.qcow2 0)" 8 $(((e & ~0xffffffffffff) | 0x10000000))
    # Why the data differs: qemu-img's repair leaves the descriptor: reading that cluster fails; ours makes it a zero cluster.
    both "twin unreadable"
}

@test "zero clusters in a v2 image" {
    base img.qcow2 -o compat=0.10
    poke img.qcow2 $(($(l2off img.qcow2 0) + 8)) 8 1
    poke img.qcow2 $(($(l2off img.qcow2 0) + 16)) 8 $((0x8000000000070001))
    # Why the data differs: QEMU refuses to read a v2 zero cluster (EIO) and its repair keeps it; ours makes it unallocated, which reads as zeros.
    both "twin unreadable"
}

@test "extended L2: a subcluster both allocated and zero" {
    qemu-img create -q -f qcow2 -o extended_l2=on img.qcow2 64M
    qemu-io -c "write -P 0x11 0 64k" img.qcow2 >/dev/null
    off=$(l2off img.qcow2 0)
    poke img.qcow2 $((off + 8)) 8 $((0x00000001ffffffff))
    # Why the data differs: QEMU reads that cluster as an error (invalid entry) and keeps it; ours keeps the allocated subclusters that are not marked zero.
    both "twin unreadable"
}

@test "extended L2: an unallocated cluster with allocation bits" {
    qemu-img create -q -f qcow2 -o extended_l2=on img.qcow2 64M
    qemu-io -c "write -P 0x11 0 64k" img.qcow2 >/dev/null
    off=$(l2off img.qcow2 0)
    poke img.qcow2 $((off + 24)) 8 3
    # Why the data differs: QEMU reads that cluster as an error (invalid entry) and keeps it; ours clears the allocation bits.
    both "twin unreadable"
}

@test "snapshot: unaligned snapshot L1 table (broken snapshot table entry)" {
    qemu-img snapshot -c s1 img.qcow2
    so=$(hdr img.qcow2 snapshots)
    poke img.qcow2 "$so" 8 $(($(peek img.qcow2 "$so" 8) + 0x200))
    both
}

@test "snapshot table: the header counts more snapshots than the table has" {
    qemu-img snapshot -c s1 img.qcow2
    poke img.qcow2 60 4 2
    both
}

@test "snapshot table: past the end of the file" {
    qemu-img snapshot -c s1 img.qcow2
    poke img.qcow2 64 8 $((0x10000000))
    both
}

@test "snapshot: COPIED set on a shared cluster" {
    qemu-img snapshot -c s1 img.qcow2
    poke img.qcow2 "$(l2off img.qcow2 0)" 8 $(($(l2e img.qcow2 0 0) | 0x8000000000000000))
    both
}

@test "snapshot: refcount of a shared cluster too low" {
    qemu-img snapshot -c s1 img.qcow2
    c=$((($(l2e img.qcow2 0 2) & 0x00fffffffffffe00) >> 16))
    set_rc img.qcow2 "$c" 1
    both
}

@test "dirty image left by kill -9 of a lazy-refcounts writer" {
    qemu-img create -q -f qcow2 -o lazy_refcounts=on img.qcow2 64M
    qemu-io -c "write -P 0x66 0 1M" -c "write -P 0x77 8M 64k" -c "sigraise 9" img.qcow2 >/dev/null 2>&1 || true
    [ $(($(hdr img.qcow2 incompat) & 1)) -eq 1 ]
    both
    [ $(($(hdr "$BATS_TEST_TMPDIR/ours.qcow2" incompat) & 1)) -eq 0 ]
}

@test "dirty image: a read-write open repairs it as QEMU does" {
    qemu-img create -q -f qcow2 -o lazy_refcounts=on img.qcow2 64M
    qemu-io -c "write -P 0x66 0 1M" -c "sigraise 9" img.qcow2 >/dev/null 2>&1 || true
    "$QCOWKIT" io -c "write -P 0x12 2M 64k" img.qcow2
    [ $(($(hdr img.qcow2 incompat) & 1)) -eq 0 ]
    run qemu-img check img.qcow2
    [ "$status" -eq 0 ]
    run qemu-io -c "read -P 0x66 0 1M" -c "read -P 0x12 2M 64k" img.qcow2
    [[ $output != *Pattern* ]]
}

@test "bitmaps extension ignored (autoclear bit clear): its clusters leak" {
    qemu-img bitmap --add img.qcow2 b0
    qemu-io -c "write -P 1 2M 64k" img.qcow2 >/dev/null
    poke img.qcow2 88 8 0
    both
}

# ---- bitmaps: QEMU's check neither reports nor repairs these; ours reports
# each broken bitmap and -r all removes it, after which QEMU opens the image,
# finds it clean, and the guest data is what it was.

bitmap_base() {
    qemu-img bitmap --add img.qcow2 b0
    qemu-io -c "write -P 1 2M 64k" img.qcow2 >/dev/null
    dir=$(bitmaps_ext img.qcow2 dir_offset)
    table=$(peek img.qcow2 "$dir" 8)
}

@test "bitmap in use (left by kill -9 of a writer)" {
    qemu-img bitmap --add img.qcow2 b0
    qemu-io -c "write -P 1 2M 64k" -c "sigraise 9" img.qcow2 >/dev/null 2>&1 || true
    run same_counters img.qcow2
    [ "$status" -eq 0 ]
    run "$QCOWKIT" check img.qcow2
    [[ $output == *"bitmap 'b0' is inconsistent (in use"* ]]
    bitmap_repaired img.qcow2
    run qemu-img info "$BATS_TEST_TMPDIR/ours.qcow2"
    [[ $output != *b0* ]]
}

@test "bitmap table pointing into the L1 table" {
    bitmap_base
    poke img.qcow2 "$dir" 8 "$(hdr img.qcow2 l1)"
    run "$QCOWKIT" check img.qcow2
    [ "$status" -eq 2 ]
    [[ $output == *"bitmap 'b0' is inconsistent"* ]]
    bitmap_repaired img.qcow2
}

@test "in-use bitmap whose table points into the L1 table" {
    bitmap_base
    poke img.qcow2 "$dir" 8 "$(hdr img.qcow2 l1)"
    poke img.qcow2 $((dir + 12)) 4 3
    same_counters img.qcow2
    bitmap_repaired img.qcow2
}

@test "bitmap data cluster with refcount 0" {
    bitmap_base
    data=$(peek img.qcow2 "$table" 8)
    set_rc img.qcow2 $((data >> 16)) 0
    # The data is intact and nothing else uses the cluster: the refcount is
    # rebuilt (as qemu-img does) and the bitmap kept.
    both
    run qemu-img info "$BATS_TEST_TMPDIR/ours.qcow2"
    [[ $output == *b0* ]]
}

@test "bitmap data cluster shared with the L2 table" {
    bitmap_base
    poke img.qcow2 "$table" 8 "$(l2off img.qcow2 0)"
    same_counters img.qcow2
    bitmap_repaired img.qcow2
    run qemu-img info "$BATS_TEST_TMPDIR/ours.qcow2"
    [[ $output != *b0* ]]
}

@test "bitmap table entry with reserved bits" {
    bitmap_base
    poke img.qcow2 "$table" 8 $(($(peek img.qcow2 "$table" 8) | 2))
    run "$QCOWKIT" check img.qcow2
    [ "$status" -eq 2 ]
    bitmap_repaired img.qcow2
}

@test "bitmap table past the end of the file" {
    bitmap_base
    poke img.qcow2 "$dir" 8 $((0x10000000))
    run "$QCOWKIT" check img.qcow2
    [ "$status" -eq 2 ]
    bitmap_repaired img.qcow2
}

@test "broken bitmap directory: the extension is dropped" {
    bitmap_base
    poke img.qcow2 $((dir + 18)) 2 500
    run "$QCOWKIT" check img.qcow2
    [ "$status" -eq 2 ]
    [[ $output == *"Broken bitmap directory"* ]]
    bitmap_repaired img.qcow2
    run qemu-img info "$BATS_TEST_TMPDIR/ours.qcow2"
    [[ $output != *b0* ]]
}

@test "two bitmaps, one broken: only that one is removed" {
    bitmap_base
    qemu-img bitmap --add img.qcow2 b1
    dir=$(bitmaps_ext img.qcow2 dir_offset)
    poke img.qcow2 $((dir + 12)) 4 3
    bitmap_repaired img.qcow2
    run qemu-img info "$BATS_TEST_TMPDIR/ours.qcow2"
    [[ $output != *"name: b0"* ]]
    [[ $output == *"name: b1"* ]]
}
