#!/usr/bin/env bats
# tests/interop/bitmap-scale.bats - a 2 TiB disk with a
# 512-byte-granularity bitmap (512 MiB of bitmap data, the largest QEMU
# takes) with 1000 scattered dirty ranges, where add, write, dump, merge and
# close must each stay under 64 MiB of peak memory. (65535 bitmaps and
# 1023-byte names: tests/unit/test_scale.c.)

load ../cli/bitmap_helpers

setup() {
    qk_bin_ok
    require_peer qemu-img qemu-io jq
    [[ -x /usr/bin/time ]] || require_peer /usr/bin/time
    cd "$BATS_TEST_TMPDIR"
}

# peak_kib CMD...: run CMD, fail on error, print its peak RSS in KiB.
peak_kib() {
    /usr/bin/time -f '%M' -o rss.txt "$@" >out.txt 2>err.txt ||
        { echo "failed: $* : $(cat err.txt)" >&2; return 1; }
    assert_no_sanitizer "$(cat err.txt)" || return 1
    tail -1 rss.txt
}

@test "2 TiB disk, 512-byte granularity, 1000 scattered writes: every step under 64 MiB" {
    # Under ASan the peak is ASan's shadow memory, not ours: the steps still
    # run and are checked, the 64 MiB bound only in the normal build.
    local limit=65536
    [[ -z "${QK_SANITIZED:-}" ]] || limit=$((1 << 30))
    qemu-img create -q -f qcow2 big.qcow2 2T
    local kib args=() i
    kib=$(peak_kib "$QCOWKIT" bitmap --add -g 512 big.qcow2 b0); echo "add: $kib KiB"; ((kib < limit))
    for ((i = 0; i < 1000; i++)); do
        args+=(-c "write -P 1 $(( (i * 2199023255) % 2199023251456 / 512 * 512 )) 4k")
    done
    kib=$(peak_kib "$QCOWKIT" io "${args[@]}" big.qcow2); echo "1000 writes + close: $kib KiB"; ((kib < limit))
    kib=$(peak_kib "$QCOWKIT" bitmap --dump --output=json big.qcow2 b0); echo "dump: $kib KiB"; ((kib < limit))
    [ "$(jq '[.[] | select(.dirty)] | length' out.txt)" -ge 900 ]
    [ "$(jq '[.[] | select(.dirty) | .length] | add' out.txt)" -ge $((1000 * 4096)) ]
    kib=$(peak_kib "$QCOWKIT" bitmap --add -g 64k --merge b0 big.qcow2 b1); echo "add + merge: $kib KiB"; ((kib < limit))
    run qemu-img info --output=json big.qcow2
    [ "$(jq -c '[."format-specific".data.bitmaps[] | [.name, .granularity]]' <<<"$output")" = '[["b0",512],["b1",65536]]' ]
    qemu-img check -q big.qcow2
}
