#!/bin/sh
# SPDX-License-Identifier: MIT
# Cheap static checks, run by CTest (label lint):
#  - every C file is clang-formatted (STYLE.md rule 37);
#  - no raw malloc/calloc/realloc/free/strdup in src/ outside core/alloc.c (rule 24).
set -eu
cd "$(dirname "$0")/.."
files=$(find src tests bench -name node_modules -prune -o \( -name '*.c' -o -name '*.h' \) -print | sort)
bad=0
for f in $files; do
    if ! clang-format --dry-run -Werror "$f" >/dev/null 2>&1; then
        echo "lint: not clang-formatted: $f (run clang-format -i $f)"
        bad=1
    fi
done
raw=$(grep -rnE '(^|[^_a-z.>])(malloc|calloc|realloc|free|strdup|strndup)\(' src \
      --include='*.c' --include='*.h' | grep -v '^src/core/alloc.c:' \
      | grep -vE '/\*.*(malloc|free)\(.*\*/' | grep -v 'NOLINT' || true)
if [ -n "$raw" ]; then
    echo "lint: raw heap calls in src/ (use br_malloc/br_free from core/alloc.h):"
    echo "$raw"
    bad=1
fi
[ $bad -eq 0 ] && echo "lint: ok ($(echo "$files" | wc -l) files)"
exit $bad
