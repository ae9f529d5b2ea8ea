/*
 * json.h - a tiny JSON value tree for the CLI, printed the way qemu-img
 * prints its QObjects.
 *
 * Build a tree with json_object()/json_array() and the scalar constructors,
 * attach values with json_set()/json_append() (which take ownership of the
 * value), print it, free the root with json_free().
 *
 * Two printers:
 *  - json_print(): qemu's pretty JSON: 4-space indentation, `"key": value`,
 *    one member or element per line, an empty array as "[\n<indent>]";
 *    strings escaped like QEMU (\" \\ \b \f \n \r \t, other control and
 *    non-ASCII characters as \uXXXX, invalid UTF-8 as \uFFFD).
 *  - json_print_human(): qemu-img's "Format specific information" layout
 *    (`key: value`, dashes in keys shown as spaces, list items as `[i]:`).
 *
 * Member order: json_object() lists members in the order QEMU's QDict
 * iterates them (hash bucket order), so output matches qemu-img byte for
 * byte when members are added in QAPI schema order. json_object_ordered()
 * keeps insertion order, for outputs of our own.
 *
 * Allocation failure aborts the program (this is CLI code).
 */
#ifndef QK_CLI_JSON_H
#define QK_CLI_JSON_H

#include <stdint.h>
#include <stdio.h>

typedef struct json json;

json *json_object(void);          /* members in QDict order */
json *json_object_ordered(void);  /* members in insertion order */
json *json_array(void);
json *json_string(const char *s); /* copies S */
json *json_int(int64_t v);
json *json_uint(uint64_t v);
json *json_bool(int b);

/* Add member KEY (copied) to OBJ; takes ownership of VAL. Returns VAL. */
json *json_set(json *obj, const char *key, json *val);
/* Append VAL to ARR; takes ownership of VAL. Returns VAL. */
json *json_append(json *arr, json *val);

/* Pretty JSON followed by a newline. */
void json_print(FILE *f, const json *v);
/* qemu-img's human dump of V at INDENT levels (4 spaces each). */
void json_print_human(FILE *f, const json *v, int indent);
/* Write S as a JSON string literal (with quotes), escaped like QEMU. */
void json_print_string(FILE *f, const char *s);

void json_free(json *v);

#endif
