#!/usr/bin/env bats
# tests/interop/convert-bitmaps.bats - `qcowkit convert --bitmaps
# [--skip-broken-bitmaps]` against qemu-img's: the same bitmaps (names,
# granularities, enabled state, contents as QEMU exports them) in the target,
# the same refusals and warnings.

load ../cli/bitmap_helpers

setup() {
    qk_bin_ok
    require_peer qemu-img qemu-io qemu-nbd nbdinfo jq
    cd "$BATS_TEST_TMPDIR"
    qemu-img create -q -f qcow2 s.qcow2 16M
    qemu-img bitmap --add s.qcow2 b0
    qemu-img bitmap --add -g 512 --disable s.qcow2 b1
    qemu-img bitmap --add -g 2M s.qcow2 b2
    qemu-io -c 'write -P 1 1M 100k' -c 'write -z 9M 1M' s.qcow2 >/dev/null
    qemu-img bitmap --enable s.qcow2 b1
    qemu-img bitmap --disable s.qcow2 b2
    qemu-io -c 'write -P 2 5M 10k' -c 'discard 12M 2M' s.qcow2 >/dev/null
}

teardown() { nbd_cleanup; }

@test "convert --bitmaps copies every bitmap, state and contents, as qemu-img does" {
    run "$QCOWKIT" convert --bitmaps -O qcow2 s.qcow2 k.qcow2
    assert_no_sanitizer
    [ "$status" -eq 0 ]
    qemu-img convert --bitmaps -O qcow2 s.qcow2 q.qcow2
    [ "$(info_bitmaps qemu-img k.qcow2)" = "$(info_bitmaps qemu-img q.qcow2)" ]
    for b in b0 b1 b2; do
        [ "$(nbd_dump k.qcow2 $b)" = "$(nbd_dump q.qcow2 $b)" ]
        [ "$(qk_dump k.qcow2 $b)" = "$(nbd_dump s.qcow2 $b)" ]
    done
    qemu-img compare -q s.qcow2 k.qcow2
    qemu-img check -q k.qcow2
}

@test "convert without --bitmaps copies none" {
    "$QCOWKIT" convert -O qcow2 s.qcow2 k.qcow2
    [ "$(info_bitmaps qemu-img k.qcow2)" = "[]" ]
}

@test "convert --bitmaps refuses an inconsistent bitmap; --skip-broken-bitmaps skips it" {
    # A copy taken while qemu-io holds the image has its bitmaps in use.
    qemu-io -c 'sleep 3000' s.qcow2 &
    local pid=$!
    sleep 1
    cp s.qcow2 u.qcow2
    kill $pid; wait $pid || true
    run "$QCOWKIT" convert --bitmaps -O qcow2 u.qcow2 k.qcow2
    [ "$status" -eq 1 ]
    [[ "$output" == *"Cannot copy inconsistent bitmap 'b0'"* ]]
    [[ "$output" == *"Try --skip-broken-bitmaps, or use 'qemu-img bitmap --remove' to delete it"* ]]
    run "$QCOWKIT" convert --bitmaps --skip-broken-bitmaps -O qcow2 u.qcow2 k.qcow2
    [ "$status" -eq 0 ]
    [[ "$output" == *"warning: Skipping inconsistent bitmap 'b0'"* ]]
    qemu-img convert --bitmaps --skip-broken-bitmaps -O qcow2 u.qcow2 q.qcow2 2>/dev/null
    [ "$(info_bitmaps qemu-img k.qcow2)" = "$(info_bitmaps qemu-img q.qcow2)" ]
    qemu-img check -q k.qcow2
}

@test "convert --bitmaps usage errors match qemu-img's" {
    run "$QCOWKIT" convert --skip-broken-bitmaps -O qcow2 s.qcow2 k.qcow2
    [ "$status" -eq 1 ]
    [ "$output" = "qcowkit: Use of --skip-broken-bitmaps requires --bitmaps" ]
    run qemu-img convert --skip-broken-bitmaps -O qcow2 s.qcow2 q.qcow2
    [ "$output" = "qemu-img: Use of --skip-broken-bitmaps requires --bitmaps" ]
    run "$QCOWKIT" convert --bitmaps -O raw s.qcow2 k.raw
    [ "$status" -eq 1 ]
    [ "$output" = "qcowkit: Format driver 'raw' does not support bitmaps" ]
}
