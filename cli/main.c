/*
 * main.c - qcowkit's entry point: dispatch to a subcommand by name.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "qcowkit.h"

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} commands[] = {
    { "create",  cmd_create,  "create a new image" },
    { "info",    cmd_info,    "show information about an image" },
    { "map",     cmd_map,     "show the allocation map of an image" },
    { "convert", cmd_convert, "convert an image to another format" },
    { "compare", cmd_compare, "compare the guest contents of two images" },
    { "resize",  cmd_resize,  "change the virtual size of an image" },
    { "io",      cmd_io,      "run qemu-io style commands on an image" },
    { "bitmap",  cmd_bitmap,  "add, remove, change or dump persistent dirty bitmaps" },
    { "check",   cmd_check,   "check an image for inconsistencies and repair it" },
    { "measure", cmd_measure, "compute the size of a new image for given data" },
    { "bench",   cmd_bench,   "time read or write requests to an image" },
    { "amend",   cmd_amend,   "change the format options of an image" },
    { "commit",  cmd_commit,  "commit an image's changes into its backing file" },
    { "rebase",  cmd_rebase,  "change the backing file of an image" },
    { "snapshot", cmd_snapshot, "list, create, apply or delete internal snapshots" },
};

void cli_error(const char *fmt, ...)
{
    va_list ap;
    fputs("qcowkit: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static void usage(FILE *f)
{
    fprintf(f, "qcowkit %s - qcow2 image tool\n\nusage: qcowkit COMMAND [options]\n\nCommands:\n",
            QK_VERSION_STRING);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-9s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\nRun 'qcowkit COMMAND --help' for a command's options.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        cli_error("Not enough arguments");
        usage(stderr);
        return 1;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V")) {
        printf("qcowkit version %s\n", QK_VERSION_STRING);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name))
            return commands[i].run(argc - 1, argv + 1);
    cli_error("Command not found: %s", argv[1]);
    return 1;
}
