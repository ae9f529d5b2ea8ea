/*
 * check-int.h - state shared by check.c (qemu-img check, step by step) and
 * check-fix.c (the repairs QEMU does not make). Private to those two files,
 * like SQLite's btreeInt.h.
 */
#ifndef QK_CHECK_INT_H
#define QK_CHECK_INT_H

#include <stdint.h>

#include "internal.h"

#define CK_FRAG_INFO 1          /* count allocated/fragmented/compressed clusters */
#define CK_MAX_OVER 4096     /* overflowing clusters remembered for unsharing */
#define CK_BIG 0xFFFFu          /* count stored in the overflow hash */
#define CK_NO_BITMAP_REPAIR 0x100u  /* internal: dirty-image repair leaves bitmaps alone */
#define CK_MAX_LEFT 16       /* references left out past the end of the file remembered, */
#define CK_LEFT_MAX_BYTES (64ull << 20)  /* each at most this large */

enum ctype { CT_UNALLOC_, CT_ZERO_PLAIN_, CT_ZERO_ALLOC_, CT_NORMAL_, CT_COMPRESSED_ };

/* What the check learnt about one bitmap (parallel to img->bitmaps). */
struct ck_bitmap {
    uint64_t *table;        /* host-endian table, when it was read */
    const char *problem;    /* why it is inconsistent, NULL if it is not */
    int counted_corrupt;    /* already counted as a corruption */
};

struct ck {
    qk_image *img;
    qk_check_result *res;
    unsigned fix;
    uint64_t cs;
    unsigned cb;
    uint64_t file_len;
    uint64_t rc_max;
    uint16_t *rc;           /* in-memory counts of clusters [0, nb) */
    uint64_t nb;
    uint64_t *ovf_key, *ovf_val;  /* open addressing, key+1 (0 = empty) */
    uint64_t ovf_cap, ovf_used;
    int rebuild;
    uint8_t *buf;           /* one L2 table */
    struct ck_bitmap *bm;
    int count_bitmaps;      /* the bitmaps extension is counted (QEMU loads it) */
    int64_t bm_corrupt;     /* corruptions found in bitmap structures */
    uint64_t *over;         /* clusters whose references overflowed (at most CK_MAX_OVER) */
    uint64_t *over_n;       /* how many references each could not count */
    uint64_t memo_i;        /* refcount table index of memo_b, UINT64_MAX if none */
    const uint8_t *memo_b;  /* that block in img->rb_cache: valid until the next
                               use of the cache (ck_memo_reset() before any) */
    uint64_t nb_over;
    int rejected;           /* the count left out a reference past the end of the file */
    struct {
        uint64_t first, last;   /* its clusters */
        int counted;            /* counted by the rebuild (the file covers it then) */
    } left[CK_MAX_LEFT];        /* the first CK_MAX_LEFT of them */
    unsigned nb_left;
    int grown;              /* the count grew the file up to a refcount block */
};

/* check.c */
void ck_msg(struct ck *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
enum ctype ck_l2_type(const struct ck *c, uint64_t e);
/* Entry I of the L2 table T (and its subcluster bitmap, 0 without extended L2). */
uint64_t ck_l2_get(const struct ck *c, const uint8_t *t, uint32_t i, uint64_t *bitmap);
/* Forget the refcount block kept by disk_rc(): before anything else uses the cache. */
void ck_memo_reset(struct ck *c);
void ck_free_bitmaps(struct ck *c);
/* qk_flush() without the open-handle check (the dirty repair runs inside the open). */
int ck_flush(qk_image *img);

/* check-fix.c: each returns < 0 on failure, 0 if nothing changed, 1 if the
 * image changed (some also return 0 after a change: see each comment). */
int ck_fix_entries(struct ck *c);
int ck_drop_broken_snapshots(struct ck *c);
int ck_unshare_overflows(struct ck *c);
int64_t ck_snapshots_incomplete(struct ck *c);
int ck_fix_snapshot_extra(struct ck *c);
/* check.c's count found one reference to cluster K it could not count. */
void ck_note_overflow(struct ck *c, uint64_t k);
int ck_remove_bad_bitmaps(struct ck *c);

#endif
