#!/usr/bin/env bats
# tests/interop/chain.bats - `qcowkit commit` and `qcowkit rebase` against
# qemu-img 7.2 on twin 3-deep chains with random writes, zero writes and
# discards in every layer (chain_helpers.bash): the same command is run by
# qemu-img on one twin and by qcowkit on the other, then every layer must read
# the same, map the same, show the same info, be clean for `qemu-img check`,
# and its enabled bitmaps (in the base and the top) must be dirty in the same
# places.

load ../cli/helpers
load chain_helpers

setup() {
    qk_bin_ok
    require_peer qemu-img qemu-io
    cd "$BATS_TEST_TMPDIR"
}

# Seeds per test (fewer under ASan); the base's cluster size varies with them.
SEEDS=3
[[ -z "${QK_SANITIZED:-}" ]] || SEEDS=1
cs_of() { case $(($1 % 3)) in 0) echo 65536;; 1) echo 4096;; 2) echo 512;; esac; }

# each_seed CMD...: chain_make per seed, then CMD with fresh twins.
# CHAIN_CS and CHAIN_OPTS override the bases' cluster size and add options.
each_seed() {
    local seed bad=0
    for ((seed = 1; seed <= SEEDS; seed++)); do
        chain_make $seed "${CHAIN_CS:-$(cs_of $seed)}" "${CHAIN_OPTS:-}" || return 1
        chain_twins
        chain_same "$@" || { echo "  (seed $seed)"; bad=1; }
    done
    return $bad
}

@test "commit: into the backing file, top emptied" { each_seed commit t.qcow2; }
@test "commit -d: top kept" { each_seed commit -d t.qcow2; }
@test "commit -b: the immediate backing file named" { each_seed commit -b m.qcow2 t.qcow2; }
@test "commit -b: the bottom of the chain (layers between kept, implies -d)" { each_seed commit -b b.qcow2 t.qcow2; }
@test "commit: the middle layer into the bottom" { each_seed commit m.qcow2; }
@test "rebase: onto another chain" { each_seed rebase -b n1.qcow2 -F qcow2 t.qcow2; }
@test "rebase: onto a deeper layer of its own chain" { each_seed rebase -b b.qcow2 -F qcow2 t.qcow2; }
@test "rebase -b '': no backing file" { each_seed rebase -b "" t.qcow2; }
@test "rebase -u: the name only" { each_seed rebase -u -b n1.qcow2 -F qcow2 t.qcow2; }
@test "rebase -u without -b: no backing file" { each_seed rebase -u t.qcow2; }

@test "commit and rebase: bases with 2 MiB clusters (commit copies every chunk)" {
    local SEEDS=1
    CHAIN_CS=2M each_seed commit -b b.qcow2 t.qcow2
    CHAIN_CS=2M each_seed commit t.qcow2
    CHAIN_CS=2M each_seed rebase -b n1.qcow2 -F qcow2 t.qcow2
}
@test "commit and rebase: v2 chains (no zero clusters; the top emptied by discards)" {
    local SEEDS=1
    CHAIN_OPTS=compat=0.10 each_seed commit t.qcow2
    CHAIN_OPTS=compat=0.10 each_seed rebase -b b.qcow2 -F qcow2 t.qcow2
    CHAIN_OPTS=compat=0.10 each_seed rebase -b "" t.qcow2
}
@test "commit and rebase: extended L2 entries" {
    local SEEDS=1
    CHAIN_CS=65536 CHAIN_OPTS=extended_l2=on each_seed commit -b b.qcow2 t.qcow2
    CHAIN_CS=65536 CHAIN_OPTS=extended_l2=on each_seed rebase -b n1.qcow2 -F qcow2 t.qcow2
}

@test "commit into a raw base: same bytes, same holes (zeros with unmap punch holes)" {
    local cmd
    chain_make 1 65536
    qemu-img convert -O raw src/b.qcow2 src/b.raw
    qemu-img rebase -u -b b.raw -F raw src/m.qcow2
    for cmd in "commit m.qcow2" "commit -b b.raw t.qcow2"; do
        chain_twins
        # shellcheck disable=SC2086
        chain_same $cmd
        cmp A/b.raw B/b.raw
        diff <(qemu-img map --output=json -f raw A/b.raw) <(qemu-img map --output=json -f raw B/b.raw)
    done
}

@test "layers of different sizes: commit grows a smaller base first (with its bitmaps); rebase" {
    local CHAIN_LAYERS="b m t"
    mkdir src
    qemu-img create -q -f qcow2 src/b.qcow2 1M
    qemu-io -c 'write -P 1 0 1M' src/b.qcow2 >/dev/null
    qemu-img bitmap --add -g 4096 src/b.qcow2 bb
    qemu-img create -q -f qcow2 -b b.qcow2 -F qcow2 src/m.qcow2 2M
    qemu-io -c 'write -P 2 1500k 3k' -c 'write -z 100k 8k' src/m.qcow2 >/dev/null
    qemu-img create -q -f qcow2 -b m.qcow2 -F qcow2 src/t.qcow2 3M
    qemu-io -c 'write -P 3 2M 5k' -c 'write -P 4 100k 1k' src/t.qcow2 >/dev/null
    chain_twins
    chain_same commit -b b.qcow2 t.qcow2
    chain_twins
    chain_same commit m.qcow2
    chain_twins
    chain_same rebase -b b.qcow2 -F qcow2 t.qcow2
    chain_twins
    chain_same rebase -b "" m.qcow2
}

@test "commit: a top with an internal snapshot is emptied by discards, the snapshot kept" {
    local CHAIN_LAYERS="b t"
    mkdir src
    qemu-img create -q -f qcow2 src/b.qcow2 4M
    qemu-io -c 'write -P 1 0 1M' src/b.qcow2 >/dev/null
    qemu-img create -q -f qcow2 -b b.qcow2 -F qcow2 src/t.qcow2
    qemu-io -c 'write -P 3 100k 200k' src/t.qcow2 >/dev/null
    qemu-img snapshot -c s1 src/t.qcow2
    qemu-io -c 'write -P 4 150k 5k' -c 'write -P 5 2M 64k' -c 'write -z 3M 64k' src/t.qcow2 >/dev/null
    chain_twins
    chain_same commit t.qcow2
}

# errors_same CMD...: on one chain (seed 1), each command line (one per
# argument, split on spaces) must give qemu-img's exit code, output and
# resulting images.
errors_same() {
    local line bad=0
    chain_make 1 65536 || return 1
    for line in "$@"; do
        chain_twins
        # shellcheck disable=SC2086
        chain_same $line || bad=1
    done
    return $bad
}

# qemu-img commit -r limits the bytes the job copies per second; 4 MiB at 2 MiB/s cannot finish
# in less than 1.5 s (the last 1 MiB copy may start at 1.5 s), however fast the machine.
@test "commit -r: copies at most RATE bytes per second, same data" {
    qemu-img create -q -f qcow2 b.qcow2 64M
    qemu-img create -q -f qcow2 -b b.qcow2 -F qcow2 t.qcow2
    qemu-io -c "write -P 7 1M 4M" t.qcow2 >/dev/null
    local t0 t1
    t0=$(date +%s%N)
    run "$QCOWKIT" commit -r 2M t.qcow2
    t1=$(date +%s%N)
    [ "$status" -eq 0 ] && [ "$output" = "Image committed." ]
    (( (t1 - t0) / 1000000 >= 1500 )) || { echo "took $(( (t1 - t0) / 1000000 )) ms"; false; }
    qemu-io -c "read -P 7 1M 4M" -c "read -P 0 0 1M" -c "read -P 0 5M 59M" b.qcow2 | grep -c '^read' | grep -qx 3
    qemu-img check -q b.qcow2
    [ "$(qemu-img map --output=json t.qcow2 | jq '[.[] | select(.depth == 0 and .data)] | length')" = 0 ]
}

@test "commit: errors and exit codes as qemu-img's" {
    errors_same "commit" "commit a b" "commit -t bogus t.qcow2" "commit -r abc t.qcow2" \
        "commit -b nosuch t.qcow2" "commit b.qcow2" "commit -q t.qcow2" "commit -x t.qcow2" \
        "commit -f raw t.qcow2" "commit nosuch.qcow2"
}

@test "rebase: errors and exit codes as qemu-img's" {
    local long
    long=$(printf 'a%.0s' {1..1024})
    errors_same "rebase t.qcow2" "rebase -u -b x -F bogus t.qcow2" "rebase -b n1.qcow2 t.qcow2" \
        "rebase -b nosuch.qcow2 -F qcow2 t.qcow2" "rebase -u -b $long -F qcow2 t.qcow2" \
        "rebase -u -b x.qcow2 -F qcow2 -f raw t.qcow2" \
        "rebase -u -b n1.qcow2 -F qcow2 t.qcow2 extra" "rebase -t bogus -u t.qcow2" \
        "rebase -T bogus -u t.qcow2" "rebase -q -b m.qcow2 -F qcow2 t.qcow2"
}

@test "rebase -u: a name that does not fit in the header cluster is refused" {
    local long
    long=$(printf 'a%.0s' {1..400})
    qemu-img create -q -f qcow2 -o cluster_size=512 a.qcow2 1M
    cp a.qcow2 b.qcow2
    run qemu-img rebase -u -b "$long" -F qcow2 a.qcow2
    ((status == 1))
    run "$QCOWKIT" rebase -u -b "$long" -F qcow2 b.qcow2
    ((status == 1))
    [[ "$output" == "qcowkit: Could not change the backing file to '$long': No space left in the file header" ]]
    cmp a.qcow2 b.qcow2
}

@test "rebase -u: v2 images get the backing format extension, as QEMU writes it; any QEMU format name" {
    qemu-img create -q -f qcow2 -o compat=0.10 a.qcow2 1M
    cp a.qcow2 b.qcow2
    qemu-img rebase -u -b base.qcow2 -F qcow2 a.qcow2
    "$QCOWKIT" rebase -u -b base.qcow2 -F qcow2 b.qcow2
    cmp a.qcow2 b.qcow2
    qemu-img rebase -u -b x.vmdk -F vmdk a.qcow2
    "$QCOWKIT" rebase -u -b x.vmdk -F vmdk b.qcow2
    cmp a.qcow2 b.qcow2
    qemu-img rebase -u -b "" a.qcow2
    "$QCOWKIT" rebase -u -b "" b.qcow2
    cmp a.qcow2 b.qcow2
}
