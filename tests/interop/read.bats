#!/usr/bin/env bats
# tests/interop/read.bats - qcowkit's read-side subcommands against qemu-img 7.2 on every image of
# the corpus (corpus.bash). Each property is one @test that checks every image and, on failure,
# lists every failing image with its diff ("-" lines are qemu-img's, "+" lines are qcowkit's).
#
# Images are addressed relative to the corpus folder, which is the working directory of both tools,
# so "filename", "backing-filename" and "full-backing-filename" must agree byte for byte. Images
# with an external data file are run from their own folder: QEMU 7.2 opens a data file relative
# to the working directory, the design resolves it against the image's folder; from the image's
# folder both agree.

bats_require_minimum_version 1.5.0
load ../cli/helpers
source "$BATS_TEST_DIRNAME/corpus.bash"

setup_file() { corpus_setup_file; }
setup() { corpus_setup; }

MIN_IMAGES=30

# Strip the program name so error lines can be compared: "qemu-img: x" / "qcowkit: x" -> "x".
_norm_err() { sed -E 's/^(qemu-img|qcowkit|qemu-io): //'; }

# for_each_image FN [EXCLUDED_TAG]: run "FN PATHARG TAGS" for each image in the image's run folder;
# FN returns non-zero with a diagnosis on stdout/stderr. Fails when any image fails, when fewer
# than MIN_IMAGES ran, or when an image file changed while FN ran (reads must not write).
for_each_image() {
    local fn="$1" skiptag="${2:-}" img tags n=0 all=0 failed=() dir arg log sum
    log="$BATS_TEST_TMPDIR/image.log"
    while read -r img tags; do
        all=$((all + 1))
        if [[ -n "$skiptag" && ",$tags," == *",$skiptag,"* ]]; then continue; fi
        n=$((n + 1))
        if [[ ",$tags," == *,datafile,* ]]; then
            dir="$CORPUS/$(dirname "$img")" arg="$(basename "$img")"
        else
            dir="$CORPUS" arg="$img"
        fi
        sum="$(md5sum <"$CORPUS/$img")"
        if ! (cd "$dir" && "$fn" "$arg" "$tags") >"$log" 2>&1; then
            failed+=("$img")
            echo "--- FAIL $img"
            head -n 60 "$log" | sed 's/^/  /'
        fi
        if [[ "$(md5sum <"$CORPUS/$img")" != "$sum" ]]; then
            failed+=("$img(modified!)")
            echo "--- FAIL $img: the image file changed during a read-only command"
        fi
    done <"$CORPUS/MANIFEST"
    echo "== $n images checked, ${#failed[@]} failed: ${failed[*]}"
    ((all >= MIN_IMAGES && n >= 1)) || { echo "only $all images in the corpus"; return 1; }
    ((${#failed[@]} == 0))
}

# run_both OUTNAME ARGS...: run "qemu-img ARGS" and "$QCOWKIT ARGS"; stdout in $T/q.OUT / k.OUT,
# stderr in .err files, exit codes in qrc / krc. Checks that qcowkit exits like qemu-img and
# printed no sanitizer report.
run_both() {
    local o="$1"
    shift
    T="$BATS_TEST_TMPDIR"
    qrc=0 krc=0
    qemu-img "$@" >"$T/q.$o" 2>"$T/q.$o.err" || qrc=$?
    timeout 300 "$QCOWKIT" "$@" >"$T/k.$o" 2>"$T/k.$o.err" || krc=$?
    assert_no_sanitizer "$(cat "$T/k.$o.err")" || return 1
    if [[ $krc != "$qrc" ]]; then
        echo "exit code: qcowkit $krc, qemu-img $qrc  (qcowkit $*)"
        head -5 "$T/k.$o.err"
        return 1
    fi
}

# Exact text comparison of stdout, and of stderr without the program name.
same_text() { # OUTNAME
    local o="$1" rc=0
    diff -u --label qemu-img --label qcowkit "$T/q.$o" "$T/k.$o" || rc=1
    diff -u --label qemu-img.stderr --label qcowkit.stderr <(_norm_err <"$T/q.$o.err") <(_norm_err <"$T/k.$o.err") || rc=1
    return $rc
}

same_json() { # OUTNAME
    [[ $qrc == 0 ]] || { echo "qemu-img failed: $(cat "$T/q.$1.err")"; return 1; }
    json_eq "$T/q.$1" "$T/k.$1"
}

chk_info_json() { run_both info info --output=json "$1" && same_json info; }
chk_info_json_chain() { run_both info info --output=json --backing-chain "$1" && same_json info; }
# qcowkit's human info adds a "reason:" line under each inconsistent bitmap
# (documented in `qcowkit info --help`); everything else must match qemu-img.
drop_reasons() { # OUTNAME
    grep -q '^ *reason: ' "$T/k.$1" || return 0
    grep -v '^ *reason: ' "$T/k.$1" >"$T/k.$1.noreason" && mv "$T/k.$1.noreason" "$T/k.$1"
}
chk_info_text() {
    run_both info info "$1" && drop_reasons info && same_text info || return 1
    [[ ",$2," != *,chain,* ]] || { run_both infoc info --backing-chain "$1" && drop_reasons infoc && same_text infoc; }
}
chk_map_json() { run_both map map --output=json "$1" && same_json map; }
chk_map_text() { run_both map map "$1" && same_text map; }

chk_convert_raw() {
    local rc=0
    T="$BATS_TEST_TMPDIR"
    rm -f "$T/q.raw" "$T/k.raw"
    qemu-img convert -O raw "$1" "$T/q.raw" || { echo "qemu-img convert failed"; return 1; }
    timeout 300 "$QCOWKIT" convert -O raw "$1" "$T/k.raw" 2>"$T/k.err" || rc=$?
    assert_no_sanitizer "$(cat "$T/k.err")" || return 1
    [[ $rc == 0 ]] || { echo "qcowkit convert exit $rc: $(head -3 "$T/k.err")"; return 1; }
    cmp "$T/q.raw" "$T/k.raw" || { ls -l "$T/q.raw" "$T/k.raw"; return 1; }
    rm -f "$T/q.raw" "$T/k.raw"
}

# compare IMG against its raw conversion: identical, then with one byte flipped in the middle.
chk_compare_raw() {
    local size off b
    T="$BATS_TEST_TMPDIR"
    rm -f "$T/c.raw"
    qemu-img convert -O raw "$1" "$T/c.raw" || { echo "qemu-img convert failed"; return 1; }
    run_both cmp compare -F raw "$1" "$T/c.raw" && same_text cmp || return 1
    grep -q 'Images are identical' "$T/q.cmp" || { echo "qemu-img compare: $(cat "$T/q.cmp")"; return 1; }
    size="$(stat -c %s "$T/c.raw")"
    off=$((size / 2 + 777))
    b="$(od -An -tu1 -j "$off" -N 1 "$T/c.raw" | tr -d ' ')"
    printf "$(printf '\\%03o' $((b ^ 0xff)))" | dd of="$T/c.raw" bs=1 seek="$off" conv=notrunc status=none
    run_both cmp compare -F raw "$1" "$T/c.raw" && same_text cmp || return 1
    grep -q "Content mismatch at offset" "$T/q.cmp" || { echo "qemu-img compare: $(cat "$T/q.cmp")"; return 1; }
    rm -f "$T/c.raw"
}

@test "corpus: at least $MIN_IMAGES images, all of them qcow2 that qemu-img can read" {
    local n
    n="$(wc -l <"$CORPUS/MANIFEST")"
    echo "corpus has $n images"
    ((n >= MIN_IMAGES))
    chk_qemu_reads() { qemu-img info "$1" >/dev/null && qemu-img compare "$1" "$1" >/dev/null; }
    for_each_image chk_qemu_reads
}

@test "info --output=json equals qemu-img's on every image" {
    for_each_image chk_info_json
}

@test "info --output=json --backing-chain equals qemu-img's on every image" {
    for_each_image chk_info_json_chain
}

@test "human info (and --backing-chain for chains) equals qemu-img's text on every image" {
    for_each_image chk_info_text
}

@test "map --output=json equals qemu-img's on every image" {
    for_each_image chk_map_json
}

@test "human map equals qemu-img's (including its refusal of compressed images)" {
    for_each_image chk_map_text
}

@test "chains by absolute path from another folder: info --backing-chain and map JSON equal qemu-img's" {
    local img n=0 bad=0
    cd /
    for img in $(corpus_images "$CORPUS" chain); do
        n=$((n + 1))
        if ! { run_both info info --output=json --backing-chain "$CORPUS/$img" && same_json info &&
            run_both map map --output=json "$CORPUS/$img" && same_json map &&
            run_both infot info --backing-chain "$CORPUS/$img" && same_text infot; }; then
            echo "--- FAIL $img (absolute path)"
            bad=$((bad + 1))
        fi
    done
    echo "== $n chain images, $bad failed"
    ((n >= 5 && bad == 0))
}

@test "map --output=json with --start-offset/--max-length windows equals qemu-img's" {
    local w img so ml n=0 bad=0
    cd "$CORPUS"
    for w in "chain/top.qcow2 1M 2M" "chain/top.qcow2 4095 1" "extl2.qcow2 1000 5000" "extl2.qcow2 0 300000" \
        "huge.qcow2 1T 1T" "huge.qcow2 4398046445568 65536" "zlib.qcow2 100000 1000000" \
        "odd.qcow2 983040 100000" "v3-c512.qcow2 511 1025" "chain/extl2-top.qcow2 900 70000"; do
        read -r img so ml <<<"$w"
        n=$((n + 1))
        if ! { run_both map map --output=json --start-offset="$so" --max-length="$ml" "$img" && same_json map; }; then
            echo "--- FAIL map --start-offset=$so --max-length=$ml $img"
            bad=$((bad + 1))
        fi
    done
    echo "== $n windows, $bad failed"
    ((bad == 0))
}

@test "convert -O raw is byte-identical to qemu-img's on every image (but the 4 TiB one)" {
    for_each_image chk_convert_raw huge
}

@test "convert -O raw of the 4 TiB sparse image: qemu-img compare says identical, output stays sparse" {
    local img out
    img="$(corpus_images "$CORPUS" huge)"
    [[ -n "$img" ]]
    out="$BATS_TEST_TMPDIR/huge.raw"
    cd "$CORPUS"
    run --separate-stderr timeout 300 "$QCOWKIT" convert -O raw "$img" "$out"
    assert_no_sanitizer
    [[ $status == 0 ]]
    [[ "$(stat -c %s "$out")" == $((4 << 40)) ]]
    # 3 MiB of data were written; allow generous slack for filesystem allocation granularity
    (($(stat -c %b "$out") * 512 < 64 << 20)) || { echo "not sparse: $(du -h "$out")"; false; }
    run qemu-img compare -f raw -F qcow2 "$out" "$img"
    echo "$output"
    [[ $status == 0 && "$output" == "Images are identical." ]]
    rm -f "$out"
}

teardown() {
    if [[ -n "${HOLDER:-}" ]]; then kill "$HOLDER" 2>/dev/null || true; fi
}

@test "while qemu-io holds an image read-write: commands fail like qemu-img, -U (force-share) works" {
    T="$BATS_TEST_TMPDIR"
    cd "$T"
    cp "$CORPUS/v3-c64k.qcow2" held.qcow2
    qemu-io -c 'sleep 60000' held.qcow2 >/dev/null 2>&1 3>&- &
    HOLDER=$!
    local i
    for i in $(seq 100); do
        qemu-img info held.qcow2 >/dev/null 2>&1 || break
        sleep 0.1
    done
    run qemu-img info held.qcow2
    [[ $status == 1 && "$output" == *'Failed to get shared "write" lock'* ]] # the holder is there
    local bad=0
    run_both info info held.qcow2 && same_text info || bad=1
    run_both mapj map --output=json held.qcow2 && same_text mapj || bad=1
    run_both conv convert -O raw held.qcow2 out.raw && same_text conv || bad=1
    run_both cmp compare held.qcow2 "$CORPUS/v3-c64k.qcow2" && same_text cmp || bad=1
    run_both infou info -U held.qcow2 && same_text infou || bad=1
    run_both mapu map -U --output=json held.qcow2 && same_json mapu || bad=1
    run_both cmpu compare -U held.qcow2 "$CORPUS/v3-c64k.qcow2" && same_text cmpu || bad=1
    kill "$HOLDER"
    wait "$HOLDER" 2>/dev/null || true
    HOLDER=
    ((bad == 0))
}

@test "compare of every image with its raw conversion, then with one byte flipped, agrees with qemu-img" {
    for_each_image chk_compare_raw huge
}

# compare: exit code and message must equal qemu-img's.
@test "compare agrees with qemu-img on identical, different and different-size pairs" {
    local T="$BATS_TEST_TMPDIR" pairs a b opt i=0 bad=0
    # size-mismatch pairs made here: same first MiB, tail zero or not
    qemu-img create -q -f qcow2 "$T/s1.qcow2" 1M
    qemu-img create -q -f qcow2 "$T/s2.qcow2" 2M
    qemu-img create -q -f qcow2 "$T/s3.qcow2" 2M
    qemu-io -c 'write -P 5 0 64k' "$T/s1.qcow2" >/dev/null
    qemu-io -c 'write -P 5 0 64k' "$T/s2.qcow2" >/dev/null
    qemu-io -c 'write -P 5 0 64k' -c 'write -P 6 1536k 512' "$T/s3.qcow2" >/dev/null
    pairs=(
        "- zlib.qcow2 zstd.qcow2"                 # identical, different compression
        "- v3-c512.qcow2 v3-c2M.qcow2"            # identical, different cluster sizes
        "- v2-c64k.qcow2 v3-c64k.qcow2"           # identical, v2 vs v3 zero handling
        "- zstd-extl2.qcow2 zlib-c4k.qcow2"
        "-F_raw zlib.qcow2 src/mixed.raw"         # qcow2 vs raw
        "- zlib.qcow2 zlib-cow.qcow2"             # different inside a compressed cluster
        "- chain/top.qcow2 chain/mid2.qcow2"      # different through a backing chain
        "- chain/mid2.qcow2 chain/top.qcow2"
        "- snap.qcow2 v3-c64k.qcow2"
        "- extl2.qcow2 empty.qcow2"               # differs in the first subcluster
        "- $T/s1.qcow2 $T/s2.qcow2"               # size mismatch, identical
        "- $T/s2.qcow2 $T/s1.qcow2"
        "- $T/s3.qcow2 $T/s1.qcow2"               # size mismatch, different tail
        "- odd.qcow2 empty.qcow2"                 # size mismatch, different
        "-s $T/s1.qcow2 $T/s2.qcow2"              # strict: size mismatch is an error
        "-s v3-c512.qcow2 v3-c2M.qcow2"           # strict: same data, same allocation?
        "-s zero.qcow2 zero-v2.qcow2"
        "- empty.qcow2 $T/nonexistent.qcow2"      # exit 2
    )
    cd "$CORPUS"
    for p in "${pairs[@]}"; do
        read -r opt a b <<<"$p"
        i=$((i + 1))
        local args=()
        case "$opt" in -F_raw) args=(-F raw) ;; -s) args=(-s) ;; esac
        if ! run_both cmp compare "${args[@]}" "$a" "$b" || ! same_text cmp; then
            echo "--- FAIL: compare ${args[*]} $a $b"
            bad=$((bad + 1))
        fi
    done
    echo "== $i pairs, $bad failed"
    ((bad == 0))
}

# io: qemu-io's read/verify semantics. Both tools run read-write (qemu-io's default) on their own
# copy of the image (and of its folder, for chains and data files); timing lines are dropped, and
# so are the repair diagnostics QEMU prints when it opens a dirty image read-write.
_io_filter() { grep -vE 'ops; |^(ERROR|Rebuilding|Repairing|Leaked) ' | _norm_err; }
_io_case() { # IMGPATH (relative to corpus) CMD...
    local img="$1" T="$BATS_TEST_TMPDIR" c args=() rc=0 qrc=0 top
    shift
    for c in "$@"; do args+=(-c "$c"); done
    top="${img%%/*}"
    rm -rf "$T/qio" "$T/kio" && mkdir -p "$T/qio" "$T/kio"
    cp -a --sparse=always "$CORPUS/$top" "$T/qio/"
    cp -a --sparse=always "$CORPUS/$top" "$T/kio/"
    (cd "$T/qio/$(dirname "$img")" && qemu-io "${args[@]}" "$(basename "$img")") >"$T/q.io" 2>&1 || qrc=$?
    (cd "$T/kio/$(dirname "$img")" && timeout 120 "$QCOWKIT" io "${args[@]}" "$(basename "$img")") >"$T/k.io" 2>"$T/k.io.err" || rc=$?
    assert_no_sanitizer "$(cat "$T/k.io.err")" || return 1
    cat "$T/k.io.err" >>"$T/k.io"
    [[ $rc == "$qrc" ]] || { echo "io $img $*: exit $rc, qemu-io $qrc"; cat "$T/k.io"; return 1; }
    diff -u --label qemu-io --label qcowkit <(_io_filter <"$T/q.io") <(_io_filter <"$T/k.io") ||
        { echo "^^^ io $img $*"; return 1; }
}

@test "io read -P verifies data like qemu-io (plain, compressed, chain, subclusters, data file, 4 TiB)" {
    local bad=0
    _io_case v3-c64k.qcow2 'read -P 0xa1 0 1M' 'read -P 0xa2 1572864 100000' 'read -P 0 524288 131072' || bad=1
    _io_case v3-c512.qcow2 'read -P 0xa3 3000000 7000' 'read -P 0xa4 4193792 512' 'read -P 0 2M 64k' || bad=1
    _io_case zlib.qcow2 'read -P 0x41 65536 65536' 'read -P 0 131072 65536' 'read -P 0xcd 393216 65536' || bad=1
    _io_case zstd-c2m.qcow2 'read -P 0x41 65536 65536' 'read -P 0xcd 917504 65536' || bad=1
    _io_case zlib-cow.qcow2 'read -P 0x99 65636 1000' 'read -P 0x41 65536 100' 'read -P 0 262144 65536' || bad=1
    _io_case chain/top.qcow2 'read -P 0x44 4096 4096' 'read -P 0x11 65536 65536' 'read -P 0x22 1114112 65536' \
        'read -P 0x33 1572864 65536' 'read -P 0 1M 64k' 'read -P 0x34 2600000 100000' 'read -P 0 3538944 65536' || bad=1
    _io_case chain/short-top.qcow2 'read -P 0x55 0 983040' 'read -P 0x56 983040 131072' 'read -P 0 1114112 1M' || bad=1
    _io_case extl2.qcow2 'read -P 0x01 0 512' 'read -P 0 512 1536' 'read -P 0x02 2048 2048' 'read -P 0x03 70000 100' || bad=1
    _io_case data/dfraw.qcow2 'read -P 0x73 64k 1M' 'read -P 0x74 3M 4096' || bad=1
    _io_case snap.qcow2 'read -P 0 0 64k' 'read -P 0x62 64k 1M' 'read -P 0x63 3M 4k' || bad=1
    _io_case dirty.qcow2 'read -P 0x82 0 256k' 'read -P 0x83 1M 64k' || bad=1
    _io_case huge.qcow2 'read -P 0xc2 1T 4k' 'read -P 0xc3 3T 1M' 'read -P 0xc4 4398046445568 65536' 'read -P 0 2T 1M' || bad=1
    ((bad == 0))
}

@test "io read -P reports a mismatch like qemu-io (message and exit code)" {
    local bad=0
    _io_case v3-c64k.qcow2 'read -P 0xa2 0 4096' || bad=1
    _io_case zstd.qcow2 'read -P 0x41 0 65536' 'read -P 0x41 65536 65536' || bad=1
    _io_case chain/top.qcow2 'read -P 0x11 4096 4096' || bad=1
    ((bad == 0))
}

@test "the corpus is unchanged by the read-only commands" {
    cd "$CORPUS"
    run md5sum -c --quiet SUMS
    echo "$output"
    [[ $status == 0 ]]
}
