#!/usr/bin/env bash
# tests/install-peers.sh - make sure the programs and libraries the tests need are here.
#
# Needed: qemu-img/qemu-io/qemu-nbd (qemu-utils), nbdinfo (libnbd-bin), bats, GNU parallel (bats
# --jobs), jq, zstd, pkg-config, and the cmocka, libzstd and ISA-L (fast deflate) headers.
# - Everything present: prints nothing, exits 0 (safe to run on every `make check`).
# - Something missing and we are root: apt-get update && apt-get install -y the packages.
# - Otherwise: says what is missing and exits 0 so the suites can skip (exit 77 / bats skip);
#   under CI=true a missing peer is an error (exit 1).
set -u

declare -A pkg_of=(
    [qemu-img]=qemu-utils [qemu-io]=qemu-utils [qemu-nbd]=qemu-utils
    [nbdinfo]=libnbd-bin [bats]=bats [parallel]=parallel [jq]=jq [zstd]=zstd
    [pkg-config]=pkg-config
)
declare -A hdr_of=(
    [/usr/include/cmocka.h]=libcmocka-dev [/usr/include/zstd.h]=libzstd-dev
    [/usr/include/isa-l/igzip_lib.h]=libisal-dev
)

missing_pkgs() {
    local c h
    declare -A want=()
    for c in "${!pkg_of[@]}"; do command -v "$c" >/dev/null 2>&1 || want[${pkg_of[$c]}]=1; done
    for h in "${!hdr_of[@]}"; do [[ -e "$h" ]] || want[${hdr_of[$h]}]=1; done
    ((${#want[@]})) && printf '%s\n' "${!want[@]}" | sort
}

mapfile -t missing < <(missing_pkgs)
((${#missing[@]} == 0)) && exit 0

if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "install-peers: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
        mapfile -t missing < <(missing_pkgs)
        ((${#missing[@]} == 0)) && exit 0
    fi
    echo "install-peers: could not install: ${missing[*]}" >&2
else
    echo "install-peers: missing test peers: ${missing[*]} (as root: apt-get install ${missing[*]})" >&2
fi
if [[ "${CI:-}" == true ]]; then
    echo "install-peers: CI=true and peers are missing: failing" >&2
    exit 1
fi
echo "install-peers: tests that need them will be skipped" >&2
exit 0
