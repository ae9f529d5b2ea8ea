#!/usr/bin/env bats
# tests/cli/resize.bats - `qcowkit resize` against `qemu-img resize` on twin
# images: same output, exit status, resulting data (qemu-img compare), a
# clean qemu-img check, and bitmaps that follow the new size as QEMU's do.

load helpers

setup() {
    qk_bin_ok
    require_peer qemu-img qemu-io
    cd "$BATS_TEST_TMPDIR"
}

# twins OPTS SIZE: a.qcow2 (ours) and b.qcow2 (qemu's) with the same data.
twins() {
    qemu-img create -q -f qcow2 -o "$1" a.qcow2 "$2"
    qemu-io -c 'write -P 7 0 1M' -c 'write -P 9 3M 100k' a.qcow2 >/dev/null
    cp a.qcow2 b.qcow2
}

# both ARGS...: resize a.qcow2 with qcowkit and b.qcow2 with qemu-img; same
# status and output (program name aside).
both() {
    local ko qo ks=0 qs=0
    ko=$("$QCOWKIT" resize "${@/IMG/a.qcow2}" 2>&1) || ks=$?
    qo=$(qemu-img resize "${@/IMG/b.qcow2}" 2>&1) || qs=$?
    assert_no_sanitizer "$ko"
    [[ $ks == "$qs" ]] || { echo "status qcowkit $ks, qemu-img $qs"; return 1; }
    [[ "${ko//qcowkit/X}" == "${qo//qemu-img/X}" ]] || { printf 'qcowkit: %s\nqemu-img: %s\n' "$ko" "$qo"; return 1; }
    qemu-img compare -q a.qcow2 b.qcow2
    qemu-img check -q a.qcow2
}

@test "resize: grow, absolute and relative" {
    twins compat=1.1 4M
    both IMG 10M
    both IMG +1G
}

@test "resize: grow past the L1 table (512-byte clusters)" {
    twins cluster_size=512 4M
    both IMG 300M
    [ "$(qemu-img info --output=json a.qcow2 | jq '."virtual-size"')" = 314572800 ]
}

@test "resize: shrink needs --shrink, as in qemu-img" {
    twins compat=1.1 8M
    both IMG 2M
    both --shrink IMG 2M
    both --shrink IMG -512K
}

@test "resize: bad sizes fail like qemu-img" {
    twins compat=1.1 4M
    both IMG -100M
    both IMG 12abc
    both --shrink IMG -4M
}

@test "resize: shrink keeps what a snapshot holds" {
    twins compat=1.1 8M
    qemu-img snapshot -c s1 a.qcow2
    qemu-img snapshot -c s1 b.qcow2
    both --shrink IMG 2M
    qemu-img snapshot -a s1 a.qcow2
    qemu-img snapshot -a s1 b.qcow2
    qemu-img compare -q a.qcow2 b.qcow2
    qemu-img check -q a.qcow2
}

@test "resize: bitmaps follow the new size" {
    twins compat=1.1 4M
    qemu-img bitmap --add -g 512 a.qcow2 b0
    qemu-img bitmap --add -g 512 b.qcow2 b0
    qemu-io -c 'write -P 1 3M 4k' a.qcow2 >/dev/null
    qemu-io -c 'write -P 1 3M 4k' b.qcow2 >/dev/null
    both IMG 64M
    [ "$(qemu-img info --output=json a.qcow2 | jq -c '."format-specific".data.bitmaps')" = \
      "$(qemu-img info --output=json b.qcow2 | jq -c '."format-specific".data.bitmaps')" ]
    run "$QCOWKIT" bitmap --dump a.qcow2 b0
    [ "$status" -eq 0 ]
    [ "${lines[*]}" = "0 3145728 clean 3145728 4096 dirty 3149824 63959040 clean" ]
}

@test "resize: an inconsistent bitmap blocks it, as in QEMU" {
    qemu-img create -q -f qcow2 a.qcow2 4M
    qemu-img bitmap --add a.qcow2 b0
    # A copy taken while qemu-io holds the image has b0 marked in use.
    qemu-io -c 'sleep 3000' a.qcow2 &
    local pid=$!
    sleep 1
    cp a.qcow2 c.qcow2
    kill $pid; wait $pid || true
    cp c.qcow2 d.qcow2
    run qemu-img resize d.qcow2 8M
    [ "$status" -eq 1 ]
    [[ "$output" == *"Bitmap 'b0' is inconsistent and cannot be used"* ]]
    run "$QCOWKIT" resize c.qcow2 8M
    [ "$status" -eq 1 ]
    [[ "$output" == *"Bitmap 'b0' is inconsistent and cannot be used"* ]]
    [ "$(qemu-img info --output=json c.qcow2 | jq '."virtual-size"')" = 4194304 ]
}
