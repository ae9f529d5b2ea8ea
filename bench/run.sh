#!/usr/bin/env bash
# bench/run.sh - entry point of `make bench`: runs every other bench/*.sh
# (each prints its own table of timings and ratios against qemu-img) and
# reports which ones failed.
#
# Environment: QCOWKIT = the CLI under test (set by the Makefile; defaults to
# build/qcowkit). qemu-img must be installed: the benchmarks only mean
# anything side by side with it. Exit status: 0 if every benchmark ran,
# 1 otherwise.
set -u

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
QCOWKIT=${QCOWKIT:-$here/../build/qcowkit}
export QCOWKIT

if ! command -v qemu-img >/dev/null 2>&1; then
    echo "bench: qemu-img not found; install qemu-utils (or run 'make peers' as root)" >&2
    exit 1
fi
if [ ! -x "$QCOWKIT" ]; then
    echo "bench: $QCOWKIT is not an executable; run 'make' first" >&2
    exit 1
fi

echo "qcowkit bench on $(uname -n): $(nproc) CPU(s), $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo 2>/dev/null | head -n 1)"
echo "$("$QCOWKIT" --version 2>/dev/null | head -n 1); $(qemu-img --version | head -n 1)"

failed=()
ran=0
for script in "$here"/*.sh; do
    [ -e "$script" ] || continue
    [ "$(basename "$script")" = "run.sh" ] && continue
    ran=$((ran + 1))
    echo
    echo "== $(basename "$script" .sh)"
    if ! bash "$script"; then
        failed+=("$(basename "$script")")
    fi
done

echo
if [ "$ran" -eq 0 ]; then
    echo "bench: no benchmarks in $here"
    exit 0
fi
if [ "${#failed[@]}" -gt 0 ]; then
    echo "bench: ${#failed[@]} of $ran benchmark(s) failed: ${failed[*]}" >&2
    exit 1
fi
echo "bench: $ran benchmark(s) done"
