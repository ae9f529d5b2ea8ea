#!/usr/bin/env bats
# tests/interop/writes.bats - the write path against QEMU:
#  - a randomized differential test: the same random operations (patterned
#    writes at unaligned, cluster-crossing offsets, write -z with and without
#    -u, discard, flush) applied with `qcowkit io` to one image and with
#    qemu-io to its twin; `qemu-img compare` must say identical and
#    `qemu-img check` must find no errors and no leaks in ours;
#  - kill -9 of a `qcowkit io` writer at random moments leaves an image
#    without corruption;
#  - QEMU's locks: qcowkit does not write an image qemu-io holds, and
#    qemu-img info refuses one qcowkit writes (but -U reads it).

load ../cli/helpers

setup() {
    qk_bin_ok
    require_peer qemu-img qemu-io
    cd "$BATS_TEST_TMPDIR"
}

# A deterministic stream of pseudo-random numbers (xorshift) per seed.
rng_init() { RNG=$(( ($1 * 2654435761 + 12345) & 0x7fffffff )); [[ $RNG != 0 ]] || RNG=1; }
rng() { # MAX -> R, a number in [0, MAX) (no subshell: this runs thousands of times)
    RNG=$(( RNG ^ ((RNG << 13) & 0x7fffffff) )); RNG=$(( RNG ^ (RNG >> 17) ))
    RNG=$(( RNG ^ ((RNG << 5) & 0x7fffffff) )); RNG=$(( RNG & 0x7fffffff ))
    R=$(( RNG % $1 ))
}

# OPS: make N operations for an image of SIZE bytes with clusters of CS.
make_ops() {
    local n=$1 size=$2 cs=$3 i k off len
    OPS=()
    for ((i = 0; i < n; i++)); do
        rng 20; k=$R
        rng $((size - 1)); off=$R
        rng $((3 * cs)); len=$((R + 1))
        rng 4
        if (( R == 0 )); then off=$(( off / cs * cs )); rng 3; len=$(( (R + 1) * cs )); fi
        (( off + len <= size )) || len=$(( size - off ))
        if (( k < 12 )); then
            rng 255
            OPS+=("write -P $(( R + 1 )) $off $len")
        else
            off=$(( off / 512 * 512 )); len=$(( (len + 511) / 512 * 512 ))
            (( off + len <= size )) || len=$(( size - off ))
            if (( k < 15 )); then OPS+=("write -z $off $len")
            elif (( k < 17 )); then OPS+=("write -z -u $off $len")
            elif (( k < 19 )); then OPS+=("discard $off $len")
            else OPS+=("flush"); fi
        fi
    done
}

# differential SEEDS OPTS [BACKING]: for each seed, twins made by qemu-img
# create (with OPTS and BACKING), 200 operations each.
differential() {
    local seeds=$1 opts=$2 backing=${3:-} seed bad=0 args size=4194304 cs
    cs=$(sed -n 's/.*cluster_size=\([0-9a-zA-Z]*\).*/\1/p' <<<"$opts")
    case "$cs" in 512) cs=512;; 2M) cs=2097152;; *) cs=65536;; esac
    for ((seed = 1; seed <= seeds; seed++)); do
        rng_init "$seed$RANDOM_SALT"
        make_ops 200 $size $cs
        rm -f a.qcow2 b.qcow2
        for f in a.qcow2 b.qcow2; do
            qemu-img create -q -f qcow2 -o "$opts" ${backing:+-b "$backing" -F qcow2} $f $size
        done
        args=()
        for op in "${OPS[@]}"; do args+=(-c "$op"); done
        "$QCOWKIT" io "${args[@]}" a.qcow2 >/dev/null 2>k.err || { echo "seed $seed: qcowkit io failed: $(head -3 k.err)"; bad=1; continue; }
        assert_no_sanitizer "$(cat k.err)" || return 1
        qemu-io "${args[@]}" b.qcow2 >/dev/null
        if ! qemu-img compare -q a.qcow2 b.qcow2; then echo "seed $seed ($opts): data differs"; bad=1; fi
        if ! qemu-img check -q a.qcow2; then echo "seed $seed ($opts): qemu-img check:"; qemu-img check a.qcow2 | head -5; bad=1; fi
    done
    return $bad
}

RANDOM_SALT=0
# 20 seeds per configuration; the sanitizer run (slower) repeats 5 of them.
SEEDS=20
[[ -z "${QK_SANITIZED:-}" ]] || SEEDS=5

@test "random writes: v2, 64 KiB clusters" { differential $SEEDS compat=0.10; }
@test "random writes: v3, 512-byte clusters" { differential $SEEDS cluster_size=512; }
@test "random writes: v3, 2 MiB clusters" { differential $SEEDS cluster_size=2M; }
@test "random writes: refcount_bits=1" { differential $SEEDS refcount_bits=1; }
@test "random writes: refcount_bits=64 with 512-byte clusters (refcount table growth)" { differential $SEEDS refcount_bits=64,cluster_size=512; }
@test "random writes: extended L2" { differential $SEEDS extended_l2=on; }
@test "random writes: lazy refcounts" { differential $SEEDS lazy_refcounts=on; }

@test "random writes: over a 2-deep backing chain" {
    qemu-img create -q -f raw base.raw 4M
    qemu-io -f raw -c 'write -P 0x11 0 3M' base.raw >/dev/null
    qemu-img create -q -f qcow2 -b base.raw -F raw mid.qcow2
    qemu-io -c 'write -P 0x22 1M 1M' -c 'write -z 2500k 300k' mid.qcow2 >/dev/null
    differential $SEEDS compat=1.1 "$PWD/mid.qcow2"
    differential 5 compat=0.10 "$PWD/mid.qcow2"
}

@test "random writes: over a compressed base" {
    head -c 3M /dev/urandom >r.bin
    yes 'compressible text' | head -c 1M >>r.bin
    qemu-img convert -q -c -f raw -O qcow2 r.bin z.qcow2
    differential $SEEDS compat=1.1 "$PWD/z.qcow2"
}

@test "kill -9 of a qcowkit io writer at 20 random moments leaves no corruption" {
    local i args bad=0 rc
    args=()
    for ((i = 0; i < 400; i++)); do
        args+=(-c "write -P $(( i % 250 + 1 )) $(( (i * 7919 * 512) % (60 << 20) )) $(( (i % 7 + 1) * 12345 ))")
        (( i % 9 )) || args+=(-c "write -z -u $(( (i * 104729 * 512) % (60 << 20) )) 131072")
        (( i % 13 )) || args+=(-c "flush")
    done
    for ((i = 1; i <= 20; i++)); do
        rm -f k.qcow2
        qemu-img create -q -f qcow2 k.qcow2 64M
        "$QCOWKIT" io "${args[@]}" k.qcow2 >/dev/null 2>&1 &
        local pid=$!
        sleep "0.0$(( (i * 37) % 100 ))"
        kill -9 $pid 2>/dev/null || true
        wait $pid 2>/dev/null || true
        rc=0; qemu-img check -q k.qcow2 >/dev/null 2>&1 || rc=$?
        if [[ $rc != 0 && $rc != 3 ]]; then
            echo "kill $i: qemu-img check rc $rc"; qemu-img check k.qcow2 | head -5; bad=1
        fi
    done
    ((bad == 0))
}

@test "locks: qcowkit io cannot write an image qemu-io holds read-write" {
    qemu-img create -q -f qcow2 l.qcow2 1M
    qemu-io -c 'sleep 3000' l.qcow2 &
    local pid=$!
    sleep 1
    run "$QCOWKIT" io -c 'write 0 512' l.qcow2
    kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true
    [ "$status" -ne 0 ]
    [[ "$output" == *'Failed to get "write" lock'* ]]
    [[ "$output" == *'Is another process using the image [l.qcow2]?'* ]]
}

@test "locks: while qcowkit writes, qemu-img info fails and info -U works" {
    qemu-img create -q -f qcow2 l.qcow2 64M
    local args=() i
    for ((i = 0; i < 3000; i++)); do args+=(-c "write -P 1 $(( (i % 500) * 65536 )) 65536" -c flush); done
    "$QCOWKIT" io "${args[@]}" l.qcow2 >/dev/null 2>&1 &
    local pid=$!
    sleep 0.5
    run qemu-img info l.qcow2
    local st1=$status out1=$output
    run qemu-img info -U l.qcow2
    local st2=$status
    kill -9 $pid 2>/dev/null || true; wait $pid 2>/dev/null || true
    echo "info: $st1 $out1"
    [ "$st1" -ne 0 ]
    [[ "$out1" == *'Failed to get shared "write" lock'* ]]
    [ "$st2" -eq 0 ]
}
