/* SPDX-License-Identifier: MIT */
/*
 * cmocka with the headers it needs included first (cmocka.h is not self-contained, and
 * clang-format's include sorting would otherwise move it above them).
 */
#ifndef BR_TEST_H
#define BR_TEST_H

/* clang-format off */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
/* clang-format on */

#endif
