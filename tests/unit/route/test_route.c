/* SPDX-License-Identifier: MIT */
/* Planning: a catalogue model gives a one-step direct plan; anything else is not found. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "br_test.h"
#include "core/err.h"
#include "route/route.h"

static const char cfg_text[] =
    "models:\n"
    "  - {name: small, provider: openai, price: {input: 0.1, output: 0.2}}\n"
    "  - {name: large, provider: openai, price: {input: 10, output: 30}}\n";

static void test_direct(void **state)
{
    (void)state;
    struct br_config *c = NULL;
    char err[256];
    assert_int_equal(br_config_load_string(cfg_text, strlen(cfg_text), NULL, &c, err, sizeof(err)),
                     BR_OK);
    struct br_plan p;
    assert_int_equal(br_route_plan(c, "large", 5, &p), BR_OK);
    assert_int_equal(p.n_steps, 1);
    assert_string_equal(p.steps[0].model->name, "large");
    assert_int_equal(p.steps[0].kind, BR_PLAN_STEP_PRIMARY);
    assert_string_equal(p.policy, "direct");
    assert_null(p.route);
    assert_int_equal(br_route_plan(c, "larg", 4, &p), BR_ERR_NOTFOUND);
    assert_int_equal(p.n_steps, 0);
    assert_int_equal(br_route_plan(c, "", 0, &p), BR_ERR_NOTFOUND);
    br_config_unref(c);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_direct),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests_name("route", tests, NULL, NULL);
}
