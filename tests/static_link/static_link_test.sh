#!/usr/bin/env bash
# Links libferry.a into a C program (with the C compiler, no C++ runtime) and
# a C++ program, the way a user outside Bazel would, and runs both.
set -euo pipefail
runfiles="${TEST_SRCDIR}/ferry"
archive="${runfiles}/libferry.a"
include="${runfiles}/allocator/include"
src="${runfiles}/tests/static_link"
out="${TEST_TMPDIR}"

cc -std=gnu11 -Wall -Werror -I"${include}" "${src}/prog.c" "${archive}" -lpthread -o "${out}/prog_c"
# Symbol tables are read into variables first: `nm | grep -q` would let grep
# close the pipe early and fail the pipeline under pipefail.
symbols_c="$(nm "${out}/prog_c")"
# The C program must not need libstdc++: the link above would have failed.
if grep -q ' U _Z' <<<"${symbols_c}"; then
  echo "FAIL: the C program refers to C++ symbols" >&2
  exit 1
fi
grep -q ' T malloc$' <<<"${symbols_c}" || { echo "FAIL: malloc was not linked from libferry.a" >&2; exit 1; }
"${out}/prog_c" | grep -qx 'c ok'
cc -std=gnu11 -Wall -Werror -static -I"${include}" "${src}/prog.c" "${archive}" -lpthread -o "${out}/prog_c_static"
"${out}/prog_c_static" | grep -qx 'c ok'

# glibc's mallopt and mallinfo family, linked with libc dynamically and then
# fully static (where libc.a keeps them in its malloc's object).
cc -std=gnu11 -Wall -Werror -I"${include}" "${src}/glibc_calls.c" "${archive}" -lpthread -o "${out}/glibc_calls"
"${out}/glibc_calls" | grep -qx 'glibc calls ok'
cc -std=gnu11 -Wall -Werror -static -I"${include}" "${src}/glibc_calls.c" "${archive}" -lpthread \
  -o "${out}/glibc_calls_static"
"${out}/glibc_calls_static" | grep -qx 'glibc calls ok'

c++ -std=c++20 -Wall -Werror -I"${include}" "${src}/prog.cc" "${archive}" -pthread -o "${out}/prog_cc"
symbols_cc="$(nm -C "${out}/prog_cc")"
grep -q ' T operator new(unsigned long)$' <<<"${symbols_cc}" ||
  { echo "FAIL: operator new was not linked from libferry.a" >&2; exit 1; }
"${out}/prog_cc" | grep -qx 'c++ ok'
stats="$(FERRY_STATS=1 "${out}/prog_cc" 2>&1 >/dev/null)"
grep -q '^ferry [0-9.]* statistics$' <<<"${stats}"
echo PASS
