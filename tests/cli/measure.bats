#!/usr/bin/env bats
# measure.bats - `qcowkit measure` against `qemu-img measure`: the same JSON
# and human output over a matrix of sources (empty, partly allocated with
# data and zero clusters, with bitmaps, an in_use bitmap, compressed, v2,
# an overlay over a backing file, raw, --size) and target options
# (cluster_size, refcount_bits, extended_l2, preallocation, compat,
# backing_file), and the same messages and exit codes for bad arguments.

load bitmap_helpers
load img_helpers

setup() {
    img_setup
}

# Sources, made by qemu so that only measure is under test.
make_sources() {
    qemu-img create -q -f qcow2 empty.qcow2 64M
    qemu-img create -q -f qcow2 part.qcow2 64M
    qemu-io -c 'write 0 1M' -c 'write 3M 100k' -c 'write -z 10M 1M' -c 'write 20M 4k' \
        -c 'write 33M 512' part.qcow2 >/dev/null
    cp part.qcow2 bitmaps.qcow2
    qemu-img bitmap --add bitmaps.qcow2 b1
    qemu-img bitmap --add -g 512 bitmaps.qcow2 bitmap-with-a-longer-name
    qemu-img bitmap --add -g 2M bitmaps.qcow2 b3
    cp bitmaps.qcow2 inuse.qcow2
    put_u32 inuse.qcow2 $(($(bm_entry inuse.qcow2 0) + 12)) 3
    qemu-img convert -c -O qcow2 part.qcow2 compressed.qcow2
    qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 64M
    qemu-io -c 'write 1M 64k' v2.qcow2 >/dev/null
    qemu-img create -q -f qcow2 -b bitmaps.qcow2 -F qcow2 top.qcow2
    qemu-io -c 'write 40M 64k' top.qcow2 >/dev/null
    truncate -s 10M raw.img
    qemu-io -f raw -c 'write -P 1 400k 40k' -c 'write -P 2 5M 1k' raw.img >/dev/null
}

# `pair ARGS`: both tools' stdout+stderr and exit code, program names made
# the same; prints what differs.
pair_prelude() {
    cat <<'EOF'
n=0; fail=0
pair() {
    n=$((n + 1))
    a=$(qemu-img measure "$@" 2>&1; echo "rc=$?")
    b=$("$QCOWKIT" measure "$@" 2>&1 | sed -e 's/^qcowkit: /qemu-img: /' -e "s/'qcowkit --help'/'qemu-img --help'/"
        echo "rc=${PIPESTATUS[0]}")
    [ "$a" = "$b" ] || { fail=$((fail + 1)); echo "FAIL measure $*"; diff <(echo "$a") <(echo "$b") | head -6; }
}
EOF
}

# One `pair ARGS` line per source and target.
measure_script() {
    pair_prelude
    awk 'BEGIN {
        ns = split("empty.qcow2|part.qcow2|bitmaps.qcow2|inuse.qcow2|compressed.qcow2|v2.qcow2|top.qcow2|-f raw raw.img|--size 1G|--size 1000|-U bitmaps.qcow2|-f raw part.qcow2", src, "|")
        nt = split("-O raw|-O qcow2|-O qcow2 -o cluster_size=512|-O qcow2 -o cluster_size=2M,refcount_bits=1|-O qcow2 -o refcount_bits=64,cluster_size=4k|-O qcow2 -o extended_l2=on|-O qcow2 -o extended_l2=on,cluster_size=16k|-O qcow2 -o preallocation=metadata|-O qcow2 -o preallocation=falloc|-O qcow2 -o preallocation=full|-O qcow2 -o compat=0.10|-O qcow2 -o compat=1.1,lazy_refcounts=on|-O qcow2 -o backing_file=x", tgt, "|")
        for (s = 1; s <= ns; s++) for (t = 1; t <= nt; t++) {
            printf "pair --output=json %s %s\n", tgt[t], src[s]
            if (t <= 2) printf "pair %s %s\n", tgt[t], src[s]
        }
        print "echo \"measured=$n failed=$fail\""
    }'
}

@test "measure: JSON and human output equal qemu-img's over sources x target options" {
    make_sources
    measure_script >measure.sh
    run bash measure.sh
    echo "$output" | tail -30
    [ "$status" -eq 0 ]
    [ "${lines[-1]}" = "measured=180 failed=0" ]
}

@test "measure: bitmaps size counts every bitmap, also an in_use one (QEMU loads it)" {
    make_sources
    run "$QCOWKIT" measure -O qcow2 --output=json inuse.qcow2
    [ "$status" -eq 0 ]
    [ "$(jq .bitmaps <<<"$output")" -gt 0 ]
    [ "$(jq .bitmaps <<<"$output")" = "$(qemu-img measure -O qcow2 --output=json inuse.qcow2 | jq .bitmaps)" ]
    run "$QCOWKIT" measure -O qcow2 -o compat=0.10 --output=json bitmaps.qcow2
    [ "$(jq 'has("bitmaps")' <<<"$output")" = false ]
}

@test "measure: argument errors as qemu-img (messages and exit codes)" {
    qemu-img create -q -f qcow2 img.qcow2 1M
    { pair_prelude; cat <<'EOF'
pair
pair a b
pair -f qcow2 --size 1G
pair -l snap --size 1G
pair --size 1G img.qcow2
pair --size 1G -O foo
pair --size 1G -O qcow2 -o foo=1
pair --size 1G -O qcow2 -o extended_l2=x
pair --size 1G -O qcow2 -o refcount_bits=x
pair --size 1G -O qcow2 -o cluster_size=abc
pair --size 1G -O qcow2 -o compat=0.9
pair --size 1G -O qcow2 -o compat=v3
pair --size 1G -O qcow2 -o preallocation=x
pair --size 1G -O qcow2 -o cluster_size=1000
pair --size 1G -O qcow2 -o cluster_size=512,extended_l2=on
pair --size 1G -O qcow2 -o refcount_bits=3
pair --size 1G -O qcow2 -o refcount_bits=8,compat=0.10
pair --size 1T -O qcow2 -o cluster_size=512
pair --size 1G --output=xml
pair nonexistent.qcow2
pair --size abc
pair -O qcow2 -o help --size 1G
pair -O qcow2 -o ,, --size 1G
pair --size 1G -O raw -o cluster_size=1
pair --size 1G -O qcow2 -o size=2G
echo "measured=$n failed=$fail"
EOF
    } >errors.sh
    run bash errors.sh
    echo "$output"
    [ "${lines[-1]}" = "measured=25 failed=0" ]
}
