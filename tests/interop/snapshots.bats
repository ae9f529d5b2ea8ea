#!/usr/bin/env bats
# tests/interop/snapshots.bats - internal snapshots against QEMU:
#  - snapshots made by qemu-img are listed as qemu-img lists them (snapshot
#    -l, info human and JSON), and applied and deleted by qcowkit with the
#    data qemu-img saw;
#  - snapshots made by qcowkit (v2, v3, extended L2, compressed clusters,
#    lazy refcounts, small clusters) are listed, applied and deleted by
#    qemu-img: every applied state equals the raw image saved when the
#    snapshot was taken, and qemu-img check stays clean;
#  - a randomized differential test: writes interleaved with snapshot
#    create / apply / delete and resizes on twins (qcowkit vs qemu-io and
#    qemu-img), compared and checked after every step;
#  - apply with bitmaps: an enabled bitmap afterwards covers every granule
#    whose data differs between before and after; a disabled one is left as
#    it was; QEMU loads the result;
#  - qemu-img's messages and exit codes for the error cases.

load ../cli/helpers
load snapshot_helpers

setup() {
    qk_bin_ok
    require_peer qemu-img qemu-io jq
    cd "$BATS_TEST_TMPDIR"
}

# Both tools, stderr and exit code, with their names replaced.
same_as_qemu() {
    local q k
    q="$(qemu-img snapshot "$@" 2>&1; echo "rc=$?")"
    k="$("$QCOWKIT" snapshot "$@" 2>&1; echo "rc=$?")"
    assert_no_sanitizer "$k"
    [[ "${q//qemu-img/X}" == "${k//qcowkit/X}" ]] && return 0
    diff <(echo "${q//qemu-img/X}") <(echo "${k//qcowkit/X}") >&2
    return 1
}

@test "snapshots made by qemu-img: listed identically, applied and deleted by qcowkit" {
    qemu-img create -q -f qcow2 a.qcow2 1M
    qemu-io -c 'write -P 1 0 192k' a.qcow2 >/dev/null
    qemu-img convert -O raw a.qcow2 s1.raw
    qemu-img snapshot -c s1 a.qcow2
    qemu-io -c 'write -P 2 64k 64k' -c 'write -c -P 3 512k 64k' a.qcow2 >/dev/null
    qemu-img resize -q a.qcow2 2M
    qemu-img convert -O raw a.qcow2 s2.raw
    qemu-img snapshot -c "" a.qcow2
    qemu-img snapshot -c s1 a.qcow2
    qemu-img snapshot -c "a name with spaces and more than sixteen bytes" a.qcow2
    qemu-img snapshot -d "a name with spaces and more than sixteen bytes" a.qcow2
    qemu-img snapshot -c last a.qcow2
    qemu-io -c 'write -P 4 0 1M' a.qcow2 >/dev/null
    qemu-img convert -O raw a.qcow2 cur.raw

    diff <(qemu-img snapshot -l a.qcow2) <("$QCOWKIT" snapshot -l a.qcow2)
    diff <(qemu-img snapshot -l -U a.qcow2) <("$QCOWKIT" snapshot -l -U a.qcow2)
    diff <(qemu-img info a.qcow2) <("$QCOWKIT" info a.qcow2)
    json_eq <(qemu-img info --output=json a.qcow2 | jq .snapshots) <("$QCOWKIT" info --output=json a.qcow2 | jq .snapshots)

    # -a: the id first (id 2 is the snapshot named ""), then the name.
    "$QCOWKIT" snapshot -a 2 a.qcow2
    qemu-img compare -q a.qcow2 s2.raw
    "$QCOWKIT" snapshot -a s1 a.qcow2
    qemu-img compare -q a.qcow2 s1.raw
    [[ "$(qemu-img info --output=json a.qcow2 | jq '."virtual-size"')" == 1048576 ]]
    qemu-img check -q a.qcow2
    "$QCOWKIT" snapshot -a last a.qcow2
    qemu-img compare -q a.qcow2 s2.raw
    # -d by name: the first s1 goes, then the second.
    "$QCOWKIT" snapshot -d s1 a.qcow2
    [[ "$(snap_ids a.qcow2)" == "$(printf '2\n3 s1\n4 last')" ]]
    "$QCOWKIT" snapshot -d s1 a.qcow2
    "$QCOWKIT" snapshot -d "" a.qcow2
    qemu-img check -q a.qcow2
    "$QCOWKIT" snapshot -d last a.qcow2
    [[ -z "$(qemu-img snapshot -l a.qcow2)" ]]
    qemu-img compare -q a.qcow2 s2.raw
    run qemu-img check a.qcow2
    [[ "$status" == 0 && "$output" == *"No errors were found"* && "$output" != *leaked* ]]
}

# made_by_qcowkit OPTS [CS]: three states, each saved raw and snapshotted by
# qcowkit; qemu-img lists, applies (each state compared) and deletes them.
made_by_qcowkit() {
    local opts=$1 cs=${2:-65536}
    qemu-img create -q -f qcow2 -o "$opts" a.qcow2 2M
    cat >plan.sh <<EOF
set -eu
qk() { "\$QCOWKIT" "\$@" 2>k.err >/dev/null || { cat k.err; exit 1; }; ! grep -qE 'Sanitizer|runtime error' k.err; }
qk io -c 'write -P 1 0 $((3 * cs))' -c 'write -z $((4 * cs)) $cs' a.qcow2
qemu-img convert -O raw a.qcow2 s1.raw
qk snapshot -c s1 a.qcow2
qk io -c 'write -P 2 $((cs / 2)) $cs' -c 'discard $((2 * cs)) $cs' -c 'write -P 5 1M 4096' a.qcow2
qemu-img convert -O raw a.qcow2 s2.raw
qk snapshot -c s2 a.qcow2
qk io -c 'write -P 3 0 $((6 * cs))' a.qcow2
qemu-img convert -O raw a.qcow2 s3.raw
qk snapshot -c s3 a.qcow2
qk io -c 'write -P 4 $cs $cs' a.qcow2
qemu-img check -q a.qcow2
[[ "\$(qemu-img snapshot -l a.qcow2 | awk 'NR > 2 { print \$1, \$2 }' | tr '\n' ' ')" == "1 s1 2 s2 3 s3 " ]]
diff <(qemu-img snapshot -l a.qcow2) <("\$QCOWKIT" snapshot -l a.qcow2)
for s in s2 s1 s3 s1; do
    qemu-img snapshot -a \$s a.qcow2
    qemu-img compare -q a.qcow2 \$s.raw
    qemu-img check -q a.qcow2
done
qemu-io -c 'write -P 6 0 $((2 * cs))' a.qcow2 >/dev/null
for s in s1 s3 s2; do qemu-img snapshot -d \$s a.qcow2; qemu-img check -q a.qcow2; done
EOF
    run bash plan.sh
    echo "$output"
    [[ "$status" == 0 ]]
    run qemu-img check a.qcow2
    [[ "$status" == 0 && "$output" != *leaked* ]]
}

@test "snapshots made by qcowkit, used by qemu-img: v3" { made_by_qcowkit compat=1.1; }
@test "snapshots made by qcowkit, used by qemu-img: v2" { made_by_qcowkit compat=0.10; }
@test "snapshots made by qcowkit, used by qemu-img: extended L2" { made_by_qcowkit extended_l2=on; }
@test "snapshots made by qcowkit, used by qemu-img: lazy refcounts" { made_by_qcowkit lazy_refcounts=on; }
@test "snapshots made by qcowkit, used by qemu-img: 512-byte clusters, refcount_bits=4" {
    made_by_qcowkit cluster_size=512,refcount_bits=4 512
}

@test "snapshots made by qcowkit, used by qemu-img: compressed clusters" {
    qemu-img create -q -f qcow2 a.qcow2 1M
    "$QCOWKIT" io -c 'write -c -P 7 0 128k' -c 'write -c -P 8 256k 64k' a.qcow2 >/dev/null
    qemu-img convert -O raw a.qcow2 s1.raw
    "$QCOWKIT" snapshot -c s1 a.qcow2
    "$QCOWKIT" io -c 'write -P 9 32k 64k' -c 'discard 256k 64k' a.qcow2 >/dev/null
    qemu-img convert -O raw a.qcow2 cur.raw
    qemu-img check -q a.qcow2
    qemu-img snapshot -a s1 a.qcow2
    qemu-img compare -q a.qcow2 s1.raw
    "$QCOWKIT" snapshot -a s1 a.qcow2
    qemu-img compare -q a.qcow2 s1.raw
    qemu-img snapshot -d s1 a.qcow2
    qemu-img check -q a.qcow2
    "$QCOWKIT" snapshot -c s2 a.qcow2
    "$QCOWKIT" snapshot -d s2 a.qcow2
    run qemu-img check a.qcow2
    [[ "$status" == 0 && "$output" != *leaked* ]]
}

# randomized OPTS CS RESIZE COMPRESS SEEDS...: twins per seed, 14 steps.
randomized() {
    local opts=$1 cs=$2 rs=$3 cp=$4 seed bad=0
    shift 4
    for seed in "$@"; do
        rm -f a.qcow2 b.qcow2
        qemu-img create -q -f qcow2 -o "$opts" a.qcow2 4M
        cp a.qcow2 b.qcow2
        snap_plan "$seed" 14 4194304 "$cs" "$rs" "$cp" >plan.sh
        bash plan.sh || { echo "  ($opts)"; bad=1; }
    done
    return $bad
}

# 20 seeds in all; the sanitizer run (slower) takes one per configuration.
if [[ -z "${QK_SANITIZED:-}" ]]; then
    S1="1 2 3 4 5 6 7 8"; S2="9 10 11"; S3="12 13 14"; S4="15 16 17"; S5="18 19 20"
else
    S1=1; S2=9; S3=12; S4=15; S5=18
fi

@test "random snapshot steps: v3 with resizes and compressed clusters" { randomized compat=1.1 65536 1 1 $S1; }
@test "random snapshot steps: extended L2" { randomized extended_l2=on 65536 1 1 $S2; }
@test "random snapshot steps: v2 (no resize)" { randomized compat=0.10 65536 0 1 $S3; }
@test "random snapshot steps: 512-byte clusters, refcount_bits=4" { randomized cluster_size=512,refcount_bits=4 512 1 0 $S4; }
@test "random snapshot steps: lazy refcounts" { randomized lazy_refcounts=on 65536 1 1 $S5; }

# bitmap_apply SNAP_SIZE CUR_SIZE (bytes): a snapshot at SNAP_SIZE, then changes and
# a resize to CUR_SIZE; the enabled bitmap is cleared, the snapshot applied.
bitmap_apply() {
    local snap_size=$1 cur_size=$2 g=65536
    qemu-img create -q -f qcow2 a.qcow2 "$snap_size"
    qemu-io -c 'write -P 1 0 512k' -c 'write -P 2 1M 128k' a.qcow2 >/dev/null
    "$QCOWKIT" snapshot -c s1 a.qcow2
    qemu-img convert -O raw a.qcow2 snap.raw
    qemu-img bitmap --add a.qcow2 on
    qemu-img bitmap --add a.qcow2 off
    qemu-img resize -q --shrink a.qcow2 "$cur_size"
    qemu-io -c 'write -P 3 64k 4k' -c 'write -P 1 128k 64k' -c 'write -z 256k 128k' -c 'discard 1M 64k' \
        -c 'write -P 4 1400k 8k' a.qcow2 >/dev/null
    qemu-img convert -O raw a.qcow2 before.raw
    qemu-img bitmap --disable a.qcow2 off
    "$QCOWKIT" bitmap --dump a.qcow2 off | awk '$3 == "dirty"' >off.before
    [[ -s off.before ]]
    qemu-img bitmap --clear a.qcow2 on

    run "$QCOWKIT" snapshot -a s1 a.qcow2
    [[ "$status" == 0 ]] || { echo "$output"; return 1; }
    qemu-img convert -O raw a.qcow2 after.raw
    cmp snap.raw after.raw
    # Sizes differ: compare over the larger one, zero padded.
    local big=$((snap_size > cur_size ? snap_size : cur_size))
    truncate -s $big before.raw after.raw
    differing_granules before.raw after.raw $g >diff.txt
    dirty_granules a.qcow2 on $g >dirty.txt
    [[ -s diff.txt ]]
    # Every differing granule is dirty (comm: lines only in diff.txt).
    [[ -z "$(comm -23 <(sort diff.txt) <(sort -u dirty.txt))" ]] || { echo "not marked: $(comm -23 <(sort diff.txt) <(sort -u dirty.txt) | tr '\n' ' ')"; return 1; }
    # Granules the mapping did not change stay clean.
    ! grep -qx 15 dirty.txt
    diff off.before <("$QCOWKIT" bitmap --dump a.qcow2 off | awk '$3 == "dirty"')
    # QEMU loads the result: check is clean, the bitmap is not in use, and
    # merging it into a fresh image with qemu-img gives the same bits.
    qemu-img check -q a.qcow2
    [[ "$(qemu-img info --output=json a.qcow2 | jq -c '."format-specific".data.bitmaps[] | select(.name == "on") | .flags')" == '["auto"]' ]]
    qemu-img create -q -f qcow2 m.qcow2 "$snap_size"
    qemu-img bitmap --add m.qcow2 on
    qemu-img bitmap --merge on -b a.qcow2 -F qcow2 m.qcow2 on
    diff <("$QCOWKIT" bitmap --dump a.qcow2 on) <("$QCOWKIT" bitmap --dump m.qcow2 on)
}

@test "apply with bitmaps: the enabled bitmap covers every changed range, same size" { bitmap_apply 2097152 2097152; }
@test "apply with bitmaps: the snapshot is larger (the new tail is marked)" { bitmap_apply 2097152 1572864; }
@test "apply with bitmaps: the snapshot is smaller" { bitmap_apply 2097152 3145728; }

@test "apply with bitmaps: extended L2 marks subclusters" {
    qemu-img create -q -f qcow2 -o extended_l2=on a.qcow2 1M
    qemu-io -c 'write -P 1 0 128k' a.qcow2 >/dev/null
    "$QCOWKIT" snapshot -c s1 a.qcow2
    "$QCOWKIT" bitmap --add -g 2k a.qcow2 on
    qemu-io -c 'write -P 2 200k 2k' a.qcow2 >/dev/null   # one 2 KiB subcluster of a fresh cluster
    qemu-img bitmap --clear a.qcow2 on
    "$QCOWKIT" snapshot -a s1 a.qcow2
    [[ "$("$QCOWKIT" bitmap --dump a.qcow2 on | awk '$3 == "dirty"')" == "204800 2048 dirty" ]]
    qemu-img check -q a.qcow2
}

@test "errors: qemu-img's messages and exit codes" {
    qemu-img create -q -f qcow2 a.qcow2 1M
    qemu-img create -q -f raw r.raw 1M
    qemu-img create -q -f qcow2 -o data_file=d.raw c.qcow2 1M
    qemu-img snapshot -c s1 a.qcow2
    same_as_qemu -a nope a.qcow2
    same_as_qemu -d nope a.qcow2
    same_as_qemu -d 1 a.qcow2
    same_as_qemu -c x c.qcow2
    same_as_qemu -a x c.qcow2
    same_as_qemu -d x c.qcow2
    same_as_qemu -c x r.raw
    same_as_qemu -a x r.raw
    same_as_qemu -d x r.raw
    same_as_qemu -l r.raw
    same_as_qemu -c s2 -U a.qcow2
    same_as_qemu -l -d x a.qcow2
    same_as_qemu -c
    same_as_qemu a.qcow2 b
    same_as_qemu
    same_as_qemu -l missing.qcow2
    same_as_qemu -q -l a.qcow2
    same_as_qemu a.qcow2
    # QEMU refuses to resize a v2 image with snapshots (they need not record a size).
    qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 1M
    "$QCOWKIT" snapshot -c s v2.qcow2
    run "$QCOWKIT" resize v2.qcow2 2M
    [[ "$status" == 1 && "$output" == "qcowkit: Can't resize a v2 image which has snapshots" ]]
    run qemu-img resize v2.qcow2 2M
    [[ "$status" == 1 && "$output" == "qemu-img: Can't resize a v2 image which has snapshots" ]]
    # A refcount that would overflow: refused as qemu-img does, leaking at most.
    qemu-img create -q -f qcow2 -o refcount_bits=1 one.qcow2 1M
    qemu-io -c 'write 0 64k' one.qcow2 >/dev/null
    cp one.qcow2 two.qcow2
    run "$QCOWKIT" snapshot -c s one.qcow2
    [[ "$status" == 1 && "$output" == "qcowkit: Could not create snapshot 's': -22 (Invalid argument)" ]]
    run qemu-img check one.qcow2
    [[ "$status" == 0 || "$status" == 3 ]]
    qemu-img compare -q one.qcow2 two.qcow2
}

@test "extra data beyond QEMU's 24 bytes is kept byte for byte through create and delete" {
    qemu-img create -q -f qcow2 a.qcow2 1M
    qemu-io -c 'write -P 1 0 64k' a.qcow2 >/dev/null
    qemu-img snapshot -c s1 a.qcow2
    # Rewrite s1's entry in place with 32 bytes of extra data (8 unknown).
    local off
    off=$(get_u64 a.qcow2 64)
    dd if=a.qcow2 of=e.bin bs=1 skip="$off" count=64 status=none
    put_u32 e.bin 36 32
    printf '\xde\xad\xbe\xef\x01\x02\x03\x041s1' >>e.bin
    dd if=e.bin of=a.qcow2 bs=1 seek="$off" conv=notrunc status=none
    qemu-img check -q a.qcow2
    "$QCOWKIT" snapshot -c s2 a.qcow2
    "$QCOWKIT" snapshot -c s3 a.qcow2
    "$QCOWKIT" snapshot -d s2 a.qcow2
    off=$(get_u64 a.qcow2 64)
    [[ "$(od -An -tx1 -j "$off" -N 80 a.qcow2 | tr -d ' \n')" == "$(od -An -tx1 -N 80 e.bin | tr -d ' \n')"* ]]
    [[ "$(get_u32 a.qcow2 $((off + 36)))" == 32 ]]
    diff <(qemu-img snapshot -l a.qcow2) <("$QCOWKIT" snapshot -l a.qcow2)
    qemu-img check -q a.qcow2
    # QEMU keeps it too when it rewrites the table after ours.
    qemu-img snapshot -d s3 a.qcow2
    off=$(get_u64 a.qcow2 64)
    [[ "$(od -An -tx1 -j "$off" -N 80 a.qcow2 | tr -d ' \n')" == "$(od -An -tx1 -N 80 e.bin | tr -d ' \n')"* ]]
}

@test "a snapshot whose L2 entry points past the end of the file is refused, not followed" {
    qemu-img create -q -f qcow2 a.qcow2 1M
    qemu-io -c 'write -P 1 0 64k' a.qcow2 >/dev/null
    qemu-img snapshot -c s1 a.qcow2
    qemu-io -c 'write -P 2 0 64k' a.qcow2 >/dev/null
    # s1's L1 -> its L2 table (shared no more after the write): entry 0 far away.
    local l1 l2
    l1=$(get_u64 a.qcow2 $(($(get_u64 a.qcow2 64))))
    l2=$(($(get_u64 a.qcow2 "$l1") & 0x00fffffffffffe00))
    put_u64 a.qcow2 "$l2" $((0x00f0000000000000))
    run "$QCOWKIT" snapshot -a s1 a.qcow2
    assert_no_sanitizer
    [[ "$status" == 1 && "$output" == *"past the end of the file"* ]]
    run "$QCOWKIT" snapshot -d s1 a.qcow2
    assert_no_sanitizer
    [[ "$status" == 1 && "$output" == *"past the end of the file"* ]]
    [[ "$(stat -c %s a.qcow2)" -lt 10000000 ]]
}

@test "delete and apply give the freed space back to the file system, as qemu-img does" {
    qemu-img create -q -f qcow2 a.qcow2 64M
    qemu-io -c 'write -P 1 0 16M' a.qcow2 >/dev/null
    cp a.qcow2 b.qcow2
    qemu-img snapshot -c s a.qcow2
    "$QCOWKIT" snapshot -c s b.qcow2
    qemu-io -c 'write -P 2 0 16M' a.qcow2 >/dev/null
    qemu-io -c 'write -P 2 0 16M' b.qcow2 >/dev/null
    qemu-img snapshot -c t a.qcow2
    "$QCOWKIT" snapshot -c t b.qcow2
    qemu-img snapshot -a s a.qcow2
    "$QCOWKIT" snapshot -a s b.qcow2
    qemu-img snapshot -d s a.qcow2
    "$QCOWKIT" snapshot -d s b.qcow2
    qemu-img snapshot -d t a.qcow2
    "$QCOWKIT" snapshot -d t b.qcow2
    qemu-img compare -q a.qcow2 b.qcow2
    qemu-img check -q b.qcow2
    # Within 1 MiB of what qemu-img leaves allocated (32 MiB were freed).
    local qa qb
    qa=$(du -k a.qcow2 | cut -f1)
    qb=$(du -k b.qcow2 | cut -f1)
    echo "qemu-img: $qa KiB, qcowkit: $qb KiB"
    ((qb <= qa + 1024))
}

@test "snapshot --help" {
    run "$QCOWKIT" snapshot --help
    [[ "$status" == 0 && "$output" == *"usage: qcowkit snapshot"* ]]
}
