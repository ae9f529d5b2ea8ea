# tests/cli/helpers.bash - shared helpers for every bats suite (cli, corrupt, interop).
#
# Load with:  load ../cli/helpers     (from a .bats file in tests/<suite>/)
#
#   $QCOWKIT              the CLI under test: taken from the environment (make check sets it),
#                         else build/qcowkit or build-san/qcowkit of this tree. Never skipped:
#                         a missing binary fails every test that uses it (qk_bin_ok).
#   require_peer CMD...   skip the test when a peer tool (qemu-img, jq, ...) is missing;
#                         under CI=true a missing peer is a failure instead. In setup_file
#                         (where bats 1.8 cannot skip) it returns 1 instead of skipping: use
#                         `require_peer X || return 0` there and call it again in setup().
#   json_eq A B           compare two JSON files (or <(...)) after `jq -S .`; prints a diff
#                         and returns 1 when they differ or either is not JSON.
#   assert_no_sanitizer [TEXT]
#                         fail when TEXT (default: $output and $stderr of the last `run`)
#                         holds an ASan/UBSan report.
#   put_u8/put_u16/put_u32/put_u64 FILE OFFSET VALUE
#                         write a big-endian integer in place (dd conv=notrunc).
#   get_u8/get_u16/get_u32/get_u64 FILE OFFSET
#                         print a big-endian integer as decimal (u64 above 2^63 wraps negative).
#   put_bytes FILE OFFSET STRING   write raw bytes (printf %b escapes allowed) in place.
#
# Nothing here writes outside the files it is given.

QK_TREE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [[ -z "${QCOWKIT:-}" ]]; then
    for _qk in "$QK_TREE_ROOT/build/qcowkit" "$QK_TREE_ROOT/build-san/qcowkit"; do
        if [[ -x "$_qk" ]]; then QCOWKIT="$_qk"; break; fi
    done
    unset _qk
fi
export QCOWKIT="${QCOWKIT:-$QK_TREE_ROOT/build/qcowkit}"

# Fail (not skip) when the binary under test is missing.
qk_bin_ok() {
    [[ -x "$QCOWKIT" ]] || { echo "qcowkit binary not found: $QCOWKIT (run make)" >&2; return 1; }
}

require_peer() {
    local p missing=()
    for p in "$@"; do command -v "$p" >/dev/null 2>&1 || missing+=("$p"); done
    ((${#missing[@]} == 0)) && return 0
    if [[ "${CI:-}" == true ]]; then
        echo "missing test peer(s) under CI=true: ${missing[*]} (tests/install-peers.sh)" >&2
        return 1
    fi
    # bats 1.8 cannot skip from setup_file: there, return 1 so the caller stops preparing, and
    # call require_peer again in setup(), which skips each test.
    [[ -n "${BATS_TEST_NAME:-}" ]] || return 1
    skip "missing test peer(s): ${missing[*]}"
}

json_eq() {
    local a b
    a="$(jq -S . <"$1" 2>&1)" || { echo "not JSON ($1): $a" >&2; return 1; }
    b="$(jq -S . <"$2" 2>&1)" || { echo "not JSON ($2): $b" >&2; return 1; }
    [[ "$a" == "$b" ]] && return 0
    diff -u --label "$1" --label "$2" <(printf '%s\n' "$a") <(printf '%s\n' "$b") | sed 's/^/    /' >&2
    return 1
}

assert_no_sanitizer() {
    local text="${1-${output:-}${stderr:-}}"
    if grep -qE 'Sanitizer|runtime error' <<<"$text"; then
        echo "sanitizer report:" >&2
        printf '%s\n' "$text" | head -40 >&2
        return 1
    fi
}

_qk_put_be() { # FILE OFF NBYTES VALUE
    local f="$1" off="$2" n="$3" v="$4" s="" i
    for ((i = n - 1; i >= 0; i--)); do
        s+="$(printf '\\%03o' $(((v >> (8 * i)) & 0xff)))"
    done
    printf "$s" | dd of="$f" bs=1 seek="$off" conv=notrunc status=none
}
put_u8()  { _qk_put_be "$1" "$2" 1 "$3"; }
put_u16() { _qk_put_be "$1" "$2" 2 "$3"; }
put_u32() { _qk_put_be "$1" "$2" 4 "$3"; }
put_u64() { _qk_put_be "$1" "$2" 8 "$3"; }
put_bytes() { printf '%b' "$3" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none; }

_qk_get_be() { # FILE OFF NBYTES
    local hex
    hex="$(od -An -tx1 -v -j "$2" -N "$3" "$1" | tr -d ' \n')"
    [[ ${#hex} -eq $((2 * $3)) ]] || { echo "short read at $2 in $1" >&2; return 1; }
    echo $((16#$hex))
}
get_u8()  { _qk_get_be "$1" "$2" 1; }
get_u16() { _qk_get_be "$1" "$2" 2; }
get_u32() { _qk_get_be "$1" "$2" 4; }
get_u64() { _qk_get_be "$1" "$2" 8; }
