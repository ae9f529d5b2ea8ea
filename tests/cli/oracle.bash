# tests/cli/oracle.bash - helpers for bats tests that run qcowkit and its QEMU
# oracle (qemu-img / qemu-io) on the same input and compare what they print,
# stdout and stderr apart (qemu-io puts messages on both). Owned by the
# convert/compare/io tests; load with `load oracle`. QCOWKIT and
# require_peer come from img_helpers.bash.
#   mk ARGS...          qemu-img create -q -f qcow2 ARGS
#   wr IMG CMD...       run each qemu-io command on IMG in turn

source "$BATS_TEST_DIRNAME/img_helpers.bash"

mk() { qemu-img create -q -f qcow2 "$@"; }
wr() { local img=$1; shift; for c in "$@"; do qemu-io -c "$c" "$img" >/dev/null; done; }

oracle_setup() {
    require_peer qemu-img qemu-io jq
    cd "$BATS_TEST_TMPDIR"
}

# The messages of both tools, with the program name made the same.
_normalise() {
    sed -E -e 's/^qemu-(img|io): /qcowkit: /' -e "s/Try 'qemu-img --help'/Try 'qcowkit --help'/"
}

# Statistics lines carry times and rates: keep the words only.
_untime() {
    sed -E -e 's/ops; [0-9:.]+( sec)? \(.*\)$/ops; TIME/' \
           -e 's/^([0-9]+),([0-9]+),[0-9:.]+,[0-9.]+,[0-9.]+$/\1,\2,TIME/'
}

# _run_pair QEMU_CMD... -- QCOWKIT_CMD...: run both, each with stdout and stderr
# captured apart; sets q_out q_err q_rc k_out k_err k_rc.
_run_pair() {
    local q=() k=()
    while [[ $1 != -- ]]; do q+=("$1"); shift; done
    shift
    k=("$@")
    q_rc=0; q_out=$("${q[@]}" 2>"$BATS_TEST_TMPDIR/q.err" </dev/null) || q_rc=$?
    q_out=$(printf '%s' "$q_out" | _untime)
    q_err=$(_normalise <"$BATS_TEST_TMPDIR/q.err")
    k_rc=0; k_out=$("${k[@]}" 2>"$BATS_TEST_TMPDIR/k.err" </dev/null) || k_rc=$?
    k_out=$(printf '%s' "$k_out" | _untime)
    k_err=$(_normalise <"$BATS_TEST_TMPDIR/k.err")
}

_assert_pair() {
    local ok=1
    [[ $q_out == "$k_out" ]] || ok=0
    [[ $q_err == "$k_err" ]] || ok=0
    [[ $q_rc == "$k_rc" ]] || ok=0
    if ((!ok)); then
        printf '%s\n' "--- qemu (rc=$q_rc)" "$q_out" "[stderr]" "$q_err" \
                      "--- qcowkit (rc=$k_rc)" "$k_out" "[stderr]" "$k_err" >&2
        return 1
    fi
}

# same_img SUBCOMMAND ARGS...: `qemu-img SUB ARGS` and `qcowkit SUB ARGS` print
# the same stdout and stderr (program name aside) and exit the same way.
same_img() {
    _run_pair qemu-img "$@" -- "$QCOWKIT" "$@"
    _assert_pair
}

# same_io ARGS...: the same for `qemu-io ARGS` and `qcowkit io ARGS`
# (statistics times and rates are masked).
same_io() {
    _run_pair qemu-io "$@" -- "$QCOWKIT" io "$@"
    _assert_pair
}

# same_convert SRC [OPTIONS...]: `convert -O raw` by both tools gives the same bytes.
same_convert() {
    local src=$1
    shift
    qemu-img convert -O raw "$@" "$src" ref.raw
    run "$QCOWKIT" convert -O raw "$@" "$src" out.raw
    [[ $status -eq 0 ]] || { echo "qcowkit convert failed: $output" >&2; return 1; }
    [[ -z $output ]] || { echo "unexpected output: $output" >&2; return 1; }
    cmp ref.raw out.raw
}

# allocated_kib FILE: disk space the file uses, in KiB.
allocated_kib() {
    du -k "$1" | cut -f1
}

# be64 FILE OFFSET: the big-endian u64 at OFFSET of FILE (as bash's signed
# 64-bit arithmetic holds it).
be64() {
    echo $(( 16#$(od -An -tx1 -j "$2" -N8 "$1" | tr -d ' \n') ))
}

# corrupt_first_compressed IMG: overwrite the start of the compressed data
# of guest cluster 0 (64 KiB clusters) with 0xff bytes, so it cannot inflate.
corrupt_first_compressed() {
    local img=$1 l1 l2 e off
    l1=$(be64 "$img" 40)
    l2=$(( $(be64 "$img" "$l1") & 0x00fffffffffffe00 ))
    e=$(be64 "$img" "$l2")
    (( (e >> 62) & 1 )) || { echo "guest cluster 0 of $img is not compressed" >&2; return 1; }
    off=$(( e & ((1 << 54) - 1) ))
    head -c 64 /dev/zero | tr '\0' '\377' | dd of="$img" bs=1 seek="$off" conv=notrunc status=none
}

# same_io_write IMG ARGS...: run `qemu-io ARGS` on a copy of IMG and
# `qcowkit io ARGS` on another copy; they must print the same (as same_io)
# and leave images with the same guest contents, the qcowkit one passing
# `qemu-img check`. The copies stay as q-IMG and k-IMG.
same_io_write() {
    local img=$1
    shift
    cp "$img" "q-$img"
    cp "$img" "k-$img"
    _run_pair qemu-io "$@" "q-$img" -- "$QCOWKIT" io "$@" "k-$img"
    k_out=${k_out//k-$img/q-$img}
    k_err=${k_err//k-$img/q-$img}
    _assert_pair
    qemu-img compare "q-$img" "k-$img" >/dev/null || { echo "contents differ" >&2; return 1; }
    qemu-img check -q "k-$img" || { echo "qemu-img check failed on k-$img" >&2; return 1; }
}

# hold_image IMG: keep IMG open for writing in a qemu-nbd process, as a
# running VM would (QEMU's write locks); release_image (call it from
# teardown) stops it.
hold_image() {
    require_peer qemu-nbd
    local sock="$BATS_TEST_TMPDIR/hold.sock" i
    qemu-nbd -t -k "$sock" "$1" </dev/null >/dev/null 2>&1 3>&- &
    echo $! >"$BATS_TEST_TMPDIR/hold.pid"
    for ((i = 0; i < 100; i++)); do
        [[ -S $sock ]] && return 0
        sleep 0.05
    done
    echo "qemu-nbd did not start" >&2
    return 1
}

release_image() {
    local f="$BATS_TEST_TMPDIR/hold.pid"
    [[ -f $f ]] || return 0
    kill "$(cat "$f")" 2>/dev/null || true
    wait "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
}
