#!/usr/bin/env bats
# tests/corrupt/fuzz.bats - images that the fuzz targets (tests/fuzz) once broke, as hex text:
# each test writes its tiny image with from_xxd, then asserts what qcowkit must do with it
# (against qemu-img where qemu-img handles the image). The raw inputs are replayed by the
# unit suite too (tests/fuzz/regress/<target>/).

load lib

setup() {
    require_peer qemu-img xxd
    qk_bin_ok
    cd "$BATS_TEST_TMPDIR"
}

# check -r all on IMG finishes, exits 0, and leaves an image qemu-img finds clean.
repairs_clean() {
    cp "$1" fixed.qcow2
    _qk_run check -r all fixed.qcow2 || return 1
    [[ $QK_RC == 0 ]] || { echo "check -r all: exit $QK_RC: $QK_ERR" >&2; return 1; }
    qemu-img check fixed.qcow2 >&2
}

# fuzz_repair timeout: the only snapshot was both incomplete (no extra data) and unusable (L1 not
# cluster aligned). Repair dropped it, then rewrote the now empty table and asked the allocator
# for zero clusters, which scanned up to 2^56 (a hang).
@test "repair: a snapshot both incomplete and broken is dropped without a hang" {
    from_xxd img.qcow2 <<'HEX'
00000000: 5146 49fb 0000 0003 0000 0000 0000 0000  QFI.............
00000010: 0000 0000 0000 0009 0000 0000 0001 0000  ................
00000020: 0000 0000 0000 0002 0000 0000 0000 0600  ................
00000030: 0000 0000 0000 0200 0000 0001 0000 0001  ................
00000040: 0000 0000 0000 0800 0000 0000 0000 0000  ................
00000060: 0000 0004 0000 0068 0000 0000 0000 0000  .......h........
00000200: 0000 0000 0000 0400 0000 0000 0000 0000  ................
00000400: 0001 0001 0001 0001 0001 0000 0000 0000  ................
00000800: 0000 0000 0000 0601 0000 0002 0001 0001  ................
00000820: 0000 0000 0000 0000 3173 0000 0000 0000  ........1s......
000009f0: 0000 0000 0000 0000 0000 0000 0000 0000  ................
HEX
    qemu_fails 'snapshot table entry 0 is incomplete' check img.qcow2
    _qk_run check img.qcow2
    [ "$QK_RC" -eq 2 ]
    grep -q 'snapshot table entry 0 is incomplete' <<<"$QK_ERR"
    repairs_clean img.qcow2
    [ "$(qemu-img snapshot -l fixed.qcow2)" = "" ]
}

# fuzz_repair finding: the file ends 8 bytes into the 16-byte active L1 table. QEMU reads the
# tail as zeros and its check (ours too) counts the table as inside the file, so check -r all
# found nothing to repair, yet our open refused the image ("past the end of the file"). A table
# ending less than a cluster past the end of the file now opens, as the check sees it.
@test "open: a table ending less than a cluster past the end of the file reads its tail as zeros" {
    from_xxd img.qcow2 <<'HEX'
00000000: 5146 49fb 0000 0003 0000 0000 0000 0000  QFI.............
00000010: 0000 0000 0000 0009 0000 0000 0001 0000  ................
00000020: 0000 0000 0000 0002 0000 0000 0000 0600  ................
00000030: 0000 0000 0000 0200 0000 0001 0000 0000  ................
00000060: 0000 0004 0000 0068 0000 0000 0000 0000  .......h........
00000200: 0000 0000 0000 0400 0000 0000 0000 0000  ................
00000400: 0001 0001 0001 0001 0000 0000 0000 0000  ................
00000600: 0000 0000 0000 0000                      ........
HEX
    qemu_accepts info img.qcow2
    _qk_run info img.qcow2
    [ "$QK_RC" -eq 0 ]
    grep -q 'virtual size: 64 KiB' <<<"$QK_OUT"
    _qk_run check img.qcow2
    [ "$QK_RC" -eq 0 ]
    qemu-img convert -O raw img.qcow2 want.raw
    _qk_run convert -O raw img.qcow2 got.raw
    cmp want.raw got.raw
}

# fuzz_repair timeout: with 64-bit refcounts, cluster 1 has refcount 0x260000000001 for one
# reference. The repair stepped the refcount down by one per call (4e13 steps); it now sets it
# in one step, as QEMU's update_refcount does with an addend.
@test "repair: a huge 64-bit refcount is set back in one step" {
    from_xxd img.qcow2 <<'HEX'
00000000: 5146 49fb 0000 0003 0000 0000 0000 0000  QFI.............
00000010: 0000 0000 0000 0009 0000 0000 0001 0000  ................
00000020: 0000 0000 0000 0002 0000 0000 0000 0600  ................
00000030: 0000 0000 0000 0200 0000 0001 0000 0000  ................
00000060: 0000 0006 0000 0068 0000 0000 0000 0000  .......h........
00000200: 0000 0000 0000 0400 0000 0000 0000 0000  ................
00000400: 0000 0000 0000 0001 0000 2600 0000 0001  ..........&.....
00000410: 0000 0000 0000 0001 0000 0000 0000 0001  ................
000007f0: 0000 0000 0000 0000 0000 0000 0000 0000  ................
HEX
    qemu-img check img.qcow2 2>&1 | grep -q 'Leaked cluster 1 refcount=41781441855489 reference=1'
    _qk_run check img.qcow2
    [ "$QK_RC" -eq 3 ]
    grep -q 'Leaked cluster 1 refcount=41781441855489 reference=1' <<<"$QK_ERR"
    repairs_clean img.qcow2
}
