#!/usr/bin/env bats
# amend.bats - `qcowkit amend` against `qemu-img amend` on twin images (made
# by qemu, copied, amended by each tool): the same output and exit code, and
# after a successful amend the same guest contents (qemu-img compare), a
# clean `qemu-img check` of ours, and the same `qemu-img info --output=json`
# except "filename" and "actual-size" (a new refcount table and blocks may
# sit elsewhere in the file than QEMU puts them). Bitmaps survive every amend
# but a downgrade, which we refuse (QEMU 7.2 writes a v2 image that still
# holds the bitmaps extension and leaks it: qemu-reference.md 4.5).

load bitmap_helpers
load img_helpers

setup() {
    img_setup
}

# The twin runner, then one `twin CREATE_OPTS IO_CMDS AMEND_ARGS...` per case.
twin_prelude() {
    cat <<'EOF2'
n=0; fail=0
bad() { fail=$((fail + 1)); echo "FAIL [$copts] $*: $1"; }
twin() {
    n=$((n + 1)); copts=$1 io=$2; shift 2
    rm -f q.qcow2 k.qcow2
    qemu-img create -q -f qcow2 $copts q.qcow2 64M
    [ -z "$io" ] || eval "qemu-io $io q.qcow2" >/dev/null
    cp q.qcow2 k.qcow2
    a=$(qemu-img amend "$@" q.qcow2 2>&1; echo "rc=$?")
    b=$("$QCOWKIT" amend "$@" k.qcow2 2>&1 | sed -e 's/^qcowkit: /qemu-img: /' -e "s/'qcowkit --help'/'qemu-img --help'/"
        echo "rc=${PIPESTATUS[0]}")
    b=${b//k.qcow2/q.qcow2}
    [ "$a" = "$b" ] || { bad "output" "$@"; diff <(echo "$a") <(echo "$b") | head -6; return; }
    [ "${a##*rc=}" = 0 ] || return 0
    qemu-img compare -q q.qcow2 k.qcow2 || bad "contents" "$@"
    qemu-img check -q k.qcow2 || bad "qemu-img check" "$@"
    diff <(qemu-img info --output=json q.qcow2 | grep -v '"filename"\|"actual-size"') \
         <(qemu-img info --output=json k.qcow2 | grep -v '"filename"\|"actual-size"') || bad "info" "$@"
}
EOF2
}

@test "amend: compat, lazy_refcounts, refcount_bits and size as qemu-img amend does them" {
    qemu-img create -q -f qcow2 base.qcow2 64M
    qemu-io -c 'write -P 9 0 64M' base.qcow2 >/dev/null
    { twin_prelude; awk 'BEGIN {
        io = "\"-c '\''write -P 1 0 1M'\'' -c '\''write -z 2M 128k'\'' -c '\''write -z 3M 64k'\'' -c '\''write -P 3 5M 64k'\'' -c '\''discard 5M 64k'\'' -c '\''write -P 4 63M 4k'\''\""
        nc = split("|-b base.qcow2 -F qcow2|-o compat=0.10|-o lazy_refcounts=on|-o refcount_bits=64|-o refcount_bits=1|-o cluster_size=512|-o cluster_size=2M|-o compression_type=zstd|-o cluster_size=4k|-o cluster_size=4k,refcount_bits=64|-o cluster_size=4k,refcount_bits=1|-o compat=0.10,cluster_size=4k", c, "|")
        na = split("compat=0.10|compat=v2|compat=1.1|lazy_refcounts=on|lazy_refcounts=off|refcount_bits=1|refcount_bits=2|refcount_bits=4|refcount_bits=8|refcount_bits=16|refcount_bits=32|refcount_bits=64|size=128M|size=32M|compat=0.10,size=100M|compat=1.1,lazy_refcounts=on,refcount_bits=4|refcount_bits=8,lazy_refcounts=on,size=65M", a, "|")
        # qemu-img 7.2 changes refcount widths in a time that grows with the
        # square of the cluster size (1.3 s for an empty 64 MiB image with
        # 64 KiB clusters, minutes with 256 KiB): only on 512 B and 4 KiB
        # clusters here. A zstd image is not downgraded by us (see below).
        for (i = 1; i <= nc; i++) for (j = 1; j <= na; j++)
            if (!(a[j] ~ /refcount_bits/ && c[i] !~ /cluster_size=(512|4k)/) &&
                !(c[i] ~ /zstd/ && a[j] ~ /compat=(0.10|v2)/))
                printf "twin \"%s\" %s -o %s\n", c[i], io, a[j]
        print "echo \"amended=$n failed=$fail\""
    }'; } >twins.sh
    QCOWKIT=$QCOWKIT run bash twins.sh
    echo "$output" | tail -30
    [ "${lines[-1]}" = "amended=146 failed=0" ]
}

@test "amend: refused options and bad arguments give qemu-img's messages and exit codes" {
    { twin_prelude; cat <<'EOF2'
twin "" "" -o compat=0.9
twin "" "" -o cluster_size=4k
twin "" "" -o cluster_size=4k,foo=1
twin "" "" -o lazy_refcounts=on,cluster_size=4k
twin "" "" -o lazy_refcounts=x,cluster_size=4k
twin "" "" -o refcount_bits=3
twin "" "" -o refcount_bits=0
twin "" "" -o refcount_bits=128
twin "" "" -o lazy_refcounts=x
twin "" "" -o foo=1
twin "" "" -o preallocation=full
twin "" "" -o extended_l2=on
twin "" "" -o compression_type=zstd
twin "" "" -o backing_file=x
twin "" "" -o backing_fmt=qcow2
twin "" "" -o data_file=x
twin "" "" -o data_file_raw=on
twin "" "" -o data_file_raw=off
twin "" "" -o refcount_bits=8,compat=0.10
twin "" "" -o lazy_refcounts=on,compat=0.10
twin "" "" -o size=x
twin "" "" -o size=0
twin "" "" -o nolazy_refcounts
twin "" "" -o compat=1.1,nofoo
twin "" "" -o refcount_bits=x,foo=1
twin "-o refcount_bits=8" "" -o compat=0.10
twin "-o extended_l2=on" "" -o compat=0.10
twin "-o compat=0.10" "" -o lazy_refcounts=on
twin "-b base.qcow2 -F qcow2" "" -o backing_file=base.qcow2,backing_fmt=qcow2
twin "-b base.qcow2 -F qcow2" "" -o backing_file=base.qcow2
twin "" "" -t bad -o compat=1.1
twin "" ""
twin "" "" -q -p -o compat=0.10
twin "" "" -f raw -o compat=1.1
twin "" "-c 'write 0 64k'" -o compat=0.10 extra-arg
echo "amended=$n failed=$fail"
EOF2
    } >errors.sh
    qemu-img create -q -f qcow2 base.qcow2 64M
    QCOWKIT=$QCOWKIT run bash errors.sh
    echo "$output"
    [ "${lines[-1]}" = "amended=35 failed=0" ]
}

@test "amend: a raw image is refused as qemu-img refuses it" {
    qemu-img create -q -f raw r.img 1M
    run "$QCOWKIT" amend -f raw -o size=2M r.img
    [ "$status" -eq 1 ]
    [ "$output" = "qcowkit: Format driver 'raw' does not support option amendment" ]
}

@test "amend: bitmaps are kept by refcount_bits, lazy_refcounts and size, as by qemu-img" {
    qemu-img create -q -f qcow2 bm.qcow2 64M
    qemu-io -c 'write 0 1M' bm.qcow2 >/dev/null
    qemu-img bitmap --add bm.qcow2 b1
    qemu-io -c 'write 4M 64k' -c 'write 40M 1k' bm.qcow2 >/dev/null
    qemu-img bitmap --add -g 512 bm.qcow2 b2
    qemu-img bitmap --disable bm.qcow2 b2
    for o in refcount_bits=1 refcount_bits=64 lazy_refcounts=on size=128M; do
        cp bm.qcow2 q.qcow2
        cp bm.qcow2 k.qcow2
        qemu-img amend -o $o q.qcow2
        "$QCOWKIT" amend -o $o k.qcow2
        qemu-img check -q k.qcow2
        diff <(qemu-img info --output=json q.qcow2 | grep -v '"filename"\|"actual-size"') \
             <(qemu-img info --output=json k.qcow2 | grep -v '"filename"\|"actual-size"')
        [ "$(qk_dump k.qcow2 b1)" = "$(qk_dump q.qcow2 b1)" ]
        [ "$(qk_dump k.qcow2 b2)" = "$(qk_dump q.qcow2 b2)" ]
    done
}

@test "amend: compat=0.10 is refused with bitmaps, and the image is left as it was" {
    qemu-img create -q -f qcow2 bm.qcow2 64M
    qemu-img bitmap --add bm.qcow2 b1
    cp bm.qcow2 before.qcow2
    run "$QCOWKIT" amend -o compat=0.10 bm.qcow2
    [ "$status" -eq 1 ]
    [ "$output" = "qcowkit: Cannot downgrade an image with persistent bitmaps (qcow2 v2 cannot store them); remove them first" ]
    cmp bm.qcow2 before.qcow2
    "$QCOWKIT" bitmap --remove bm.qcow2 b1
    "$QCOWKIT" amend -o compat=0.10 bm.qcow2
    qemu-img check -q bm.qcow2
    [ "$(qemu-img info --output=json bm.qcow2 | jq -r '."format-specific".data.compat')" = 0.10 ]
}

@test "amend: a refcount width too narrow for a shared cluster is refused, the image unchanged" {
    qemu-img create -q -f qcow2 s.qcow2 1M
    qemu-io -c 'write 0 64k' s.qcow2 >/dev/null
    qemu-img snapshot -c s1 s.qcow2
    qemu-img snapshot -c s2 s.qcow2
    cp s.qcow2 q.qcow2
    cp s.qcow2 before.qcow2
    run qemu-img amend -o refcount_bits=1 q.qcow2
    q_output=${output//qemu-img: /qcowkit: }
    run "$QCOWKIT" amend -o refcount_bits=1 s.qcow2
    [ "$status" -eq 1 ]
    [ "$output" = "$q_output" ]
    cmp s.qcow2 before.qcow2
}

@test "amend: downgrade expands zero clusters (plain ones unallocated, or zeros over a backing file)" {
    qemu-img create -q -f qcow2 base.qcow2 4M
    qemu-io -c 'write -P 7 0 4M' base.qcow2 >/dev/null
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 4M
    qemu-io -c 'write -z 0 128k' -c 'write -P 1 1M 64k' -c 'write -z 1M 64k' top.qcow2 >/dev/null
    "$QCOWKIT" amend -o compat=0.10 top.qcow2
    qemu-img check -q top.qcow2
    qemu-io -r -c 'read -P 0 0 128k' -c 'read -P 0 1M 64k' -c 'read -P 7 128k 896k' top.qcow2 | grep -c '^read' | grep -qx 3
    qemu-img map --output=json top.qcow2 | jq -e 'all(.[]; .zero == false or .data == false or .depth == 1)'
}

@test "amend: compat=0.10 of a zstd image is refused (QEMU 7.2 writes a v2 image that reads zstd as zlib)" {
    qemu-img create -q -f qcow2 -o compression_type=zstd z.qcow2 1M
    qemu-io -c 'write -c 0 64k' z.qcow2 >/dev/null
    cp z.qcow2 before.qcow2
    run "$QCOWKIT" amend -o compat=0.10 z.qcow2
    [ "$status" -eq 1 ]
    [ "$output" = "qcowkit: Cannot downgrade an image with zstd compression (qcow2 v2 only has zlib)" ]
    cmp z.qcow2 before.qcow2
}
