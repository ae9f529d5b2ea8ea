#!/usr/bin/env bats
# qcowkit io against qemu-io 7.2: same output (times and rates masked), same
# messages, same exit status.

load oracle

teardown() {
    release_image
}

setup() {
    oracle_setup
    qemu-img create -q -f qcow2 a.qcow2 1M
    qemu-io -c 'write -P 0xab 0 64k' -c 'write -P 0x41 64k 16' a.qcow2 >/dev/null
}

@test "io: read prints qemu-io's report" {
    same_io -c 'read 0 64k' a.qcow2
    [[ ${k_out%%$'\n'*} == "read 65536/65536 bytes at offset 0" ]]
}

@test "io: read report line carries size, ops, time and rates" {
    run "$QCOWKIT" io -c 'read 0 64k' a.qcow2
    [[ ${lines[1]} =~ ^64\ KiB,\ 1\ ops\;\ [0-9][0-9]\.[0-9][0-9]\ sec\ \([0-9.]+\ [KMGTPE]?i?B?(bytes)?/sec\ and\ [0-9.]+\ ops/sec\)$ ]]
}

@test "io: read -P with the right pattern succeeds" {
    same_io -c 'read -P 0xab 0 64k' a.qcow2
    [[ $k_rc == 0 ]]
}

@test "io: read -P with a wrong pattern fails" {
    same_io -c 'read -P 0xab 4096 65k' a.qcow2
    [[ ${k_out%%$'\n'*} == "Pattern verification failed at offset 4096, 66560 bytes" && $k_rc == 1 ]]
}

@test "io: read -P -s -l checks part of the buffer" {
    same_io -c 'read -P 0xab -s 2 -l 3 0 8' -c 'read -P 0x41 -s 4 65532 20' a.qcow2
}

@test "io: read -s without -P is a usage error" {
    same_io -c 'read -s 1 0 8' a.qcow2
}

@test "io: pattern range past the read data" {
    same_io -c 'read -P 0xab -s 9 0 8' -c 'read -P 0xab -l 9 0 8' a.qcow2
}

@test "io: invalid pattern bytes" {
    same_io -c 'read -P 300 0 1' -c 'read -P 0x1g 0 1' -c 'read -P -1 0 1' a.qcow2
}

@test "io: read -v dumps the buffer" {
    same_io -c 'read -v 65530 40' -c 'read -v 0 5' a.qcow2
}

@test "io: read -q prints nothing" {
    same_io -c 'read -q 0 64k' a.qcow2
    [[ -z $k_out ]]
}

@test "io: read -C prints the machine-readable report" {
    same_io -c 'read -C 0 8' a.qcow2
    run "$QCOWKIT" io -c 'read -C 0 8' a.qcow2
    [[ $output =~ ^8,1,0:00:[0-9][0-9]\.[0-9][0-9],[0-9.]+,[0-9.]+$ ]]
}

@test "io: size suffixes and fractions on offset and length" {
    qemu-img create -q -f qcow2 big.qcow2 64M
    local s
    for s in 1k 1K 4096B 1b 1.5k 0.5k 1.k 1.0 0x100 0X10 010 +5 0.1k 0.3k 1.00048828125k 1.0004882812k 1.5M 1m; do
        same_io -c "read -q -P 0 0 $s" -c "read 0 $s" -c "read $s 1" big.qcow2
    done
}

@test "io: malformed and too large numbers" {
    local s
    for s in abc 1e3 1.3 1.5 5x 1kb 0x .5k 1.5.k 1.1e1k 18446744073709551615 9223372036854775808 16E 8E 7.99E 2g 1e; do
        same_io -c "read 0 $s" a.qcow2
    done
}

@test "io: hex with a suffix is accepted with a warning" {
    same_io -c 'read 0 0x1k' a.qcow2
}

@test "io: read past the end fails with an I/O error" {
    same_io -c 'read 0 2M' -c 'read 1M 1' -c 'read 2M 0' a.qcow2
    [[ ${k_out%%$'\n'*} == "read failed: Input/output error" && $k_rc == 1 ]]
}

@test "io: read of 0 bytes at the end" {
    same_io -c 'read 1M 0' a.qcow2
}

@test "io: negative offset is an unknown option" {
    same_io -c 'read -1 1' a.qcow2
}

@test "io: wrong argument count" {
    same_io -c 'read' -c 'read 0' a.qcow2
}

@test "io: unknown command" {
    same_io -c 'frob 0' a.qcow2
    [[ $k_err == 'command "frob" not found' && $k_rc == 1 ]]
}

@test "io: commands run in order, a failure does not stop the rest" {
    same_io -c 'read -P 1 0 1' -c 'read 0 1' a.qcow2
    [[ $k_rc == 1 ]]
}

@test "io: quit stops the command list" {
    same_io -c 'read 0 1' -c 'quit' -c 'read 0 2' a.qcow2
}

@test "io: blank commands and extra spaces" {
    same_io -c '' -c '  read   0    1  ' a.qcow2
}

@test "io: r is read" {
    same_io -c 'r -v 0 16' a.qcow2
}

@test "io: commands from standard input" {
    local q k
    q=$(printf 'read 0 1\nread -P 1 0 1\n' | qemu-io a.qcow2 | sed -e 's/^qemu-io> //' | _untime)
    k=$(printf 'read 0 1\nread -P 1 0 1\n' | "$QCOWKIT" io a.qcow2 | sed -e 's/^qcowkit> //' | _untime)
    [[ $q == "$k" ]]
}

@test "io: -r opens read-only and reads" {
    same_io -r -c 'read -P 0xab 0 64k' a.qcow2
}

@test "io: -U needs -r" {
    same_io -U -c 'read 0 1' a.qcow2
    same_io -r -U -c 'read 0 1' a.qcow2
}

@test "io: -f raw reads the file itself" {
    same_io -f raw -c 'read -v 0 16' a.qcow2
}

@test "io: -f qcow2 on a raw file cannot open it" {
    truncate -s 1M r.raw
    same_io -f qcow2 -c 'read 0 1' r.raw
}

@test "io: a missing image cannot be opened" {
    same_io -c 'read 0 1' nosuch.qcow2
}

@test "io: reads through a backing chain" {
    qemu-img create -q -f qcow2 -b a.qcow2 -F qcow2 top.qcow2
    qemu-io -c 'write -P 0x22 4k 4k' top.qcow2 >/dev/null
    same_io -c 'read -P 0xab 0 4k' -c 'read -P 0x22 4k 4k' -c 'read -P 0xab 8k 56k' -c 'read -v 64k 32' top.qcow2
}

@test "io: reads compressed clusters" {
    qemu-img convert -c -O qcow2 a.qcow2 c.qcow2
    same_io -c 'read -P 0xab 0 64k' -c 'read -v 64k 32' -c 'read -P 0 128k 896k' c.qcow2
}

@test "io: help lists the commands, help read describes read" {
    run "$QCOWKIT" io -c help a.qcow2
    [[ $output == *"read [-abCqv] [-P pattern [-s off] [-l len]] off len -- reads a number of bytes at a specified offset"* ]]
    run "$QCOWKIT" io -c 'help read' a.qcow2
    [[ ${lines[0]} == "read [-abCqv] [-P pattern [-s off] [-l len]] off len -- reads a number of bytes at a specified offset" ]]
}

@test "io: a read error prints qemu-io's message" {
    qemu-img convert -c -O qcow2 a.qcow2 c.qcow2
    corrupt_first_compressed c.qcow2
    same_io -c 'read 0 4k' -c 'read -P 0x41 64k 16' c.qcow2 || true
    [[ $k_out == "$q_out" && $k_rc == 1 ]]
}

@test "io: write with the default pattern and -P" {
    same_io_write a.qcow2 -c 'write 128k 4k' -c 'write -P 0x11 1000 100k' -c 'read -P 0xcd 128k 4k'
}

@test "io: write -z and -z -u" {
    same_io_write a.qcow2 -c 'write -z 0 4k' -c 'write -z -u 0 64k' -c 'write -z 200k 128k' -c 'map'
}

@test "io: write -c compresses whole clusters" {
    same_io_write a.qcow2 -c 'write -c 128k 64k' -c 'write -c 256k 128k' -c 'read -P 0xcd 128k 64k'
}

@test "io: write -c refuses partial clusters and unaligned requests" {
    same_io_write a.qcow2 -c 'write -c 192k 4k' -c 'write -c 1000 64k' -c 'write -c 0 1000'
}

@test "io: write option conflicts" {
    same_io_write a.qcow2 -c 'write -u 0 1' -c 'write -n 0 1' -c 'write -n -u 0 1' -c 'write -z -P 1 0 1' \
        -c 'write -z -s x 0 1' -c 'write -f -c 0 1' -c 'write 0 3G'
}

@test "io: write -f, -q, -C" {
    same_io_write a.qcow2 -c 'write -f 0 1' -c 'write -q 1 1' -c 'write -C 2 1'
}

@test "io: write -s fills from a file, repeating it" {
    printf 'hello, qcow2' > pat
    same_io_write a.qcow2 -c 'write -s pat 4k 1000' -c 'read -v 4k 48'
}

@test "io: write -s with an empty or missing file" {
    : > empty
    same_io_write a.qcow2 -c 'write -s empty 0 1'
    same_io_write a.qcow2 -c 'write -s nosuch 0 1'
}

@test "io: write past the end fails" {
    same_io_write a.qcow2 -c 'write 1M 1' -c 'write 1000k 64k' -c 'write -z -n 0 3G'
}

@test "io: discard" {
    same_io_write a.qcow2 -c 'discard 0 64k' -c 'discard -q 64k 1' -c 'discard -C 0 4k' -c 'map' -c 'read -v 64k 16'
}

@test "io: discard past the end fails" {
    same_io_write a.qcow2 -c 'discard 1M 1' -c 'discard 0 3G'
}

@test "io: flush prints nothing" {
    same_io_write a.qcow2 -c 'write 0 4k' -c 'flush'
}

@test "io: map merges runs of the same allocation" {
    same_io_write a.qcow2 -c 'write 192k 64k' -c 'write -z 256k 64k' -c 'map'
}

@test "io: map shows only this layer of a chain" {
    qemu-img create -q -f qcow2 -b a.qcow2 -F qcow2 top.qcow2
    qemu-io -c 'write 512k 64k' top.qcow2 >/dev/null
    same_io -c 'map' top.qcow2
}

@test "io: length" {
    same_io -c 'length' -c 'l' a.qcow2
}

@test "io: short names of commands" {
    same_io_write a.qcow2 -c 'w 0 1' -c 'd 64k 64k' -c 'f' -c 'r -v 0 2'
}

@test "io: -r refuses writes and discards but allows flush and map" {
    same_io -r -c 'write 0 1' -c 'discard 0 1' -c 'flush' -c 'map' a.qcow2
    [[ $k_rc == 1 ]]
}

@test "io: writes through a backing chain copy on write" {
    qemu-img create -q -f qcow2 -b a.qcow2 -F qcow2 top.qcow2
    same_io_write top.qcow2 -c 'write -P 0x22 4k 512' -c 'read -v 0 16' -c 'read -P 0x22 4k 512' -c 'map'
}

@test "io: an image a writer holds can only be read with -r -U" {
    hold_image a.qcow2
    same_io -c 'read 0 1' a.qcow2
    same_io -r -c 'read 0 1' a.qcow2
    same_io -r -U -c 'read -P 0xab 0 64k' a.qcow2
    [[ $k_rc == 0 ]]
}

@test "io: alloc counts the allocated bytes of a range" {
    same_io_write a.qcow2 -c 'alloc 0' -c 'alloc 0 128k' -c 'alloc 64k 64k' -c 'alloc 1000 1' -c 'alloc 1000 0' -c 'a 0 2M'
}

@test "io: alloc at or past the end" {
    same_io -c 'alloc 1M' -c 'alloc 2M 1' -c 'alloc x' a.qcow2
}

@test "io: truncate grows and shrinks" {
    same_io_write a.qcow2 -c 'truncate 2M' -c 'length' -c 'truncate 32k' -c 'length' -c 't 1M' -c 'map' -c 'read -v 32k 16'
}

@test "io: truncate to a size that is not a multiple of 512" {
    same_io_write a.qcow2 -c 'truncate 1000' -c 'length'
}
