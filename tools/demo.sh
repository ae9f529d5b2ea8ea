#!/bin/sh
# tools/demo.sh - what `make demo` runs: qcowkit's main job end to end on an
# image it makes itself. Needs only the built CLI and coreutils (no QEMU):
# makes a raw disk with some data, puts a qcow2 overlay on it with
# `qcowkit create`, shows `info` (human and JSON) and `map`, reads through the
# backing chain with `io`, flattens the chain with `convert -O raw`, and checks
# with `compare` that the guest sees the same bytes in both. Then the
# incremental backup a persistent dirty bitmap exists for: a full backup, a
# bitmap that tracks the guest's writes from then on, and an incremental
# backup that copies only the ranges the bitmap marks dirty; the result must
# equal the disk. Any failing step stops the demo with a non-zero exit status.
# The temp folder is removed.
set -eu

QCOWKIT=${QCOWKIT:-$(cd "$(dirname "$0")/.." && pwd)/build/qcowkit}
if [ ! -x "$QCOWKIT" ]; then
    echo "demo: $QCOWKIT is not an executable; run 'make' first" >&2
    exit 1
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/qcowkit-demo.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM
cd "$tmp"

die() {
    echo "demo: FAILED: $*" >&2
    exit 1
}

step() {
    printf '\n==> %s\n' "$*"
}

# Show a command, run it, stop the demo if it fails.
run() {
    printf '$ qcowkit'
    for arg in "$@"; do
        case $arg in
        *" "*) printf " '%s'" "$arg" ;;
        *) printf ' %s' "$arg" ;;
        esac
    done
    printf '\n'
    "$QCOWKIT" "$@" || die "qcowkit $*"
}

# Write COUNT bytes of CHAR at byte OFFSET of FILE (coreutils only).
fill() {
    head -c "$3" /dev/zero | tr '\0' "$4" | dd of="$1" bs=65536 seek="$2" \
        oflag=seek_bytes conv=notrunc status=none || die "writing $1"
}

step "Make a 4 MiB raw disk with data in two places: 64 KiB of 'Q' at 0, 192 KiB of 'k' at 1 MiB."
truncate -s 4M base.raw
fill base.raw 0 65536 Q
fill base.raw 1048576 196608 k
echo "base.raw: $(wc -c < base.raw) bytes"

step "Create a qcow2 overlay on it. The overlay starts empty: every read falls through to base.raw."
run create -f qcow2 -b base.raw -F raw overlay.qcow2 4M

step "What qemu-img info would say about the overlay (virtual size, cluster size, backing file and its format)."
run info overlay.qcow2

step "The same as JSON, with qemu-img's keys, for scripts."
run info --output=json overlay.qcow2

step "The allocation map: where each range of the guest disk is read from (depth 1 = the backing file)."
run map overlay.qcow2

step "Read guest data through the chain and check it against the expected pattern (qemu-io syntax)."
run io -c "read -P 0x51 0 64k" -c "read -P 0x6b 1M 192k" -c "read -P 0 2M 1M" overlay.qcow2

step "Flatten the chain into one raw file: only the data is copied, holes stay holes."
run convert -O raw overlay.qcow2 flat.raw
echo "flat.raw: $(wc -c < flat.raw) bytes"

step "Compare what a guest sees in the overlay and in the flat copy: they must be identical."
run compare overlay.qcow2 flat.raw

step "Change one byte of a copy: compare must now report the mismatch and exit with status 1."
cp flat.raw changed.raw
printf 'X' | dd of=changed.raw bs=1 seek=1048577 conv=notrunc status=none
printf '$ qcowkit compare overlay.qcow2 changed.raw\n'
rc=0
"$QCOWKIT" compare overlay.qcow2 changed.raw || rc=$?
[ "$rc" -eq 1 ] || die "compare of different images exited with $rc, expected 1"

step "Incremental backup. Take a full backup (a raw copy), and add a persistent dirty bitmap to the disk."
run convert -O raw overlay.qcow2 backup-full.raw
run bitmap --add -g 64k overlay.qcow2 since-full

step "The guest writes: 'N' at 2 MiB + 4 KiB, zeros over the start, a discard at 1 MiB. The bitmap tracks each one."
run io -c "write -P 0x4e 2101248 20000" -c "write -z 0 4096" -c "discard 1M 64k" overlay.qcow2
run bitmap --dump overlay.qcow2 since-full
run info overlay.qcow2

step "The incremental backup: copy only the dirty ranges into a copy of the full backup."
run convert -O raw overlay.qcow2 now.raw      # a byte source for dd, as a backup tool would read the disk
cp backup-full.raw backup-incr.raw
"$QCOWKIT" bitmap --dump overlay.qcow2 since-full > extents.txt || die "bitmap --dump"
copied=0
while read -r start length state; do
    [ "$state" = dirty ] || continue
    dd if=now.raw of=backup-incr.raw bs=65536 skip="$start" seek="$start" count="$length" \
        iflag=skip_bytes,count_bytes oflag=seek_bytes conv=notrunc status=none || die "dd"
    copied=$((copied + length))
done < extents.txt
echo "copied $copied of $(wc -c < now.raw) bytes"

step "The incremental backup must equal the disk now."
run compare overlay.qcow2 backup-incr.raw

step "Rotate: clear the bitmap to start the next incremental period."
run bitmap --clear overlay.qcow2 since-full
run bitmap --dump overlay.qcow2 since-full

printf '\nDemo finished: every step succeeded. (Temporary files in %s are removed.)\n' "$tmp"
