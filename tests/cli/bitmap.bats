#!/usr/bin/env bats
# tests/cli/bitmap.bats - `qcowkit bitmap` against `qemu-img bitmap` (7.2), one behaviour per test.
# Owned by the bitmap CLI work.
#
# Most tests run the same arguments with qemu-img in q/ and with qcowkit in k/, on twin copies of
# one fixture made by qemu-img, and require: the same output and exit code (program name and
# QEMU's node name "#blockN" -> the image's file name), then images QEMU reads alike: the same
# `qemu-img info` bitmaps, the same contents of every bitmap (dumped by qcowkit, whose dump
# tests/interop/bitmaps.bats checks against qemu-nbd), and `qemu-img check` clean on ours.
# The --dump tests check design.md §3's format.

load helpers
load bitmap_helpers

setup_file() {
    require_peer qemu-img qemu-io jq || return 0
    cd "$BATS_FILE_TMPDIR" && fixture
}

setup() {
    require_peer qemu-img qemu-io jq
    qk_bin_ok
    cd "$BATS_TEST_TMPDIR"
    cp -a "$BATS_FILE_TMPDIR/f" f
}

# fixture: default images in f/: a.qcow2 (64 MiB, no bitmap), s.qcow2 (64 MiB, bitmap "s" at 4K
# with data written), big.qcow2 (128 MiB), r.img (raw), v2.qcow2 (compat 0.10).
fixture() {
    mkdir -p f && cd f || return 1
    qemu-img create -q -f qcow2 a.qcow2 64M &&
        qemu-img create -q -f qcow2 s.qcow2 64M &&
        qemu-img bitmap --add -g 4K s.qcow2 s &&
        qemu-io -c 'write 1M 64k' -c 'write -z 9M 4k' -c 'discard 20M 1M' s.qcow2 >/dev/null &&
        qemu-img create -q -f qcow2 big.qcow2 128M &&
        qemu-img bitmap --add big.qcow2 s &&
        qemu-img create -q -f raw r.img 1M &&
        qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 1M || return 1
    cd ..
}

twins() {
    rm -rf q k
    cp -a f q && cp -a f k
}

# both ARGS...: `bitmap ARGS` by both tools on the twins; see the header.
both() {
    local img="${*: -2:1}" qo ko qrc=0 krc=0 f names n
    twins || return 1
    qo="$(cd q && qemu-img bitmap "$@" 2>&1)" || qrc=$?
    ko="$(cd k && "$QCOWKIT" bitmap "$@" 2>&1)" || krc=$?
    assert_no_sanitizer "$ko" || return 1
    qo="$(qemu_norm "$img" <<<"$qo")"
    if [[ "$qo" != "$ko" || $qrc != "$krc" ]]; then
        printf '%s\n' "--- qemu-img bitmap $* (rc=$qrc)" "$qo" "--- qcowkit (rc=$krc)" "$ko" >&2
        return 1
    fi
    output="$ko" status="$krc"
    for f in q/*.qcow2; do
        f="${f#q/}"
        [[ "$f" == v2.qcow2 ]] && continue
        # neither tool touched it
        cmp -s "q/$f" "f/$f" && cmp -s "k/$f" "f/$f" && continue
        names="$(info_bitmaps qemu-img "q/$f")" || return 1
        [[ "$names" == "$(info_bitmaps qemu-img "k/$f")" ]] ||
            { echo "$f: bitmaps $names vs $(info_bitmaps qemu-img "k/$f")" >&2; return 1; }
        qemu-img check -q "k/$f" || { echo "qemu-img check k/$f failed" >&2; return 1; }
        for n in $(jq -r '.[] | select(.flags | index("in-use") | not) | .name' <<<"$names"); do
            [[ "$(qk_dump "q/$f" "$n")" == "$(qk_dump "k/$f" "$n")" ]] ||
                { echo "$f: bitmap $n differs" >&2; return 1; }
        done
    done
}

# in_use IMG N: mark directory entry N in use, as a crash leaves it.
in_use() {
    local e
    e="$(bm_entry "$1" "$2")" || return 1
    put_u32 "$1" $((e + 12)) $(($(get_u32 "$1" $((e + 12))) | 1))
}

# ---- argument checks -------------------------------------------------------------------------

@test "no action: Need at least one of ..." {
    both a.qcow2 b
    [[ $status == 1 && $output == *"Need at least one of --add, --remove, --clear, --enable, --disable, or --merge" ]]
}

@test "-g without --add" {
    both -g 64K --remove s.qcow2 s
    [[ $status == 1 && $output == *"granularity only supported with --add" ]]
}

@test "-g 0 counts as no granularity" {
    both -g 0 --remove s.qcow2 s
    [[ $status == 0 && -z $output ]]
}

@test "-F without -b" {
    both -F qcow2 --add a.qcow2 b
    [[ $status == 1 && $output == *"-F only supported with -b" ]]
}

@test "-b without --merge" {
    both -b s.qcow2 --add a.qcow2 b
    [[ $status == 1 && $output == *"Merge bitmap source file only supported with --merge" ]]
}

@test "checks come in qemu-img's order (granularity before -F before -b)" {
    both -g 4k -F qcow2 -b s.qcow2 --clear a.qcow2 b
    [[ $output == *"granularity only supported with --add" ]]
    both -F qcow2 --add a.qcow2 b -b s.qcow2
    [[ $output == *"Merge bitmap source file only supported with --merge" ]]
}

@test "wrong number of file arguments" {
    both --add a.qcow2
    [[ $status == 1 && $output == *"Expecting filename and bitmap name" ]]
    both --add a.qcow2 b c
    [[ $output == *"Expecting filename and bitmap name" ]]
    both --add
    [[ $output == *"Expecting filename and bitmap name" ]]
}

@test "unknown option and missing option argument" {
    both --bogus a.qcow2 b
    [[ $status == 1 && $output == *"unrecognized option '--bogus'"* ]]
    both --add a.qcow2 b --merge
    [[ $status == 1 && $output == *"missing argument for option '--merge'"* ]]
    both --add a.qcow2 b -g
    [[ $status == 1 && $output == *"missing argument for option '-g'"* ]]
}

@test "-g that is not a size" {
    both --add -g abc a.qcow2 b
    [[ $status == 1 && $output == *"Invalid granularity specified. You may use k, M, G, T, P or E suffixes for"* ]]
    both --add -g -1 a.qcow2 b
    [[ $status == 1 ]]
    both --add -g 99999999999999999999 a.qcow2 b
    [[ $status == 1 ]]
}

@test "--help" {
    run "$QCOWKIT" bitmap --help
    [[ $status == 0 && $output == *"usage: qcowkit bitmap"*"--dump"* ]]
}

# ---- --add -------------------------------------------------------------------------------------

@test "--add with the default granularity (cluster size clamped to 4K..64K)" {
    both --add a.qcow2 b
    [[ $status == 0 && -z $output ]]
    [[ "$(info_bitmaps qemu-img k/a.qcow2)" == '[{"flags":["auto"],"name":"b","granularity":65536}]' ]]
    fixture_small() { qemu-img create -q -f qcow2 -o cluster_size=512 c512.qcow2 1M &&
        qemu-img create -q -f qcow2 -o cluster_size=2M c2m.qcow2 64M; }
    (cd f && fixture_small)
    both --add c512.qcow2 b
    [[ "$(info_bitmaps qemu-img k/c512.qcow2)" == *'"granularity":4096}]' ]]
    both --add c2m.qcow2 b
    [[ "$(info_bitmaps qemu-img k/c2m.qcow2)" == *'"granularity":65536}]' ]]
}

@test "--add -g 512, 4K, 64K, 2M, 1G, 2G" {
    local g
    for g in 512 4K 64K 2M 1G 2G 1048576 0x1000; do
        both --add -g "$g" a.qcow2 "b$g"
        [[ $status == 0 && -z $output ]]
    done
    [[ "$(info_bitmaps "$QCOWKIT" k/a.qcow2)" == '[{"flags":["auto"],"name":"b0x1000","granularity":4096}]' ]]
}

@test "--add -g not a power of two, under 512, or truncated to 32 bits as qemu-img does" {
    local g
    for g in 1000 256 1.5k 4G 8G; do
        both --add -g "$g" a.qcow2 b
        [[ $status == 1 && $output == *"failed: Granularity must be power of 2 and at least 512" ]]
    done
    # 4G + 512 is 512 once QMP's uint32 takes it
    both --add -g 4294967808 a.qcow2 b
    [[ $status == 0 ]]
    [[ "$(info_bitmaps "$QCOWKIT" k/a.qcow2)" == *'"granularity":512}]' ]]
}

@test "--add of an existing name" {
    both --add s.qcow2 s
    [[ $status == 1 && $output == "qcowkit: Operation add on bitmap s failed: Bitmap already exists: s" ]]
}

@test "--add of an empty name" {
    both --add a.qcow2 ''
    [[ $status == 1 && $output == "qcowkit: Operation add on bitmap  failed: Bitmap name cannot be empty" ]]
}

@test "--add of 1023- and 1024-byte names" {
    local n1023 n1024
    n1023="$(printf 'n%.0s' {1..1023})"
    n1024="${n1023}x"
    both --add a.qcow2 "$n1023"
    [[ $status == 0 ]]
    both --add a.qcow2 "$n1024"
    [[ $status == 1 && $output == *"persistent in 'a.qcow2': Name length exceeds maximum (1023 characters)" ]]
}

@test "--add with too much bitmap data (4 TiB at 512 bytes)" {
    (cd f && qemu-img create -q -f qcow2 huge.qcow2 4T)
    both --add -g 512 huge.qcow2 b
    [[ $status == 1 && $output == *"Can't make bitmap 'b' persistent in 'huge.qcow2': Too much space will be occupied by the bitmap. Use larger granularity" ]]
    both --add -g 1k huge.qcow2 b
    [[ $status == 0 ]]
}

@test "--add with too much bitmap data and a 1024-byte name: the size is checked first" {
    (cd f && qemu-img create -q -f qcow2 huge.qcow2 4T)
    both --add -g 512 huge.qcow2 "$(printf 'n%.0s' {1..1024})"
    [[ $status == 1 && $output == *"Too much space will be occupied by the bitmap. Use larger granularity" ]]
}

@test "--add to a raw image" {
    both --add -f raw r.img b
    [[ $status == 1 && $output == *"Can't store persistent bitmaps to r.img: Operation not supported" ]]
}

@test "--add to a v2 image" {
    both --add v2.qcow2 b
    [[ $status == 1 && $output == *"Can't make bitmap 'b' persistent in 'v2.qcow2': Cannot store dirty bitmaps in qcow2 v2 files" ]]
}

@test "--add --disable makes a disabled bitmap, --enable enables it" {
    both --add --disable a.qcow2 b
    [[ $status == 0 ]]
    [[ "$(info_bitmaps "$QCOWKIT" k/a.qcow2)" == '[{"flags":[],"name":"b","granularity":65536}]' ]]
    both --disable --enable --disable --enable s.qcow2 s
    [[ $status == 0 ]]
    [[ "$(info_bitmaps "$QCOWKIT" k/s.qcow2)" == '[{"flags":["auto"],"name":"s","granularity":4096}]' ]]
}

# ---- --remove, --clear, --enable, --disable ------------------------------------------------------

@test "--remove, --clear, --enable, --disable of a missing bitmap" {
    local a
    for a in --remove --clear --enable --disable; do
        both "$a" s.qcow2 nosuch
        [[ $status == 1 && $output == "qcowkit: Operation ${a#--} on bitmap nosuch failed: Dirty bitmap 'nosuch' not found" ]]
    done
}

@test "--remove of the last bitmap drops the extension and frees its clusters" {
    both --remove s.qcow2 s
    [[ $status == 0 ]]
    [[ "$(info_bitmaps "$QCOWKIT" k/s.qcow2)" == '[]' ]]
    ! bm_ext k/s.qcow2
    (($(get_u64 k/s.qcow2 88) == 0)) # autoclear bits
}

@test "--remove of a raw image's bitmap: not found" {
    both --remove -f raw r.img b
    [[ $status == 1 && $output == *"Dirty bitmap 'b' not found" ]]
}

@test "--clear empties a bitmap" {
    both --clear s.qcow2 s
    [[ $status == 0 ]]
    [[ "$(qk_dump k/s.qcow2 s)" == '[{"start":0,"length":67108864,"dirty":false}]' ]]
}

@test "--disable: later writes are not recorded; --enable: they are again" {
    both --disable s.qcow2 s
    qemu-io -c 'write 40M 64k' k/s.qcow2 >/dev/null
    [[ "$(qk_dump k/s.qcow2 s)" == "$(qk_dump f/s.qcow2 s)" ]]
    "$QCOWKIT" bitmap --enable k/s.qcow2 s
    qemu-io -c 'write 40M 64k' k/s.qcow2 >/dev/null
    [[ "$(qk_dump k/s.qcow2 s)" == *'{"start":41943040,"length":65536,"dirty":true}'* ]]
}

# ---- order of actions ---------------------------------------------------------------------------

@test "actions run in command-line order" {
    both --add --remove a.qcow2 b
    [[ $status == 0 && "$(info_bitmaps "$QCOWKIT" k/a.qcow2)" == '[]' ]]
    both --remove --add a.qcow2 b
    [[ $status == 1 && $output == *"Operation remove on bitmap b failed: Dirty bitmap 'b' not found" ]]
    [[ "$(info_bitmaps "$QCOWKIT" k/a.qcow2)" == '[]' ]]
    both --add -g 512 --disable --clear --enable --remove --add a.qcow2 b
    [[ $status == 0 && "$(info_bitmaps "$QCOWKIT" k/a.qcow2)" == '[{"flags":["auto"],"name":"b","granularity":512}]' ]]
}

@test "what the actions before a failure did is kept" {
    both --add --merge nosuch a.qcow2 b
    [[ $status == 1 && $output == *"Operation merge on bitmap b failed: Dirty bitmap 'nosuch' not found" ]]
    [[ "$(info_bitmaps "$QCOWKIT" k/a.qcow2)" == '[{"flags":["auto"],"name":"b","granularity":65536}]' ]]
    both --clear --add s.qcow2 s
    [[ $status == 1 && "$(qk_dump k/s.qcow2 s)" == '[{"start":0,"length":67108864,"dirty":false}]' ]]
}

# ---- --merge ------------------------------------------------------------------------------------

@test "--merge within the image, across granularities" {
    local g
    for g in 512 64K 2M; do
        both --add -g "$g" --merge s s.qcow2 "m$g"
        [[ $status == 0 && -z $output ]]
    done
    [[ "$(qk_dump k/s.qcow2 m2M)" == '[{"start":0,"length":2097152,"dirty":true},{"start":2097152,"length":6291456,"dirty":false},{"start":8388608,"length":2097152,"dirty":true},{"start":10485760,"length":10485760,"dirty":false},{"start":20971520,"length":2097152,"dirty":true},{"start":23068672,"length":44040192,"dirty":false}]' ]]
}

@test "--merge of a bitmap into itself" {
    both --merge s s.qcow2 s
    [[ $status == 0 ]]
}

@test "--merge from another image (-b, -b -F qcow2)" {
    (cd f && cp s.qcow2 t.qcow2)
    both --add -g 4k --merge s -b t.qcow2 a.qcow2 m
    [[ $status == 0 && -z $output ]]
    [[ "$(qk_dump k/a.qcow2 m)" == "$(qk_dump k/s.qcow2 s)" ]]
    both --add --merge s -b t.qcow2 -F qcow2 a.qcow2 m
    [[ $status == 0 ]]
}

@test "--merge between images of different sizes" {
    both --merge s -b big.qcow2 s.qcow2 s
    [[ $status == 1 && $output == *"failed: Bitmaps are of different sizes (destination size is 67108864, source size is 134217728) and can't be merged" ]]
    both --merge s -b s.qcow2 big.qcow2 s
    [[ $output == *"(destination size is 134217728, source size is 67108864)"* ]]
}

@test "--merge from a missing bitmap, into a missing bitmap" {
    both --merge nosuch s.qcow2 s
    [[ $status == 1 && $output == *"Operation merge on bitmap s failed: Dirty bitmap 'nosuch' not found" ]]
    both --merge s s.qcow2 nosuch
    [[ $output == *"Operation merge on bitmap nosuch failed: Dirty bitmap 'nosuch' not found" ]]
    both --merge nosuch -b big.qcow2 s.qcow2 s
    [[ $output == *"Dirty bitmap 'nosuch' not found" ]]
}

# ---- opening ------------------------------------------------------------------------------------

@test "missing image, missing merge source" {
    both --add nonexist.qcow2 b
    [[ $status == 1 && $output == "qcowkit: Could not open 'nonexist.qcow2': Could not open 'nonexist.qcow2': No such file or directory" ]]
    both --merge s -b nonexist.qcow2 s.qcow2 s
    [[ $status == 1 && $output == "qcowkit: Could not open 'nonexist.qcow2': Could not open 'nonexist.qcow2': No such file or directory" ]]
}

@test "-f raw on a qcow2 image" {
    both --add -f raw a.qcow2 b
    [[ $status == 1 && $output == *"Can't store persistent bitmaps to a.qcow2: Operation not supported" ]]
}

# ---- inconsistent bitmaps -----------------------------------------------------------------------

@test "an in-use bitmap: --clear, --enable, --disable, --merge refused; --add exists; --remove works" {
    local a op
    (cd f && qemu-img bitmap --add s.qcow2 t && in_use s.qcow2 0)
    for a in --clear --enable --disable "--merge t"; do
        op="${a%% *}"
        # shellcheck disable=SC2086
        both $a s.qcow2 s
        [[ $status == 1 && $output == "qcowkit: Operation ${op#--} on bitmap s failed: Bitmap 's' is inconsistent and cannot be used
Try block-dirty-bitmap-remove to delete this bitmap from disk" ]]
    done
    both --merge s s.qcow2 t
    [[ $status == 1 && $output == *"Bitmap 's' is inconsistent and cannot be used"* ]]
    both --add s.qcow2 s
    [[ $status == 1 && $output == *"Bitmap already exists: s" ]]
    both --remove s.qcow2 s
    [[ $status == 0 && "$(info_bitmaps "$QCOWKIT" k/s.qcow2)" == '[{"flags":["auto"],"name":"t","granularity":65536}]' ]]
}

@test "an in-use bitmap as --merge source from another image" {
    (cd f && cp s.qcow2 t.qcow2 && in_use t.qcow2 0)
    both --merge s -b t.qcow2 s.qcow2 s
    [[ $status == 1 && $output == *"Operation merge on bitmap s failed: Bitmap 's' is inconsistent and cannot be used"* ]]
}

@test "merge into an in-use bitmap from a missing one: not found comes first" {
    (cd f && in_use s.qcow2 0)
    both --merge nosuch s.qcow2 s
    [[ $status == 1 && $output == *"Dirty bitmap 'nosuch' not found" ]]
}

# ---- --dump (design.md §3) ----------------------------------------------------------------------

@test "--dump: human lines and merged JSON" {
    twins
    run "$QCOWKIT" bitmap --dump k/s.qcow2 s
    [[ $status == 0 ]]
    [[ "$output" == "0 1048576 clean
1048576 65536 dirty
1114112 8323072 clean
9437184 4096 dirty
9441280 11530240 clean
20971520 1048576 dirty
22020096 45088768 clean" ]]
    run "$QCOWKIT" bitmap --dump --output=json k/s.qcow2 s
    [[ $status == 0 ]]
    [[ "${lines[0]}" == '[{ "start": 0, "length": 1048576, "dirty": false},' ]]
    [[ "${lines[6]}" == '{ "start": 22020096, "length": 45088768, "dirty": false}]' ]]
    [[ "$(jq -c . <<<"$output")" == "$(jq -c '[.[] | {start: (.[0]|tonumber), length: (.[1]|tonumber), dirty: (.[2] == "dirty")}]' \
        <<<"$("$QCOWKIT" bitmap --dump k/s.qcow2 s | jq -R 'split(" ")' | jq -s .)")" ]]
}

@test "--dump of an empty bitmap: one clean range" {
    twins
    "$QCOWKIT" bitmap --add -g 512 k/a.qcow2 e
    run "$QCOWKIT" bitmap --dump --output=json k/a.qcow2 e
    [[ $status == 0 && "$output" == '[{ "start": 0, "length": 67108864, "dirty": false}]' ]]
    run "$QCOWKIT" bitmap --dump --output=human k/a.qcow2 e
    [[ "$output" == "0 67108864 clean" ]]
}

@test "--dump of a fully dirty bitmap whose size is not a multiple of the granularity" {
    twins
    qemu-img create -q -f qcow2 k/odd.qcow2 $((64 * 1024 * 1024 + 512))
    qemu-img bitmap --add -g 1M k/odd.qcow2 b
    qemu-io -c "write 0 $((64 * 1024 * 1024 + 512))" k/odd.qcow2 >/dev/null
    run "$QCOWKIT" bitmap --dump k/odd.qcow2 b
    [[ $status == 0 && "$output" == "0 67109376 dirty" ]]
}

@test "--dump errors: missing bitmap, bad --output, --output without --dump, with an action" {
    twins
    run "$QCOWKIT" bitmap --dump k/s.qcow2 nosuch
    [[ $status == 1 && $output == "qcowkit: Dirty bitmap 'nosuch' not found" ]]
    run "$QCOWKIT" bitmap --dump --output=xml k/s.qcow2 s
    [[ $status == 1 && $output == "qcowkit: --output must be used with human or json as argument." ]]
    run "$QCOWKIT" bitmap --output=json --clear k/s.qcow2 s
    [[ $status == 1 && $output == "qcowkit: --output only supported with --dump" ]]
    run "$QCOWKIT" bitmap --dump --clear k/s.qcow2 s
    [[ $status == 1 && $output == "qcowkit: --dump cannot be combined with --add, --remove, --clear, --enable, --disable or --merge" ]]
    run "$QCOWKIT" bitmap --dump -g 4k k/s.qcow2 s
    [[ $status == 1 && $output == "qcowkit: granularity only supported with --add" ]]
    run "$QCOWKIT" bitmap --dump k/s.qcow2
    [[ $status == 1 && $output == "qcowkit: Expecting filename and bitmap name" ]]
}

@test "--dump of an in-use bitmap names the reason" {
    twins
    in_use k/s.qcow2 0
    run "$QCOWKIT" bitmap --dump k/s.qcow2 s
    [[ $status == 1 && $output == "qcowkit: Bitmap 's' is inconsistent and cannot be used (in use: it was not saved correctly and may be inconsistent)" ]]
    assert_no_sanitizer
}

@test "--dump of an image another process is writing: QEMU's lock refuses" {
    twins
    # qemu-io holds the image read-write while it sleeps. Nothing else opens the image until
    # qemu-io has it open (a read-only open refuses writers and could make qemu-io fail).
    qemu-io -c 'sleep 5000' k/s.qcow2 &
    local pid=$! i
    for ((i = 0; i < 200; i++)); do
        ls -l "/proc/$pid/fd" 2>/dev/null | grep -q 's\.qcow2' && break
        sleep 0.02
    done
    sleep 0.3
    run "$QCOWKIT" bitmap --dump k/s.qcow2 s
    kill "$pid" || true
    wait "$pid" || true
    [[ $status == 1 && $output == *"Failed to get shared \"write\" lock"* ]]
}

@test "-b naming the image itself: QEMU's lock refuses" {
    both --merge s -b s.qcow2 s.qcow2 s
    [[ $status == 1 && $output == *"Could not open 's.qcow2': Failed to get shared \"write\" lock"* ]]
}
