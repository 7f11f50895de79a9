/* SPDX-License-Identifier: MIT */
/*
 * Replay driver for libFuzzer targets (STYLE.md rule 48): built with gcc and ASan/UBSan in the
 * normal builds, it runs LLVMFuzzerTestOneInput once on every file of the corpus folders (or
 * files) named on the command line, so CTest replays the corpus and every committed crasher.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        (void)fprintf(stderr, "fuzz_replay: cannot open %s\n", path);
        return 1;
    }
    size_t cap = 1 << 16;
    size_t len = 0;
    uint8_t *buf = malloc(cap);
    for (;;) {
        if (!buf) {
            (void)fclose(f);
            return 1;
        }
        size_t k = fread(buf + len, 1, cap - len, f);
        len += k;
        if (len < cap) {
            break;
        }
        cap *= 2;
        uint8_t *bigger = realloc(buf, cap);
        if (!bigger) {
            free(buf);
        }
        buf = bigger;
    }
    (void)fclose(f); /* read-only */
    /* An exact-size copy so that ASan sees reads past the end of the input. */
    uint8_t *exact = malloc(len ? len : 1);
    if (!exact) {
        free(buf);
        return 1;
    }
    memcpy(exact, buf, len);
    free(buf);
    LLVMFuzzerTestOneInput(exact, len);
    free(exact);
    return 0;
}

static int cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int run_dir(const char *dir, size_t *n_files)
{
    DIR *d = opendir(dir);
    if (!d) {
        (void)fprintf(stderr, "fuzz_replay: cannot open %s\n", dir);
        return 1;
    }
    char **names = NULL;
    size_t n = 0;
    size_t cap = 0;
    int rc = 0;
    struct dirent *e;
    /* NOLINTNEXTLINE(concurrency-mt-unsafe): one thread, and each DIR has its own buffer */
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') {
            continue;
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 256;
            char **nn = realloc(names, cap * sizeof(*names));
            if (!nn) {
                rc = 1;
                break;
            }
            names = nn;
        }
        size_t len = strlen(dir) + strlen(e->d_name) + 2;
        names[n] = malloc(len);
        if (!names[n]) {
            rc = 1;
            break;
        }
        (void)snprintf(names[n], len, "%s/%s", dir, e->d_name); /* fits: len is exact */
        n++;
    }
    (void)closedir(d);
    if (n > 1) {
        qsort(names, n, sizeof(*names), cmp);
    }
    for (size_t i = 0; i < n; i++) {
        rc |= run_file(names[i]);
        free(names[i]);
    }
    free(names);
    *n_files += n;
    return rc;
}

int main(int argc, char **argv)
{
    size_t n_files = 0;
    int rc = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            (void)fprintf(stderr, "fuzz_replay: %s does not exist\n", argv[i]);
            return 1;
        }
        if (S_ISDIR(st.st_mode)) {
            rc |= run_dir(argv[i], &n_files);
        } else {
            rc |= run_file(argv[i]);
            n_files++;
        }
    }
    printf("fuzz_replay: %zu inputs, %s\n", n_files, rc ? "errors" : "ok");
    return rc;
}
