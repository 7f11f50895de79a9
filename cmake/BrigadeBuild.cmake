# SPDX-License-Identifier: MIT
# Build types, warnings and the helpers that register tests (STYLE.md rules 38-40, 48).

set(BR_WARNINGS -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wformat=2
    -Wvla -Wundef)
if(BR_WERROR)
  list(APPEND BR_WARNINGS -Werror)
endif()

set(BR_SAN_FLAGS "-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer")
set(CMAKE_C_FLAGS_DEBUG "-O1 -g ${BR_SAN_FLAGS}")
set(CMAKE_EXE_LINKER_FLAGS_DEBUG "${BR_SAN_FLAGS}")
set(CMAKE_SHARED_LINKER_FLAGS_DEBUG "${BR_SAN_FLAGS}")
set(CMAKE_C_FLAGS_RELEASE "-O2 -g -DNDEBUG")
set(CMAKE_C_FLAGS_TSAN "-O1 -g -fsanitize=thread -fno-omit-frame-pointer")
set(CMAKE_EXE_LINKER_FLAGS_TSAN "-fsanitize=thread")
set(CMAKE_C_FLAGS_FUZZ "-O1 -g -fsanitize=address,undefined,fuzzer-no-link -fno-omit-frame-pointer")
set(CMAKE_EXE_LINKER_FLAGS_FUZZ "-fsanitize=address,undefined")

# clang-tidy runs before each compile with the repository's .clang-tidy (WarningsAsErrors: a
# finding fails that file's compile). tests/CMakeLists.txt leaves the unit, integration and
# torture tests out, CMakeLists.txt leaves llhttp out. scripts/analyze.sh adds
# BR_CLANG_TIDY_ARGS=--warnings-as-errors=-* so that one run reports every file's findings
# (a failed compile would skip everything that depends on it) and gates on their count.
set(BR_CLANG_TIDY_ARGS "" CACHE STRING "Extra clang-tidy arguments (a ;-list)")
if(BR_CLANG_TIDY)
  find_program(BR_CLANG_TIDY_EXE NAMES clang-tidy-14 clang-tidy REQUIRED)
  set(CMAKE_C_CLANG_TIDY ${BR_CLANG_TIDY_EXE} --quiet ${BR_CLANG_TIDY_ARGS})
endif()

# One static library per subsystem. Usage: br_add_subsystem(name SOURCES ... DEPS ...)
function(br_add_subsystem name)
  cmake_parse_arguments(A "" "" "SOURCES;DEPS" ${ARGN})
  add_library(br_${name} STATIC ${A_SOURCES})
  target_include_directories(br_${name} PUBLIC ${PROJECT_SOURCE_DIR}/src)
  target_compile_definitions(br_${name} PUBLIC _POSIX_C_SOURCE=200809L)
  target_compile_options(br_${name} PRIVATE ${BR_WARNINGS})
  target_link_libraries(br_${name} PUBLIC ${A_DEPS})
endfunction()

# One executable per test file; each cmocka_unit_test(x) becomes its own CTest test
# (`bin x` runs only x through cmocka_set_test_filter).
function(br_add_cmocka_test name src)
  cmake_parse_arguments(A "" "LABEL;TIMEOUT" "DEPS" ${ARGN})
  if(NOT A_LABEL)
    set(A_LABEL unit)
  endif()
  if(NOT A_TIMEOUT)
    set(A_TIMEOUT 20)
  endif()
  add_executable(${name} ${src})
  target_include_directories(${name} PRIVATE ${CMOCKA_INCLUDE_DIR} ${PROJECT_SOURCE_DIR}/src
                                             ${PROJECT_SOURCE_DIR}/tests)
  target_compile_definitions(${name} PRIVATE _POSIX_C_SOURCE=200809L
                             BR_SOURCE_DIR="${PROJECT_SOURCE_DIR}"
                             BR_BINARY_DIR="${PROJECT_BINARY_DIR}")
  target_compile_options(${name} PRIVATE ${BR_WARNINGS} -Wno-missing-prototypes)
  target_link_libraries(${name} PRIVATE ${CMOCKA_LIBRARIES} ${A_DEPS})
  set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${src})
  # Every cmocka_unit_test*(name ...) in the file, also several on one line.
  file(READ ${src} text)
  string(REGEX MATCHALL "cmocka_unit_test[a-z_]*\\([A-Za-z0-9_]+" calls "${text}")
  foreach(l IN LISTS calls)
    string(REGEX REPLACE "cmocka_unit_test[a-z_]*\\(([A-Za-z0-9_]+)" "\\1" case "${l}")
    add_test(NAME ${name}.${case} COMMAND ${name} ${case})
    set_tests_properties(${name}.${case} PROPERTIES LABELS ${A_LABEL} TIMEOUT ${A_TIMEOUT})
  endforeach()
endfunction()

# A libFuzzer target: built with -fsanitize=fuzzer in the Fuzz build type (clang), and
# everywhere else linked with tests/fuzz/fuzz_replay.c so that CTest replays its corpus.
function(br_add_fuzz_target target)
  cmake_parse_arguments(A "" "" "DEPS" ${ARGN})
  set(src ${PROJECT_SOURCE_DIR}/tests/fuzz/fuzz_${target}.c)
  set(corpus ${PROJECT_SOURCE_DIR}/tests/fuzz/corpus/${target})
  if(CMAKE_BUILD_TYPE STREQUAL "Fuzz")
    add_executable(fuzz_${target} ${src})
    target_link_options(fuzz_${target} PRIVATE -fsanitize=fuzzer)
  else()
    add_executable(fuzz_${target} ${src} ${PROJECT_SOURCE_DIR}/tests/fuzz/fuzz_replay.c)
    add_test(NAME fuzz_replay.${target} COMMAND fuzz_${target} ${corpus})
    set_tests_properties(fuzz_replay.${target} PROPERTIES LABELS fuzz TIMEOUT 300)
  endif()
  target_include_directories(fuzz_${target} PRIVATE ${PROJECT_SOURCE_DIR}/src)
  target_compile_definitions(fuzz_${target} PRIVATE _POSIX_C_SOURCE=200809L)
  # assert() is the fuzz oracle: keep it in every build type, Release included.
  target_compile_options(fuzz_${target} PRIVATE ${BR_WARNINGS} -Wno-missing-prototypes -UNDEBUG)
  target_link_libraries(fuzz_${target} PRIVATE ${A_DEPS})
endfunction()
