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
int cmd_measure(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_amend(int argc, char **argv);

/* main.c: print "qcowkit: " + message + "\n" to stderr. */
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

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
/* create.c (shared with convert): join -o arguments; "help" in a list; the
 * option help of a format; create a convert target. */
int cli_add_options(char **list, const char *arg);
int cli_has_help_option(const char *list);
void cli_print_option_help(const char *fmt, const char *filename);
int cli_convert_create(const char *filename, const char *fmt, const char *options, const char *base,
                       const char *base_fmt, uint64_t size, int compressed, char **backing);

#endif
