#!/usr/bin/env bats
# tests/corrupt/bitmaps.bats - malformed bitmaps extensions, directories and tables: one case for
# each "must" of the spec (shared/spec/000_527c7e902fdcab1e.txt) and each QEMU check of
# qemu-reference.md §3. Owned by the bitmap CLI work.
#
# Every case patches a copy of base.qcow2 (made by qemu-img: 1 GiB, bitmaps b0 at 512 bytes, a
# 4-entry table with 2 data clusters, and b1 at 64 KiB; offsets are read from the image), pins
# what qemu-img 7.2 says about it (qemu_fails / qemu_accepts from lib.bash), then asserts the
# design (design.md §4): qcowkit info (human and JSON) still opens the image; the bitmap is listed
# inconsistent with a reason naming the rule (human info's "reason:" line, the library's words);
# --clear, --enable, --disable, --merge and --dump refuse it with QEMU's "Bitmap 'NAME' is
# inconsistent and cannot be used" and leave the file as it was; --remove removes it; then
# qemu-img check passes, or finds exactly the leaks the case makes unavoidable (clusters only a
# broken entry or table pointed to: they cannot be freed safely). No sanitizer report anywhere.
#
# Where the library cannot parse the directory at all (extension-level damage), no bitmap can be
# listed: info warns with the rule, every action says "not found", and `--add x --remove x`
# rewrites the extension without the broken directory (what it pointed to is leaked).

bats_require_minimum_version 1.5.0
load ../cli/helpers
load ../cli/bitmap_helpers
load lib

setup_file() {
    export BATS_NO_PARALLELIZE_WITHIN_FILE=true
    require_peer qemu-img qemu-io qemu-nbd nbdinfo jq || return 0
    qk_bin_ok
    local d="$BATS_FILE_TMPDIR/bases"
    mkdir -p "$d" && cd "$d" || return 1
    qemu-img create -q -f qcow2 base.qcow2 1G &&
        qemu-img bitmap --add -g 512 base.qcow2 b0 &&
        qemu-img bitmap --add -g 64K base.qcow2 b1 &&
        qemu-io -c 'write 0 64k' -c 'write 512M 1M' base.qcow2 >/dev/null || return 1
    export BASES="$d"
}

setup() {
    require_peer qemu-img qemu-io qemu-nbd nbdinfo jq
    qk_bin_ok
    cd "$BATS_TEST_TMPDIR"
    IMG="$BATS_TEST_TMPDIR/p.qcow2"
    cp "$BASES/base.qcow2" "$IMG"
    X="$(bm_ext "$IMG")"       # extension data: nb_bitmaps, reserved, dir size, dir offset
    E0="$(bm_entry "$IMG" 0)"  # directory entry of b0
    E1="$(bm_entry "$IMG" 1)"  # directory entry of b1 (the last)
    T0="$(get_u64 "$IMG" "$E0")"
    T1="$(get_u64 "$IMG" "$E1")"
    [[ "$(get_u32 "$IMG" $((E0 + 8)))" == 4 && "$(get_u32 "$IMG" $((X + 8)))" == 0 ]]
}

# qk ARGS...: run qcowkit; no sanitizer report.
qk() {
    run "$QCOWKIT" "$@"
    assert_no_sanitizer || return 1
}

# qk_json ARGS...: run qcowkit with stdout (JSON) and stderr (warnings) apart; stdout is JSON.
qk_json() {
    run --separate-stderr "$QCOWKIT" "$@"
    assert_no_sanitizer "$output$stderr" || return 1
    [[ $status == 0 ]] && jq -e . >/dev/null <<<"$output" || { echo "$*: $status $output $stderr" >&2; return 1; }
}

# listed NAME REASON_RE [OTHER]: the design's outcome for a bitmap listed inconsistent (header).
listed() {
    local n="$1" re="$2" other="${3:-b1}" sum a
    repaired_by_check
    qk info "$IMG"
    [[ $status == 0 ]] || { echo "info failed: $output" >&2; return 1; }
    grep -qxF "            name: $n" <<<"$output" || { echo "$n not listed: $output" >&2; return 1; }
    grep -qE "^            reason: .*$re" <<<"$output" || { echo "no reason /$re/: $output" >&2; return 1; }
    qk_json info --output=json "$IMG" || return 1
    sum="$(md5sum <"$IMG")"
    for a in --clear --enable --disable "--merge $other"; do
        # shellcheck disable=SC2086
        qk bitmap $a "$IMG" "$n"
        [[ $status == 1 && $output == *"failed: Bitmap '$n' is inconsistent and cannot be used"* ]] ||
            { echo "bitmap $a: $status $output" >&2; return 1; }
    done
    qk bitmap --dump "$IMG" "$n"
    [[ $status == 1 && $output =~ "Bitmap '$n' is inconsistent and cannot be used (".*$re ]] ||
        { echo "--dump: $status $output" >&2; return 1; }
    [[ "$(md5sum <"$IMG")" == "$sum" ]] || { echo "a refused action changed the file" >&2; return 1; }
}

# removed LEAKS NAME...: --remove each NAME works; qemu-img check then finds LEAKS leaked
# clusters (0: "No errors") and nothing else.
# repaired_by_check: on a copy of the damaged image, `qcowkit check` reports a
# bitmap problem and `check -r all` repairs it: qemu-img then opens the image
# and finds it clean (the issue's promise beyond QEMU, whose check cannot even
# open most of these images).
repaired_by_check() {
    local c="$BATS_TEST_TMPDIR/by-check.qcow2"
    cp "$IMG" "$c"
    run "$QCOWKIT" check "$c"
    assert_no_sanitizer
    [[ $output == *itmap* ]] || { echo "check did not report the bitmap: $status $output" >&2; return 1; }
    run "$QCOWKIT" check -r all "$c"
    assert_no_sanitizer
    [[ $status == 0 ]] || { echo "check -r all: $status $output" >&2; return 1; }
    run qemu-img check "$c"
    [[ $status == 0 && $output == *"No errors were found on the image."* ]] ||
        { echo "qemu-img check after check -r all: $status $output" >&2; return 1; }
    run qemu-img info "$c"
    [[ $status == 0 ]] || { echo "qemu-img info after check -r all: $output" >&2; return 1; }
}

removed() {
    local leaks="$1" n
    shift
    for n in "$@"; do
        qk bitmap --remove "$IMG" "$n"
        [[ $status == 0 && $output != *"qcowkit: Operation"* ]] ||
            { echo "--remove $n: $status $output" >&2; return 1; }
    done
    run qemu-img check "$IMG"
    if ((leaks == 0)); then
        [[ $status == 0 && $output == *"No errors were found on the image."* ]]
    else
        [[ $status == 3 && $output == *"$leaks leaked clusters were found on the image."* && $output != *ERROR* ]]
    fi || { echo "qemu-img check: $status $output" >&2; return 1; }
}

# unlisted RULE_RE LEAKS: extension-level damage (see the header).
unlisted() {
    local re="$1" leaks="$2" a
    repaired_by_check
    qk info "$IMG"
    [[ $status == 0 && $output == *"qcowkit: warning: bitmaps: "*$re* && $output != *"name: b0"* ]] ||
        { echo "info: $status $output" >&2; return 1; }
    qk_json info --output=json "$IMG"
    for a in --clear --remove --dump; do
        qk bitmap $a "$IMG" b0
        [[ $status == 1 && $output == *"Dirty bitmap 'b0' not found"* ]] || { echo "$a: $output" >&2; return 1; }
    done
    qk bitmap --add --remove "$IMG" x
    [[ $status == 0 ]]
    ! bm_ext "$IMG"
    removed "$leaks"
}

# ---- the extension (qemu-reference.md §3.1) -----------------------------------------------------

@test "nb_bitmaps 0" {
    put_u32 "$IMG" "$X" 0
    qemu_fails 'found bitmaps extension with zero bitmaps' info "$IMG"
    unlisted 'found bitmaps extension with zero bitmaps' 5
}

@test "nb_bitmaps 65536 (more than QEMU's 65535) [library: names the entry count, not the limit]" {
    put_u32 "$IMG" "$X" 65536
    qemu_fails 'Image has 65536 bitmaps, exceeding the QEMU supported maximum of 65535' info "$IMG"
    # The library checks the count of entries before the limit, so the reason is "Less bitmaps
    # found than specified in header extension". The rule broken is the limit: this fails until
    # src/bitmap.c checks nb_bitmaps > 65535 first, as QEMU does.
    listed b0 'more than 65535 bitmaps|65536 bitmaps'
    removed 0 b0 b1
}

@test "reserved field not zero" {
    put_u32 "$IMG" $((X + 4)) 1
    qemu_fails 'bitmaps_ext: Reserved field is not zero' info "$IMG"
    listed b0 'Reserved field is not zero'
    listed b1 'Reserved field is not zero' b0
    removed 0 b0 b1
}

@test "directory offset not cluster aligned" {
    put_u64 "$IMG" $((X + 16)) $(($(get_u64 "$IMG" $((X + 16))) + 512))
    qemu_fails 'bitmaps_ext: invalid bitmap directory offset' info "$IMG"
    unlisted 'invalid bitmap directory offset' 6
}

@test "directory past the end of the file" {
    put_u64 "$IMG" $((X + 16)) $((1 << 40))
    # QEMU reads zeros there: an entry with an empty name and no table
    qemu_fails "Bitmap '' doesn't satisfy the constraints" info "$IMG"
    unlisted 'bitmap directory is past the end of the file' 6
}

@test "directory size 0" {
    put_u64 "$IMG" $((X + 8)) 0
    qemu_fails 'Requested bitmap directory size is zero' info "$IMG"
    unlisted 'Requested bitmap directory size is zero' 6
}

@test "directory size too big (67107841)" {
    put_u64 "$IMG" $((X + 8)) 67107841
    qemu_fails 'bitmap directory size \(67107841\) exceeds the maximum supported size \(67107840\)' info "$IMG"
    unlisted 'exceeds the maximum supported size' 6
}

@test "extension length not 24" {
    put_u32 "$IMG" $((X - 4)) 16
    qemu_fails 'bitmaps_ext: Invalid extension length' info "$IMG"
    unlisted 'Invalid extension length' 6
}

# ---- the directory (§3.2) -------------------------------------------------------------------------

@test "entry past the end of the directory (size 40 for two 32-byte entries)" {
    put_u64 "$IMG" $((X + 8)) 40
    qemu_fails 'Broken bitmap directory' info "$IMG"
    listed b0 'Broken bitmap directory' b0
    # b1 is not parsed: its table and data cluster cannot be found, so they leak
    removed 2 b0
}

@test "fewer entries than nb_bitmaps" {
    put_u32 "$IMG" "$X" 3
    qemu_fails 'Less bitmaps found than specified in header extension' info "$IMG"
    listed b0 'Less bitmaps found than specified in header extension'
    removed 0 b0 b1
}

@test "more entries than nb_bitmaps" {
    put_u32 "$IMG" "$X" 1
    qemu_fails 'More bitmaps found than specified in header extension' info "$IMG"
    listed b0 'More bitmaps found than specified in header extension' b0
    removed 2 b0
}

@test "bitmap table offset 0" {
    put_u64 "$IMG" "$E0" 0
    qemu_fails "Bitmap 'b0' doesn't satisfy the constraints" info "$IMG"
    listed b0 'bitmap table offset is 0'
    removed 3 b0 # the table and its 2 data clusters are lost with the pointer
}

@test "bitmap table offset not cluster aligned" {
    put_u64 "$IMG" "$E0" $((T0 + 512))
    qemu_fails "Bitmap 'b0' doesn't satisfy the constraints" info "$IMG"
    listed b0 'bitmap table offset is not cluster aligned'
    removed 3 b0
}

@test "bitmap table past the end of the file" {
    put_u64 "$IMG" "$E0" $((1 << 40))
    qemu_accepts info "$IMG" # QEMU reads zeros there: an empty bitmap
    listed b0 'bitmap table is past the end of the file'
    removed 3 b0
}

@test "bitmap table size 0" {
    put_u32 "$IMG" $((E0 + 8)) 0
    qemu_fails "Bitmap 'b0' doesn't satisfy the constraints" info "$IMG"
    listed b0 'bitmap table size is 0'
    removed 3 b0
}

@test "bitmap table too small for the virtual size" {
    put_u32 "$IMG" $((E0 + 8)) 3
    qemu_fails "Bitmap 'b0' doesn't satisfy the constraints" info "$IMG"
    listed b0 'bitmap table is too small for the virtual size'
    removed 0 b0
}

@test "bitmap table bigger than the virtual size needs" {
    put_u32 "$IMG" $((E0 + 8)) 5
    qemu_fails "Could not read bitmap 'b0' from image: Invalid argument" info "$IMG"
    listed b0 'bitmap table is larger than the virtual size needs'
    removed 0 b0
}

@test "bitmap table of more than 512 MiB of data (8193 x 64 KiB)" {
    put_u32 "$IMG" $((E0 + 8)) 8193
    qemu_fails "Bitmap 'b0' doesn't satisfy the constraints" info "$IMG"
    listed b0 'bitmap table is larger than 512 MiB of bitmap data'
    removed 3 b0
}

@test "granularity bits 8, 32 and 64" {
    local gb
    for gb in 8 32 64; do
        cp "$BASES/base.qcow2" "$IMG"
        put_u8 "$IMG" $((E0 + 17)) "$gb"
        qemu_fails "Bitmap 'b0' doesn't satisfy the constraints" info "$IMG"
        listed b0 'granularity is outside 512 B..2 GiB \(granularity_bits 9..31\)'
        removed 0 b0
    done
}

@test "reserved flags (bits 3 and 31)" {
    local f
    for f in 0xa 0x80000002; do
        cp "$BASES/base.qcow2" "$IMG"
        put_u32 "$IMG" $((E0 + 12)) $((f))
        qemu_fails "Bitmap 'b0' doesn't satisfy the constraints" info "$IMG"
        listed b0 'reserved flags are set'
        removed 0 b0
    done
}

@test "flag extra_data_compatible without extra data: the spec allows it (QEMU refuses it)" {
    put_u32 "$IMG" $((E0 + 12)) 6
    qemu_fails "Bitmap 'b0' doesn't satisfy the constraints" info "$IMG"
    qk info "$IMG"
    [[ $status == 0 && $output != *reason:* ]]
    qk bitmap --dump --output=json "$IMG" b0
    [[ $status == 0 && "$(jq -c . <<<"$output")" == "$(qk_dump "$BASES/base.qcow2" b0)" ]]
    removed 0 b0
}

@test "type 0 and 2" {
    local t
    for t in 0 2; do
        cp "$BASES/base.qcow2" "$IMG"
        put_u8 "$IMG" $((E0 + 16)) "$t"
        qemu_fails "Bitmap 'b0' doesn't satisfy the constraints" info "$IMG"
        listed b0 'type is not 1 \(dirty tracking\)'
        removed 0 b0
    done
}

@test "name size 0 (QEMU loads a bitmap named '')" {
    put_u16 "$IMG" $((E1 + 18)) 0
    put_u64 "$IMG" $((X + 8)) 56 # b1's entry is now 24 bytes
    qemu_accepts info "$IMG"
    [[ "$(info_bitmaps qemu-img "$IMG")" == *'"name":""'* ]]
    listed '' 'name is empty' b0
    removed 0 ''
}

@test "name size 1024 [library: the --dump message loses its reason: qk_errmsg holds 1024 bytes]" {
    local long
    long="$(printf 'L%.0s' {1..1023})"
    qemu-img bitmap --add "$IMG" "$long"
    local e2
    e2="$(bm_entry "$IMG" 2)"
    # 24 + 1023 and 24 + 1024 both round to 1048: the padding byte becomes the last name byte
    put_u16 "$IMG" $((e2 + 18)) 1024
    put_bytes "$IMG" $((e2 + 24 + 1023)) M
    qemu_fails "doesn't satisfy the constraints" info "$IMG"
    cp "$IMG" keep.qcow2
    removed 0 "${long}M"
    IMG="$PWD/keep.qcow2"
    listed "${long}M" 'name is longer than 1023 bytes' b0
}

@test "duplicate names" {
    put_bytes "$IMG" $((E1 + 24)) b0
    qemu_fails 'Bitmap already exists: b0' info "$IMG"
    qk info "$IMG"
    [[ $status == 0 && $output == *"reason: another bitmap has the same name"* ]]
    # The name finds the first b0, which is sound: the duplicate can only go after it
    qk bitmap --dump "$IMG" b0
    [[ $status == 0 ]]
    removed 0 b0 b0
}

# extra_data IMG FLAGS: give b1 (the last entry) 8 bytes of extra data, with FLAGS.
extra_data() {
    put_u32 "$IMG" $((E1 + 12)) "$1"
    put_u32 "$IMG" $((E1 + 20)) 8
    put_bytes "$IMG" $((E1 + 24)) 'EXTRADAT'
    put_bytes "$IMG" $((E1 + 32)) 'b1\0\0\0\0\0\0'
    put_u64 "$IMG" $((X + 8)) 72
}

@test "extra data without extra_data_compatible" {
    extra_data 2
    qemu_fails 'Bitmap extra data is not supported' info "$IMG"
    listed b1 'unknown extra data without the extra_data_compatible flag' b0
    removed 0 b1
}

@test "extra data with extra_data_compatible: read and used, as the spec says (QEMU refuses it)" {
    extra_data 6
    qemu_fails 'Bitmap extra data is not supported' info "$IMG"
    qk info "$IMG"
    [[ $status == 0 && $output == *"name: b1"* && $output != *reason:* ]]
    qk bitmap --dump --output=json "$IMG" b1
    [[ $status == 0 && "$(jq -c . <<<"$output")" == "$(qk_dump "$BASES/base.qcow2" b1)" ]]
    removed 0 b1
}

@test "non-zero padding in a directory entry (QEMU ignores it)" {
    put_u8 "$IMG" $((E0 + 30)) 7
    qemu_accepts info "$IMG"
    listed b0 'directory entry padding is not zero'
    removed 0 b0
}

@test "in_use set (a crash)" {
    put_u32 "$IMG" $((E0 + 12)) 3
    qemu_accepts info "$IMG"
    [[ "$(info_bitmaps qemu-img "$IMG")" == *'{"flags":["in-use","auto"],"name":"b0"'* ]]
    listed b0 'in use: it was not saved correctly'
    same_bitmaps "$IMG"
    removed 0 b0
}

# ---- bitmap tables (§3.3): checked when the image opens, as QEMU does -------------------------

# table_case VALUE RULE_RE QEMU_RE: b0's first table entry becomes VALUE. qcowkit info lists the
# bitmap with the rule as its reason (QEMU refuses the whole image); every action but --remove
# refuses it. --remove cannot trust the table: its cluster and the data clusters leak.
table_case() {
    put_u64 "$IMG" "$T0" "$1"
    if [[ -n "$3" ]]; then qemu_fails "$3" info "$IMG"; else qemu_accepts info "$IMG"; fi
    listed b0 "$2"
    local a
    for a in --clear --enable --disable "--merge b1" --dump; do
        # shellcheck disable=SC2086
        qk bitmap $a "$IMG" b0
        [[ $status == 1 && $output == *"Bitmap 'b0' is inconsistent and cannot be used"* ]] ||
            { echo "$a: $output" >&2; return 1; }
    done
    [[ $output =~ \(.*$2 ]]
    removed 3 b0
}

@test "table entry with reserved bits 1-8" {
    table_case $(($(get_u64 "$IMG" "$T0") | 2)) 'a bitmap table entry has reserved bits set' \
        "Could not read bitmap_table table from image for bitmap 'b0': Invalid argument"
}

@test "table entry with reserved bits 56-63" {
    table_case $(($(get_u64 "$IMG" "$T0") | (1 << 56))) 'a bitmap table entry has reserved bits set' \
        "Could not read bitmap_table table from image for bitmap 'b0': Invalid argument"
}

@test "table entry not cluster aligned" {
    table_case $(($(get_u64 "$IMG" "$T0") + 512)) 'a bitmap table entry is not cluster aligned' \
        "Could not read bitmap_table table from image for bitmap 'b0': Invalid argument"
}

@test "table entry with an offset and bit 0 (all ones)" {
    table_case $(($(get_u64 "$IMG" "$T0") | 1)) 'both an offset and the all-ones flag' \
        "Could not read bitmap_table table from image for bitmap 'b0': Invalid argument"
}

@test "table entry past the end of the file" {
    table_case $((1 << 40)) 'a bitmap data cluster is past the end of the file' ''
}

@test "table entry 0 with bit 0: a cluster of ones, as the spec says" {
    put_u64 "$IMG" $((T0 + 8)) 1 # entry 1 covers bytes 256M..512M at 512-byte granularity
    qk bitmap --dump --output=json "$IMG" b0
    [[ $status == 0 && "$(jq -c . <<<"$output")" == "$(nbd_dump "$IMG" b0)" ]]
    # ones from 256M to 512M, then the 1M written at 512M
    [[ "$(jq -c . <<<"$output")" == *'{"start":268435456,"length":269484032,"dirty":true}'* ]]
    # the spec's ones survive a rewrite by us
    "$QCOWKIT" bitmap --disable "$IMG" b0
    [[ "$(qk_dump "$IMG" b0)" == "$(jq -c . <<<"$output")" ]]
    removed 0
}

# ---- bitmap data ------------------------------------------------------------------------------------

@test "non-zero tail bits: ignored, as QEMU does; cleared when we store the bitmap" {
    local d
    d=$(($(get_u64 "$IMG" "$T1") & 0x00fffffffffffe00))
    ((d))
    # b1: 16384 bits = 2048 bytes of a 64 KiB cluster: the rest are tail bits
    put_bytes "$IMG" $((d + 2048)) '\377'
    put_bytes "$IMG" $((d + 65535)) '\377'
    qemu_accepts info "$IMG"
    [[ "$(qk_dump "$IMG" b1)" == "$(nbd_dump "$IMG" b1)" ]]
    [[ "$(qk_dump "$IMG" b1)" == "$(qk_dump "$BASES/base.qcow2" b1)" ]]
    qk info "$IMG"
    [[ $output != *reason:* ]]
    "$QCOWKIT" bitmap --disable --enable "$IMG" b1
    d=$(($(get_u64 "$IMG" "$(get_u64 "$IMG" "$(bm_entry "$IMG" 1)")") & 0x00fffffffffffe00))
    [[ "$(od -An -v -tx1 -j $((d + 2048)) -N 63488 "$IMG" | tr -d ' \n' | tr -d 0)" == "" ]]
    removed 0
}

# ---- autoclear bit 0 (spec: autoclear_features) ---------------------------------------------------

@test "autoclear bit clear: every bitmap inconsistent; a read-write open drops the extension" {
    put_u64 "$IMG" 88 0
    run qemu-img info --output=json "$IMG"
    [[ $status == 0 && $output == *"a program lacking bitmap support modified this file"* ]]
    qk info "$IMG"
    [[ $status == 0 && $output == *"reason: the bitmaps autoclear bit is clear"* ]]
    # JSON is qemu-img's: no bitmaps
    qk_json info --output=json "$IMG"
    [[ "$(jq -c '.["format-specific"].data.bitmaps' <<<"$output")" == null ]]
    qk bitmap --dump "$IMG" b0
    [[ $status == 1 && $output == *"Bitmap 'b0' is inconsistent and cannot be used (the bitmaps autoclear bit is clear"* ]]
    # read-write: the extension is dropped at open, as QEMU does, so the bitmap is gone
    qk bitmap --remove "$IMG" b0
    [[ $status == 1 && $output == *"Dirty bitmap 'b0' not found"* ]]
    ! bm_ext "$IMG"
    # the old directory, 2 tables and 3 data clusters are leaked, as QEMU leaks them
    removed 6
}

@test "autoclear bit set without the extension: the image opens; our writes clear the bit" {
    qemu-img create -q -f qcow2 "$IMG" 64M
    put_u64 "$IMG" 88 1
    qemu_accepts info "$IMG"
    qk info "$IMG"
    [[ $status == 0 && $output != *bitmaps:* ]]
    qk io -c 'write 0 64k' "$IMG"
    [[ $status == 0 ]]
    # QEMU would now take any write for one over a bitmap directory at offset 0
    (($(get_u64 "$IMG" 88) == 0))
    qemu-io -c 'write 1M 64k' "$IMG" >/dev/null
    removed 0
}

@test "v2 image with a bitmaps extension (left by amend -o compat=0.10)" {
    qemu-img amend -o compat=0.10 "$IMG"
    run qemu-img info "$IMG"
    [[ $output == *"This qcow2 v2 image contains bitmaps"* ]]
    qk info "$IMG"
    [[ $status == 0 ]]
    qk bitmap --dump "$IMG" b0
    [[ $status == 1 && ($output == *"inconsistent"* || $output == *"not found"*) ]]
    # read-write: dropped as QEMU drops it; its clusters leak as in QEMU
    qk bitmap --remove "$IMG" b0
    [[ $status == 1 && $output == *"not found"* ]]
    removed 6
}
