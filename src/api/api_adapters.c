/* SPDX-License-Identifier: MIT */
/*
 * The admin API for a local model's LoRA adapters (master key):
 *
 *   GET    /admin/models/MODEL/adapters        the adapters MODEL serves now
 *   POST   /admin/models/MODEL/adapters        load one: {"name", "path", "scale"?}
 *   DELETE /admin/models/MODEL/adapters/NAME   unload one
 *
 * A loaded adapter is requested as "model": "MODEL:NAME" at once, on every worker (the model's
 * state is shared). Unloading takes effect for new requests at once; requests already using the
 * adapter finish with it. Adapters loaded here live in the running snapshot only: a reload
 * (SIGHUP, POST /admin/reload) or a restart serves the config's `adapters:` again, so an
 * adapter meant to stay belongs in the config file. A relative path resolves against the
 * config file's folder, as paths in the config do. The file is opened and checked on the event
 * loop that received the request (an adapter is a few MB; the check reads it once).
 */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "api/api_int.h"
#include "core/err.h"
#include "core/log.h"

static void bad_request(br_http_request *req, const char *code, const char *param, const char *msg)
{
    br_http_respond_error(req, 400, "invalid_request_error", code, param, msg);
}

/* The catalogue model named by the path (arena copy of its name in *name), or NULL after a 404. */
static const struct br_runtime_model *find_model(struct br_runtime *rt, br_http_request *req,
                                                 struct br_slice name)
{
    const struct br_model_cfg *mc = br_config_model_find(rt->cfg, name.ptr, name.len);
    const struct br_runtime_model *rm = mc ? br__runtime_model(rt, mc) : NULL;
    if (rm && rm->ops->variant_load) {
        return rm;
    }
    char *msg = br_arena_sprintf(req->arena,
                                 mc ? "The model `%.*s` does not take adapters (only provider "
                                      "local models do)."
                                    : "The model `%.*s` does not exist.",
                                 (int)(name.len > 200 ? 200 : name.len), name.ptr);
    br_http_respond_error(req, 404, "invalid_request_error", "model_not_found", "model",
                          msg ? msg : "model not found");
    return NULL;
}

static void list(const struct br_runtime_model *rm, br_http_request *req)
{
    json_t *data = json_array();
    int rc = data ? rm->ops->variant_list(rm->state, data) : BR_ERR_NOMEM;
    size_t i;
    json_t *v;
    json_array_foreach(data, i, v)
    {
        char *id = br_arena_sprintf(req->arena, "%s:%s", rm->cfg->name,
                                    json_string_value(json_object_get(v, "name")));
        rc = rc == BR_OK && id && json_object_set_new(v, "id", json_string(id)) == 0 ? rc
                                                                                     : BR_ERR_NOMEM;
    }
    if (rc != BR_OK) {
        json_decref(data);
        br__respond_json(req, 503, NULL);
        return;
    }
    br__respond_json(
        req, 200,
        json_pack("{s:s, s:s, s:o}", "object", "list", "model", rm->cfg->name, "data", data));
}

/* path as given when absolute, else against the config file's folder (arena). */
static const char *resolve_path(const struct br_config *cfg, br_arena *a, const char *path)
{
    const char *slash = strrchr(cfg->path, '/');
    if (path[0] == '/' || !slash || strcmp(cfg->path, "<string>") == 0) {
        return path;
    }
    return br_arena_sprintf(a, "%.*s/%s", (int)(slash - cfg->path), cfg->path, path);
}

/* Reads {"name", "path", "scale"?}; answers 400 and returns false when it is not that. */
static bool load_args(br_http_request *req, const char **name, const char **path, double *scale)
{
    json_error_t jerr;
    json_t *body = json_loadb(req->body.ptr, req->body.len, 0, &jerr);
    const json_t *n = json_object_get(body, "name");
    const json_t *p = json_object_get(body, "path");
    const json_t *s = json_object_get(body, "scale");
    const char *why = NULL;
    const char *param = NULL;
    if (!json_is_object(body)) {
        why = "The body must be a JSON object: {\"name\": ..., \"path\": ..., \"scale\": ...}.";
    } else if (!json_is_string(n) ||
               !br_config_adapter_name_ok(json_string_value(n), json_string_length(n))) {
        why = "name: 1 to 64 of A-Z a-z 0-9 . _ - (requests then use \"MODEL:NAME\").",
        param = "name";
    } else if (!json_is_string(p) || json_string_length(p) == 0 ||
               strlen(json_string_value(p)) != json_string_length(p)) {
        why = "path: the adapter's file (llama.cpp's GGUF LoRA format) is required.",
        param = "path";
    } else if (s && !json_is_null(s) &&
               (!json_is_number(s) ||
                !(json_number_value(s) >= -16 && json_number_value(s) <= 16))) {
        why = "scale: expected a number from -16 to 16 (default 1).", param = "scale";
    }
    if (why) {
        json_decref(body);
        bad_request(req, "invalid_value", param, why);
        return false;
    }
    *name = br_arena_strndup(req->arena, json_string_value(n), json_string_length(n));
    *path = br_arena_strndup(req->arena, json_string_value(p), json_string_length(p));
    *scale = s && json_is_number(s) ? json_number_value(s) : 1.0;
    json_decref(body);
    if (!*name || !*path) {
        br__respond_json(req, 503, NULL);
        return false;
    }
    return true;
}

static void load(struct br_runtime *rt, const struct br_runtime_model *rm, br_http_request *req)
{
    const char *name;
    const char *path;
    double scale;
    if (!load_args(req, &name, &path, &scale)) {
        return;
    }
    const char *full = resolve_path(rt->cfg, req->arena, path);
    char err[512] = "";
    int rc =
        full ? rm->ops->variant_load(rm->state, name, full, scale, err, sizeof(err)) : BR_ERR_NOMEM;
    br_log(rc == BR_OK ? BR_LOG_INFO : BR_LOG_WARN, req->id,
           "event=adapter_load model=%s adapter=%s path=\"%s\" scale=%g result=%s", rm->cfg->name,
           name, full ? full : path, scale, br_err_name(rc));
    if (rc == BR_ERR_EXISTS) {
        br_http_respond_error(req, 409, "invalid_request_error", "adapter_exists", "name", err);
        return;
    }
    if (rc == BR_ERR_NOMEM) {
        br__respond_json(req, 503, NULL);
        return;
    }
    if (rc != BR_OK) {
        char *msg = br_arena_sprintf(req->arena, "The adapter could not be loaded: %s", err);
        bad_request(req, rc == BR_ERR_LIMIT ? "too_many_adapters" : "invalid_adapter", "path",
                    msg ? msg : err);
        return;
    }
    char *id = br_arena_sprintf(req->arena, "%s:%s", rm->cfg->name, name);
    br__respond_json(req, 201,
                     id ? json_pack("{s:s, s:s, s:s, s:s, s:f}", "id", id, "object", "adapter",
                                    "name", name, "path", full, "scale", scale)
                        : NULL);
}

static void unload(const struct br_runtime_model *rm, br_http_request *req, struct br_slice name)
{
    char *n = br_arena_strndup(req->arena, name.ptr, name.len);
    int rc = n ? rm->ops->variant_unload(rm->state, n) : BR_ERR_NOMEM;
    br_log(BR_LOG_INFO, req->id, "event=adapter_unload model=%s adapter=%.*s result=%s",
           rm->cfg->name, (int)(name.len > 64 ? 64 : name.len), name.ptr, br_err_name(rc));
    if (rc == BR_ERR_NOTFOUND) {
        char *msg = br_arena_sprintf(req->arena, "The model `%s` has no adapter called `%s`.",
                                     rm->cfg->name, n);
        br_http_respond_error(req, 404, "invalid_request_error", "adapter_not_found", NULL,
                              msg ? msg : "adapter not found");
        return;
    }
    char *id = n ? br_arena_sprintf(req->arena, "%s:%s", rm->cfg->name, n) : NULL;
    br__respond_json(req, rc == BR_OK ? 200 : 503,
                     rc == BR_OK && id
                         ? json_pack("{s:s, s:s, s:b}", "id", id, "object", "adapter", "deleted", 1)
                         : NULL);
}

void br__admin_adapters(struct br_worker *w, br_http_request *req, struct br_slice rest)
{
    struct br_runtime *rt = br__worker_runtime(w);
    const char *key_id;
    enum br_auth_result ar = br__auth_check(rt->cfg, req, true, &key_id);
    if (ar != BR_AUTH_OK) {
        br__auth_fail(req, ar, true);
        return;
    }
    /* rest: MODEL/adapters or MODEL/adapters/NAME (a model name may itself contain '/') */
    static const char mark[] = "/adapters";
    const size_t mark_len = sizeof(mark) - 1;
    size_t at = SIZE_MAX;
    for (size_t i = rest.len; i-- > 0;) {
        if (i + mark_len <= rest.len && memcmp(rest.ptr + i, mark, mark_len) == 0 &&
            (i + mark_len == rest.len || rest.ptr[i + mark_len] == '/')) {
            at = i;
            break;
        }
    }
    struct br_slice tail =
        at == SIZE_MAX ? rest : br_slice_make(rest.ptr + at + mark_len, rest.len - at - mark_len);
    if (at == SIZE_MAX || at == 0 || (tail.len > 0 && tail.len < 2)) {
        br_http_respond_error(req, 404, "invalid_request_error", "unknown_url", NULL,
                              "Unknown admin URL: use /admin/models/MODEL/adapters[/NAME].");
        return;
    }
    const struct br_runtime_model *rm = find_model(rt, req, br_slice_make(rest.ptr, at));
    if (!rm) {
        return;
    }
    enum br_http_method m = req->method;
    if (tail.len == 0) {
        if (m == BR_HTTP_METHOD_GET || m == BR_HTTP_METHOD_HEAD) {
            list(rm, req);
        } else if (m == BR_HTTP_METHOD_POST) {
            load(rt, rm, req);
        } else {
            br__respond_not_allowed(req, "GET or POST");
        }
        return;
    }
    if (m != BR_HTTP_METHOD_DELETE) {
        br__respond_not_allowed(req, "DELETE");
        return;
    }
    unload(rm, req, br_slice_make(tail.ptr + 1, tail.len - 1));
}
