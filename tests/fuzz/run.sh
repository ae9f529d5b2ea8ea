#!/bin/bash
# run.sh SECONDS TARGET... - run each libFuzzer target (build-fuzz/fuzz_*) for
# SECONDS, two at a time (the machine has 2 cores), on the seeds of
# make-seeds.sh plus what earlier runs kept in build-fuzz/corpus-<target>.
# Prints one line per target: executions, edges covered (cov), corpus size
# and any finding (crash, timeout, out-of-memory, leak: the input is saved as
# build-fuzz/findings/<target>-crash-...). Exits 1 if any target found one.
#
# Limits per input: 10 s, 512 MiB in one malloc, 2 GiB RSS (ASan included).
# FUZZ_JOBS=N runs N targets at a time instead of 2 (a long campaign runs all at once).
set -uo pipefail
secs="$1"
shift
out=build-fuzz
mkdir -p "$out/findings"
bash tests/fuzz/make-seeds.sh "$out/seeds" >/dev/null || exit 1

run_one() { # SECONDS TARGET
    local n rc
    n=$(basename "$2")
    mkdir -p "build-fuzz/corpus-$n"
    "$2" -max_total_time="$1" -max_len=65536 -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512 \
        -print_final_stats=1 -artifact_prefix="build-fuzz/findings/$n-" \
        "build-fuzz/corpus-$n" build-fuzz/seeds >"build-fuzz/log-$n.txt" 2>&1
    rc=$?
    echo "$rc" >"build-fuzz/rc-$n"
}
export -f run_one
printf '%s\n' "$@" | xargs -P "${FUZZ_JOBS:-2}" -I{} bash -c 'run_one "$0" "$1"' "$secs" {}

fail=0
printf '%-14s %12s %8s %8s  %s\n' target execs edges corpus finding
for t in "$@"; do
    n=$(basename "$t")
    log="$out/log-$n.txt"
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    last=$(grep -E '^#[0-9]+' "$log" | grep 'cov:' | tail -1)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$last")
    finding=none
    if [[ "$(cat "$out/rc-$n" 2>/dev/null)" != 0 ]]; then
        finding=$(grep -m1 -E '^==[0-9]+==ERROR|^SUMMARY|ERROR: libFuzzer|deadly signal' "$log" || echo "exit $(cat "$out/rc-$n")")
        finding="$finding ($(grep -o "$out/findings/[^ ]*" "$log" | tail -1))"
        fail=1
    fi
    printf '%-14s %12s %8s %8s  %s\n' "$n" "${execs:-?}" "${cov:-?}" "${corp:-?}" "$finding"
done
exit $fail
