#!/usr/bin/env bats
# tests/cli/check.bats - `qcowkit check` against `qemu-img check`: the same
# stdout (human and JSON), stderr and exit code, one behaviour per test.

load img_helpers

setup() {
    img_setup
}

# same_check ARGS...: qemu-img check ARGS and qcowkit check ARGS agree
# (program names aside).
same_check() {
    local q k
    q=$(run_both_text qemu-img check "$@")
    k=$(run_both_text "$QCOWKIT" check "$@")
    same_text "$q" "$k"
}

# twin_repair ARGS... IMG: the same repair on twin copies prints the same.
twin_repair() {
    local img=${!#} q k
    cp "$img" q.qcow2
    cp "$img" k.qcow2
    q=$(run_both_text qemu-img check "${@:1:$#-1}" q.qcow2)
    k=$(run_both_text "$QCOWKIT" check "${@:1:$#-1}" k.qcow2)
    same_text "$q" "${k//k.qcow2/q.qcow2}"
}

mkimg() {
    qemu-img create -q -f qcow2 "$@" a.qcow2 64M
    qemu-io -c "write -P 1 0 1M" -c "write -P 2 5M 64k" -c "write -P 3 60M 128k" a.qcow2 >/dev/null
}

# Refcount of cluster $2 (first refcount block, 16-bit) set to $3.
set_rc() {
    local rb
    rb=$(od -An -tu8 --endian=big -j "$(od -An -tu8 --endian=big -j 48 -N 8 "$1")" -N 8 "$1")
    printf "\\x$(printf %02x $(($3 >> 8)))\\x$(printf %02x $(($3 & 255)))" |
        dd of="$1" bs=1 seek=$((rb + $2 * 2)) conv=notrunc status=none
}

@test "clean image: human" {
    mkimg
    same_check a.qcow2
}

@test "clean image: json" {
    mkimg
    same_check --output=json a.qcow2
}

@test "empty image" {
    qemu-img create -q -f qcow2 a.qcow2 1G
    same_check a.qcow2
    same_check --output=json a.qcow2
}

@test "compressed clusters: fragmented and compressed counters" {
    qemu-img create -q -f qcow2 a.qcow2 64M
    qemu-io -c "write -c -P 1 0 64k" -c "write -c -P 2 64k 64k" -c "write -P 3 1M 64k" a.qcow2 >/dev/null
    same_check a.qcow2
    same_check --output=json a.qcow2
}

@test "fragmented clusters" {
    qemu-img create -q -f qcow2 a.qcow2 64M
    qemu-io -c "write -P 1 1M 64k" -c "write -P 2 0 64k" -c "write -P 3 2M 64k" a.qcow2 >/dev/null
    same_check a.qcow2
}

@test "image with internal snapshots" {
    mkimg
    qemu-img snapshot -c s1 a.qcow2
    qemu-io -c "write -P 9 0 64k" a.qcow2 >/dev/null
    same_check --output=json a.qcow2
}

@test "v2 image, 512-byte clusters, refcount_bits=1 and =64" {
    mkimg -o compat=0.10
    same_check a.qcow2
    mkimg -o cluster_size=512
    same_check a.qcow2
    mkimg -o refcount_bits=1
    same_check a.qcow2
    mkimg -o refcount_bits=64
    same_check a.qcow2
}

@test "leaks: human and json, exit code 3" {
    mkimg
    truncate -s +192k a.qcow2
    n=$(($(stat -c %s a.qcow2) / 65536))
    set_rc a.qcow2 $((n - 1)) 1
    set_rc a.qcow2 $((n - 2)) 1
    same_check a.qcow2
    same_check --output=json a.qcow2
    run "$QCOWKIT" check a.qcow2
    [ "$status" -eq 3 ]
    [[ $output == *"2 leaked clusters were found on the image."* ]]
}

@test "-r leaks: repair summary and double check" {
    mkimg
    truncate -s +128k a.qcow2
    n=$(($(stat -c %s a.qcow2) / 65536))
    set_rc a.qcow2 $((n - 1)) 1
    twin_repair -r leaks a.qcow2
    twin_repair --output=json -r leaks a.qcow2
}

@test "corruption: exit code 2, -r leaks cannot fix it, -r all can" {
    mkimg
    set_rc a.qcow2 5 0
    same_check a.qcow2
    run "$QCOWKIT" check a.qcow2
    [ "$status" -eq 2 ]
    twin_repair -r leaks a.qcow2
    twin_repair -r all a.qcow2
    run qemu-img check k.qcow2
    [ "$status" -eq 0 ]
}

@test "refcount too high: -r all repairs leak and COPIED" {
    mkimg
    set_rc a.qcow2 6 2
    same_check a.qcow2
    twin_repair -r all a.qcow2
    twin_repair --output=json -r all a.qcow2
}

@test "-q prints nothing on stdout" {
    mkimg
    run "$QCOWKIT" check -q a.qcow2
    [ "$status" -eq 0 ]
    [ -z "$output" ]
    same_check -q a.qcow2
}

@test "raw image: exit code 63" {
    truncate -s 1M r.raw
    same_check -f raw r.raw
    same_check r.raw
}

@test "unknown -r value" {
    mkimg
    same_check -r some a.qcow2
}

@test "bad --output" {
    mkimg
    same_check --output=xml a.qcow2
}

@test "no file name, two file names" {
    mkimg
    same_check
    same_check a.qcow2 a.qcow2
}

@test "a file of more than 2^31 clusters: Check failed: File too large" {
    qemu-img create -q -f qcow2 -o cluster_size=512 a.qcow2 1G
    truncate -s 2T a.qcow2
    same_check a.qcow2
}

@test "missing file" {
    same_check nosuch.qcow2
}

@test "-U reads an image a writer holds" {
    mkimg
    qemu-io -c "sleep 3000" a.qcow2 &
    pid=$!
    sleep 1
    run "$QCOWKIT" check a.qcow2
    [ "$status" -eq 1 ]
    run "$QCOWKIT" check -U a.qcow2
    kill $pid
    wait $pid || true
    [ "$status" -eq 0 ]
}

@test "corrupt bit: check reads it, -r all clears it" {
    mkimg
    printf '\x02' | dd of=a.qcow2 bs=1 seek=79 conv=notrunc status=none
    same_check a.qcow2
    twin_repair -r all a.qcow2
    run qemu-img info --output=json k.qcow2
    [[ $output == *'"corrupt": false'* ]]
}

@test "check (human and json) equals qemu-img's on every image of the interop corpus" {
    source "$BATS_TEST_DIRNAME/../interop/corpus.bash"
    corpus=$(corpus_ensure)
    [ -f "$corpus/MANIFEST" ]
    bad=0 n=0
    while read -r img tags; do
        n=$((n + 1))
        # Ours adds a line per inconsistent bitmap (QEMU reports none).
        for out in human json; do
            q=$(cd "$corpus/$(dirname "$img")" && run_both_text qemu-img check -U --output=$out "$(basename "$img")")
            k=$(cd "$corpus/$(dirname "$img")" && run_both_text "$QCOWKIT" check -U --output=$out "$(basename "$img")")
            same_text "$q" "$(grep -v "^qemu-img: Warning: bitmap '\|^Warning: bitmap '" <<<"$k")" ||
                { echo "^^^ $img ($out)" >&2; bad=$((bad + 1)); }
        done
    done <"$corpus/MANIFEST"
    echo "$n images, $bad differ" >&2
    [ "$bad" -eq 0 ]
}
