# tests/interop/chain_helpers.bash - twin backing chains for chain.bats.
#
#   chain_make SEED CS [OPTS]
#                          in ./src: b.qcow2 <- m.qcow2 <- t.qcow2 (3-deep, 4 MiB, the
#                          bases with clusters of CS, all created with -o OPTS too) and
#                          n2.qcow2 <- n1.qcow2 (another chain), each layer
#                          given random writes by qemu-io (unaligned patterns, zero writes
#                          with and without unmap, discards); v3: enabled bitmaps bb (512 B)
#                          and bd (default) in b, mb in m, and on odd seeds tb in t (so
#                          that commit empties t by discarding, as QEMU does for an image
#                          with bitmaps, and by rebuilding it on even seeds).
#   chain_twins            fresh copies ./A and ./B of ./src.
#   chain_same OP...       OP run by qemu-img in A and by qcowkit in B (same arguments,
#                          image names relative to the twin), then every layer compared:
#                          exit code and output (qemu-img's name replaced), `qemu-img compare`, `qemu-img map` (less host offsets), `qemu-img info`
#                          (less name and disk size), bitmap dumps; `qemu-img check` clean
#                          on every layer of B. Prints what differs; returns 1 if anything.

CHAIN_LAYERS="b m t n2 n1"
CHAIN_SIZE=4194304

# One qemu-io command script per layer: "LAYER|CMD" lines, made by awk in one
# process (bash loops under bats' trap are slow).
chain_ops() {
    awk -v seed="$1" -v cs="$2" -v size=$CHAIN_SIZE -v layers="$CHAIN_LAYERS" 'BEGIN {
        srand(seed); nl = split(layers, L, " ")
        for (l = 1; l <= nl; l++) for (i = 0; i < 24; i++) {
            what = rand(); start = int(rand() * size)
            n = int(rand() * 2.5 * cs) + 1
            if (what >= 0.6) { start -= start % 512; n += (512 - n % 512) % 512 }
            if (start + n > size) n = size - start
            if (what < 0.6) cmd = sprintf("write -P %d %d %d", int(rand() * 250) + 1, start, n)
            else if (what < 0.75) cmd = sprintf("write -z %d %d", start, n)
            else if (what < 0.85) cmd = sprintf("write -z -u %d %d", start, n)
            else cmd = sprintf("discard %d %d", start, n)
            print L[l] "|" cmd
        }
    }'
}

chain_make() {
    local seed=$1 cs=$2 o=${3:+,$3} l args
    rm -rf src && mkdir src
    qemu-img create -q -f qcow2 -o cluster_size=$cs$o src/b.qcow2 $CHAIN_SIZE
    qemu-img create -q -f qcow2 -o cluster_size=$cs$o src/n2.qcow2 $CHAIN_SIZE
    qemu-img create -q -f qcow2 -o cluster_size=65536$o -b b.qcow2 -F qcow2 src/m.qcow2 $CHAIN_SIZE
    qemu-img create -q -f qcow2 -o cluster_size=65536$o -b m.qcow2 -F qcow2 src/t.qcow2 $CHAIN_SIZE
    qemu-img create -q -f qcow2 -o cluster_size=65536$o -b n2.qcow2 -F qcow2 src/n1.qcow2 $CHAIN_SIZE
    chain_ops "$seed" "$cs" >src/ops
    for l in $CHAIN_LAYERS; do
        mapfile -t args < <(sed -n "s/^$l|/-c\n/p" src/ops)
        qemu-io "${args[@]}" "src/$l.qcow2" >/dev/null || return 1
    done
    [[ $o == *compat=0.10* ]] && return 0   # no bitmaps in v2 images
    qemu-img bitmap --add -g 512 src/b.qcow2 bb
    qemu-img bitmap --add src/b.qcow2 bd
    qemu-img bitmap --add src/m.qcow2 mb
    if ((seed % 2)); then qemu-img bitmap --add src/t.qcow2 tb; fi
    rm src/ops
}

chain_twins() {
    rm -rf A B && cp -r src A && cp -r src B
}

# The info lines that must be equal (not the name, not the host's disk usage).
chain_info() {
    qemu-img info -U "$1" | grep -v -e '^image:' -e '^disk size:' -e 'actual path'
}

# qemu-img map without host offsets, runs of the same status joined: QEMU's
# commit job copies with parallel requests, so its clusters land in the file
# in an order of its own.
chain_map() {
    qemu-img map -U --output=json "$1" | sed -e 's/, "offset": [0-9]*//' -e 's/}[],]*$//' | awk -F', ' '{
        st = $1; sub(/.*"start": /, "", st); ln = $2; sub(/.*"length": /, "", ln)
        key = $3 FS $4 FS $5 FS $6
        if (key == pk && st == pe) { pl += ln; pe += ln; next }
        if (pk != "") print ps, pl, pk
        ps = st; pl = ln; pe = st + ln; pk = key
    } END { if (pk != "") print ps, pl, pk }'
}

chain_bitmaps() {
    qemu-img info -U --output=json "$1" | sed -n 's/.*"name": "\(.*\)".*/\1/p'
}

chain_same() {
    local ra rb l bad=0 bm
    (cd A && qemu-img "$@" >../a.out 2>&1); ra=$?
    (cd B && "$QCOWKIT" "$@" >../b.out 2>&1); rb=$?
    assert_no_sanitizer "$(cat b.out)" || return 1
    if ((ra != rb)); then echo "$*: exit $ra (qemu-img) vs $rb: $(cat a.out) / $(cat b.out)"; return 1; fi
    if ! diff <(sed 's/qemu-img/qcowkit/g' a.out) b.out >out.diff; then echo "$*: output differs:"; cat out.diff; bad=1; fi
    for l in $CHAIN_LAYERS; do
        if ! qemu-img check -q "B/$l.qcow2"; then echo "$*: check of $l:"; qemu-img check "B/$l.qcow2" | head -5; bad=1; fi
        if ! qemu-img compare -q -U "A/$l.qcow2" "B/$l.qcow2"; then echo "$*: $l reads differently"; bad=1; fi
        if ! diff <(chain_map A/$l.qcow2) <(chain_map B/$l.qcow2) >map.diff; then
            echo "$*: map of $l differs:"; head -6 map.diff; bad=1
        fi
        if ! diff <(chain_info A/$l.qcow2) <(chain_info B/$l.qcow2) >info.diff; then
            echo "$*: info of $l differs:"; head -6 info.diff; bad=1
        fi
        for bm in $(chain_bitmaps "A/$l.qcow2"); do
            if ! diff <("$QCOWKIT" bitmap --dump "A/$l.qcow2" "$bm") <("$QCOWKIT" bitmap --dump "B/$l.qcow2" "$bm") >bm.diff; then
                echo "$*: bitmap $bm of $l differs:"; head -6 bm.diff; bad=1
            fi
        done
    done
    return $bad
}
