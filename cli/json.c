/*
 * json.c - the CLI's JSON value tree and its two printers (see json.h).
 *
 * Owns: qemu-compatible JSON rendering for every subcommand.
 *
 * Invariants:
 *  1. A key appears at most once in an object; setting it again replaces the
 *     value in place (as qdict_put does).
 *  2. Objects made by json_object() print in QEMU QDict iteration order:
 *     ascending bucket (hash % 512), and inside a bucket the member added
 *     last comes first (QDict inserts at the head of the bucket list).
 */
#include "json.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

enum json_type { J_OBJECT, J_ARRAY, J_STRING, J_INT, J_UINT, J_BOOL };

struct json_member {
    char *key;
    json *val;
};

struct json {
    enum json_type type;
    int ordered;              /* J_OBJECT: insertion order instead of QDict order */
    char *str;                /* J_STRING */
    int64_t i;                /* J_INT, J_BOOL */
    uint64_t u;               /* J_UINT */
    struct json_member *m;    /* J_OBJECT (key != NULL) and J_ARRAY (key == NULL) */
    size_t n, cap;
};

#define QDICT_BUCKETS 512

static void *xalloc(size_t n)
{
    void *p = calloc(1, n ? n : 1);
    if (!p) {
        fputs("qcowkit: out of memory\n", stderr);
        abort();
    }
    return p;
}

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = xalloc(n);
    memcpy(p, s, n);
    return p;
}

static json *json_new(enum json_type t)
{
    json *v = xalloc(sizeof *v);
    v->type = t;
    return v;
}

json *json_object(void) { return json_new(J_OBJECT); }
json *json_array(void) { return json_new(J_ARRAY); }

json *json_object_ordered(void)
{
    json *v = json_new(J_OBJECT);
    v->ordered = 1;
    return v;
}

json *json_string(const char *s)
{
    json *v = json_new(J_STRING);
    v->str = xstrdup(s ? s : "");
    return v;
}

json *json_int(int64_t i)
{
    json *v = json_new(J_INT);
    v->i = i;
    return v;
}

json *json_uint(uint64_t u)
{
    json *v = json_new(J_UINT);
    v->u = u;
    return v;
}

json *json_bool(int b)
{
    json *v = json_new(J_BOOL);
    v->i = !!b;
    return v;
}

static void push(json *c, char *key, json *val)
{
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 8;
        struct json_member *m = realloc(c->m, cap * sizeof *m);
        if (!m) {
            fputs("qcowkit: out of memory\n", stderr);
            abort();
        }
        c->m = m;
        c->cap = cap;
    }
    c->m[c->n].key = key;
    c->m[c->n].val = val;
    c->n++;
}

json *json_set(json *obj, const char *key, json *val)
{
    for (size_t i = 0; i < obj->n; i++) {
        if (!strcmp(obj->m[i].key, key)) {
            json_free(obj->m[i].val);
            obj->m[i].val = val;
            return val;
        }
    }
    push(obj, xstrdup(key), val);
    return val;
}

json *json_append(json *arr, json *val)
{
    push(arr, NULL, val);
    return val;
}

void json_free(json *v)
{
    if (!v)
        return;
    for (size_t i = 0; i < v->n; i++) {
        free(v->m[i].key);
        json_free(v->m[i].val);
    }
    free(v->m);
    free(v->str);
    free(v);
}

/* ---- member order ------------------------------------------------------- */

/* The string hash QEMU's QDict uses (from TDB): a weighted byte sum seeded
 * with the length, then one linear-congruential step. */
static unsigned qdict_bucket(const char *key)
{
    size_t len = strlen(key);
    unsigned h = 0x238F13AFu * (unsigned)len;
    for (size_t i = 0; i < len; i++)
        h += (unsigned)(unsigned char)key[i] << (i * 5 % 24);
    return (1103515243u * h + 12345u) % QDICT_BUCKETS;
}

struct order_key {
    unsigned bucket;
    size_t index;
};

static int order_cmp(const void *a, const void *b)
{
    const struct order_key *x = a, *y = b;
    if (x->bucket != y->bucket)
        return x->bucket < y->bucket ? -1 : 1;
    /* later insertion first inside a bucket */
    return x->index < y->index ? 1 : x->index > y->index ? -1 : 0;
}

/* Indexes of V's members in print order (caller frees). */
static size_t *member_order(const json *v)
{
    size_t *idx = xalloc(v->n * sizeof *idx);
    if (v->type != J_OBJECT || v->ordered) {
        for (size_t i = 0; i < v->n; i++)
            idx[i] = i;
        return idx;
    }
    struct order_key *k = xalloc(v->n * sizeof *k);
    for (size_t i = 0; i < v->n; i++) {
        k[i].bucket = qdict_bucket(v->m[i].key);
        k[i].index = i;
    }
    qsort(k, v->n, sizeof *k, order_cmp);
    for (size_t i = 0; i < v->n; i++)
        idx[i] = k[i].index;
    free(k);
    return idx;
}

/* ---- strings ------------------------------------------------------------ */

/* Decode one UTF-8 sequence at S like QEMU's mod_utf8_codepoint: returns the
 * code point or -1 for an invalid sequence, and sets *end past what was
 * consumed (an invalid lead byte consumes one byte; a sequence cut short
 * stops before the offending byte). */
static long utf8_decode(const unsigned char *s, const unsigned char **end)
{
    static const long min_cp[] = { 0x80, 0x800, 0x10000, 0x200000, 0x4000000 };
    unsigned c = *s++;
    long cp;
    int len = 0;

    if (c < 0x80) {
        *end = s;
        return c;
    }
    if (c >= 0xFE || !(c & 0x40)) {
        *end = s;
        return -1;
    }
    for (unsigned mask = 0x80; c & mask; mask >>= 1)
        len++;
    cp = c & ((0x80u >> len) - 1);
    for (int i = 1; i < len; i++) {
        if ((*s & 0xC0) != 0x80) {
            *end = s;
            return -1;
        }
        cp = cp << 6 | (*s++ & 0x3F);
    }
    *end = s;
    if (cp > 0x10FFFF || (cp >= 0xFDD0 && cp <= 0xFDEF) || (cp & 0xFFFE) == 0xFFFE ||
        (cp >= 0xD800 && cp <= 0xDFFF) || cp < min_cp[len - 2])
        return -1;
    return cp;
}

void json_print_string(FILE *f, const char *str)
{
    const unsigned char *s = (const unsigned char *)str, *end;

    fputc('"', f);
    while (*s) {
        long cp = utf8_decode(s, &end);
        s = end;
        switch (cp) {
        case '"':  fputs("\\\"", f); break;
        case '\\': fputs("\\\\", f); break;
        case '\b': fputs("\\b", f); break;
        case '\f': fputs("\\f", f); break;
        case '\n': fputs("\\n", f); break;
        case '\r': fputs("\\r", f); break;
        case '\t': fputs("\\t", f); break;
        default:
            if (cp < 0)
                cp = 0xFFFD;
            if (cp > 0xFFFF)
                fprintf(f, "\\u%04lX\\u%04lX", 0xD800 + ((cp - 0x10000) >> 10),
                        0xDC00 + ((cp - 0x10000) & 0x3FF));
            else if (cp < 0x20 || cp >= 0x7F)
                fprintf(f, "\\u%04lX", cp);
            else
                fputc((int)cp, f);
        }
    }
    fputc('"', f);
}

/* ---- printers ----------------------------------------------------------- */

static void print_scalar(FILE *f, const json *v, int quoted)
{
    switch (v->type) {
    case J_STRING:
        if (quoted)
            json_print_string(f, v->str);
        else
            fputs(v->str, f);
        break;
    case J_INT:  fprintf(f, "%" PRId64, v->i); break;
    case J_UINT: fprintf(f, "%" PRIu64, v->u); break;
    case J_BOOL: fputs(v->i ? "true" : "false", f); break;
    default: break;
    }
}

static void newline(FILE *f, int indent)
{
    fprintf(f, "\n%*s", indent * 4, "");
}

static void print_json(FILE *f, const json *v, int indent)
{
    if (v->type != J_OBJECT && v->type != J_ARRAY) {
        print_scalar(f, v, 1);
        return;
    }
    size_t *idx = member_order(v);
    fputc(v->type == J_OBJECT ? '{' : '[', f);
    for (size_t i = 0; i < v->n; i++) {
        const struct json_member *m = &v->m[idx[i]];
        if (i)
            fputc(',', f);
        newline(f, indent + 1);
        if (v->type == J_OBJECT) {
            json_print_string(f, m->key);
            fputs(": ", f);
        }
        print_json(f, m->val, indent + 1);
    }
    newline(f, indent);
    fputc(v->type == J_OBJECT ? '}' : ']', f);
    free(idx);
}

void json_print(FILE *f, const json *v)
{
    print_json(f, v, 0);
    fputc('\n', f);
}

static int is_container(const json *v)
{
    return v->type == J_OBJECT || v->type == J_ARRAY;
}

void json_print_human(FILE *f, const json *v, int indent)
{
    if (!is_container(v)) {
        print_scalar(f, v, 0);
        fputc('\n', f);
        return;
    }
    size_t *idx = member_order(v);
    for (size_t i = 0; i < v->n; i++) {
        const struct json_member *m = &v->m[idx[i]];
        int comp = is_container(m->val);
        fprintf(f, "%*s", indent * 4, "");
        if (v->type == J_OBJECT) {
            for (const char *k = m->key; *k; k++)
                fputc(*k == '-' ? ' ' : *k, f);
            fputc(':', f);
        } else {
            fprintf(f, "[%zu]:", idx[i]);
        }
        fputc(comp ? '\n' : ' ', f);
        json_print_human(f, m->val, comp ? indent + 1 : indent);
    }
    free(idx);
}
