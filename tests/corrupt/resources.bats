#!/usr/bin/env bats
# tests/corrupt/resources.bats - runs resources.sh on the crafted worst cases (maximum l1_size,
# maximum snapshot table, 65535 bitmaps, maximum bitmap directory): `qcowkit info` and
# `qcowkit check` stay under 256 MiB of peak RSS and 5 seconds each.
#
# The images of the other tests/corrupt suites are not collected here: that re-runs those suites
# (about 3 minutes a pass), and every one of their images already runs under ASan in them. The
# full table, suites included, is `QCOWKIT=$PWD/build/qcowkit bash tests/corrupt/resources.sh`.
#
# Under ASan (QK_SANITIZED=1) the RSS bound is lifted: ASan's shadow memory and quarantine make
# the peak RSS measure the sanitizer, not qcowkit. The time bound still applies.

load lib

@test "info and check stay under 256 MiB and 5 s on the worst cases" {
    require_peer qemu-img qemu-io perl /usr/bin/time
    qk_bin_ok
    export QK_RESOURCE_SUITES=none
    [[ -z "${QK_SANITIZED:-}" ]] || export QK_RSS_LIMIT_KB=$((1 << 40))
    run bash "$BATS_TEST_DIRNAME/resources.sh" "$BATS_TEST_TMPDIR/res"
    echo "$output" | tail -6
    [ "$status" -eq 0 ]
    [[ "$output" == *"limits: "*" ok"* ]]
}
