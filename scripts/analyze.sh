#!/bin/sh
# SPDX-License-Identifier: MIT
# The static analyzers (STYLE.md rule 46), run by CI after the tests:
#  - clang-tidy 14 with the repository's .clang-tidy on every C file of src/, tests/fuzz and
#    tests/mock_upstream, through a dedicated build (-DBR_CLANG_TIDY=ON). The unit, integration
#    and torture tests (tests/CMakeLists.txt) and llhttp (CMakeLists.txt) are left out.
#  - cppcheck 2.10 on that build's compile_commands.json, restricted to the same folders
#    (system headers and llhttp excluded).
# Prints the findings and a short summary; exits 1 on any finding, 2 when it cannot run. The
# build folder is build-analyze (BR_ANALYZE_DIR overrides it); every run rebuilds it from clean
# objects so that every file is checked again. Suppressing a false positive:
# docs/internals/analyzers.md.
set -eu
cd "$(dirname "$0")/.."
dir=${BR_ANALYZE_DIR:-build-analyze}
start=$(date +%s)

for tool in clang-tidy-14:clang-tidy cppcheck; do
    found=0
    for name in $(echo "$tool" | tr : ' '); do
        command -v "$name" >/dev/null 2>&1 && found=1
    done
    if [ $found -eq 0 ]; then
        echo "analyze: ${tool##*:} is not installed (scripts/install-deps.sh installs it)"
        exit 2
    fi
done

# Findings are warnings in this build (BR_CLANG_TIDY_ARGS), so that a file with findings does
# not stop the files that depend on it from being checked; this script gates on their count.
mkdir -p "$dir"
if ! cmake -S . -B "$dir" -G "Unix Makefiles" -DCMAKE_BUILD_TYPE=Debug -DBR_WERROR=ON \
    -DBR_CLANG_TIDY=ON '-DBR_CLANG_TIDY_ARGS=--warnings-as-errors=-*' -DBR_BUILD_TESTS=ON \
    >"$dir/analyze-configure.log" 2>&1; then
    cat "$dir/analyze-configure.log"
    exit 2
fi
cmake --build "$dir" --target clean >/dev/null

# clang-tidy runs as part of each compile.
tidy_log=$dir/analyze-clang-tidy.log
if ! cmake --build "$dir" -j2 -- -k >"$tidy_log" 2>&1; then
    echo "analyze: the build failed:"
    grep -E 'error|Error' "$tidy_log" | head -40
    exit 2
fi
# (fuzz_replay.c is built into every fuzz target: count files, not objects)
checked=$(grep -E 'Building C object (src|tests/fuzz|tests/mock_upstream)/' "$tidy_log" |
    sed -E 's#.*\.dir/##' | sort -u | wc -l)
# A header is checked with every file that includes it: count each finding once.
findings=$dir/analyze-clang-tidy.findings
grep -E '^[^ ]+:[0-9]+:[0-9]+: (warning|error): .*\[[A-Za-z0-9.,_-]+\]$' "$tidy_log" |
    sed "s#^$PWD/##" | sort -u >"$findings" || true
tidy_n=$(wc -l <"$findings")
if [ "$tidy_n" -gt 0 ]; then
    echo "analyze: clang-tidy findings:"
    cat "$findings"
fi

# cppcheck on the same compile commands.
cpp_log=$dir/analyze-cppcheck.log
cpp_rc=0
cppcheck --project="$dir/compile_commands.json" --file-filter='src/*' \
    --file-filter='tests/fuzz/*' --file-filter='tests/mock_upstream/*' \
    --enable=warning,performance,portability --inline-suppr --error-exitcode=1 -j2 --quiet \
    --suppress='*:/usr/*' --template='{file}:{line}:{column}: {severity}: {message} [{id}]' \
    >"$cpp_log" 2>&1 || cpp_rc=$?
cpp_n=$(grep -cE '\[[A-Za-z0-9_]+\]$' "$cpp_log" || true)
if [ $cpp_rc -ne 0 ] || [ "$cpp_n" -gt 0 ]; then
    echo "analyze: cppcheck findings:"
    cat "$cpp_log"
    [ "$cpp_n" -gt 0 ] || cpp_n=1
fi

secs=$(($(date +%s) - start))
echo "analyze: clang-tidy checked $checked files: $tidy_n findings"
if [ "$tidy_n" -gt 0 ]; then
    sed -E 's/.*\[([^],]+).*\]$/\1/' "$findings" | sort | uniq -c | sort -rn |
        sed 's/^ */analyze:   /'
fi
echo "analyze: cppcheck: $cpp_n findings"
if [ "$tidy_n" -gt 0 ] || [ "$cpp_n" -gt 0 ]; then
    echo "analyze: FAILED in ${secs}s (logs: $dir/analyze-*.log)"
    exit 1
fi
echo "analyze: ok in ${secs}s"
