/* SPDX-License-Identifier: MIT */
/*
 * `brigade generate` and `brigade quantize`: argument parsing and printing around engine.h and
 * gguf_write.h. See engine_cli.h.
 */
#include "engine/engine_cli.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "core/err.h"
#include "engine/engine.h"

static const char usage_generate[] =
    "usage: brigade generate -m MODEL [--tokenizer FILE] [-p PROMPT] [-n N] [--temperature T]\n"
    "                        [--top-p P] [--top-k K] [--seed S] [--stop S]... [--logprobs N]\n"
    "                        [--threads N]\n"
    "\n"
    "Generates a continuation of PROMPT with the embedded engine and streams the text to stdout\n"
    "as it is produced, then a newline. A summary goes to stderr: prompt and completion\n"
    "tokens, finish reason (stop: EOS or a stop string; length: -n or the context), seconds\n"
    "and tokens per second (prompt + completion over the generation time, load excluded).\n"
    "\n"
    "options:\n"
    "  -m, --model MODEL    a GGUF file (llama architecture, llama/SentencePiece vocabulary in\n"
    "                       the file) or a llama2.c checkpoint (.bin, needs --tokenizer)\n"
    "  --tokenizer FILE     llama2.c tokenizer.bin for a .bin model (not guessed; ignored for\n"
    "                       GGUF, which carries its own vocabulary)\n"
    "  -p, --prompt PROMPT  text to continue (default: empty, i.e. only the BOS token)\n"
    "  -n, --max-tokens N   stop after N generated tokens (default 0: until EOS, a stop string\n"
    "                       or a full context; prompt + completion never exceed the model's\n"
    "                       context length, which ends generation with finish=length)\n"
    "  --temperature T      sampling temperature, 0 = greedy (default 0.8)\n"
    "  --top-p P            nucleus sampling mass in (0, 1] (default 0.95)\n"
    "  --top-k K            keep the K most likely tokens, 0 = all (default 40)\n"
    "  --seed S             random seed for reproducible sampling (default 0: random)\n"
    "  --stop S             stop before the first occurrence of S (not printed); up to 4\n"
    "  --logprobs N         also print, to stderr, one line per token with its id, its\n"
    "                       log-probability and the N (0..20) most likely alternatives\n"
    "  --threads N          threads that split the forward pass's matrix-vector products,\n"
    "                       1..256 (default 1); the output is the same for any N\n"
    "  -h, --help           this text\n"
    "\n"
    "exit status: 0 done, 2 usage error, 1 the model cannot be loaded or generation failed\n";

struct gen_cli {
    const char *model;
    const char *tokenizer;
    const char *prompt;
    struct br_engine_gen_params p;
    int n_stop;
    int threads;
};

static int usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    (void)fprintf(stderr, "brigade %s: ", cmd);
    (void)vfprintf(stderr, fmt, ap);
    (void)fprintf(stderr, "\n(brigade %s --help for usage)\n", cmd);
    va_end(ap);
    return 2;
}

static int parse_float(const char *s, double lo, double hi, float *out)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end != '\0' || errno != 0 || !isfinite(v) || v < lo || v > hi) {
        return -1;
    }
    *out = (float)v;
    return 0;
}

static int parse_ull(const char *s, unsigned long long max, unsigned long long *out)
{
    if (*s < '0' || *s > '9') {
        return -1;
    }
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end != '\0' || errno != 0 || v > max) {
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_int(const char *s, int max, int *out)
{
    unsigned long long v = 0;
    if (parse_ull(s, (unsigned long long)max, &v) != 0) {
        return -1;
    }
    *out = (int)v;
    return 0;
}

/* "--name value" / "--name=value" (also the short alias when given). 1 matched, 0 not, -1 no
 * value. */
static int opt_value(int argc, char **argv, int *i, const char *name, const char *alias,
                     const char **out)
{
    const char *a = argv[*i];
    size_t n = strlen(name);
    if (strncmp(a, name, n) == 0 && a[n] == '=') {
        *out = a + n + 1;
        return 1;
    }
    if (strcmp(a, name) != 0 && !(alias && strcmp(a, alias) == 0)) {
        return 0;
    }
    if (*i + 1 >= argc) {
        return -1;
    }
    *out = argv[++*i];
    return 1;
}

static int gen_number(struct gen_cli *c, const char *name, const char *v)
{
    unsigned long long seed = 0;
    int bad = 0;
    if (strcmp(name, "--max-tokens") == 0) {
        bad = parse_int(v, 1 << 24, &c->p.max_tokens);
    } else if (strcmp(name, "--temperature") == 0) {
        bad = parse_float(v, 0.0, 100.0, &c->p.sampler.temperature);
    } else if (strcmp(name, "--top-p") == 0) {
        bad = parse_float(v, 0.0, 1.0, &c->p.sampler.top_p);
        bad = bad || c->p.sampler.top_p <= 0.0f;
    } else if (strcmp(name, "--top-k") == 0) {
        bad = parse_int(v, 1 << 24, &c->p.sampler.top_k);
    } else if (strcmp(name, "--seed") == 0) {
        bad = parse_ull(v, UINT64_MAX, &seed);
        c->p.sampler.seed = (uint64_t)seed;
    } else if (strcmp(name, "--logprobs") == 0) {
        bad = parse_int(v, BR_ENGINE_MAX_TOP_LOGPROBS, &c->p.top_logprobs);
    } else if (strcmp(name, "--threads") == 0) {
        bad = parse_int(v, 256, &c->threads) || c->threads < 1;
    }
    return bad ? usage_error("generate", "invalid value for %s: '%s'", name, v) : 0;
}

static int gen_stop(struct gen_cli *c, const char *v)
{
    if (c->n_stop >= BR_ENGINE_MAX_STOP) {
        return usage_error("generate", "at most %d --stop strings", BR_ENGINE_MAX_STOP);
    }
    size_t l = strlen(v);
    if (l == 0 || l > BR_ENGINE_MAX_STOP_LEN) {
        return usage_error("generate", "a --stop string must have 1..%d bytes",
                           BR_ENGINE_MAX_STOP_LEN);
    }
    c->p.stop[c->n_stop++] = v;
    return 0;
}

static const struct {
    const char *name;
    const char *alias;
} gen_opts[] = {
    {"--model", "-m"},       {"--tokenizer", NULL}, {"--prompt", "-p"},  {"--max-tokens", "-n"},
    {"--temperature", NULL}, {"--top-p", NULL},     {"--top-k", NULL},   {"--seed", NULL},
    {"--stop", NULL},        {"--logprobs", NULL},  {"--threads", NULL},
};

static int gen_option(struct gen_cli *c, const char *name, const char *v)
{
    if (strcmp(name, "--model") == 0) {
        c->model = v;
    } else if (strcmp(name, "--tokenizer") == 0) {
        c->tokenizer = v;
    } else if (strcmp(name, "--prompt") == 0) {
        c->prompt = v;
    } else if (strcmp(name, "--stop") == 0) {
        return gen_stop(c, v);
    } else {
        return gen_number(c, name, v);
    }
    return 0;
}

/* 0 parsed, 1 help printed, 2 usage error. */
static int gen_parse(struct gen_cli *c, int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            (void)fputs(usage_generate, stdout);
            return 1;
        }
        int matched = 0;
        for (size_t k = 0; k < sizeof gen_opts / sizeof gen_opts[0] && !matched; k++) {
            const char *v = NULL;
            matched = opt_value(argc, argv, &i, gen_opts[k].name, gen_opts[k].alias, &v);
            if (matched < 0) {
                return usage_error("generate", "%s needs a value", a);
            }
            if (matched > 0 && gen_option(c, gen_opts[k].name, v) != 0) {
                return 2;
            }
        }
        if (!matched) {
            return usage_error("generate", "unknown argument '%s'", a);
        }
    }
    if (!c->model) {
        return usage_error("generate", "-m MODEL is required");
    }
    return 0;
}

static void print_logprobs(const struct br_engine_token *t)
{
    (void)fprintf(stderr, "logprob %d %.6f", t->token, (double)t->logprob);
    for (int i = 0; i < t->n_top; i++) {
        (void)fprintf(stderr, " | %d %.6f", t->top[i].token, (double)t->top[i].logprob);
    }
    (void)fputc('\n', stderr);
}

static int on_token(void *user, const struct br_engine_token *t)
{
    const struct gen_cli *c = user;
    if (t->text.len > 0 &&
        (fwrite(t->text.ptr, 1, t->text.len, stdout) != t->text.len || fflush(stdout) != 0)) {
        return BR_ERR_IO;
    }
    if (c->p.top_logprobs > 0 && t->token >= 0) {
        print_logprobs(t);
    }
    return BR_OK;
}

int br_generate_cli(int argc, char **argv)
{
    struct gen_cli c;
    memset(&c, 0, sizeof c);
    br_engine_gen_params_init(&c.p);
    c.p.sampler.temperature = 0.8f;
    c.p.sampler.top_p = 0.95f;
    c.p.sampler.top_k = 40;
    c.threads = 1;
    c.prompt = "";
    int rc = gen_parse(&c, argc, argv);
    if (rc != 0) {
        return rc == 1 ? 0 : rc;
    }
    char err[BR_ENGINE_ERR_CAP];
    br_engine_model *m = NULL;
    rc = br_engine_model_open(c.model, c.tokenizer, &m, err, sizeof err);
    if (rc != BR_OK) {
        (void)fprintf(stderr, "brigade generate: %s\n", err);
        return 1;
    }
    c.p.on_token = on_token;
    c.p.user = &c;
    c.p.n_threads = c.threads;
    struct br_engine_gen_result res;
    uint64_t t0 = br_clock_now_ns();
    rc = br_engine_generate(m, c.prompt, strlen(c.prompt), &c.p, &res, err, sizeof err);
    double secs = (double)(br_clock_now_ns() - t0) / 1e9;
    (void)fputc('\n', stdout);
    (void)fflush(stdout);
    if (rc != BR_OK) {
        (void)fprintf(stderr, "brigade generate: %s\n", err[0] ? err : br_strerror(rc));
    } else {
        (void)fprintf(stderr,
                      "brigade generate: %zu prompt + %zu completion tokens, finish %s, %.3f s, "
                      "%.1f tok/s\n",
                      res.prompt_tokens, res.completion_tokens, br_engine_finish_name(res.finish),
                      secs,
                      secs > 0 ? (double)(res.prompt_tokens + res.completion_tokens) / secs : 0.0);
    }
    br_engine_gen_result_free(&res);
    br_engine_model_close(m);
    return rc == BR_OK ? 0 : 1;
}
