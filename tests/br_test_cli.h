/* SPDX-License-Identifier: MIT */
/*
 * Runs a command's entry point (int fn(int argc, char **argv)) in process with stdout and
 * stderr captured to temporary files, for the CLI tests (`brigade eval`, `brigade calibrate`).
 * Include after br_test.h. The strings of a br_test_run are malloc'd; free them with
 * br_test_run_free.
 */
#ifndef BR_TEST_CLI_H
#define BR_TEST_CLI_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct br_test_run {
    int code;
    char *out;
    char *err;
};

static inline char *br_test_slurp(FILE *f)
{
    fflush(f);
    long n = ftell(f);
    char *s = calloc(1, (size_t)n + 1);
    rewind(f);
    if (n > 0) {
        assert_int_equal(fread(s, 1, (size_t)n, f), (size_t)n);
    }
    return s;
}

/* fn(argc, argv) with both streams captured; argv is NULL-terminated. */
static inline struct br_test_run br_test_run_argv(int (*fn)(int, char **), int argc, char **argv)
{
    FILE *o = tmpfile();
    FILE *e = tmpfile();
    assert_non_null(o);
    assert_non_null(e);
    fflush(stdout);
    fflush(stderr);
    int so = dup(1);
    int se = dup(2);
    dup2(fileno(o), 1);
    dup2(fileno(e), 2);
    struct br_test_run r;
    r.code = fn(argc, argv);
    fflush(stdout);
    fflush(stderr);
    dup2(so, 1);
    dup2(se, 2);
    close(so);
    close(se);
    fseek(o, 0, SEEK_END);
    fseek(e, 0, SEEK_END);
    r.out = br_test_slurp(o);
    r.err = br_test_slurp(e);
    fclose(o);
    fclose(e);
    return r;
}

/* Collects a NULL-terminated argument list (at most 63) and runs fn on it. */
static inline struct br_test_run br_test_run_va(int (*fn)(int, char **), const char *first,
                                                va_list ap)
{
    char *argv[64];
    int argc = 0;
    for (const char *a = first; a != NULL && argc < 63; a = va_arg(ap, const char *)) {
        argv[argc++] = (char *)a;
    }
    argv[argc] = NULL;
    return br_test_run_argv(fn, argc, argv);
}

static inline void br_test_run_free(struct br_test_run *r)
{
    free(r->out);
    free(r->err);
}

/* A whole file, NUL-terminated (malloc'd); fails the test when it cannot be read. */
static inline char *br_test_read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    char *s = br_test_slurp(f);
    fclose(f);
    return s;
}

/* Fails with the haystack printed when needle is not in it. */
static inline void br_test_expect(const char *hay, const char *needle)
{
    if (strstr(hay, needle) == NULL) {
        fprintf(stderr, "expected '%s' in:\n%s\n", needle, hay);
    }
    assert_non_null(strstr(hay, needle));
}

#endif
