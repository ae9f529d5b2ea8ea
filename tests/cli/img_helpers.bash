# img_helpers.bash - shared setup for the info/map/create CLI tests, which
# compare qcowkit with qemu-img (the oracle) on images made at run time.
#
#   QCOWKIT, require_peer, json_eq ... come from helpers.bash (sourced here)
#   same_json     two JSON texts are equal once parsed (jq -S)
#   both_create   run `create ARGS` with qemu-img and qcowkit in twin folders

source "$BATS_TEST_DIRNAME/../cli/helpers.bash"

img_setup() {
    require_peer qemu-img qemu-io jq
    [ -x "$QCOWKIT" ] || { echo "qcowkit not built: $QCOWKIT" >&2; return 1; }
    cd "$BATS_TEST_TMPDIR" || return 1
}

# same_json A B: equal as parsed JSON; prints both (sorted) when not.
same_json() {
    local a b
    a=$(printf '%s' "$1" | jq -S .) || { echo "not JSON: $1" >&2; return 1; }
    b=$(printf '%s' "$2" | jq -S .) || { echo "not JSON: $2" >&2; return 1; }
    if [ "$a" != "$b" ]; then
        diff <(echo "$a") <(echo "$b") >&2
        return 1
    fi
}

# same_text A B: equal byte for byte; shows a diff when not.
same_text() {
    if [ "$1" != "$2" ]; then
        diff <(echo "$1") <(echo "$2") >&2
        return 1
    fi
}

# Output (stdout+stderr) and exit code of a command, with our program name
# replaced by qemu-img's so that messages compare.
run_both_text() {
    local out rc
    out=$("$@" 2>&1)
    rc=$?
    out=${out//qcowkit: /qemu-img: }
    out=${out//"Try 'qcowkit --help'"/"Try 'qemu-img --help'"}
    printf '%s\nrc=%s' "$out" "$rc"
}

# same_outputs SUBCMD ARGS...: `SUBCMD --output=json|human ARGS` print the same
# text (and exit code) with qemu-img and with qcowkit.
same_outputs() {
    local cmd=$1 fmt
    shift
    for fmt in json human; do
        same_text "$(run_both_text qemu-img "$cmd" --output=$fmt "$@")" \
                  "$(run_both_text "$QCOWKIT" "$cmd" --output=$fmt "$@")" || return 1
    done
}

# both_info_json ARGS...: `info --output=json ARGS` of both, as parsed JSON.
both_info_json() {
    same_json "$(qemu-img info --output=json "$@")" "$("$QCOWKIT" info --output=json "$@")"
}

# both_create ARGS...: run `create ARGS` in q/ (qemu-img) and k/ (qcowkit),
# each prepared by the function `create_fixture` if defined; then require
# the same output, exit code and resulting files (content and allocation).
both_create() {
    local d f
    rm -rf q k
    mkdir q k
    for d in q k; do
        if declare -F create_fixture >/dev/null; then
            (cd "$d" && create_fixture) || return 1
        fi
    done
    local a b
    a=$(cd q && run_both_text qemu-img create "$@")
    b=$(cd k && run_both_text "$QCOWKIT" create "$@")
    same_text "$a" "$b" || return 1
    for f in $(cd q && find . -type f | sort); do
        [ -f "k/$f" ] || { echo "qcowkit did not create $f" >&2; return 1; }
        cmp "q/$f" "k/$f" >&2 || return 1
        # same length, and the same ranges allocated on the host (holes where
        # QEMU leaves holes), as qemu-img sees them in the files; st_blocks
        # itself also counts the file system's extent-tree blocks, which
        # depend on the order of the writes
        [ "$(stat -c %s "q/$f")" = "$(stat -c %s "k/$f")" ] || return 1
        same_text "$(qemu-img map -f raw --output=json "q/$f")" \
                  "$(qemu-img map -f raw --output=json "k/$f")" || {
            echo "$f: different host allocation" >&2
            return 1
        }
    done
    for f in $(cd k && find . -type f | sort); do
        [ -f "q/$f" ] || { echo "qcowkit left $f that qemu-img does not" >&2; return 1; }
    done
}
