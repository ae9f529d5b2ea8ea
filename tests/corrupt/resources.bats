#!/usr/bin/env bats
# tests/corrupt/resources.bats - runs resources.sh: `qcowkit info` and `qcowkit check` on every
# image of the other tests/corrupt suites and on the crafted worst cases stay under 256 MiB of
# peak RSS and 5 seconds each.
#
# Under ASan (QK_SANITIZED=1) the RSS bound is lifted: ASan's shadow memory and quarantine make
# the peak RSS measure the sanitizer, not qcowkit. The time bound still applies there, on the
# worst cases only: the other suites already run every one of their images under ASan, and
# running them a second time for the collection would double their share of CI.

load lib

@test "info and check stay under 256 MiB and 5 s on every corrupt image and the worst cases" {
    require_peer qemu-img qemu-io perl /usr/bin/time
    qk_bin_ok
    if [[ -n "${QK_SANITIZED:-}" ]]; then
        export QK_RSS_LIMIT_KB=$((1 << 40)) QK_RESOURCE_SUITES=none
    fi
    run bash "$BATS_TEST_DIRNAME/resources.sh" "$BATS_TEST_TMPDIR/res"
    echo "$output" | tail -6
    [ "$status" -eq 0 ]
    [[ "$output" == *"limits: "*" ok"* ]]
}
