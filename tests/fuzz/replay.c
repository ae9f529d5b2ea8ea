/*
 * replay.c - runs a fuzz target on saved inputs without libFuzzer: each
 * argument is a file of hex text (xxd -p) holding one input that once made
 * the target crash or hang. Linked with one tests/fuzz/fuzz_*.c; run by
 * `make check` (under ASan/UBSan with SANITIZE=1) as regression tests.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        FILE *f = fopen(argv[i], "r");
        if (!f) {
            perror(argv[i]);
            return 1;
        }
        size_t cap = 4096, len = 0;
        uint8_t *buf = malloc(cap);
        int c, hi = -1;
        while (buf && (c = fgetc(f)) != EOF) {
            int v = hexval(c);
            if (v < 0)
                continue;
            if (hi < 0) {
                hi = v;
                continue;
            }
            if (len == cap)
                buf = realloc(buf, cap *= 2);
            if (buf)
                buf[len++] = (uint8_t)(hi << 4 | v);
            hi = -1;
        }
        fclose(f);
        if (!buf)
            return 1;
        LLVMFuzzerTestOneInput(buf, len);
        free(buf);
        printf("ok %s (%zu bytes)\n", argv[i], len);
    }
    return 0;
}
