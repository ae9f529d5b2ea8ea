# tests/interop/snapshot_helpers.bash - helpers for snapshots.bats.
#
#   snap_plan SEED STEPS SIZE CS RESIZE COMPRESS
#       prints a bash script (made by one awk process) that runs STEPS random
#       steps on twins a.qcow2 (qcowkit) and b.qcow2 (qemu-io / qemu-img):
#       first compressed clusters when COMPRESS=1, then batches of writes,
#       zero writes and discards, snapshot create / apply / delete, and resizes when
#       RESIZE=1. After each step `qemu-img compare` of the twins must say
#       identical and `qemu-img check` of ours must be clean; at the end
#       `qcowkit check` must agree and the snapshot ids and names must be the
#       same. The script prints what went
#       wrong and exits 1 at the first failure.
#   snap_ids IMG    "ID TAG" (or "ID" for an empty name) from `qemu-img snapshot -l IMG`
#   dirty_granules IMG BITMAP GRAN
#       the granule indexes (GRAN bytes) that `qcowkit bitmap --dump` says are
#       dirty, one per line
#   differing_granules A B GRAN
#       the granule indexes where raw files A and B differ (cmp -l), one a line

snap_plan() {
    awk -v seed="$1" -v steps="$2" -v size="$3" -v cs="$4" -v resize="$5" -v compress="$6" '
    function ops(  n, i, k, off, len, out) {
        n = int(rand() * 8) + 3; out = ""
        for (i = 0; i < n; i++) {
            k = int(rand() * 10)
            off = int(rand() * (size - 1)); len = int(rand() * 3 * cs) + 1
            if (off + len > size) len = size - off
            if (k < 5) { out = out sprintf(" -c \"write -P %d %d %d\"", int(rand() * 255) + 1, off, len); continue }
            off = int(off / cs) * cs; len = (int(rand() * 2) + 1) * cs
            if (off + len > size) len = size - off
            if (k < 7) out = out sprintf(" -c \"write -z %d %d\"", off, len)
            else out = out sprintf(" -c \"discard %d %d\"", off, len)
        }
        return out
    }
    function pick(  i, j, n) {
        n = int(rand() * nsnaps); j = 0
        for (i = 1; i <= next_id; i++) if (i in snapsize) { if (j == n) return i; j++ }
    }
    BEGIN {
        srand(seed); next_id = 0; nsnaps = 0
        print "set -u"
        print "fail() { echo \"seed " seed " step $step: $*\"; exit 1; }"
        print "ok() { qemu-img compare -q a.qcow2 b.qcow2 || fail \"data differs after: $what\"; qemu-img check -q a.qcow2 || fail \"qemu-img check after $what: $(qemu-img check a.qcow2 2>&1 | head -5)\"; }"
        print "qk() { \"$QCOWKIT\" \"$@\" >/dev/null 2>k.err || fail \"qcowkit $*: $(head -3 k.err)\"; if grep -qE \"Sanitizer|runtime error\" k.err; then fail \"sanitizer: $(head -20 k.err)\"; fi; }"
        if (compress) {   # QEMU compresses only into unallocated clusters: a fresh image
            o = ""
            for (c = 0; c < 16 && (c + 1) * cs <= size; c += 3)
                o = o sprintf(" -c \"write -c -P %d %d %d\"", c + 1, c * cs, cs)
            printf "step=0; what=compressed; qk io%s a.qcow2; qemu-io%s b.qcow2 >/dev/null || fail qemu-io\nok\n", o, o
        }
        for (s = 1; s <= steps; s++) {
            k = int(rand() * 20)
            printf "step=%d\n", s
            if (k < 4 && resize) {
                nsize = int(rand() * 4 + 2) * 1048576 + int(rand() * 16) * 4096
                printf "what=\"resize %d\"; qk resize --shrink a.qcow2 %d; qemu-img resize -q --shrink b.qcow2 %d || fail qemu-img resize\n", nsize, nsize, nsize
                size = nsize
            } else if (k < 8 && nsnaps < 6) {
                next_id++; nsnaps++; snapsize[next_id] = size
                printf "what=\"create s%d\"; qk snapshot -c s%d a.qcow2; qemu-img snapshot -c s%d b.qcow2 || fail qemu-img snapshot -c\n", next_id, next_id, next_id
            } else if (k < 11 && nsnaps) {
                i = pick(); size = snapsize[i]
                printf "what=\"apply s%d\"; qk snapshot -a s%d a.qcow2; qemu-img snapshot -a s%d b.qcow2 || fail qemu-img snapshot -a\n", i, i, i
            } else if (k < 13 && nsnaps) {
                i = pick(); delete snapsize[i]; nsnaps--
                printf "what=\"delete s%d\"; qk snapshot -d s%d a.qcow2; qemu-img snapshot -d s%d b.qcow2 || fail qemu-img snapshot -d\n", i, i, i
            } else {
                o = ops()
                printf "what=writes; qk io%s a.qcow2; qemu-io%s b.qcow2 >/dev/null || fail qemu-io\n", o, o
            }
            print "ok"
        }
        print "what=end; \"$QCOWKIT\" check -q a.qcow2 >k.err 2>&1 || fail \"qcowkit check: $(head -5 k.err)\""
        print "diff <(qemu-img snapshot -l a.qcow2 | awk \"NR > 2 {print \\$1, \\$2}\") <(qemu-img snapshot -l b.qcow2 | awk \"NR > 2 {print \\$1, \\$2}\") >/dev/null || fail \"snapshot lists differ\""
    }'
}

snap_ids() {
    qemu-img snapshot -l "$1" | awk 'NR > 2' | cut -c1-27 | sed 's/  */ /g; s/ $//'
}

dirty_granules() {
    "$QCOWKIT" bitmap --dump "$1" "$2" |
        awk -v g="$3" '$3 == "dirty" { for (i = $1 / g; i < ($1 + $2) / g; i++) print i }'
}

differing_granules() {
    cmp -l "$1" "$2" | awk -v g="$3" '{ print int(($1 - 1) / g) }' | uniq
}
