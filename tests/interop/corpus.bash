# tests/interop/corpus.bash - a corpus of qcow2 images made at test time by qemu-img and qemu-io.
#
#   corpus_ensure          build the corpus once per bats run (in $BATS_RUN_TMPDIR/corpus, under
#                          flock so that `bats --jobs N` builds it exactly once) and print its dir.
#   corpus_build DIR       build the corpus into DIR (DIR must not exist); used by corpus_ensure.
#   corpus_setup_file      a bats setup_file for suites that read the corpus: needs the peers and
#                          the CLI, builds the corpus and exports CORPUS.
#   corpus_setup           the matching bats setup: needs the peers and a built corpus.
#   corpus_images DIR [TAG]  print the image paths (relative to DIR) of the manifest, optionally
#                          only those carrying TAG.
#
# DIR/MANIFEST has one line per image: "<relative path> <tag>,<tag>,...". Tags:
#   chain (has a backing file)   huge (4 TiB sparse: never convert it to a regular raw file)
#   compressed (has compressed clusters: qemu-img's human map refuses it)   datafile
#   dirty   bitmaps   snapshots   v2   extl2   zero
# Every image is read-only for the tests: copy it before writing to it.
# Guest data comes from qemu-io patterns and from DIR/src/mixed.raw (random, repetitive, text and
# zero stretches), so compressed images hold both compressible and incompressible clusters.
# Needs: qemu-img, qemu-io, jq, dd, flock, md5sum. Builds in a few seconds; about 90 MiB on disk, most of
# it in the four 2 MiB-cluster images (the others are a few MiB or less).

_corpus_lib_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../cli/helpers.bash
source "$_corpus_lib_dir/../cli/helpers.bash"

# qemu-io on an image, failing loudly. Usage: _qio [qemu-io options] -c CMD ... IMG
_qio() {
    local out
    if ! out="$(qemu-io "$@" 2>&1)"; then
        echo "corpus: qemu-io $* failed: $out" >&2
        return 1
    fi
    if grep -qiE 'error|failed|not supported|Invalid' <<<"$out"; then
        echo "corpus: qemu-io $*: $out" >&2
        return 1
    fi
}

_qimg() {
    local out
    out="$(qemu-img "$@" 2>&1)" || { echo "corpus: qemu-img $* failed: $out" >&2; return 1; }
}

# Run qemu-io and have it abort(3) after its commands, as a crash would (no clean close).
_qio_crash() {
    local rc=0
    { (ulimit -c 0; qemu-io "$@" -c abort; rc=$?; exit $rc) >/dev/null 2>&1; } 2>/dev/null || rc=$?
    [[ $rc -ge 128 ]] || { echo "corpus: qemu-io $* did not abort (rc=$rc)" >&2; return 1; }
}

_add() { # PATH TAGS
    [[ -f "$1" ]] || { echo "corpus: $1 was not made" >&2; return 1; }
    printf '%s %s\n' "$1" "${2:--}" >>MANIFEST
}

# The common scribble: data in several clusters, a partial cluster, zeroes and a discard, sized for
# 4 MiB images. (v2 images have no zero flag: qemu writes zeroes or deallocates there.)
_scribble() { # IMG
    _qio -c 'write -P 0xa1 0 1M' -c 'write -P 0xa2 1572864 100000' \
        -c 'write -P 0xa3 3000000 7000' -c 'write -P 0xa4 4193792 512' \
        -c 'write -z 512k 128k' -c 'discard 2M 64k' "$1"
}

# Make mixed.raw: SEGMENTS x 64 KiB, cycling through random, repetitive, zero, text, random,
# half-random/half-zero, 0xcd fill, random-4K-then-text. Each 4 KiB block inside a segment of the
# first kind is random too, so 4 KiB and 512 B clusters see incompressible data as well.
_make_mixed() { # FILE SEGMENTS
    local f="$1" n="$2" i
    : >"$f"
    local text
    text="$(mktemp)"
    seq 1 20000 | head -c 65536 >"$text"
    for ((i = 0; i < n; i++)); do
        case $((i % 8)) in
        0 | 4) head -c 65536 /dev/urandom ;;
        1) head -c 65536 /dev/zero | tr '\0' 'A' ;;
        2) head -c 65536 /dev/zero ;;
        3) cat "$text" ;;
        5) head -c 32768 /dev/urandom; head -c 32768 /dev/zero ;;
        6) head -c 65536 /dev/zero | tr '\0' '\315' ;;
        7) head -c 4096 /dev/urandom; head -c 61440 "$text" ;;
        esac >>"$f"
    done
    rm -f "$text"
}

# Drop the first header extension (the backing-format one in a fresh qemu-img image) by moving
# the rest of the first cluster's used part up, and fix backing_file_offset. The image then has a
# backing file without a recorded format, which qemu-img create no longer allows.
_drop_first_ext() { # IMG
    local img="$1" hl boff bsize elen end
    hl="$(get_u32 "$img" 100)"
    boff="$(get_u64 "$img" 8)"
    bsize="$(get_u32 "$img" 16)"
    [[ "$(get_u32 "$img" "$hl")" == $((0xE2792ACA)) ]] || { echo "corpus: $img: first extension is not the backing format" >&2; return 1; }
    elen="$(get_u32 "$img" $((hl + 4)))"
    elen=$(((elen + 7) / 8 * 8 + 8))
    end=$((boff + bsize))
    dd if="$img" bs=1 skip=$((hl + elen)) count=$((end - hl - elen)) status=none |
        dd of="$img" bs=1 seek="$hl" conv=notrunc status=none
    head -c "$elen" /dev/zero | dd of="$img" bs=1 seek=$((end - elen)) conv=notrunc status=none
    put_u64 "$img" 8 $((boff - elen))
}

corpus_build() { # DIR
    local dir="$1"
    mkdir -p "$dir" && cd "$dir" || return 1
    mkdir -p src chain/sub data
    : >MANIFEST
    _make_mixed src/mixed.raw 64 || return 1 # 4 MiB

    # --- versions and cluster sizes --------------------------------------------------------
    _qimg create -f qcow2 empty.qcow2 4M && _add empty.qcow2 - || return 1
    local cs name
    for cs in 512 4k 64k 2M; do
        name="v3-c$cs.qcow2"
        _qimg create -f qcow2 -o cluster_size=$cs "$name" 4M && _scribble "$name" && _add "$name" zero || return 1
    done
    for cs in 512 64k; do
        name="v2-c$cs.qcow2"
        _qimg create -f qcow2 -o compat=0.10,cluster_size=$cs "$name" 4M && _scribble "$name" && _add "$name" v2 || return 1
    done

    # --- refcount widths ------------------------------------------------------------------
    _qimg create -f qcow2 -o refcount_bits=1 rc1.qcow2 4M && _scribble rc1.qcow2 && _add rc1.qcow2 zero || return 1
    _qimg create -f qcow2 -o refcount_bits=1,cluster_size=512 rc1-c512.qcow2 4M &&
        _qio -c 'write -P 0x31 0 2M' -c 'discard 1M 4k' rc1-c512.qcow2 && _add rc1-c512.qcow2 - || return 1
    _qimg create -f qcow2 -o refcount_bits=64,cluster_size=4k rc64.qcow2 4M && _scribble rc64.qcow2 && _add rc64.qcow2 zero || return 1

    # --- compression ----------------------------------------------------------------------
    _qimg convert -c -O qcow2 src/mixed.raw zlib.qcow2 && _add zlib.qcow2 compressed || return 1
    _qimg convert -c -O qcow2 -o cluster_size=4k src/mixed.raw zlib-c4k.qcow2 && _add zlib-c4k.qcow2 compressed || return 1
    _qimg convert -c -O qcow2 -o compat=0.10 src/mixed.raw zlib-v2.qcow2 && _add zlib-v2.qcow2 compressed,v2 || return 1
    _qimg convert -c -O qcow2 -o compression_type=zstd src/mixed.raw zstd.qcow2 && _add zstd.qcow2 compressed || return 1
    _qimg convert -c -O qcow2 -o compression_type=zstd,cluster_size=2M src/mixed.raw zstd-c2m.qcow2 && _add zstd-c2m.qcow2 compressed || return 1
    _qimg convert -c -O qcow2 -o compression_type=zstd,extended_l2=on src/mixed.raw zstd-extl2.qcow2 && _add zstd-extl2.qcow2 compressed,extl2 || return 1
    # both kinds of cluster must be there: compressed ones, and incompressible ones stored plainly
    local img counts c a
    for img in zlib zlib-c4k zlib-v2 zstd zstd-extl2; do
        counts="$(qemu-img check --output=json "$img.qcow2" | jq -r '"\(.["compressed-clusters"] // 0) \(.["allocated-clusters"])"')"
        read -r c a <<<"$counts"
        ((c > 0 && c < a)) || { echo "corpus: $img.qcow2 has $c compressed of $a clusters" >&2; return 1; }
    done
    # compressed clusters partly overwritten (copy-on-write out of compressed clusters)
    cp zlib.qcow2 zlib-cow.qcow2 && _qio -c 'write -P 0x99 65636 1000' -c 'write -z 262144 65536' -c 'discard 393216 65536' zlib-cow.qcow2 &&
        _add zlib-cow.qcow2 compressed,zero || return 1

    # --- extended L2: writes smaller than a subcluster (2 KiB at 64 KiB clusters) ------------
    _qimg create -f qcow2 -o extended_l2=on,cluster_size=64k extl2.qcow2 4M &&
        _qio -c 'write -P 0x01 0 512' -c 'write -P 0x02 2048 2048' -c 'write -P 0x03 70000 100' \
            -c 'write -z 131072 4096' -c 'write -P 0x04 196608 65536' -c 'write -z 200704 2048' \
            -c 'discard 204800 2048' -c 'write -z -u 1M 64k' -c 'write -P 0x05 4190000 1000' extl2.qcow2 &&
        _add extl2.qcow2 extl2,zero || return 1
    _qimg create -f qcow2 -o extended_l2=on,cluster_size=2M extl2-c2m.qcow2 4M &&
        _qio -c 'write -P 0x06 100 300' -c 'write -z 65536 65536' -c 'write -P 0x07 2162688 131072' extl2-c2m.qcow2 &&
        _add extl2-c2m.qcow2 extl2,zero || return 1

    # --- zero clusters and discards -------------------------------------------------------
    _qimg create -f qcow2 zero.qcow2 4M &&
        _qio -c 'write -P 0x0f 0 2M' -c 'write -z 0 256k' -c 'write -z -u 512k 256k' -c 'discard 1M 128k' \
            -c 'write -z -u 3M 64k' -c 'write -z 3584k 32k' zero.qcow2 &&
        _add zero.qcow2 zero || return 1
    _qimg create -f qcow2 -o compat=0.10 zero-v2.qcow2 4M &&
        _qio -c 'write -P 0x0f 0 2M' -c 'write -z 0 256k' -c 'discard 1M 128k' -c 'write -z 3M 64k' zero-v2.qcow2 &&
        _add zero-v2.qcow2 v2 || return 1
    _qimg create -f qcow2 -o preallocation=metadata prealloc-meta.qcow2 2M &&
        _qio -c 'write -P 0x10 64k 64k' prealloc-meta.qcow2 && _add prealloc-meta.qcow2 - || return 1

    # --- backing chain: chain/top -> chain/mid2 -> chain/sub/mid1 -> chain/base.raw ---------
    _qimg create -f raw chain/base.raw 4M && _qio -f raw -c 'write -P 0x11 0 2M' chain/base.raw || return 1
    (cd chain/sub && _qimg create -f qcow2 -b ../base.raw -F raw mid1.qcow2 4M &&
        _qio -c 'write -P 0x22 1M 512k' -c 'write -z 3M 64k' mid1.qcow2) || return 1
    (cd chain && _qimg create -f qcow2 -b sub/mid1.qcow2 -F qcow2 mid2.qcow2 4M &&
        _qio -c 'write -P 0x33 1536k 64k' -c 'write -P 0x34 2600000 100000' -c 'write -z -u 0 64k' mid2.qcow2 &&
        _qimg create -f qcow2 -b mid2.qcow2 -F qcow2 top.qcow2 4M &&
        _qio -c 'write -P 0x44 4096 4096' -c 'write -z 1M 64k' -c 'write -P 0x45 3M 100' top.qcow2 &&
        _drop_first_ext top.qcow2) || return 1 # top records no backing format: probed
    _add chain/sub/mid1.qcow2 chain && _add chain/mid2.qcow2 chain && _add chain/top.qcow2 chain || return 1
    # a backing file shorter than its overlay, and an extended-L2 overlay (subcluster COW)
    (cd chain && _qimg create -f qcow2 short-base.qcow2 1M && _qio -c 'write -P 0x55 0 1M' short-base.qcow2 &&
        _qimg create -f qcow2 -b short-base.qcow2 -F qcow2 short-top.qcow2 3M &&
        _qio -c 'write -P 0x56 960k 128k' short-top.qcow2 &&
        _qimg create -f qcow2 -o extended_l2=on -b short-base.qcow2 -F qcow2 extl2-top.qcow2 2M &&
        _qio -c 'write -P 0x57 1000 600' -c 'write -P 0x58 65536 2048' -c 'write -z 100000 2048' extl2-top.qcow2) || return 1
    _add chain/short-top.qcow2 chain && _add chain/extl2-top.qcow2 chain,extl2 || return 1

    # --- internal snapshots with later writes ---------------------------------------------
    _qimg create -f qcow2 snap.qcow2 4M && _qio -c 'write -P 0x61 0 1M' snap.qcow2 &&
        _qimg snapshot -c s1 snap.qcow2 && _qio -c 'write -P 0x62 512k 1M' snap.qcow2 &&
        _qimg snapshot -c 'second snap' snap.qcow2 && _qio -c 'write -z 0 64k' -c 'discard 3M 64k' -c 'write -P 0x63 3M 4k' snap.qcow2 &&
        _add snap.qcow2 snapshots,zero || return 1
    _qimg create -f qcow2 -o compat=0.10 snap-v2.qcow2 4M && _qio -c 'write -P 0x64 0 256k' snap-v2.qcow2 &&
        _qimg snapshot -c only snap-v2.qcow2 && _qio -c 'write -P 0x65 128k 256k' snap-v2.qcow2 &&
        _add snap-v2.qcow2 snapshots,v2 || return 1

    # --- external data file ---------------------------------------------------------------
    (cd data && _qimg create -f qcow2 -o data_file=df.data df.qcow2 4M &&
        _qio -c 'write -P 0x71 0 1M' -c 'write -P 0x72 2M 100000' -c 'write -z 512k 64k' df.qcow2 &&
        _qimg create -f qcow2 -o data_file=dfraw.data,data_file_raw=on dfraw.qcow2 4M &&
        _qio -c 'write -P 0x73 64k 1M' -c 'write -P 0x74 3M 4096' dfraw.qcow2) || return 1
    _add data/df.qcow2 datafile,zero && _add data/dfraw.qcow2 datafile || return 1

    # --- dirty lazy-refcounts image (crash after writes) ------------------------------------
    _qimg create -f qcow2 -o lazy_refcounts=on lazy.qcow2 4M && _qio -c 'write -P 0x81 0 128k' lazy.qcow2 &&
        _add lazy.qcow2 - || return 1
    _qimg create -f qcow2 -o lazy_refcounts=on dirty.qcow2 4M &&
        _qio_crash -c 'write -P 0x82 0 256k' -c 'write -P 0x83 1M 64k' dirty.qcow2 || return 1
    [[ "$(get_u64 dirty.qcow2 72)" == 1 ]] || { echo "corpus: dirty.qcow2 is not dirty" >&2; return 1; }
    _add dirty.qcow2 dirty || return 1

    # --- persistent bitmaps (enabled, disabled, small granularity, in use) ------------------
    _qimg create -f qcow2 bitmaps.qcow2 4M && _qio -c 'write -P 0x91 0 64k' bitmaps.qcow2 &&
        _qimg bitmap --add bitmaps.qcow2 b0 && _qimg bitmap --add -g 512 bitmaps.qcow2 fine &&
        _qimg bitmap --add --disable bitmaps.qcow2 off &&
        _qio -c 'write -P 0x92 1M 100k' -c 'write -z 3M 64k' -c 'discard 0 64k' bitmaps.qcow2 &&
        _add bitmaps.qcow2 bitmaps || return 1
    _qimg create -f qcow2 -o cluster_size=4k bitmap-inuse.qcow2 4M && _qimg bitmap --add bitmap-inuse.qcow2 crashed &&
        _qimg bitmap --add --disable bitmap-inuse.qcow2 idle &&
        _qio_crash -c 'write -P 0x93 8k 8k' -c flush bitmap-inuse.qcow2 &&
        _add bitmap-inuse.qcow2 bitmaps || return 1

    # --- virtual sizes that are not a multiple of the cluster size ---------------------------
    _qimg create -f qcow2 odd.qcow2 1000448 && _qio -c 'write -P 0xb1 983040 17408' -c 'write -P 0xb2 0 512' odd.qcow2 &&
        _add odd.qcow2 - || return 1
    _qimg create -f qcow2 -o cluster_size=2M odd-c2m.qcow2 $((513 * 512)) &&
        _qio -c 'write -P 0xb3 262144 512' -c 'write -P 0xb4 1000 5000' odd-c2m.qcow2 && _add odd-c2m.qcow2 - || return 1
    _qimg create -f qcow2 -o cluster_size=512 odd-c512.qcow2 $((1000 * 512 + 512)) &&
        _qio -c 'write -P 0xb5 511488 1024' odd-c512.qcow2 && _add odd-c512.qcow2 - || return 1

    # --- 4 TiB sparse ---------------------------------------------------------------------
    _qimg create -f qcow2 huge.qcow2 4T &&
        _qio -c 'write -P 0xc1 0 64k' -c 'write -P 0xc2 1T 4k' -c 'write -z 2T 1M' -c 'write -P 0xc3 3T 1M' \
            -c 'write -P 0xc4 4398046445568 65536' huge.qcow2 && _add huge.qcow2 huge,zero || return 1

    find . -type f ! -name MANIFEST ! -name SUMS -print0 | sort -z | xargs -0 md5sum >SUMS || return 1
    local n
    n="$(wc -l <MANIFEST)"
    ((n >= 30)) || { echo "corpus: only $n images" >&2; return 1; }
}

corpus_ensure() {
    local base="${BATS_RUN_TMPDIR:-${TMPDIR:-/tmp}}" dir
    dir="$base/corpus"
    (
        flock 9
        if [[ ! -f "$dir/.done" ]]; then
            rm -rf "$dir" "$dir.tmp"
            (corpus_build "$dir.tmp") >"$base/corpus.log" 2>&1 || { cat "$base/corpus.log" >&2; exit 1; }
            mv "$dir.tmp" "$dir" && touch "$dir/.done"
        fi
    ) 9>"$base/corpus.lock" || return 1
    echo "$dir"
}

corpus_setup_file() {
    require_peer qemu-img qemu-io jq flock || return 0
    qk_bin_ok
    CORPUS="$(corpus_ensure)"
    export CORPUS
}

corpus_setup() {
    require_peer qemu-img qemu-io jq flock
    [[ -n "${CORPUS:-}" && -f "$CORPUS/MANIFEST" ]] || { echo "no corpus" >&2; return 1; }
}

corpus_images() { # DIR [TAG]
    local path tags
    while read -r path tags; do
        if [[ -z "${2:-}" || ",$tags," == *",$2,"* ]]; then echo "$path"; fi
    done <"$1/MANIFEST"
}
