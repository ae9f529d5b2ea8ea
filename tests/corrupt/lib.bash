# tests/corrupt/lib.bash - malformed qcow2 images made at run time, and the assertions on them.
#
#   corrupt_bases DIR   make the pristine images the cases patch (qemu-img/qemu-io only):
#                         b.qcow2   v3, 64 KiB clusters, 4 MiB, data in the first two clusters
#                         bk.qcow2  b.qcow2 as backing file (name "b.qcow2" at offset 528)
#                         s.qcow2   b.qcow2 + one internal snapshot "s1"
#                         z.qcow2   zlib-compressed clusters 0 and 1 ('A', 'B'), zs.qcow2 the same in zstd
#                         e.qcow2   extended L2
#                         bm.qcow2  b.qcow2 + a persistent bitmap "b0"
#   mk NAME BASE        copy BASE to $BATS_TEST_TMPDIR/NAME.qcow2 and set IMG to it
#   qemu_fails REGEX CMD ARGS...   qemu-img CMD ARGS must fail with REGEX in its output: this pins
#                       the message qcowkit must share, and proves the patch did what it says
#   qemu_accepts CMD ARGS...       qemu-img CMD ARGS succeeds (qemu is laxer than the design here)
#   qk_fails REGEX CMD ARGS...     $QCOWKIT CMD ARGS exits 1 with one line on stderr matching REGEX
#                       (grep -E) and, for info, nothing on stdout. convert/map/compare may print
#                       two lines (qemu-img prints "qcow2: Image is corrupt: ..." before its error)
#                       and io is judged on stdout+stderr (qemu-io prints "read failed" on stdout).
#                       No sanitizer report, no timeout or crash
#   qk_refuses REGEX [OPTS] IMG    qk_fails for each of info, map --output=json, convert -O raw
#   qk_salvages REGEX IMG          info exits 0 with a warning matching REGEX; data reads as b.qcow2's
#   qk_survives CMD ARGS...        $QCOWKIT CMD ARGS exits 0 or 1 within the time limit, no sanitizer
# The base-image offsets used by the patches are read from the images, not assumed.

# shellcheck source=../cli/helpers.bash
source "$(dirname "${BASH_SOURCE[0]}")/../cli/helpers.bash"

QK_TIMEOUT="${QK_TIMEOUT:-30}"

corrupt_bases() { # DIR
    local d="$1"
    mkdir -p "$d" && cd "$d" || return 1
    qemu-img create -q -f qcow2 b.qcow2 4M &&
        qemu-io -c 'write -P 0x11 0 128k' b.qcow2 >/dev/null &&
        qemu-img create -q -f qcow2 -b b.qcow2 -F qcow2 bk.qcow2 &&
        cp b.qcow2 s.qcow2 && qemu-img snapshot -c s1 s.qcow2 &&
        qemu-img create -q -f qcow2 z.qcow2 4M &&
        qemu-io -c 'write -c -P 0x41 0 64k' -c 'write -c -P 0x42 64k 64k' z.qcow2 >/dev/null &&
        qemu-img create -q -f qcow2 -o compression_type=zstd zs.qcow2 4M &&
        qemu-io -c 'write -c -P 0x41 0 64k' -c 'write -c -P 0x42 64k 64k' zs.qcow2 >/dev/null &&
        qemu-img create -q -f qcow2 -o extended_l2=on e.qcow2 1M &&
        cp b.qcow2 bm.qcow2 && qemu-img bitmap --add bm.qcow2 b0 || return 1
    [[ "$(get_u64 bk.qcow2 8)" == 528 && "$(get_u32 bk.qcow2 16)" == 7 ]] || { echo "bk.qcow2 layout changed" >&2; return 1; }
}

mk() { # NAME BASE
    IMG="$BATS_TEST_TMPDIR/$1.qcow2"
    cp "$CORRUPT_BASES/$2" "$IMG"
}

# find_ext MAGIC: offset of the header extension MAGIC in IMG (walks the extension list)
find_ext() {
    local off t l n=0
    off="$(get_u32 "$IMG" 100)"
    while ((n++ < 64)); do
        t="$(get_u32 "$IMG" "$off")" l="$(get_u32 "$IMG" $((off + 4)))"
        ((t == 0)) && break
        ((t == $1)) && { echo "$off"; return 0; }
        off=$((off + 8 + (l + 7) / 8 * 8))
    done
    echo "extension $1 not found in $IMG" >&2
    return 1
}

# L2 entry 0 of IMG: prints "L1_OFFSET L2_OFFSET ENTRY"
l2_entry0() {
    local l1 l2
    l1="$(get_u64 "$IMG" 40)"
    l2=$(($(get_u64 "$IMG" "$l1") & 0x00fffffffffffe00))
    echo "$l1 $l2 $(get_u64 "$IMG" "$l2")"
}

qemu_fails() { # REGEX CMD ARGS...
    local re="$1" out rc=0
    shift
    out="$(timeout 60 qemu-img "$@" 2>&1)" || rc=$?
    if [[ $rc == 0 ]] || ! grep -qE -- "$re" <<<"$out"; then
        echo "reference check: qemu-img $* exited $rc, expected failure matching /$re/:" >&2
        echo "$out" | head -5 >&2
        return 1
    fi
}

qemu_accepts() {
    local out
    out="$(timeout 60 qemu-img "$@" 2>&1 >/dev/null)" ||
        { echo "reference check: qemu-img $* failed: $out" >&2; return 1; }
}

_qk_run() {
    local rc=0
    timeout "$QK_TIMEOUT" "$QCOWKIT" "$@" >"$BATS_TEST_TMPDIR/qk.out" 2>"$BATS_TEST_TMPDIR/qk.err" || rc=$?
    QK_RC=$rc
    QK_OUT="$(cat "$BATS_TEST_TMPDIR/qk.out")"
    QK_ERR="$(cat "$BATS_TEST_TMPDIR/qk.err")"
    assert_no_sanitizer "$QK_OUT$QK_ERR" || return 1
    if ((rc >= 124)); then
        echo "qcowkit $* died or hung (exit $rc)" >&2
        echo "$QK_ERR" | head -5 >&2
        return 1
    fi
}

qk_fails() { # REGEX CMD ARGS...
    local re="$1" n maxl=1 text
    shift
    _qk_run "$@" || return 1
    case "$1" in convert | map | compare) maxl=2 ;; esac
    text="$QK_ERR"
    # qemu-io prints "read failed: ..." on stdout: io is judged on both streams
    if [[ "$1" == io ]]; then text="$QK_OUT"$'\n'"$QK_ERR" maxl=99; fi
    n="$(grep -c . <<<"$QK_ERR" || true)"
    if [[ $QK_RC != 1 ]] || ((n > maxl)) || { [[ "$1" != io ]] && ((n < 1)); } || ! grep -qE -- "$re" <<<"$text"; then
        echo "qcowkit $*: exit $QK_RC (want 1), $n stderr lines (want 1..$maxl) matching /$re/:" >&2
        echo "$QK_ERR" | head -5 | sed 's/^/  stderr: /' >&2
        [[ "$1" != io ]] || echo "$QK_OUT" | head -5 | sed 's/^/  stdout: /' >&2
        return 1
    fi
    if [[ "$1" == info && -n "$QK_OUT" ]]; then
        echo "qcowkit $*: unexpected stdout: $(head -3 <<<"$QK_OUT")" >&2
        return 1
    fi
}

# qk_refuses REGEX [OPTS...] IMG: header-level damage makes every opening command fail alike:
# info, map --output=json and convert -O raw.
qk_refuses() {
    local re="$1" img="${*: -1}" opts=("${@:2:$#-2}")
    qk_fails "$re" info "${opts[@]}" "$img" || return 1
    qk_fails "$re" map --output=json "${opts[@]}" "$img" || return 1
    qk_fails "$re" convert "${opts[@]}" -O raw "$img" "$BATS_TEST_TMPDIR/refused.raw" || return 1
}

# qk_salvages REGEX IMG: the image opens anyway: info exits 0 with a warning line matching REGEX,
# and convert -O raw gives the same bytes as qemu-img gives for the pristine b.qcow2.
qk_salvages() {
    local re="$1" img="$2"
    _qk_run info "$img" || return 1
    if [[ $QK_RC != 0 ]] || ! grep -E -- "$re" <<<"$QK_ERR" | grep -q warning; then
        echo "qcowkit info $img: exit $QK_RC (want 0) and a warning matching /$re/:" >&2
        echo "$QK_ERR" | head -5 | sed 's/^/  stderr: /' >&2
        return 1
    fi
    _qk_run convert -O raw "$img" "$BATS_TEST_TMPDIR/salvaged.raw" || return 1
    [[ $QK_RC == 0 ]] || { echo "qcowkit convert $img: exit $QK_RC: $QK_ERR" >&2; return 1; }
    qemu-img convert -O raw "$CORRUPT_BASES/b.qcow2" "$BATS_TEST_TMPDIR/pristine.raw"
    cmp "$BATS_TEST_TMPDIR/salvaged.raw" "$BATS_TEST_TMPDIR/pristine.raw" >&2
}

qk_survives() {
    _qk_run "$@" || return 1
    [[ $QK_RC == 0 || $QK_RC == 1 ]] || { echo "qcowkit $*: exit $QK_RC" >&2; return 1; }
}

# make_deep_chain DIR N: DIR/d0000.qcow2 (512-byte clusters, data at 0) and N overlays
# d0001 -> d0000, ..., dN -> d(N-1), made by patching the backing name of one template (perl keeps
# it to one process instead of 2N).
make_deep_chain() {
    local d="$1" n="$2" bo
    mkdir -p "$d" && cd "$d" || return 1
    qemu-img create -q -f qcow2 -o cluster_size=512 d0000.qcow2 1M &&
        qemu-io -c 'write -P 0x7e 0 512' d0000.qcow2 >/dev/null &&
        qemu-img create -q -f qcow2 -o cluster_size=512 -u -b d0000.qcow2 -F qcow2 tmpl.qcow2 1M || return 1
    bo="$(get_u64 tmpl.qcow2 8)"
    [[ "$(get_u32 tmpl.qcow2 16)" == 11 ]] || return 1
    perl -e '
        my ($n, $bo) = @ARGV;
        open(my $t, "<:raw", "tmpl.qcow2") or die; local $/; my $img = <$t>; close $t;
        for my $i (1 .. $n) {
            substr($img, $bo, 11) = sprintf("d%04d.qcow2", $i - 1);
            open(my $o, ">:raw", sprintf("d%04d.qcow2", $i)) or die; print $o $img; close $o;
        }' "$n" "$bo" && rm -f tmpl.qcow2
}

# from_xxd FILE: write FILE from an `xxd` dump on stdin (tiny images found by fuzzing are kept as
# text in the test: lines of zeros may be left out, xxd -r leaves the gaps as zeros; the last
# line gives the size).
from_xxd() {
    xxd -r >"$1"
}
