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

/* main.c: print "qcowkit: " + message + "\n" to stderr. */
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
