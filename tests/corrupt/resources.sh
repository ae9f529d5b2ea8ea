#!/bin/bash
# resources.sh - peak RSS and time of `qcowkit info` and `qcowkit check` on every image the
# tests/corrupt suites make, and on crafted worst cases at QEMU's metadata limits
# (worst-cases.pl: maximum l1_size, maximum snapshot table, 65535 bitmaps, maximum bitmap
# directory). Prints a table (image, command, peak RSS, seconds, exit code) and the worst
# figures; exits 1 when a run exceeds QK_RSS_LIMIT_KB (default 256 MiB) or QK_TIME_LIMIT
# seconds (default 5), crashed or hung.
#
# The suites' images are not made a second time by a copy of their makers: the suites run with
# QCOWKIT pointing at a wrapper that keeps a copy of every qcow2 file handed to qcowkit (one per
# content), then execs the real binary. QK_RESOURCE_SUITES (default: every tests/corrupt/*.bats
# but resources.bats) picks the suites; set it to "none" for the worst cases alone.
#
# Usage: QCOWKIT=build/qcowkit bash tests/corrupt/resources.sh [WORKDIR]
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
QCOWKIT="$(realpath "${QCOWKIT:-$here/../../build/qcowkit}")"
rss_limit="${QK_RSS_LIMIT_KB:-262144}"
time_limit="${QK_TIME_LIMIT:-5}"
work="${1:-$(mktemp -d)}"
[[ -n "${1:-}" ]] || trap 'rm -rf "$work"' EXIT
mkdir -p "$work/images" || exit 1

# 1. the suites' images
cat >"$work/collect" <<WRAP
#!/bin/bash
for a in "\$@"; do
    [[ -f "\$a" ]] && [[ "\$(head -c 4 "\$a" | od -An -tx1 | tr -d ' \n')" == 514649fb ]] || continue
    sum=\$(cksum <"\$a" | cut -d' ' -f1)
    ls "$work/images/"*"-\$sum.qcow2" >/dev/null 2>&1 ||
        cp "\$a" "$work/images/\$(basename "\${BATS_TEST_FILENAME:-x}" .bats)-\${BATS_TEST_NUMBER:-0}-\$sum.qcow2"
done
exec "$QCOWKIT" "\$@"
WRAP
chmod +x "$work/collect"
suites="${QK_RESOURCE_SUITES:-$(ls "$here"/*.bats | grep -v '/resources\.bats$')}"
if [[ "$suites" != none ]]; then
    # shellcheck disable=SC2086
    QCOWKIT="$work/collect" bats $suites >"$work/suites.log" 2>&1 ||
        echo "note: some suite tests failed while collecting images (see $work/suites.log)"
fi

# 2. the crafted worst cases
for k in l1max snapmax bitmaps bitmapdir; do
    perl "$here/worst-cases.pl" "$k" "$work/images/worst-$k.qcow2" || exit 1
done

# 3. measure
fail=0 n=0
printf '%-44s %-6s %10s %8s %5s\n' image cmd rss_kib seconds exit
for img in "$work/images/"*.qcow2; do
    for cmd in info check; do
        rc=0
        /usr/bin/time -o "$work/t" -f '%M %e' timeout 60 "$QCOWKIT" "$cmd" "$img" >/dev/null 2>&1 || rc=$?
        read -r rss secs < <(tail -1 "$work/t")
        name=$(basename "$img" .qcow2)
        flag=
        if ((rss > rss_limit)) || awk -v s="$secs" -v l="$time_limit" 'BEGIN { exit !(s > l) }' ||
            ((rc >= 124)) || { [[ $cmd == info ]] && ((rc > 1)); } || ((rc > 3)); then
            flag=' OVER'
            fail=1
        fi
        printf '%-44s %-6s %10s %8s %5s%s\n' "${name:0:44}" "$cmd" "$rss" "$secs" "$rc" "$flag"
        echo "$rss $secs $name $cmd" >>"$work/all"
        n=$((n + 1))
    done
done
echo "$n runs on $(ls "$work/images" | wc -l) images"
echo "worst RSS:  $(sort -n "$work/all" | tail -1 | awk '{ printf "%d KiB (%s %s)", $1, $4, $3 }')"
echo "worst time: $(sort -k2 -g "$work/all" | tail -1 | awk '{ printf "%s s (%s %s)", $2, $4, $3 }')"
echo "limits: $rss_limit KiB, $time_limit s: $( ((fail)) && echo EXCEEDED || echo ok)"
exit $fail
