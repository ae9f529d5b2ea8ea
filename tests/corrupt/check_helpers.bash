# check_helpers.bash - build corrupt qcow2 images at test time and compare
# `qcowkit check` with `qemu-img check` on them. Loaded by the check tests.
#
#   poke FILE OFFSET SIZE VALUE   write VALUE big-endian (SIZE bytes) at OFFSET
#   peek FILE OFFSET SIZE         print the big-endian value at OFFSET (decimal)
#   hdr FILE FIELD                header fields: l1 reftable snapshots cs
#   l1e FILE INDEX / l2off FILE INDEX   an L1 entry, and the L2 offset it holds
#   rbe FILE CLUSTER              refcount (16-bit) of CLUSTER on disk
#   set_rc FILE CLUSTER VALUE     change that refcount (first refcount block)
#   base IMG [create opts...]     64 MiB image with data written by qemu-io
#   same_counters IMG             check --output=json: same corruptions,
#                                 leaks, check-errors as qemu-img
#   repair_compare IMG [WHY]      -r all by both on twins: qemu-img check is
#                                 clean on ours, which reads whole, and the
#                                 guest data equals the twin's unless WHY says
#                                 why it cannot (qemu-img's twin stays unreadable)

QCOWKIT=${QCOWKIT:-$BATS_TEST_DIRNAME/../../build/qcowkit}

need_peers() {
    local t
    for t in qemu-img qemu-io jq; do
        command -v "$t" >/dev/null 2>&1 && continue
        [ "${CI:-}" = true ] && { echo "$t is required under CI=true" >&2; return 1; }
        skip "$t is not installed"
    done
    [ -x "$QCOWKIT" ] || { echo "qcowkit not built: $QCOWKIT" >&2; return 1; }
}

poke() {
    local f=$1 off=$2 size=$3 val=$4 hex esc="" i
    hex=$(printf "%0$((size * 2))x" "$val")
    hex=${hex: -$((size * 2))}
    for ((i = 0; i < size * 2; i += 2)); do esc+="\\x${hex:i:2}"; done
    printf "$esc" | dd of="$f" bs=1 seek="$off" conv=notrunc status=none
}

peek() {
    local hex
    hex=$(od -An -tx1 -j "$2" -N "$3" "$1" | tr -d ' \n')
    echo $((16#${hex:-0}))
}

hdr() {
    case $2 in
        l1) peek "$1" 40 8 ;;
        l1_size) peek "$1" 36 4 ;;
        reftable) peek "$1" 48 8 ;;
        snapshots) peek "$1" 64 8 ;;
        cs) echo $((1 << $(peek "$1" 20 4))) ;;
        incompat) peek "$1" 72 8 ;;
    esac
}

l1e() { peek "$1" $(($(hdr "$1" l1) + $2 * 8)) 8; }
l2off() { echo $(($(l1e "$1" "$2") & 0x00fffffffffffe00)); }
l2e() { peek "$1" $(($(l2off "$1" "$2") + $3 * 8)) 8; }
refblock0() { echo $(($(peek "$1" "$(hdr "$1" reftable)" 8) & ~511)); }
rbe() { peek "$1" $(($(refblock0 "$1") + $2 * 2)) 2; }
set_rc() { poke "$1" $(($(refblock0 "$1") + $2 * 2)) 2 "$3"; }

base() {
    local img=$1
    shift
    qemu-img create -q -f qcow2 "$@" "$img" 64M
    qemu-io -c "write -P 0x11 0 256k" -c "write -P 0x22 1M 64k" -c "write -P 0x33 40M 128k" \
        "$img" >/dev/null
}

# The counters of both tools, and their exit codes, must agree.
same_counters() {
    local img=$1 q k qrc=0 krc=0
    q=$(qemu-img check --output=json "$img" 2>"$BATS_TEST_TMPDIR/q.err") || qrc=$?
    k=$("$QCOWKIT" check --output=json "$img" 2>"$BATS_TEST_TMPDIR/k.err") || krc=$?
    local f='[.corruptions // 0, .leaks // 0, ."check-errors" // 0] | @text'
    local qc kc
    qc=$(echo "$q" | jq -r "$f")
    kc=$(echo "$k" | jq -r "$f")
    if [ "$qc" != "$kc" ] || [ "$qrc" != "$krc" ]; then
        echo "qemu-img: $qc rc=$qrc; qcowkit: $kc rc=$krc" >&2
        echo "--- qemu-img stderr" >&2; cat "$BATS_TEST_TMPDIR/q.err" >&2
        echo "--- qcowkit stderr" >&2; cat "$BATS_TEST_TMPDIR/k.err" >&2
        return 1
    fi
    # The diagnostic lines are QEMU's too (ours may add bitmap lines).
    # (QEMU's bitmap warning has no newline: drop it with its text.)
    if ! diff <(sed -e "s/Some clusters may be leaked, run 'qemu-img check -r' on the image file to fix.//" \
                    -e '/bitmap/d' -e 's/^qemu-img: //' "$BATS_TEST_TMPDIR/q.err") \
              <(grep -iv 'bitmap' "$BATS_TEST_TMPDIR/k.err" | sed 's/^qcowkit: //') >&2; then
        echo "stderr differs (qemu-img <, qcowkit >)" >&2
        return 1
    fi
    echo "$qc rc=$qrc"
}

# Repair a copy with each tool; ours must leave an image qemu-img finds
# clean, with the guest data qemu-img's repair keeps (or more, with a
# reason given as $2).
repair_compare() {
    local img=$1 why=${2:-}
    cp "$img" "$BATS_TEST_TMPDIR/twin.qcow2"
    cp "$img" "$BATS_TEST_TMPDIR/ours.qcow2"
    qemu-img check -r all "$BATS_TEST_TMPDIR/twin.qcow2" >/dev/null 2>&1 || true
    "$QCOWKIT" check -r all "$BATS_TEST_TMPDIR/ours.qcow2" >"$BATS_TEST_TMPDIR/r.out" 2>&1 || true
    if ! qemu-img check "$BATS_TEST_TMPDIR/ours.qcow2" >"$BATS_TEST_TMPDIR/after.out" 2>&1; then
        echo "qemu-img check after qcowkit check -r all:" >&2
        cat "$BATS_TEST_TMPDIR/r.out" "$BATS_TEST_TMPDIR/after.out" >&2
        return 1
    fi
    qemu-img convert -O raw "$BATS_TEST_TMPDIR/ours.qcow2" "$BATS_TEST_TMPDIR/ours.raw"
    if [ -z "$why" ]; then
        qemu-img convert -O raw "$BATS_TEST_TMPDIR/twin.qcow2" "$BATS_TEST_TMPDIR/twin.raw"
        cmp "$BATS_TEST_TMPDIR/twin.raw" "$BATS_TEST_TMPDIR/ours.raw" || {
            echo "guest data differs from qemu-img's repair" >&2
            return 1
        }
    fi
}

# bitmaps_ext IMG FIELD: field of the bitmaps header extension
# (nb, dir_size, dir_offset), or the byte offset of its data (at).
bitmaps_ext() {
    local off t l
    off=$(peek "$1" 100 4)
    while :; do
        t=$(peek "$1" "$off" 4)
        l=$(peek "$1" $((off + 4)) 4)
        [ "$t" = 0 ] && return 1
        if [ "$t" = $((0x23852875)) ]; then
            case $2 in
                at) echo $((off + 8)) ;;
                nb) peek "$1" $((off + 8)) 4 ;;
                dir_size) peek "$1" $((off + 16)) 8 ;;
                dir_offset) peek "$1" $((off + 24)) 8 ;;
            esac
            return 0
        fi
        off=$((off + 8 + (l + 7) / 8 * 8))
    done
}

# The first bitmap's table offset field, and its first table entry.
bm_table_field() { echo "$(bitmaps_ext "$1" dir_offset)"; }
bm_table() { peek "$1" "$(bitmaps_ext "$1" dir_offset)" 8; }

# bitmap_case IMG: after `qcowkit check -r all` the broken bitmap is gone,
# qemu-img opens the image, finds it clean, and the guest data is intact.
bitmap_repaired() {
    local img=$1
    cp "$img" "$BATS_TEST_TMPDIR/ours.qcow2"
    qemu-img convert -U -O raw "$img" "$BATS_TEST_TMPDIR/before.raw" 2>/dev/null ||
        "$QCOWKIT" convert -O raw "$img" "$BATS_TEST_TMPDIR/before.raw"
    "$QCOWKIT" check -r all "$BATS_TEST_TMPDIR/ours.qcow2" >"$BATS_TEST_TMPDIR/r.out" 2>&1 || true
    grep -q "bitmap" "$BATS_TEST_TMPDIR/r.out" || { cat "$BATS_TEST_TMPDIR/r.out" >&2; return 1; }
    qemu-img check "$BATS_TEST_TMPDIR/ours.qcow2" >&2 || { cat "$BATS_TEST_TMPDIR/r.out" >&2; return 1; }
    qemu-img convert -O raw "$BATS_TEST_TMPDIR/ours.qcow2" "$BATS_TEST_TMPDIR/after.raw"
    cmp "$BATS_TEST_TMPDIR/before.raw" "$BATS_TEST_TMPDIR/after.raw"
}
