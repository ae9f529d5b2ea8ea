#!/usr/bin/env bats
# tests/interop/convert-write.bats - `qcowkit convert -O qcow2` writing images that QEMU 7.2 reads as
# the source: every image of the read corpus (corpus.bash) in five modes, each output checked with
# `qemu-img compare` (identical to the source) and `qemu-img check` (clean):
#   plain  -O qcow2                      zlib  -O qcow2 -c
#   zstd   -O qcow2 -c -o compression_type=zstd
#   B      -O qcow2 -B BASE -F qcow2, BASE being the source flattened by qemu-img (qemu-img's rule:
#          DST's backing file is the source's, so only the source's top layer is copied)
#   n      -O qcow2 -n into an existing image full of other data (zero ranges must be written)
# The conversions run in one script made by awk (no per-image bash work under bats' trap); the
# test asserts on its output. Then the options: -S, -o, -t/-T, -r, -C, -W, several sources,
# --salvage, and the errors and exit codes against qemu-img's.

bats_require_minimum_version 1.5.0
load ../cli/helpers
source "$BATS_TEST_DIRNAME/corpus.bash"

setup_file() { corpus_setup_file; }

setup() {
    corpus_setup || return 1
    cd "$BATS_TEST_TMPDIR"
}

# The per-image script: for each image line "PATH TAGS" and each mode, one step that prints
# "ok PATH MODE" or "FAIL PATH MODE: why". Images with an external data file run from their own
# folder (QEMU opens a data file relative to the working directory). The 4 TiB image skips -B and -n
# (both would write 4 TiB of zero clusters: 512 MiB of L2 tables for -B, 8 GiB for -n into a
# 4 KiB-cluster image, and qemu-img check then takes minutes).
corpus_script() { # OUTDIR
    # Under ASan each image gets one of the five modes, in turn (all modes and all images are
    # still covered); the normal pass runs every image in every mode.
    awk -v out="$1" -v qk="$QCOWKIT" -v corpus="$CORPUS" -v rot="$([[ -n "${QK_SANITIZED:-}" ]] && echo 1 || echo 0)" '
    function q(s) { gsub(/\047/, "\047\\\047\047", s); return "\047" s "\047" }
    function step(img, mode, args, pre,   o) {
        if (rot && (n + mode_i++) % 5 != 0) return
        o = out "/" n "." mode ".qcow2"
        printf "( cd %s && %s", q(dir), pre
        printf "%s convert %s %s %s 2>%s.err || { echo \"FAIL %s %s: convert: $(head -3 %s.err)\"; exit; }; ", q(qk), args, q(arg), q(o), q(o), img, mode, q(o)
        printf "grep -q -e \"runtime error\" -e AddressSanitizer %s.err && { echo \"FAIL %s %s: sanitizer\"; exit; }; ", q(o), img, mode
        printf "qemu-img compare -q %s %s 2>&1 || { echo \"FAIL %s %s: compare differs\"; exit; }; ", q(arg), q(o), img, mode
        printf "r=$(qemu-img check -q %s 2>&1) || { echo \"FAIL %s %s: check: $r\"; exit; }; ", q(o), img, mode
        printf "echo \"ok %s %s\"; rm -f %s %s.err )\n", img, mode, q(o), q(o)
    }
    {
        img = $1; tags = "," $2 ","; n++; mode_i = 0
        if (tags ~ /,datafile,/) { dir = corpus "/" img; sub(/\/[^\/]*$/, "", dir); arg = img; sub(/.*\//, "", arg) }
        else { dir = corpus; arg = img }
        step(img, "plain", "-O qcow2", "")
        step(img, "zlib", "-O qcow2 -c", "")
        step(img, "zstd", "-O qcow2 -c -o compression_type=zstd", "")
        base = out "/" n ".base.qcow2"
        if (tags !~ /,huge,/)
            step(img, "B", "-O qcow2 -B " q(base) " -F qcow2",
                 "qemu-img convert -O qcow2 " q(arg) " " q(base) " && ")
        ex = out "/" n ".n.qcow2"
        if (tags !~ /,huge,/)
        step(img, "n", "-O qcow2 -n",
             "s=$(qemu-img info --output=json " q(arg) " | jq \047.[\"virtual-size\"]\047) && " \
             "qemu-img create -q -f qcow2 -o cluster_size=4k " q(ex) " $s && " \
             "qemu-io -c \"write -P 0xee 0 $((s < 3145728 ? s : 3145728))\" " q(ex) " >/dev/null && ")
    }' "$CORPUS/MANIFEST"
}

@test "convert -O qcow2 of every corpus image (plain, -c zlib, -c zstd, -B, -n): compare identical, check clean" {
    mkdir out
    corpus_script "$PWD/out" >convert.sh
    nice bash convert.sh >result.txt 2>&1 || true
    local fails total
    fails="$(grep -c '^FAIL' result.txt || true)"
    total="$(grep -c '^ok' result.txt || true)"
    echo "== $total conversions ok, $fails failed"
    grep -v '^ok' result.txt | head -40
    ((fails == 0))
    # 5 modes for each image, 3 for the huge one; under ASan one mode per image (the huge
    # one may draw the -B or -n it skips)
    local images
    images="$(wc -l <"$CORPUS/MANIFEST")"
    if [[ -n "${QK_SANITIZED:-}" ]]; then
        ((images >= 30 && total >= images - 1 && total <= images))
    else
        ((images >= 30 && total == images * 5 - 2))
    fi
}

mk() { qemu-img create -q -f qcow2 "$@"; }
wr() { local img=$1; shift; for c in "$@"; do qemu-io -c "$c" "$img" >/dev/null; done; }
allocated_kib() { du -k "$1" | cut -f1; }

# both_fail ARGS...: qemu-img and qcowkit both exit 1 with the same message.
both_fail() {
    local qrc=0 krc=0
    qemu-img "$@" >q.out 2>q.err || qrc=$?
    "$QCOWKIT" "$@" >k.out 2>k.err || krc=$?
    diff -u <(sed 's/^qemu-img: //' q.err) <(sed 's/^qcowkit: //' k.err)
    [[ $qrc == 1 && $krc == 1 ]] || { echo "exit codes: qemu-img $qrc, qcowkit $krc ($*)"; return 1; }
}

@test "convert: option errors and exit codes as qemu-img's" {
    mk a.qcow2 4M
    wr a.qcow2 'write -P 1 0 1M'
    mk ex.qcow2 4M
    mk small.qcow2 1M
    both_fail convert -O qcow2 -S 3 a.qcow2 o.qcow2
    both_fail convert -O qcow2 -S 513 a.qcow2 o.qcow2
    both_fail convert -O qcow2 -S 32M a.qcow2 o.qcow2
    both_fail convert -O qcow2 -S -1 a.qcow2 o.qcow2
    both_fail convert -O qcow2 -C -c a.qcow2 o.qcow2
    both_fail convert -O qcow2 -C -S 0 a.qcow2 o.qcow2
    both_fail convert -O qcow2 -C --salvage a.qcow2 o.qcow2
    both_fail convert -O qcow2 -T bogus a.qcow2 o.qcow2
    both_fail convert -O qcow2 -n -t bogus a.qcow2 ex.qcow2
    both_fail convert -O qcow2 -r x a.qcow2 o.qcow2
    both_fail convert -O qcow2 --target-is-zero a.qcow2 o.qcow2
    both_fail convert -O qcow2 -n -o cluster_size=4k a.qcow2 ex.qcow2
    both_fail convert -O qcow2 -n a.qcow2 small.qcow2
    both_fail convert -n a.qcow2 small.qcow2
    both_fail convert -O qcow2 -n a.qcow2 missing.qcow2
    both_fail convert -O qcow2 -o bogus=1 a.qcow2 o.qcow2
    both_fail convert -O qcow2 -o cluster_size=x a.qcow2 o.qcow2
    both_fail convert -O qcow2 -o '' a.qcow2 o.qcow2
    both_fail convert -O raw -o cluster_size=4k a.qcow2 o.raw
    both_fail convert -O qcow2 -o preallocation=full -c a.qcow2 o.qcow2
    both_fail convert -O raw -B a.qcow2 a.qcow2 o.raw
    both_fail convert -O qcow2 -B a.qcow2 a.qcow2 o.qcow2
    both_fail convert -O qcow2 -o backing_file=a.qcow2 a.qcow2 o.qcow2
    both_fail convert -O qcow2 -B a.qcow2 -F qcow2 a.qcow2 a.qcow2 o.qcow2
    both_fail convert -O qcow2 -m 17 a.qcow2 o.qcow2
    [[ ! -e o.qcow2 && ! -e o.raw ]]
    # errors of the create step name the file, and QEMU removes what it created
    both_fail convert -O qcow2 -o compression_type=foo a.qcow2 o.qcow2
    both_fail convert -O qcow2 -o cluster_size=3 a.qcow2 o.qcow2
    both_fail convert -O qcow2 -F qcow2 a.qcow2 o.qcow2
    [[ ! -e o.qcow2 ]]
    # refused at the first write, with QEMU's words (and the library's detail on a second line)
    run "$QCOWKIT" convert -c -O qcow2 -o data_file=o.data a.qcow2 o.qcow2
    [[ $status == 1 && ${lines[0]} == "qcowkit: error while writing at byte 0: Operation not supported" ]]
    rm -f o.qcow2 o.data
    # created, then refused at open
    both_fail convert -O qcow2 -t bogus a.qcow2 o.qcow2
    both_fail convert -O qcow2 -B nope.qcow2 -F qcow2 a.qcow2 o.qcow2
}

@test "convert -o: create options apply to the new image; -o help lists them" {
    mk a.qcow2 4M
    wr a.qcow2 'write -P 1 0 1M' 'write -z 2M 64k'
    "$QCOWKIT" convert -O qcow2 -o cluster_size=4k,compat=0.10,size=1M a.qcow2 o.qcow2
    qemu-img info --output=json o.qcow2 >info.json
    [[ $(jq '.["cluster-size"]' info.json) == 4096 && $(jq -r '.["format-specific"].data.compat' info.json) == 0.10 ]]
    [[ $(jq '.["virtual-size"]' info.json) == 4194304 ]]
    qemu-img compare -q a.qcow2 o.qcow2 && qemu-img check -q o.qcow2
    "$QCOWKIT" convert -O qcow2 -o refcount_bits=8 a.qcow2 r.qcow2
    [[ $(qemu-img info --output=json r.qcow2 | jq '.["format-specific"].data["refcount-bits"]') == 8 ]]
    qemu-img compare -q a.qcow2 r.qcow2 && qemu-img check -q r.qcow2
    "$QCOWKIT" convert -O qcow2 -o extended_l2=on,lazy_refcounts=on -o preallocation=metadata a.qcow2 p.qcow2
    qemu-img info --output=json p.qcow2 >info.json
    [[ $(jq '.["format-specific"].data["extended-l2"]' info.json) == true && $(jq '.["format-specific"].data["lazy-refcounts"]' info.json) == true ]]
    qemu-img compare -q a.qcow2 p.qcow2 && qemu-img check -q p.qcow2
    # (qcowkit has no encryption)
    diff <(qemu-img convert -O qcow2 -o help a.qcow2 x.qcow2 | grep -v encrypt) <("$QCOWKIT" convert -O qcow2 -o help a.qcow2 x.qcow2)
    [[ ! -e x.qcow2 ]]
}

@test "convert -B: only the source's top layer is copied, over the given backing file" {
    mk base.qcow2 4M
    wr base.qcow2 'write -P 0x11 0 4M'
    mk -b base.qcow2 -F qcow2 top.qcow2 4M
    wr top.qcow2 'write -P 0x22 1M 64k' 'write -z 2M 64k'
    "$QCOWKIT" convert -O qcow2 -B base.qcow2 -F qcow2 top.qcow2 o.qcow2
    qemu-img convert -O qcow2 -B base.qcow2 -F qcow2 top.qcow2 q.qcow2
    qemu-img compare -q top.qcow2 o.qcow2 && qemu-img check -q o.qcow2
    [[ $(qemu-img info --output=json o.qcow2 | jq -r '.["backing-filename"]') == base.qcow2 ]]
    # the same allocation map as qemu-img's: data at 1M, a zero cluster at 2M, the rest from base
    diff <(qemu-img map --output=json q.qcow2 | jq -c '.[] | [.start, .length, .depth, .data, .zero]') \
        <(qemu-img map --output=json o.qcow2 | jq -c '.[] | [.start, .length, .depth, .data, .zero]')
}

@test "convert -n: zero ranges are written as zeros; --target-is-zero skips them" {
    mk a.qcow2 4M
    wr a.qcow2 'write -P 1 1M 64k'
    mk ex.qcow2 4M
    wr ex.qcow2 'write -P 0xee 0 4M'
    "$QCOWKIT" convert -O qcow2 -n a.qcow2 ex.qcow2
    qemu-img compare -q a.qcow2 ex.qcow2 && qemu-img check -q ex.qcow2
    # a raw target, larger than the source: the tail is kept
    head -c 6M /dev/zero | tr '\0' '\377' >ex.raw
    "$QCOWKIT" convert -n a.qcow2 ex.raw
    qemu-img convert -O raw a.qcow2 a.raw
    cmp -n 4194304 a.raw ex.raw
    [[ $(tail -c 1M ex.raw | tr -d '\377' | wc -c) == 0 ]]
    # --target-is-zero trusts the caller: the old data stays where the source reads zeros
    mk ex2.qcow2 4M
    wr ex2.qcow2 'write -P 0xee 0 64k'
    "$QCOWKIT" convert -O qcow2 -n --target-is-zero a.qcow2 ex2.qcow2
    # with a backing file: qemu-img's message (it then exits 0 having copied nothing; we exit 1)
    run "$QCOWKIT" convert -O qcow2 -n --target-is-zero -B a.qcow2 a.qcow2 ex2.qcow2
    [[ $status == 1 && $output == *"Cannot use --target-is-zero when the destination image has a backing file"* ]]
    qemu-io -c 'read -P 0xee 0 64k' -c 'read -P 1 1M 64k' ex2.qcow2 | grep -qv Pattern
}

@test "convert -S: sparse granularity; -S 0 allocates everything" {
    head -c 1M /dev/urandom >a.raw
    head -c 1M /dev/zero >>a.raw
    head -c 8k /dev/zero >>a.raw
    printf x >>a.raw
    truncate -s 4M a.raw
    "$QCOWKIT" convert -O qcow2 a.raw s4k.qcow2
    "$QCOWKIT" convert -O qcow2 -S 0 a.raw s0.qcow2
    "$QCOWKIT" convert -O raw -S 0 a.raw s0.raw
    "$QCOWKIT" convert -O raw -S 64k a.raw s64k.raw
    for f in s4k.qcow2 s0.qcow2 s0.raw s64k.raw; do qemu-img compare -q a.raw "$f"; done
    qemu-img check -q s4k.qcow2 && qemu-img check -q s0.qcow2
    # -S 0: every byte of the raw output is allocated; qcow2 keeps the data clusters of the zeros
    (( $(allocated_kib s0.raw) >= 4096 ))
    (( $(allocated_kib s64k.raw) < 1200 ))
    (( $(qemu-img check --output=json s0.qcow2 | jq '.["allocated-clusters"]') > \
       $(qemu-img check --output=json s4k.qcow2 | jq '.["allocated-clusters"]') ))
}

@test "convert: cache modes, rate limit, -W, -C, several sources, --salvage" {
    mk a.qcow2 8M
    wr a.qcow2 'write -P 1 0 3M' 'write -P 2 5M 1M'
    for t in none writeback writethrough directsync unsafe; do
        "$QCOWKIT" convert -O qcow2 -t "$t" -T "$t" a.qcow2 "o-$t.qcow2"
        "$QCOWKIT" convert -O raw -t "$t" a.qcow2 "o-$t.raw"
        qemu-img compare -q a.qcow2 "o-$t.qcow2" && qemu-img compare -q a.qcow2 "o-$t.raw"
    done
    # 4 MiB of data at 8 MiB/s: about half a second
    local t0 t1
    t0=$(date +%s%N)
    "$QCOWKIT" convert -O qcow2 -r 8M a.qcow2 r.qcow2
    t1=$(date +%s%N)
    qemu-img compare -q a.qcow2 r.qcow2
    (( (t1 - t0) / 1000000 >= 350 ))
    # -W: the same contents; without it the data clusters are laid out in guest order, as
    # qemu-img lays them out
    "$QCOWKIT" convert -O qcow2 -W -m 4 a.qcow2 w.qcow2
    qemu-img compare -q a.qcow2 w.qcow2 && qemu-img check -q w.qcow2
    "$QCOWKIT" convert -O qcow2 -m 4 a.qcow2 ord.qcow2
    qemu-img map --output=json ord.qcow2 | jq -e '[.[] | select(.data) | .offset] | . == sort'
    # -C: raw to raw with copy_file_range, qcow2 the ordinary way
    qemu-img convert -O raw a.qcow2 a.raw
    "$QCOWKIT" convert -C a.raw c.raw && cmp a.raw c.raw
    "$QCOWKIT" convert -C -O raw a.qcow2 c2.raw && cmp a.raw c2.raw
    "$QCOWKIT" convert -C -O qcow2 a.qcow2 c.qcow2 && qemu-img compare -q a.qcow2 c.qcow2
    # several sources are concatenated
    mk b.qcow2 1M
    wr b.qcow2 'write -P 3 4k 4k'
    "$QCOWKIT" convert -O qcow2 a.qcow2 b.qcow2 a.raw cat.qcow2
    qemu-img convert -O qcow2 a.qcow2 b.qcow2 a.raw qcat.qcow2
    qemu-img compare -q qcat.qcow2 cat.qcow2 && qemu-img check -q cat.qcow2
    "$QCOWKIT" convert -O qcow2 -c a.qcow2 b.qcow2 ccat.qcow2
    qemu-img convert -O qcow2 a.qcow2 b.qcow2 qccat.qcow2
    qemu-img compare -q qccat.qcow2 ccat.qcow2 && qemu-img check -q ccat.qcow2
    # --salvage: a cluster that cannot be read becomes zeros, with a warning
    mk bad.qcow2 1M
    wr bad.qcow2 'write -c -P 5 0 64k' 'write -P 6 64k 64k'
    local l2 e
    l2=$(( $(get_u64 bad.qcow2 $(( $(get_u64 bad.qcow2 40) ))) & 0xfffffffffe00 ))
    e=$(get_u64 bad.qcow2 "$l2")
    # garbage over the compressed data (64 KiB clusters: the host offset is in bits 0-53)
    head -c 1024 /dev/urandom | dd of=bad.qcow2 bs=1 seek=$(( e & ((1 << 54) - 1) )) conv=notrunc status=none
    run "$QCOWKIT" convert -O qcow2 bad.qcow2 s.qcow2
    [[ $status == 1 ]]
    run "$QCOWKIT" convert -O qcow2 --salvage bad.qcow2 s.qcow2
    [[ $status == 0 && $output == *"warning: error while reading offset 0:"* ]]
    qemu-io -c 'read -P 0 0 64k' -c 'read -P 6 64k 64k' s.qcow2 | grep -qv Pattern
}
