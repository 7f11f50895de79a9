/* SPDX-License-Identifier: MIT */
/*
 * brigade: an LLM gateway and model router. This file only wires commands to subsystems.
 *
 *   brigade serve      run the gateway
 *   brigade logs       recent requests and totals from the request log
 *   brigade config     check a config file
 *   brigade key        make or hash client API keys
 *   brigade version
 */
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "api/api.h"
#include "config/config.h"
#include "core/alloc.h"
#include "core/clock.h"
#include "core/err.h"
#include "core/log.h"
#include "core/rand.h"
#include "cost/cost.h"
#include "engine/engine_cli.h"
#include "eval/calibrate_cli.h"
#include "eval/eval_cli.h"
#include "eval/train_cli.h"
#include "store/store.h"
#include "upstream/upstream.h"

#define BR_VERSION "0.1.0"

static const char usage_main[] =
    "usage: brigade <command> [options]\n"
    "\n"
    "An OpenAI-compatible LLM gateway that sends each request to the cheapest model that can\n"
    "answer it, and accounts for what every answer cost.\n"
    "\n"
    "commands:\n"
    "  serve     run the gateway (brigade serve -c brigade.yaml)\n"
    "  logs      show recent requests and cost totals from the request log\n"
    "  eval      evaluate routing policies offline on recorded outcomes (APGR, CPT, cost)\n"
    "  calibrate choose a route's threshold for a quality floor, a share or a budget\n"
    "  train     train the learned router (logistic regression) on recorded outcomes\n"
    "  generate  generate text with the embedded engine from a GGUF or llama2.c model\n"
    "  quantize  rewrite a model as a self-contained GGUF in q8_0, q4_0, f16 or f32\n"
    "  lora      LoRA adapters: `lora merge BASE ADAPTER[:SCALE]... -o OUT`\n"
    "  quality   a model variant's quality cost against a reference (top-1, KL, perplexity)\n"
    "  routes    report each route: decisions, cost, feedback, threshold history\n"
    "  export    write logged strong-model answers as fine-tuning JSONL (log.bodies)\n"
    "  config    check a configuration file (brigade config check -c FILE)\n"
    "  key       create a client API key or hash one for the config (brigade key new|hash)\n"
    "  version   print the version\n"
    "\n"
    "Run 'brigade <command> --help' for a command's options.\n";

static const char usage_serve[] =
    "usage: brigade serve [-c FILE] [--listen HOST:PORT] [--workers N] [--log-db PATH|off]\n"
    "                     [--log-level error|warn|info|debug]\n"
    "\n"
    "Runs the gateway: POST /v1/chat/completions (streamed or not), POST /v1/completions\n"
    "(local models), POST /v1/feedback, GET /v1/models, /health, /metrics, and with the\n"
    "master key /admin/config, /admin/routes, /admin/reload and /admin/models/MODEL/adapters\n"
    "(a local model's LoRA adapters: GET lists, POST loads, DELETE .../NAME unloads).\n"
    "\n"
    "  -c, --config FILE    configuration (default: $BRIGADE_CONFIG, else ./brigade.yaml)\n"
    "      --listen H:P     override server.listen, e.g. 127.0.0.1:8080 or [::1]:8080\n"
    "      --workers N      override server.workers (0 = one per core)\n"
    "      --log-db PATH    override log.path; 'off' disables the request log\n"
    "      --log-level L    override server.log_level\n"
    "\n"
    "Signals: SIGTERM or SIGINT drain (finish requests in flight, then exit);\n"
    "SIGHUP reloads the configuration (an invalid file is refused and the old one kept).\n";

static const char usage_logs[] =
    "usage: brigade logs [-c FILE | --db PATH] [-n N] [--since DURATION] [--by model|key|day]\n"
    "\n"
    "Prints the most recent requests from the request log, then totals (requests, errors,\n"
    "tokens, cost, mean latency) grouped by model, API key or UTC day.\n"
    "\n"
    "  -c, --config FILE    read log.path from this configuration\n"
    "      --db PATH        read this SQLite request log directly\n"
    "  -n N                 number of recent rows (default 20; 0 shows totals only)\n"
    "      --since D        only requests of the last D (e.g. 30m, 24h); default: all\n"
    "      --by G           group totals by model (default), key or day\n";

static const char usage_config[] =
    "usage: brigade config check [-c FILE]\n"
    "\n"
    "Loads the configuration exactly as 'serve' would, including each provider's files (for\n"
    "example replay recordings), and reports the first problem with its file and line.\n";

static const char usage_key[] =
    "usage: brigade key new [--id ID]\n"
    "       brigade key hash          (reads the key from standard input)\n"
    "\n"
    "'new' prints a fresh random client key and the config lines that accept it (the key is\n"
    "stored only as its SHA-256). 'hash' prints the SHA-256 of an existing key for\n"
    "'auth.keys[].sha256' or 'auth.master_key_sha256'.\n";

static int is_help(const char *a)
{
    return strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0 || strcmp(a, "help") == 0;
}

/* Matches "--name value", "--name=value" or the short form "-x value". */
static int opt_value(int argc, char **argv, int *i, const char *lng, const char *shrt,
                     const char **out)
{
    const char *a = argv[*i];
    size_t n = strlen(lng);
    if (strncmp(a, lng, n) == 0 && a[n] == '=') {
        *out = a + n + 1;
        return 1;
    }
    if (strcmp(a, lng) == 0 || (shrt && strcmp(a, shrt) == 0)) {
        if (*i + 1 >= argc) {
            (void)fprintf(stderr, "brigade: %s needs a value\n", a);
            exit(2); /* NOLINT(concurrency-mt-unsafe): argument parsing, before any thread */
        }
        *out = argv[++*i];
        return 1;
    }
    return 0;
}

static const char *default_config(void)
{
    /* NOLINTNEXTLINE(concurrency-mt-unsafe): command-line start-up, before any thread */
    const char *env = getenv("BRIGADE_CONFIG");
    if (env && *env) {
        return env;
    }
    if (access("brigade.yaml", R_OK) == 0) {
        return "brigade.yaml";
    }
    return NULL;
}

static int bad_arg(const char *cmd, const char *arg)
{
    (void)fprintf(stderr, "brigade %s: unknown argument '%s' (see 'brigade %s --help')\n", cmd, arg,
                  cmd);
    return 2;
}

static int parse_listen(const char *s, struct br_gateway_overrides *ov)
{
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s) {
        return -1;
    }
    static char host[64];
    size_t n = (size_t)(colon - s);
    if (n >= sizeof(host)) {
        return -1;
    }
    memcpy(host, s, n);
    host[n] = '\0';
    if (host[0] == '[' && n > 2 && host[n - 1] == ']') {
        host[n - 1] = '\0';
        memmove(host, host + 1, n - 1);
    }
    unsigned long long port;
    if (br_slice_to_u64(br_slice_from_cstr(colon + 1), 65535, &port) != BR_OK) {
        return -1;
    }
    ov->listen_host = strcmp(host, "localhost") == 0 ? "127.0.0.1" : host;
    ov->listen_port = (uint16_t)port;
    ov->has_listen = 1;
    return 0;
}

static int cmd_serve(int argc, char **argv)
{
    const char *config = NULL;
    const char *v;
    struct br_gateway_overrides ov = {0};
    const char *level = NULL;
    for (int i = 0; i < argc; i++) {
        if (is_help(argv[i])) {
            (void)fputs(usage_serve, stdout);
            return 0;
        } else if (opt_value(argc, argv, &i, "--config", "-c", &v)) {
            config = v;
        } else if (opt_value(argc, argv, &i, "--listen", NULL, &v)) {
            if (parse_listen(v, &ov) != 0) {
                (void)fprintf(stderr, "brigade serve: --listen wants HOST:PORT, got '%s'\n", v);
                return 2;
            }
        } else if (opt_value(argc, argv, &i, "--workers", NULL, &v)) {
            unsigned long long n;
            if (br_slice_to_u64(br_slice_from_cstr(v), 256, &n) != BR_OK) {
                (void)fprintf(stderr, "brigade serve: --workers wants 0..256, got '%s'\n", v);
                return 2;
            }
            ov.workers = (unsigned)n;
        } else if (opt_value(argc, argv, &i, "--log-db", NULL, &v)) {
            ov.log_path = v;
        } else if (opt_value(argc, argv, &i, "--log-level", NULL, &v)) {
            level = v;
        } else {
            return bad_arg("serve", argv[i]);
        }
    }
    if (!config) {
        config = default_config();
    }
    if (!config) {
        (void)fprintf(stderr,
                      "brigade serve: no configuration: pass -c FILE (the repository ships "
                      "config/brigade.yaml), set BRIGADE_CONFIG, or create ./brigade.yaml\n");
        return 2;
    }
    char err[1024];
    br_gateway *g = NULL;
    int rc = br_gateway_create(config, &ov, &g, err, sizeof(err));
    if (rc != BR_OK) {
        (void)fprintf(stderr, "brigade serve: %s\n", err);
        return 1;
    }
    if (level) {
        enum br_log_level lvl;
        if (br_log_level_parse(level, &lvl) != BR_OK) {
            (void)fprintf(stderr, "brigade serve: --log-level wants error, warn, info or debug\n");
            br_gateway_destroy(g);
            return 2;
        }
        br_log_set_level(lvl);
    }
    rc = br_gateway_run(g);
    br_gateway_destroy(g);
    return rc == BR_OK ? 0 : 1;
}

/* ------------------------------------------------------------------ logs */

static void fmt_time(int64_t ms, char out[32])
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    if (!gmtime_r(&t, &tm) || strftime(out, 32, "%Y-%m-%d %H:%M:%S", &tm) == 0) {
        memcpy(out, "-", 2); /* a time gmtime cannot represent */
    }
}

static void fmt_ms(int64_t us, char out[24])
{
    if (us < 0) {
        (void)snprintf(out, 24, "-");
    } else {
        (void)snprintf(out, 24, "%.1f", (double)us / 1000.0);
    }
}

static int print_row(void *user, const struct br_log_row *r)
{
    (void)user;
    char ts[32];
    char usd[BR_COST_USD_STRLEN];
    char lat[24];
    char ttft[24];
    fmt_time(r->ts_ms, ts);
    br_cost_format_usd(r->cost_nano_usd, usd);
    fmt_ms(r->latency_us, lat);
    fmt_ms(r->ttft_us, ttft);
    printf("%-19s  %-12.12s  %-10.10s  %-26.26s  %3d  %6s  %7lld  %7lld%s  %12s  %8s  %8s  %s\n",
           ts, r->id ? r->id : "-", r->key_id ? r->key_id : "-", r->model ? r->model : "-",
           r->status, r->stream ? "stream" : "-", (long long)r->prompt_tokens,
           (long long)r->completion_tokens, r->usage_estimated ? "~" : " ", usd, lat, ttft,
           r->error_kind ? r->error_kind : "");
    return 0;
}

struct totals_acc {
    int64_t requests;
    int64_t errors;
    int64_t prompt;
    int64_t completion;
    int64_t cost;
};

static int print_total(void *user, const struct br_store_total *t)
{
    struct totals_acc *acc = user;
    char usd[BR_COST_USD_STRLEN];
    br_cost_format_usd(t->cost_nano_usd, usd);
    printf("%-30.30s  %9lld  %7lld  %12lld  %12lld  %14s  %10.1f\n", t->group ? t->group : "-",
           (long long)t->requests, (long long)t->errors, (long long)t->prompt_tokens,
           (long long)t->completion_tokens, usd, t->mean_latency_ms);
    acc->requests += t->requests;
    acc->errors += t->errors;
    acc->prompt += t->prompt_tokens;
    acc->completion += t->completion_tokens;
    acc->cost += t->cost_nano_usd;
    return 0;
}

struct logs_opts {
    const char *config;
    const char *db;
    long n;
    uint64_t since;
    enum br_store_group by;
    const char *by_name;
};

static int parse_group(const char *v, enum br_store_group *by)
{
    if (strcmp(v, "model") == 0) {
        *by = BR_STORE_GROUP_MODEL;
    } else if (strcmp(v, "key") == 0) {
        *by = BR_STORE_GROUP_KEY;
    } else if (strcmp(v, "day") == 0) {
        *by = BR_STORE_GROUP_DAY;
    } else {
        return -1;
    }
    return 0;
}

/* Reads the options of 'brigade logs'; returns -1 to go on, else the exit code. */
static int logs_args(int argc, char **argv, struct logs_opts *o)
{
    const char *v;
    for (int i = 0; i < argc; i++) {
        if (is_help(argv[i])) {
            (void)fputs(usage_logs, stdout);
            return 0;
        } else if (opt_value(argc, argv, &i, "--config", "-c", &v)) {
            o->config = v;
        } else if (opt_value(argc, argv, &i, "--db", NULL, &v)) {
            o->db = v;
        } else if (opt_value(argc, argv, &i, "-n", NULL, &v)) {
            unsigned long long x;
            if (br_slice_to_u64(br_slice_from_cstr(v), 1000000, &x) != BR_OK) {
                (void)fprintf(stderr, "brigade logs: -n wants a number\n");
                return 2;
            }
            o->n = (long)x;
        } else if (opt_value(argc, argv, &i, "--since", NULL, &v)) {
            if (br_config_parse_duration_ms(v, &o->since) != BR_OK) {
                (void)fprintf(stderr,
                              "brigade logs: --since wants a duration such as 30m or 24h\n");
                return 2;
            }
        } else if (opt_value(argc, argv, &i, "--by", NULL, &v)) {
            o->by_name = v;
            if (parse_group(v, &o->by) != 0) {
                (void)fprintf(stderr, "brigade logs: --by wants model, key or day\n");
                return 2;
            }
        } else {
            return bad_arg("logs", argv[i]);
        }
    }
    return -1;
}

/* The recent rows (unless n is 0), then the totals. */
static int print_logs(const char *db, const struct logs_opts *o)
{
    int64_t since_ms = o->since ? br_clock_wall_ms() - (int64_t)o->since : 0;
    int rc = BR_OK;
    if (o->n > 0) {
        printf("recent requests in %s (newest first; ~ marks estimated token counts)\n", db);
        printf("%-19s  %-12s  %-10s  %-26s  %3s  %6s  %7s  %8s  %12s  %8s  %8s  %s\n", "time (UTC)",
               "id", "key", "model", "st", "mode", "prompt", "complet.", "cost (USD)", "lat ms",
               "ttft ms", "error");
        rc = br_store_query_recent(db, (int)o->n, since_ms, print_row, NULL);
        printf("\n");
    }
    if (rc == BR_OK) {
        struct totals_acc acc = {0};
        printf("totals by %s%s\n", o->by_name, o->since ? " (since the given time)" : "");
        printf("%-30s  %9s  %7s  %12s  %12s  %14s  %10s\n", o->by_name, "requests", "errors",
               "prompt tok", "complet. tok", "cost (USD)", "mean ms");
        rc = br_store_query_totals(db, o->by, since_ms, print_total, &acc);
        char usd[BR_COST_USD_STRLEN];
        br_cost_format_usd(acc.cost, usd);
        printf("%-30s  %9lld  %7lld  %12lld  %12lld  %14s\n", "all", (long long)acc.requests,
               (long long)acc.errors, (long long)acc.prompt, (long long)acc.completion, usd);
    }
    if (rc != BR_OK) {
        (void)fprintf(stderr, "brigade logs: cannot read %s: %s\n", db, br_strerror(rc));
    }
    return rc;
}

static int cmd_logs(int argc, char **argv)
{
    struct logs_opts o = {.n = 20, .by = BR_STORE_GROUP_MODEL, .by_name = "model"};
    int code = logs_args(argc, argv, &o);
    if (code >= 0) {
        return code;
    }
    const char *db = o.db;
    struct br_config *cfg = NULL;
    if (!db) {
        const char *config = o.config ? o.config : default_config();
        if (!config) {
            (void)fprintf(stderr, "brigade logs: pass --db PATH or -c FILE\n");
            return 2;
        }
        char err[1024];
        if (br_config_load_file(config, &cfg, err, sizeof(err)) != BR_OK) {
            (void)fprintf(stderr, "brigade logs: %s\n", err);
            return 1;
        }
        db = cfg->log_path;
        if (!db) {
            (void)fprintf(stderr, "brigade logs: the request log is off in %s\n", config);
            br_config_unref(cfg);
            return 1;
        }
    }
    int rc = print_logs(db, &o);
    br_config_unref(cfg);
    return rc == BR_OK ? 0 : 1;
}

/* ------------------------------------------------------------------ config, key */

static int cmd_config(int argc, char **argv)
{
    const char *config = NULL;
    const char *v;
    if (argc == 0 || is_help(argv[0])) {
        (void)fputs(usage_config, argc ? stdout : stderr);
        return argc ? 0 : 2;
    }
    if (strcmp(argv[0], "check") != 0) {
        return bad_arg("config", argv[0]);
    }
    for (int i = 1; i < argc; i++) {
        if (is_help(argv[i])) {
            (void)fputs(usage_config, stdout);
            return 0;
        } else if (opt_value(argc, argv, &i, "--config", "-c", &v)) {
            config = v;
        } else {
            return bad_arg("config", argv[i]);
        }
    }
    if (!config) {
        config = default_config();
    }
    if (!config) {
        (void)fprintf(stderr, "brigade config check: pass -c FILE\n");
        return 2;
    }
    char msg[1024];
    int rc = br_gateway_check_config(config, msg, sizeof(msg));
    (void)fprintf(rc == BR_OK ? stdout : stderr, "%s\n", msg);
    return rc == BR_OK ? 0 : 1;
}

static void print_hash(const char *key, size_t n)
{
    unsigned char h[BR_CONFIG_KEY_HASH_LEN];
    br_config_hash_key(key, n, h);
    for (size_t i = 0; i < sizeof(h); i++) {
        printf("%02x", h[i]);
    }
}

static int cmd_key(int argc, char **argv)
{
    if (argc == 0 || is_help(argv[0])) {
        (void)fputs(usage_key, argc ? stdout : stderr);
        return argc ? 0 : 2;
    }
    if (strcmp(argv[0], "new") == 0) {
        const char *id = "my-app";
        const char *v;
        for (int i = 1; i < argc; i++) {
            if (is_help(argv[i])) {
                (void)fputs(usage_key, stdout);
                return 0;
            } else if (opt_value(argc, argv, &i, "--id", NULL, &v)) {
                id = v;
            } else {
                return bad_arg("key", argv[i]);
            }
        }
        unsigned char raw[24];
        if (br_rand_bytes(raw, sizeof(raw)) != BR_OK) {
            (void)fprintf(stderr, "brigade key new: no randomness available\n");
            return 1;
        }
        char key[3 + 2 * sizeof(raw) + 1] = "br-";
        for (size_t i = 0; i < sizeof(raw); i++) {
            (void)snprintf(key + 3 + 2 * i, 3, "%02x", raw[i]);
        }
        printf("key:    %s\n\nconfig:\n  auth:\n    keys:\n      - id: %s\n        sha256: ", key,
               id);
        print_hash(key, strlen(key));
        printf("\n");
        return 0;
    }
    if (strcmp(argv[0], "hash") == 0) {
        char line[4096];
        if (!fgets(line, sizeof(line), stdin)) {
            (void)fprintf(stderr, "brigade key hash: expected the key on standard input\n");
            return 2;
        }
        line[strcspn(line, "\r\n")] = '\0';
        print_hash(line, strlen(line));
        printf("\n");
        return 0;
    }
    return bad_arg("key", argv[0]);
}

int main(int argc, char **argv)
{
    json_set_alloc_funcs(br_malloc, br_free);
    if (argc < 2 || is_help(argv[1])) {
        (void)fputs(usage_main, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("brigade %s\n", BR_VERSION);
        return 0;
    }
    if (strcmp(cmd, "serve") == 0) {
        /* A peer that closes while we write must be an EPIPE error, not process death. */
        (void)signal(SIGPIPE, SIG_IGN); /* cannot fail for a valid signal number */
        if (br_upstream_global_init() != BR_OK) {
            (void)fprintf(stderr, "brigade: cannot initialise libcurl\n");
            return 1;
        }
        int rc = cmd_serve(argc - 2, argv + 2);
        br_upstream_global_cleanup();
        return rc;
    }
    if (strcmp(cmd, "logs") == 0) {
        return cmd_logs(argc - 2, argv + 2);
    }
    if (strcmp(cmd, "eval") == 0) {
        return br_eval_cli(argc - 2, argv + 2);
    }
    if (strcmp(cmd, "calibrate") == 0) {
        return br_calibrate_cli(argc - 2, argv + 2);
    }
    if (strcmp(cmd, "train") == 0) {
        return br_train_cli(argc - 2, argv + 2);
    }
    if (strcmp(cmd, "generate") == 0) {
        return br_generate_cli(argc - 2, argv + 2);
    }
    if (strcmp(cmd, "quantize") == 0) {
        return br_quantize_cli(argc - 2, argv + 2);
    }
    if (strcmp(cmd, "lora") == 0) {
        return br_lora_cli(argc - 2, argv + 2);
    }
    if (strcmp(cmd, "quality") == 0) {
        return br_quality_cli(argc - 2, argv + 2);
    }
    if (strcmp(cmd, "routes") == 0) {
        return br_cli_routes(argc - 2, argv + 2);
    }
    if (strcmp(cmd, "export") == 0) {
        return br_cli_export(argc - 2, argv + 2);
    }
    if (strcmp(cmd, "config") == 0) {
        return cmd_config(argc - 2, argv + 2);
    }
    if (strcmp(cmd, "key") == 0) {
        return cmd_key(argc - 2, argv + 2);
    }
    (void)fprintf(stderr, "brigade: unknown command '%s'\n\n%s", cmd, usage_main);
    return 2;
}
