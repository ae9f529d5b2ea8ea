/*
 * cli.h - shared pieces of the qcowkit command-line tool.
 *
 * The CLI is a client of the public API only (include/qcowkit.h); it never
 * includes src/ headers. Each subcommand lives in its own file and exports
 * one `int cmd_NAME(int argc, char **argv)` returning the process exit code.
 * Messages follow qemu-img: "qcowkit: <message>" on stderr.
 */
#ifndef QK_CLI_H
#define QK_CLI_H

#include <stdint.h>
#include <stdio.h>

int cmd_create(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_map(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_compare(int argc, char **argv);
int cmd_io(int argc, char **argv);
int cmd_resize(int argc, char **argv);
int cmd_bitmap(int argc, char **argv);
int cmd_check(int argc, char **argv);
int cmd_commit(int argc, char **argv);
int cmd_rebase(int argc, char **argv);
int cmd_snapshot(int argc, char **argv);
int cmd_measure(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_amend(int argc, char **argv);

/* main.c: print "qcowkit: " + message + "\n" to stderr. */
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* create.c: the -o machinery of create, shared with convert. */
/* Append one "-o" argument ARG to *LIST (joined with ','); prints qemu-img's
 * "Invalid option list" and returns -1 when ARG is malformed. */
int cli_add_options(char **list, const char *arg);
/* Does the joined -o LIST ask for help ("help" or "?")? */
int cli_has_help_option(const char *list);
/* qemu-img's "-o help" for FMT (qcow2 or raw); FILENAME adds the file layer's options. */
void cli_print_option_help(const char *fmt, const char *filename);
/* convert's creation of FILENAME (FMT qcow2 or raw, SIZE bytes): the -o list
 * OPTIONS (or NULL), -B BASE and -F BASE_FMT (or NULL), checked in qemu-img
 * convert's order and with its messages (NSRC: the number of sources, more
 * than one refuses a backing file; COMPRESSED: -c was given, which refuses
 * raw and preallocation), then created without opening the backing file.
 * *BACKING gets the target's backing file name (malloc'd) or NULL. Returns 0,
 * or -1 after printing the error. */
int cli_convert_create(const char *filename, const char *fmt, const char *options, const char *base,
                       const char *base_fmt, uint64_t size, int nsrc, int compressed, char **backing);

/* create.c: the creation options of a format, parsed from a joined -o list
 * as qemu-img measure and amend parse them (errors printed without a file
 * name). cli_options_parse() returns NULL after printing the error (an
 * unknown format or option, a bad typed value). cli_option_str() is the
 * value as typed (NULL if not given); cli_option_num() the parsed value of a
 * bool/number/size option, DEF if not given. */
struct create_args;
struct create_args *cli_options_parse(const char *fmt, const char *options);
const char *cli_option_str(struct create_args *a, const char *name);
uint64_t cli_option_num(struct create_args *a, const char *name, uint64_t def);
void cli_options_free(struct create_args *a);

#endif
