#!/usr/bin/env bash
# Installs ferry into a temporary prefix with tools/install (from the
# libraries Bazel built), builds the example programs against it the four
# ways a user would (a C program linking libferry.a, a C++ program on
# ferry.h, a CMake project with find_package(ferry), a Makefile project with
# pkg-config), runs each and checks that it ran on ferry (its statistics at
# exit name ferry and count its work), then uninstalls and checks that
# nothing of ferry's is left.
set -euo pipefail
runfiles="${TEST_SRCDIR}/ferry"
src="${runfiles}/tests/install"
work="${TEST_TMPDIR}/work"
prefix="${TEST_TMPDIR}/prefix"
rm -rf "$work" "$prefix"
mkdir -p "$work" "$prefix/lib"
touch "$prefix/lib/someone-elses-file"  # must survive the uninstall

fail() { echo "FAIL: $*" >&2; exit 1; }

# ldd's output is read into a variable first: `ldd | grep -q` would let grep
# close the pipe early and fail the pipeline under pipefail.
loads_installed_ferry() {  # loads_installed_ferry PROGRAM
  local libs
  libs="$(ldd "$1")"
  grep -q "$prefix/lib/libferry.so" <<<"$libs"
}

"${runfiles}/tools/install" --prefix "$prefix" \
  --archive "${runfiles}/libferry.a" --shared "${runfiles}/libferry.so" \
  --header "${runfiles}/allocator/include/ferry.h"
for f in lib/libferry.a lib/libferry.so include/ferry.h lib/pkgconfig/ferry.pc \
         lib/pkgconfig/ferry-static.pc lib/cmake/ferry/ferryConfig.cmake \
         lib/cmake/ferry/ferryConfigVersion.cmake; do
  [[ -f "$prefix/$f" ]] || fail "$f was not installed"
done

# Runs a program with FERRY_STATS=1: its output must end with `want`, and
# its statistics at exit must name ferry and show allocations.
run_on_ferry() {  # run_on_ferry WANT PROGRAM
  local out err
  out="$(FERRY_STATS=1 "$2" 2>"$work/stats")" || fail "$2 exited with $?"
  [[ "$out" == *"$1"* ]] || fail "$2 printed '$out', not '$1'"
  err="$(cat "$work/stats")"
  grep -q '^ferry [0-9.]* statistics$' <<<"$err" || fail "$2 did not run on ferry: $err"
  grep -Eq '^ *pages_made +[1-9]' <<<"$err" || fail "$2: ferry made no pages: $err"
  echo "ok: $(basename "$2") on ferry"
}

# A C program that links only the archive (no C++ runtime).
cc -std=gnu11 -Wall -Werror "$src/c_static/prog.c" "$prefix/lib/libferry.a" -pthread -o "$work/c_static"
run_on_ferry "c static ok" "$work/c_static"

# A C++ program on ferry.h, shared and static.
c++ -std=c++20 -Wall -Werror -I"$prefix/include" "$src/cpp_api/prog.cc" \
  -L"$prefix/lib" -Wl,-rpath,"$prefix/lib" -lferry -pthread -o "$work/cpp_api"
loads_installed_ferry "$work/cpp_api" || fail "cpp_api does not load the installed libferry.so"
run_on_ferry "c++ api ok" "$work/cpp_api"
c++ -std=c++17 -Wall -Werror -I"$prefix/include" "$src/cpp_api/prog.cc" \
  -L"$prefix/lib" -Wl,-rpath,"$prefix/lib" -lferry -pthread -o "$work/cpp_api17"
run_on_ferry "c++ api ok" "$work/cpp_api17"

# A CMake project: find_package(ferry), ferry::ferry and ferry::ferry_static.
cmake -S "$src/cmake_project" -B "$work/cmake" -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_BUILD_TYPE=Release >"$work/cmake.log" 2>&1 || { cat "$work/cmake.log"; fail "cmake configure"; }
cmake --build "$work/cmake" >>"$work/cmake.log" 2>&1 || { cat "$work/cmake.log"; fail "cmake build"; }
loads_installed_ferry "$work/cmake/app_shared" || fail "app_shared does not load the installed libferry.so"
run_on_ferry "cmake ok" "$work/cmake/app_shared"
! loads_installed_ferry "$work/cmake/app_static" || fail "app_static loads libferry.so: it is not linked statically"
run_on_ferry "cmake ok" "$work/cmake/app_static"

# A Makefile project with pkg-config, shared and static.
cp "$src/make_project/Makefile" "$src/make_project/main.c" "$work/"
PKG_CONFIG_PATH="$prefix/lib/pkgconfig" make -s -C "$work" app app_static
loads_installed_ferry "$work/app" || fail "the pkg-config program does not load the installed libferry.so"
run_on_ferry "make ok" "$work/app"
! loads_installed_ferry "$work/app_static" || fail "the static pkg-config program loads libferry.so"
run_on_ferry "make ok" "$work/app_static"

"${runfiles}/tools/install" --prefix "$prefix" --uninstall
left="$(cd "$prefix" && find . -mindepth 1 | sort)"
[[ "$left" == $'./lib\n./lib/someone-elses-file' ]] || fail "after --uninstall the prefix holds: $left"
echo PASS
