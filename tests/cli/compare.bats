#!/usr/bin/env bats
# qcowkit compare against qemu-img compare 7.2: same stdout, stderr and exit code.

load oracle

teardown() {
    release_image
}

setup() {
    oracle_setup
}

@test "compare: identical images" {
    mk a.qcow2 1M; mk b.qcow2 1M
    wr a.qcow2 'write -P 7 64k 64k'; wr b.qcow2 'write -P 7 64k 64k'
    same_img compare a.qcow2 b.qcow2
    [[ $k_out == "Images are identical." && $k_rc == 0 ]]
}

@test "compare: an image with itself" {
    mk a.qcow2 3M; wr a.qcow2 'write -P 1 1M 1M'
    same_img compare a.qcow2 a.qcow2
}

@test "compare: mismatch is reported at the first differing 512-byte sector" {
    mk a.qcow2 1M; mk b.qcow2 1M
    wr a.qcow2 'write -P 1 300k 1'
    wr b.qcow2 'write -P 1 300k 1' 'write -P 2 307900 1'
    same_img compare a.qcow2 b.qcow2
    [[ $k_out == "Content mismatch at offset 307712!" && $k_rc == 1 ]]
}

@test "compare: mismatch in the first sector of a chunk" {
    mk a.qcow2 1M; mk b.qcow2 1M
    wr a.qcow2 'write -P 1 256k 64k'; wr b.qcow2 'write -P 2 256k 64k'
    same_img compare a.qcow2 b.qcow2
}

@test "compare: mismatch past the first 2 MiB read of a large allocated range" {
    mk a.qcow2 8M; mk b.qcow2 8M
    wr a.qcow2 'write -P 3 0 8M'; wr b.qcow2 'write -P 3 0 8M' 'write -P 4 5243880 10'
    same_img compare a.qcow2 b.qcow2
}

@test "compare: data allocated in one image only" {
    mk a.qcow2 1M; mk b.qcow2 1M
    wr b.qcow2 'write -P 9 200k 1'
    same_img compare a.qcow2 b.qcow2
    same_img compare b.qcow2 a.qcow2
}

@test "compare: zeros allocated in one image only are identical" {
    mk a.qcow2 1M; mk b.qcow2 1M
    wr b.qcow2 'write -P 0 0 128k'
    same_img compare a.qcow2 b.qcow2
    [[ $k_rc == 0 ]]
}

@test "compare: zero cluster against unallocated" {
    mk a.qcow2 1M; mk b.qcow2 1M
    wr a.qcow2 'write -z 0 64k'
    same_img compare a.qcow2 b.qcow2
}

@test "compare -s: zero cluster against unallocated is a block status mismatch" {
    mk a.qcow2 1M; mk b.qcow2 1M
    wr a.qcow2 'write -z 0 64k'
    same_img compare -s a.qcow2 b.qcow2
    [[ $k_out == "Strict mode: Offset 0 block status mismatch!" && $k_rc == 1 ]]
}

@test "compare -s: same allocation is identical" {
    mk a.qcow2 1M; wr a.qcow2 'write -P 5 64k 128k' 'write -z 512k 64k'
    cp a.qcow2 b.qcow2
    same_img compare -s a.qcow2 b.qcow2
}

@test "compare -s: an extent that reaches the end differs from one that does not" {
    mk a.qcow2 4M; wr a.qcow2 'write -P 1 0 1M' 'write -z 2M 64k'
    qemu-img convert -O qcow2 a.qcow2 flat.qcow2
    same_img compare -s a.qcow2 flat.qcow2
    [[ $k_out == "Strict mode: Offset 1048576 block status mismatch!" ]]
}

@test "compare -s: compressed against uncompressed" {
    mk a.qcow2 1M; wr a.qcow2 'write -P 1 0 256k'
    qemu-img convert -c -O qcow2 a.qcow2 c.qcow2
    same_img compare -s a.qcow2 c.qcow2
}

@test "compare -s: backing chain against its base" {
    mk base.qcow2 2M; wr base.qcow2 'write -P 1 0 1M'
    mk top.qcow2 -b base.qcow2 -F qcow2
    same_img compare -s top.qcow2 base.qcow2
}

@test "compare: different sizes, the extra part is zero" {
    mk a.qcow2 1M; mk b.qcow2 2M
    same_img compare a.qcow2 b.qcow2
    [[ $k_out == $'Warning: Image size mismatch!\nImages are identical.' && $k_rc == 0 ]]
}

@test "compare: different sizes, data in the extra part" {
    mk a.qcow2 1M; mk b.qcow2 2M
    wr b.qcow2 'write -P 1 1536k 512'
    same_img compare a.qcow2 b.qcow2
    same_img compare b.qcow2 a.qcow2
}

@test "compare: different sizes, zeros allocated in the extra part" {
    mk a.qcow2 1M; mk b.qcow2 2M
    wr b.qcow2 'write -P 0 1M 64k' 'write -z 1536k 64k'
    same_img compare a.qcow2 b.qcow2
}

@test "compare: a mismatch in the common part comes before the size warning" {
    mk a.qcow2 1M; mk b.qcow2 2M
    wr a.qcow2 'write -P 1 100k 512'; wr b.qcow2 'write -P 1 1536k 512'
    same_img compare a.qcow2 b.qcow2
    [[ $k_out == "Content mismatch at offset 102400!" ]]
}

@test "compare -s: different sizes" {
    mk a.qcow2 1M; mk b.qcow2 2M
    same_img compare -s a.qcow2 b.qcow2
    [[ $k_out == "Strict mode: Image size mismatch!" && $k_rc == 1 ]]
}

@test "compare -q: no output, exit code only" {
    mk a.qcow2 1M; mk b.qcow2 1M
    same_img compare -q a.qcow2 b.qcow2
    wr b.qcow2 'write -P 1 0 1'
    same_img compare -q a.qcow2 b.qcow2
    [[ -z $k_out && $k_rc == 1 ]]
}

@test "compare -p: progress meter" {
    mk a.qcow2 1M; wr a.qcow2 'write -P 1 64k 64k'
    same_img compare -p a.qcow2 a.qcow2
    [[ $k_out == *"(100.00/100%)"* ]]
}

@test "compare -q -p: quiet wins" {
    mk a.qcow2 1M
    same_img compare -q -p a.qcow2 a.qcow2
    [[ -z $k_out ]]
}

@test "compare: raw against qcow2 with the same contents" {
    mk a.qcow2 2M; wr a.qcow2 'write -P 0x5a 100k 300k' 'write -z 1M 64k'
    qemu-img convert -O raw a.qcow2 a.raw
    same_img compare a.raw a.qcow2
    same_img compare -f raw -F qcow2 a.raw a.qcow2
}

@test "compare: backing chain against its flattened copy" {
    mk base.qcow2 2M; wr base.qcow2 'write -P 1 0 1M'
    mk top.qcow2 -b base.qcow2 -F qcow2; wr top.qcow2 'write -P 2 512k 64k' 'write -z 0 64k'
    qemu-img convert -O qcow2 top.qcow2 flat.qcow2
    same_img compare top.qcow2 flat.qcow2
    same_img compare top.qcow2 base.qcow2
}

@test "compare: compressed image against its source" {
    mk a.qcow2 1M; wr a.qcow2 'write -P 0x11 0 256k'
    qemu-img convert -c -O qcow2 a.qcow2 c.qcow2
    same_img compare a.qcow2 c.qcow2
}

@test "compare: a missing image exits 2" {
    mk a.qcow2 1M
    same_img compare a.qcow2 nosuch.qcow2
    [[ $k_rc == 2 ]]
}

@test "compare: -f qcow2 on a raw file exits 2" {
    truncate -s 1M a.raw
    same_img compare -f qcow2 a.raw a.raw
}

@test "compare: unknown driver exits 2" {
    mk a.qcow2 1M
    same_img compare -F nosuchfmt a.qcow2 a.qcow2
}

@test "compare: one file name is a usage error" {
    mk a.qcow2 1M
    same_img compare a.qcow2
    [[ $k_rc == 1 ]]
}

@test "compare: unknown option is a usage error" {
    same_img compare -x a b
}

@test "compare: a read error exits 4" {
    mk a.qcow2 1M
    wr a.qcow2 'write -c -P 0x55 0 64k'
    corrupt_first_compressed a.qcow2
    same_img compare a.qcow2 a.qcow2 || true
    [[ $k_rc == 4 && $q_rc == 4 ]]
    [[ ${k_err%%$'\n'*} == "$q_err" ]]
}

@test "compare: an image a writer holds needs -U" {
    mk a.qcow2 1M; mk b.qcow2 1M
    hold_image a.qcow2
    same_img compare a.qcow2 b.qcow2
    [[ $k_rc == 2 ]]
    same_img compare -U a.qcow2 b.qcow2
    [[ $k_rc == 0 ]]
}
