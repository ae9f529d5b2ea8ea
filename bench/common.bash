# bench/common.bash - shared by the bench/*.sh scripts (sourced; bench/run.sh runs only *.sh):
#   bench_init NAME    BENCH_PRIORITY=1 re-exec in an autogroup of its own at nice -15 (root
#                      only), so that other sessions' load weighs less on both tools; checks
#                      that qemu-img and $QCOWKIT exist (exit 77 otherwise); sets QCOWKIT, RUNS
#                      (BENCH_RUNS, default 3) and tmp (a temp dir removed at exit).
#   run_timed CMD...   run CMD once; prints "WALL_MS CPU_MS" (CPU = user + system); on failure
#                      prints CMD's stderr and fails.
#   make_half_sparse FILE MB  a sparse raw FILE of MB MiB with 1 MiB of base64 text (it compresses
#                      to about 3/4) at every other MiB.
#   time_convert EXT SRC OPTIONS...  time `convert OPTIONS SRC $tmp/out.EXT` with qemu-img and
#                      qcowkit, RUNS times alternating, after warming the page cache with SRC
#                      and one untimed run of each, each run after a sync;
#                      sets Q/QC (qemu-img's best wall/CPU ms) and K/KC (qcowkit's); leaves
#                      qemu-img's output in $tmp/ref.EXT and qcowkit's in $tmp/out.EXT.
#   min A B            the smaller of two integers, A may be empty.
#   cpu_pressure       one line on how busy the machine was during the run.

bench_init() { # NAME
    if [[ ${BENCH_PRIORITY:-0} == 1 && -z ${_QK_BENCH_SESSION:-} && -w /proc/self/autogroup ]]; then
        exec env _QK_BENCH_SESSION=1 setsid -w bash -c 'echo -15 >/proc/self/autogroup; exec bash "$0"' "$0"
    fi
    local here t
    here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
    QCOWKIT=${QCOWKIT:-$here/../build/qcowkit}
    RUNS=${BENCH_RUNS:-3}
    for t in qemu-img "$QCOWKIT"; do
        if ! command -v "$t" >/dev/null 2>&1; then
            echo "bench/$1.sh: $t not found" >&2
            exit 77
        fi
    done
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/qk-bench-$1.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
}

run_timed() {
    local TIMEFORMAT='%3R %3U %3S' r u s
    { time "$@" >/dev/null 2>"$tmp/err"; } 2>"$tmp/time" || { cat "$tmp/err" >&2; return 1; }
    read -r r u s <"$tmp/time"
    awk -v r="$r" -v u="$u" -v s="$s" 'BEGIN { printf "%d %d\n", r * 1000, (u + s) * 1000 }'
}

make_half_sparse() { # FILE MB
    local half_mb=$(($2 / 2)) i
    head -c $((half_mb * 3 / 4))M /dev/urandom | base64 -w0 | head -c ${half_mb}M >"$tmp/data"
    truncate -s "$2M" "$1"
    for ((i = 0; i < half_mb; i++)); do
        dd if="$tmp/data" of="$1" bs=1M skip=$i seek=$((2 * i)) count=1 conv=notrunc status=none
    done
    rm -f "$tmp/data"
}

time_convert() { # EXT SRC OPTIONS...
    local ext=$1 src=$2 w c r
    shift 2
    Q="" QC="" K="" KC=""
    cat "$src" >/dev/null # warm the page cache so both tools start equal
    # one untimed run of each: the first run after making the sources pays for page reclaim
    run_timed qemu-img convert "$@" "$src" "$tmp/out.$ext" >/dev/null
    rm -f "$tmp/out.$ext"
    run_timed "$QCOWKIT" convert "$@" "$src" "$tmp/out.$ext" >/dev/null
    for ((r = 0; r < RUNS; r++)); do
        rm -f "$tmp/out.$ext"
        sync # no writeback of an earlier output during the run
        read -r w c < <(run_timed qemu-img convert "$@" "$src" "$tmp/out.$ext")
        Q=$(min "$Q" "$w") QC=$(min "$QC" "$c")
        mv "$tmp/out.$ext" "$tmp/ref.$ext"
        sync
        read -r w c < <(run_timed "$QCOWKIT" convert "$@" "$src" "$tmp/out.$ext")
        K=$(min "$K" "$w") KC=$(min "$KC" "$c")
    done
}

min() { if [[ -z $1 || $2 -lt $1 ]]; then echo "$2"; else echo "$1"; fi; }

cpu_pressure() {
    if [[ -r /proc/pressure/cpu ]]; then
        echo "(CPU pressure during the run: $(sed -n 's/^some avg10=\([0-9.]*\).*/\1/p' /proc/pressure/cpu)% of the time some task waited for a CPU)"
    fi
}
