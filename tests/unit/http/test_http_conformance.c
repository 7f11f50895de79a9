/* SPDX-License-Identifier: MIT */
/*
 * Conformance run (label `conformance`): every strict-mode request case of llhttp's test suite
 * and every HTTP Garden payload is sent over a real socket to a running server whose handler
 * records what it receives. An independent oracle - llhttp itself, strict build, run over the
 * same bytes without our extra checks - says how many requests a strict parser completes; the
 * handler must never see more than that (no smuggled request), and whatever the server refuses
 * must be refused with an error status and a closed connection.
 *
 * Policy decisions where we deliberately differ from llhttp are listed in k_deviations with the
 * reason; upgrade cases follow our policy: Upgrade is ignored and the request served normally,
 * CONNECT and PRI are refused with 501.
 */
#include <jansson.h>
#include <llhttp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "br_test.h"
#include "unit/http/http_test_util.h"

#define DATA_DIR      BR_SOURCE_DIR "/tests/data/http"
#define MAX_TARGETS   16
#define MAX_RESPONSES 16

/* ---- oracle: llhttp strict, alone ------------------------------------------------------- */

struct oracle {
    int completed;                  /* messages completed before any error or pause */
    int begun;                      /* messages begun */
    int err;                        /* final llhttp errno (HPE_OK when it ran out of input) */
    char targets[MAX_TARGETS][128]; /* request-targets of the completed messages */
    char cur[128];
};

static int or_begin(llhttp_t *ll)
{
    struct oracle *o = ll->data;
    o->begun++;
    o->cur[0] = '\0';
    return 0;
}

static int or_url(llhttp_t *ll, const char *at, size_t len)
{
    struct oracle *o = ll->data;
    size_t have = strlen(o->cur);
    size_t room = sizeof(o->cur) - 1 - have;
    size_t n = len < room ? len : room;
    memcpy(o->cur + have, at, n);
    o->cur[have + n] = '\0';
    return 0;
}

static int or_complete(llhttp_t *ll)
{
    struct oracle *o = ll->data;
    if (o->completed < MAX_TARGETS) {
        snprintf(o->targets[o->completed], sizeof(o->targets[0]), "%s", o->cur);
    }
    o->completed++;
    return 0;
}

static void oracle_run(const char *data, size_t len, struct oracle *o)
{
    static const llhttp_settings_t settings = {
        .on_message_begin = or_begin,
        .on_url = or_url,
        .on_message_complete = or_complete,
    };
    memset(o, 0, sizeof(*o));
    llhttp_t ll;
    llhttp_init(&ll, HTTP_REQUEST, &settings);
    ll.data = o;
    o->err = llhttp_execute(&ll, data, len);
}

/* ---- running one case ------------------------------------------------------------------- */

struct outcome {
    int status[MAX_RESPONSES];
    int n;            /* responses read */
    bool closed;      /* the server closed the connection */
    int handled;      /* requests the handler received */
    int first_record; /* index of the first of them */
};

static void run_case(const char *data, size_t len, struct outcome *out)
{
    memset(out, 0, sizeof(*out));
    out->first_record = ht_n_records();
    struct ht_conn c;
    ht_conn_open(&c);
    assert_true(c.fd >= 0);
    c.head_request = len > 5 && memcmp(data, "HEAD ", 5) == 0;
    ht_send(c.fd, data, len); /* the server may close early; that is an outcome too */
    for (;;) {
        struct ht_resp r;
        int rc = ht_read_response(&c, &r, 3000);
        if (rc != 0) {
            ht_resp_free(&r);
            break;
        }
        if (r.status >= 200 && out->n < MAX_RESPONSES) {
            out->status[out->n++] = r.status;
        }
        ht_resp_free(&r);
    }
    out->closed = c.eof;
    ht_conn_close(&c);
    out->handled = ht_n_records() - out->first_record;
}

static bool all_2xx(const struct outcome *o)
{
    for (int i = 0; i < o->n; i++) {
        if (o->status[i] < 200 || o->status[i] > 299) {
            return false;
        }
    }
    return true;
}

static int last_status(const struct outcome *o)
{
    return o->n ? o->status[o->n - 1] : 0;
}

static void describe(const struct outcome *o, char *buf, size_t n)
{
    size_t at = 0;
    buf[0] = '\0';
    for (int i = 0; i < o->n && at < n; i++) {
        at += (size_t)snprintf(buf + at, n - at, "%s%d", i ? "," : "", o->status[i]);
    }
    if (at < n) {
        snprintf(buf + at, n - at, "%s%s handler=%d", o->n ? " " : "(none)",
                 o->closed ? " close" : " open", o->handled);
    }
}

/* The handler saw a prefix of what the oracle parsed: same requests, same order, no more. */
static bool handled_prefix_of_oracle(const struct outcome *out, const struct oracle *o)
{
    if (out->handled > o->completed) {
        return false;
    }
    for (int i = 0; i < out->handled && i < MAX_TARGETS; i++) {
        struct ht_record r = ht_get_record(out->first_record + i);
        if (strcmp(r.target, o->targets[i]) != 0) {
            return false;
        }
    }
    return true;
}

/* ---- llhttp cases ----------------------------------------------------------------------- */

enum want {
    WANT_DEFAULT = 0, /* what index.tsv says, under our upgrade policy */
    WANT_REJECT_400,
    WANT_REJECT_501,
    WANT_SERVED_THEN_CLOSE,
};

struct deviation {
    const char *name;
    enum want want;
    const char *reason;
};

/* Every case where we deliberately answer differently from llhttp's expectation. */
static const struct deviation k_deviations[] = {
    {"sample__10", WANT_REJECT_400,
     "HTTP/0.9-style request line without a version: not supported, a response could not be "
     "framed for it"},
    {"method__12", WANT_REJECT_400, "ICE/1.0 is not HTTP: only HTTP/1.0 and HTTP/1.1 are served"},
    {"method__13", WANT_REJECT_400, "RTSP/1.0 is not HTTP: only HTTP/1.0 and HTTP/1.1 are served"},
    {"method__14", WANT_REJECT_400, "RTSP/1.0 is not HTTP: only HTTP/1.0 and HTTP/1.1 are served"},
    {"method__16", WANT_REJECT_501,
     "QUERY is unknown to llhttp 8.1 (the suite is from a newer llhttp); an unknown but "
     "well-formed method gets 501 (RFC 9110 9.1)"},
    {"content-length__09", WANT_REJECT_400,
     "llhttp 8.1 strict refuses HTAB around the Content-Length value; refusing is safe and no "
     "client sends it"},
    {"transfer-encoding__07", WANT_REJECT_400,
     "llhttp 8.1 strict refuses a second chunk extension; clients do not send extensions"},
    {"transfer-encoding__10", WANT_REJECT_400,
     "llhttp 8.1 strict refuses quoted chunk-extension values with escapes"},
    {"transfer-encoding__17", WANT_REJECT_501,
     "Transfer-Encoding: deflate, chunked: we implement no coding but chunked, so the request "
     "gets 501 (RFC 9112 6.1) instead of a body we could not decode"},
    {"transfer-encoding__18", WANT_REJECT_501,
     "the same list split over two Transfer-Encoding fields: 501 as above"},
    {"connection__03", WANT_SERVED_THEN_CLOSE,
     "HTTP/1.0 without keep-alive followed by more bytes: the request is served with "
     "Connection: close and the trailing bytes are never parsed (no second request reaches "
     "the handler), which is the server-side form of llhttp's 'data after close' error"},
};

static const struct deviation *find_deviation(const char *name)
{
    for (size_t i = 0; i < sizeof(k_deviations) / sizeof(k_deviations[0]); i++) {
        if (strcmp(k_deviations[i].name, name) == 0) {
            return &k_deviations[i];
        }
    }
    return NULL;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 3);
    size_t k = fread(buf, 1, (size_t)n, f);
    fclose(f);
    buf[k] = '\0';
    *len = k;
    return buf;
}

static bool in_restore_list(const char *list, const char *name)
{
    size_t n = strlen(name);
    const char *p = list;
    while ((p = strstr(p, name)) != NULL) {
        bool start = p == list || p[-1] == '\n';
        bool end = p[n] == '\n' || p[n] == '\0';
        if (start && end) {
            return true;
        }
        p += n;
    }
    return false;
}

static void start_conformance_server(void)
{
    struct br_http_limits l;
    ht_limits(&l);
    l.header_timeout_ms = 300;
    l.body_idle_timeout_ms = 300;
    l.keepalive_timeout_ms = 100; /* a served connection ends soon after its last response */
    ht_start(&l, 2);
}

static void test_llhttp_cases(void **state)
{
    (void)state;
    start_conformance_server();
    size_t idx_len = 0;
    size_t rl_len = 0;
    char *index = read_file(DATA_DIR "/llhttp-tests/index.tsv", &idx_len);
    char *restore = read_file(DATA_DIR "/llhttp-tests/crlf_restore.txt", &rl_len);
    assert_non_null(index);
    assert_non_null(restore);
    int n_cases = 0;
    int n_fail = 0;
    int n_dev = 0;
    char *save = NULL;
    char *line = strtok_r(index, "\n", &save); /* header */
    printf("%-36s %-8s %-8s %-34s %s\n", "case", "expect", "oracle", "outcome", "verdict");
    for (line = strtok_r(NULL, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char name[64];
        char expect[16];
        if (sscanf(line, "%63[^\t]\t%15[^\t]", name, expect) != 2) {
            continue;
        }
        char path[512];
        snprintf(path, sizeof(path), DATA_DIR "/llhttp-tests/out/%s.bin", name);
        size_t len = 0;
        char *data = read_file(path, &len);
        assert_non_null(data);
        if (in_restore_list(restore, name)) {
            memcpy(data + len, "\r\n", 2);
            len += 2;
        }
        struct oracle o;
        oracle_run(data, len, &o);
        struct outcome out;
        run_case(data, len, &out);
        const struct deviation *dev = find_deviation(name);
        enum want want = dev ? dev->want : WANT_DEFAULT;
        bool ok = handled_prefix_of_oracle(&out, &o) || want == WANT_SERVED_THEN_CLOSE;
        bool is_connect = strncmp(data, "CONNECT ", 8) == 0;
        bool is_pri = strncmp(data, "PRI ", 4) == 0;
        /* Input that ends inside a message (the oracle agrees) is answered with 408 once the
         * header or body timeout expires. */
        bool incomplete = o.err == HPE_OK && o.begun > o.completed;
        int n_ok = incomplete && last_status(&out) == 408 ? out.n - 1 : out.n;
        switch (want) {
        case WANT_REJECT_400:
        case WANT_REJECT_501:
            ok = ok && out.closed && out.handled == 0 &&
                 last_status(&out) == (want == WANT_REJECT_400 ? 400 : 501);
            break;
        case WANT_SERVED_THEN_CLOSE:
            ok = out.closed && all_2xx(&out) && out.n == 1 && out.handled == 1;
            break;
        default:
            if (strcmp(expect, "accept") == 0) {
                ok = ok && out.closed && out.handled == n_ok && out.handled == o.completed;
                for (int i = 0; i < n_ok; i++) {
                    ok = ok && out.status[i] == 200;
                }
            } else if (strcmp(expect, "reject") == 0) {
                int st = last_status(&out);
                ok = ok && out.closed && (st == 400 || st == 501) && out.handled == out.n - 1;
            } else if (is_connect) {
                /* CONNECT: refused with 501, nothing reaches the handler. */
                ok = out.closed && last_status(&out) == 501 && out.handled == 0;
            } else if (is_pri) {
                /* PRI (the HTTP/2 preface): 505 (or 501), nothing reaches the handler. */
                int st = last_status(&out);
                ok = out.closed && (st == 505 || st == 501) && out.handled == 0;
            } else {
                /* Upgrade ignored: the request is served like any other; what llhttp would
                 * hand to the new protocol is parsed as HTTP: served, refused with 400/501,
                 * or left incomplete (408 after the header timeout). */
                int st = last_status(&out);
                ok = out.n >= 1 && out.status[0] == 200 && out.handled >= 1 &&
                     (all_2xx(&out) || (out.closed && (st == 400 || st == 501 || st == 408)));
            }
            break;
        }
        char desc[160];
        describe(&out, desc, sizeof(desc));
        char oracle_desc[16];
        snprintf(oracle_desc, sizeof(oracle_desc), "%d/e%d", o.completed, o.err);
        printf("%-36s %-8s %-8s %-34s %s%s\n", name, expect, oracle_desc, desc, ok ? "ok" : "FAIL",
               dev ? " (deliberate deviation, see k_deviations)" : "");
        n_dev += dev != NULL;
        n_cases++;
        if (!ok) {
            n_fail++;
        }
        free(data);
    }
    printf("llhttp cases: %d, failures: %d, deliberate deviations: %d\n", n_cases, n_fail, n_dev);
    free(index);
    free(restore);
    assert_int_equal(n_cases, 117);
    assert_int_equal(n_fail, 0);
}

/* ---- HTTP Garden payloads --------------------------------------------------------------- */

static int hexval(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/* \r \n \t \xNN \\ ; anything else stays as it is. */
static size_t unescape(const char *s, char *out)
{
    size_t n = 0;
    for (size_t i = 0; s[i]; i++) {
        if (s[i] != '\\' || !s[i + 1]) {
            out[n++] = s[i];
            continue;
        }
        char e = s[i + 1];
        if (e == 'r' || e == 'n' || e == 't' || e == '\\') {
            out[n++] = e == 'r' ? '\r' : e == 'n' ? '\n' : e == 't' ? '\t' : '\\';
            i++;
        } else if (e == 'x' && hexval(s[i + 2]) >= 0 && hexval(s[i + 3]) >= 0) {
            out[n++] = (char)(hexval(s[i + 2]) * 16 + hexval(s[i + 3]));
            i += 3;
        } else {
            out[n++] = s[i];
        }
    }
    return n;
}

static void test_unescape(void **state)
{
    (void)state;
    char out[64];
    size_t n = unescape("a\\r\\n\\t\\x00\\xff\\\\z\\q", out);
    assert_int_equal(n, 10);
    assert_memory_equal(out, "a\r\n\t\0\xff\\z\\q", 10);
}

static void test_http_garden(void **state)
{
    (void)state;
    start_conformance_server();
    json_error_t jerr;
    FILE *f = fopen(DATA_DIR "/http-garden/trophies_payloads.jsonl", "r");
    assert_non_null(f);
    char line[16384];
    int n_cases = 0;
    int n_fail = 0;
    int n_rejected = 0;
    int n_served = 0;
    printf("%-13s %-3s %-30s %-7s %-34s %s\n", "section", "n", "title", "oracle", "outcome",
           "verdict");
    while (fgets(line, sizeof(line), f)) {
        json_t *j = json_loads(line, 0, &jerr);
        assert_non_null(j);
        const char *section = json_string_value(json_object_get(j, "section"));
        const char *title = json_string_value(json_object_get(j, "title"));
        const char *esc = json_string_value(json_object_get(j, "payload_escaped"));
        int num = (int)json_integer_value(json_object_get(j, "n"));
        assert_non_null(esc);
        char *data = malloc(strlen(esc) + 1);
        size_t len = unescape(esc, data);
        struct oracle o;
        oracle_run(data, len, &o);
        struct outcome out;
        run_case(data, len, &out);
        int st = last_status(&out);
        bool rejected = out.closed && (st == 400 || st == 501 || st == 505);
        /* An input that ends inside a message (per the oracle too) times out with 408. */
        bool incomplete = out.closed && st == 408 && o.err == HPE_OK && o.begun > o.completed;
        bool served = all_2xx(&out) && out.n == out.handled;
        bool ok = handled_prefix_of_oracle(&out, &o) &&
                  (rejected || incomplete || (served && out.n >= 1)) && out.handled <= out.n;
        char desc[160];
        describe(&out, desc, sizeof(desc));
        char oracle_desc[16];
        snprintf(oracle_desc, sizeof(oracle_desc), "%d/e%d", o.completed, o.err);
        printf("%-13.13s %-3d %-30.30s %-7s %-34s %s\n", section, num, title, oracle_desc, desc,
               ok ? (rejected     ? "ok rejected"
                     : incomplete ? "ok incomplete"
                                  : "ok served")
                  : "FAIL");
        n_cases++;
        n_fail += !ok;
        n_rejected += ok && rejected;
        n_served += ok && served && !rejected;
        free(data);
        json_decref(j);
    }
    fclose(f);
    printf("http-garden payloads: %d, rejected: %d, served unambiguously: %d, failures: %d\n",
           n_cases, n_rejected, n_served, n_fail);
    assert_true(n_cases >= 70);
    assert_int_equal(n_fail, 0);
}

static int teardown(void **state)
{
    (void)state;
    ht_stop();
    return 0;
}

int main(int argc, char **argv)
{
    /* One test per line: CMake registers them line by line. */
    /* clang-format off */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unescape),
        cmocka_unit_test_teardown(test_llhttp_cases, teardown),
        cmocka_unit_test_teardown(test_http_garden, teardown),
    };
    /* clang-format on */
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("http_conformance", tests, NULL, NULL);
}
