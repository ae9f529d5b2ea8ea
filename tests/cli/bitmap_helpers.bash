# tests/cli/bitmap_helpers.bash - helpers for the bitmap suites (tests/cli/bitmap.bats,
# tests/interop/bitmaps.bats, tests/corrupt/bitmaps.bats). Owned by the bitmap CLI work.
# Loads tests/cli/helpers.bash (QCOWKIT, require_peer, put_u*/get_u*, assert_no_sanitizer).
#
#   qk_dump IMG NAME        `qcowkit bitmap --dump --output=json`, compacted by jq (fails when
#                           qcowkit fails or prints a sanitizer report)
#   nbd_dump IMG NAME       what QEMU exports: `qemu-nbd -r -B NAME` on a unix socket in
#                           $BATS_TEST_TMPDIR + `nbdinfo --map=qemu:dirty-bitmap:NAME --json`,
#                           turned into the same merged [{start,length,dirty}] JSON (jq -c).
#                           qemu-nbd is always killed before it returns.
#   nbd_cleanup             kill a qemu-nbd left by an interrupted nbd_dump (call in teardown)
#   info_bitmaps TOOL IMG   the `format-specific.data.bitmaps` list (or []) of
#                           `TOOL info --output=json IMG`, compacted; TOOL is qemu-img or $QCOWKIT
#   same_bitmaps IMG...     qemu-img info and qcowkit info list the same bitmaps for each IMG
#   bm_ext IMG              file offset of the bitmaps extension's data (nothing if absent)
#   bm_dir IMG              file offset of the bitmap directory (from the extension)
#   bm_entry IMG N          file offset of directory entry N (0-based), walking entry sizes
#   qemu_norm               stdin to stdout: qemu-img's program name and node names
#                           ("#block123") replaced by qcowkit's / the file name given as $1

# shellcheck source=helpers.bash
source "$(dirname "${BASH_SOURCE[0]}")/helpers.bash"

qk_dump() { # IMG NAME
    local out rc=0
    out="$("$QCOWKIT" bitmap --dump --output=json "$1" "$2" 2>"$BATS_TEST_TMPDIR/qk_dump.err")" || rc=$?
    assert_no_sanitizer "$out$(cat "$BATS_TEST_TMPDIR/qk_dump.err")" || return 1
    if ((rc)); then
        echo "qcowkit bitmap --dump $1 $2 failed (rc=$rc): $(cat "$BATS_TEST_TMPDIR/qk_dump.err")" >&2
        return 1
    fi
    jq -c . <<<"$out"
}

nbd_cleanup() {
    local pidf="$BATS_TEST_TMPDIR/qemu-nbd.pid" pid i
    [[ -s "$pidf" ]] || return 0
    pid="$(cat "$pidf")"
    # The export is read-only (-r: QEMU writes nothing to the image), and qemu-nbd 7.2 takes
    # 1.5-2 s to exit on SIGTERM: SIGKILL it.
    kill -9 "$pid" 2>/dev/null
    # The image stays locked until qemu-nbd is gone. A --fork'ed qemu-nbd is not our child: once
    # dead it may stay a zombie until init reaps it, but its files (and locks) are closed by then.
    for ((i = 0; i < 500; i++)); do
        [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" == [^Z] ]] || break
        sleep 0.01
    done
    rm -f "$pidf"
}

nbd_dump() { # IMG NAME
    local img="$1" name="$2" sock="$BATS_TEST_TMPDIR/nbd.sock" i out="" rc=1
    rm -f "$sock"
    if ! qemu-nbd -r -f qcow2 -B "$name" -k "$sock" --fork \
        --pid-file="$BATS_TEST_TMPDIR/qemu-nbd.pid" "$img" 2>"$BATS_TEST_TMPDIR/nbd.err"; then
        echo "qemu-nbd -B $name $img failed: $(cat "$BATS_TEST_TMPDIR/nbd.err")" >&2
        nbd_cleanup
        return 1
    fi
    # --fork returns once the socket listens; retry anyway until it accepts
    for ((i = 0; i < 100; i++)); do
        if out="$(nbdinfo --map="qemu:dirty-bitmap:$name" --json "nbd+unix:///?socket=$sock" \
            2>"$BATS_TEST_TMPDIR/nbdinfo.err")"; then
            rc=0
            break
        fi
        sleep 0.05
    done
    nbd_cleanup
    if ((rc)); then
        echo "nbdinfo on $img ($name) failed: $(cat "$BATS_TEST_TMPDIR/nbdinfo.err")" >&2
        return 1
    fi
    jq -c 'reduce .[] as $e ([];
             if length > 0 and .[-1].dirty == ($e.type == 1)
                and .[-1].start + .[-1].length == $e.offset
             then .[-1].length += $e.length
             else . + [{start: $e.offset, length: $e.length, dirty: ($e.type == 1)}] end)' <<<"$out"
}

info_bitmaps() { # TOOL IMG
    local out
    out="$("$1" info --output=json "$2")" || { echo "$1 info $2 failed" >&2; return 1; }
    jq -c '.["format-specific"].data.bitmaps // []' <<<"$out"
}

same_bitmaps() { # IMG...
    local f q k
    for f in "$@"; do
        q="$(info_bitmaps qemu-img "$f")" || return 1
        k="$(info_bitmaps "$QCOWKIT" "$f")" || return 1
        if [[ "$q" != "$k" ]]; then
            echo "bitmaps of $f: qemu-img $q" >&2
            echo "               qcowkit  $k" >&2
            return 1
        fi
    done
}

bm_ext() { # IMG
    local img="$1" off magic len
    if (($(get_u32 "$img" 4) >= 3)); then off="$(get_u32 "$img" 100)"; else off=72; fi
    while :; do
        magic="$(get_u32 "$img" "$off")" || return 1
        len="$(get_u32 "$img" $((off + 4)))" || return 1
        ((magic == 0)) && return 1
        if ((magic == 0x23852875)); then
            echo $((off + 8))
            return 0
        fi
        off=$((off + 8 + (len + 7) / 8 * 8))
    done
}

bm_dir() { # IMG
    local e
    e="$(bm_ext "$1")" || { echo "no bitmaps extension in $1" >&2; return 1; }
    get_u64 "$1" $((e + 16))
}

bm_entry() { # IMG N
    local off i extra name
    off="$(bm_dir "$1")" || return 1
    for ((i = 0; i < $2; i++)); do
        extra="$(get_u32 "$1" $((off + 20)))"
        name="$(get_u16 "$1" $((off + 18)))"
        off=$((off + (24 + extra + name + 7) / 8 * 8))
    done
    echo "$off"
}

qemu_norm() { # [FILE]: node names become FILE
    sed -E -e 's/^qemu-img: /qcowkit: /' -e "s/Try 'qemu-img --help'/Try 'qcowkit --help'/" \
        -e "s|#block[0-9]+|${1:-NODE}|g"
}
