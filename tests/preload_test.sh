#!/usr/bin/env bash
# preload_test.sh — real programs, never rebuilt, run on ferry through
# LD_PRELOAD=libferry.so: their output must be the same as on glibc, they
# must print nothing extra, and FERRY_STATS=1 must show that ferry was
# really in the process (its statistics table on stderr at exit).
set -euo pipefail

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

runfile() {
  local rel="$1" f
  for f in "${TEST_SRCDIR:-}/ferry/$rel" "${RUNFILES_DIR:-}/ferry/$rel" "${TEST_SRCDIR:-}"/*/"$rel"; do
    if [[ -e "$f" ]]; then
      echo "$f"
      return 0
    fi
  done
  return 1
}

lib="$(runfile libferry.so)" || fail "libferry.so not found in runfiles"
probe="$(runfile tests/preload_probe_test)" || fail "tests/preload_probe_test not found in runfiles"
lib="$(cd "$(dirname "$lib")" && pwd)/$(basename "$lib")"  # LD_PRELOAD wants it absolute
tmp="${TEST_TMPDIR:-$(mktemp -d)}"
python=/usr/bin/python3
[[ -x "$python" ]] || python="$(command -v python3)" || fail "python3 not found"
echo "library: $lib"

# Runs "$@" on glibc and on ferry; fails unless stdout and exit status agree
# and ferry adds nothing to stderr. $name names the files.
compare() {
  local name="$1"
  shift
  local rc_glibc=0 rc_ferry=0
  "$@" >"$tmp/$name.glibc.out" 2>"$tmp/$name.glibc.err" || rc_glibc=$?
  LD_PRELOAD="$lib" "$@" >"$tmp/$name.ferry.out" 2>"$tmp/$name.ferry.err" || rc_ferry=$?
  [[ $rc_glibc == "$rc_ferry" ]] || {
    cat "$tmp/$name.ferry.err" >&2
    fail "$name: exit status $rc_glibc on glibc, $rc_ferry on ferry"
  }
  cmp -s "$tmp/$name.glibc.out" "$tmp/$name.ferry.out" || {
    diff "$tmp/$name.glibc.out" "$tmp/$name.ferry.out" | head -20 >&2
    fail "$name: stdout differs between glibc and ferry"
  }
  cmp -s "$tmp/$name.glibc.err" "$tmp/$name.ferry.err" || {
    head -20 "$tmp/$name.ferry.err" >&2
    fail "$name: stderr differs between glibc and ferry"
  }
  [[ -s "$tmp/$name.ferry.out" ]] || fail "$name: printed nothing"
  echo "ok: $name ($(wc -l <"$tmp/$name.ferry.out") lines, identical)"
}

# Fails unless "$@" under ferry with FERRY_STATS=1 prints ferry's statistics
# header as the first line of stderr.
expect_stats() {
  local name="$1"
  shift
  FERRY_STATS=1 LD_PRELOAD="$lib" "$@" >/dev/null 2>"$tmp/$name.stats.err" ||
    fail "$name: failed with FERRY_STATS=1"
  head -n 1 "$tmp/$name.stats.err" | grep -qi ferry || {
    head -5 "$tmp/$name.stats.err" >&2
    fail "$name: FERRY_STATS=1 printed no ferry statistics header: was the preload active?"
  }
  echo "ok: $name under FERRY_STATS=1: $(head -n 1 "$tmp/$name.stats.err")"
}

# 0. libferry.so needs nothing but the C library: a C program run on it does
#    not load libstdc++ (operator new reaches the C++ runtime weakly).
if command -v readelf >/dev/null; then
  needed="$(readelf -d "$lib" | awk '/NEEDED/ {print $NF}' | tr -d '[]' | tr '\n' ' ')"
  [[ "$needed" == "libc.so.6 " ]] || fail "libferry.so needs more than libc.so.6: $needed"
  echo "ok: libferry.so needs only: $needed"
fi
# Read whole first: grep -q stops at its first match, and cat, killed by
# SIGPIPE, would fail the pipeline under pipefail.
cat_maps="$(LD_PRELOAD="$lib" cat /proc/self/maps)" || fail "cat on libferry.so failed"
if grep -q 'libstdc++' <<<"$cat_maps"; then
  fail "a C program (cat) run on libferry.so maps libstdc++"
fi
grep -q 'libferry' <<<"$cat_maps" || fail "cat did not map libferry.so"
echo "ok: cat on libferry.so maps libferry.so and no libstdc++"

# 0b. C++ loaded after ferry: a C program dlopens a C++ plugin, whose
#     runtime ferry's operator new must find then (bad_alloc, new-handler).
plugin="$(runfile tests/libpreload_cxx_plugin.so)" || fail "the C++ plugin is not in runfiles"
dlopen_main="$(runfile tests/preload_dlopen_main)" || fail "preload_dlopen_main is not in runfiles"
plugin="$(cd "$(dirname "$plugin")" && pwd)/$(basename "$plugin")"
if readelf -d "$dlopen_main" 2>/dev/null | grep -q 'libstdc++'; then
  fail "preload_dlopen_main links libstdc++ itself: it would not test a runtime that comes later"
fi
for mode in local global; do
  LD_PRELOAD="$lib" "$dlopen_main" "$plugin" "$mode" || fail "C++ plugin dlopened ($mode) on ferry"
done
# Without ferry the plugin's operator new is libstdc++'s: the check must see it.
if "$dlopen_main" "$plugin" local >/dev/null; then
  fail "preload_dlopen_main passes without ferry: it cannot tell whose operator new ran"
fi

# 0c. glibc's other names for its allocator (__libc_malloc and co., and
#     cfree as binaries from before glibc 2.26 bind it) must reach ferry too:
#     a block from one name goes back through another.
glibc_names="$(runfile tests/preload_glibc_names)" || fail "preload_glibc_names is not in runfiles"
"$glibc_names" >/dev/null || fail "preload_glibc_names fails on glibc"
LD_PRELOAD="$lib" "$glibc_names" ferry || fail "preload_glibc_names fails on ferry"
"$glibc_names" ferry >/dev/null 2>&1 &&
  fail "preload_glibc_names finds ferry without the preload: its check proves nothing"

# A thread whose first free is the loader's must not start the pool there
# (it deadlocked: the loader holds the lock pthread_create takes). Each
# remote free fills a batch; 30 s is far beyond the run's few milliseconds.
loader_free="$(runfile tests/preload_loader_free)" || fail "preload_loader_free is not in runfiles"
rc=0
FERRY_BATCH=1 FERRY_RECLAIMERS=1 FERRY_STATS=1 LD_PRELOAD="$lib" timeout 30 "$loader_free" \
  >"$tmp/loader_free.out" 2>"$tmp/loader_free.err" || rc=$?
[[ $rc == 0 ]] || fail "preload_loader_free exited $rc on ferry (124: it hung)"
grep -q '^joined$' "$tmp/loader_free.out" || fail "preload_loader_free printed no 'joined'"
grep -Eq 'remote_frees +[1-9]' "$tmp/loader_free.err" ||
  fail "preload_loader_free made no remote free on ferry: its check proves nothing"

# oneTBB loaded by dlopen after ferry, and asked for as the backend: ferry
# cannot reach it (its references were bound when it was loaded), so it
# warns and uses its own threads; it jumped to address 0.
tbb_dlopen="$(runfile tests/preload_tbb_dlopen)" || fail "preload_tbb_dlopen is not in runfiles"
rc=0
FERRY_RECLAIMER_BACKEND=tbb FERRY_RECLAIMERS=1 FERRY_BATCH=64 FERRY_STATS=1 LD_PRELOAD="$lib" \
  timeout 30 "$tbb_dlopen" >"$tmp/tbb_dlopen.out" 2>"$tmp/tbb_dlopen.err" || rc=$?
[[ $rc == 0 ]] || fail "preload_tbb_dlopen exited $rc on ferry"
if grep -q '^freed$' "$tmp/tbb_dlopen.out"; then
  grep -q 'FERRY_RECLAIMER_BACKEND=tbb needs oneTBB' "$tmp/tbb_dlopen.err" ||
    fail "preload_tbb_dlopen: no warning that the oneTBB backend is out of reach"
  grep -Eq 'pool_starts +[1-9]' "$tmp/tbb_dlopen.err" ||
    fail "preload_tbb_dlopen: ferry's own pool never started"
else
  echo "preload_tbb_dlopen: $(cat "$tmp/tbb_dlopen.out") (skipped)"
fi
echo "ok: glibc's __libc_* names and cfree reach ferry"

# A program's own pthread_create wrapper that frees other threads' records
# under its lock: the pool starts from inside it, and must not call the
# wrapper back (the oneTBB backend did, and hung: exit 124).
wrapped="$(runfile tests/preload_wrapped_pthread_create)" || fail "preload_wrapped_pthread_create is not in runfiles"
for backend in threads tbb; do
  rc=0
  FERRY_RECLAIMER_BACKEND=$backend FERRY_RECLAIMERS=2 FERRY_INLINE_WHEN_BUSY=0 FERRY_BATCH=16 FERRY_STATS=1 \
    FERRY_VERBOSE=1 LD_PRELOAD="$lib" timeout 30 "$wrapped" >"$tmp/wrapped.out" 2>"$tmp/wrapped.err" || rc=$?
  [[ $rc == 0 ]] || fail "preload_wrapped_pthread_create exited $rc on the $backend backend (124: it hung)"
  grep -Eq '^done: [0-9]{3,} threads' "$tmp/wrapped.out" || fail "preload_wrapped_pthread_create ($backend) did not finish"
  grep -Eq 'batches_pooled +[1-9]' "$tmp/wrapped.err" ||
    fail "preload_wrapped_pthread_create ($backend): the pool applied no batch, so the check proves nothing"
  if [[ $backend == tbb ]]; then
    grep -q 'reclaimer pool started on a oneTBB arena' "$tmp/wrapped.err" ||
      fail "preload_wrapped_pthread_create: the pool did not start on oneTBB"
  fi
done
# The same lock taken by the program's fork prepare handler, forks in a loop
# while the pool starts: a fork waited for good for a oneTBB start that
# waited for that lock.
rc=0
FERRY_RECLAIMER_BACKEND=tbb FERRY_RECLAIMERS=2 FERRY_INLINE_WHEN_BUSY=0 FERRY_BATCH=16 FERRY_STATS=1 \
  FERRY_VERBOSE=1 LD_PRELOAD="$lib" timeout 30 "$wrapped" fork >"$tmp/wrapped.out" 2>"$tmp/wrapped.err" || rc=$?
[[ $rc == 0 ]] || fail "preload_wrapped_pthread_create fork exited $rc on the tbb backend (124: it hung)"
grep -q '^done: [1-9][0-9]* forks' "$tmp/wrapped.out" || fail "preload_wrapped_pthread_create fork did not finish"
grep -q 'reclaimer pool started on a oneTBB arena' "$tmp/wrapped.err" ||
  fail "preload_wrapped_pthread_create fork: the pool did not start on oneTBB"
echo "ok: a pthread_create wrapper that frees under its lock, both backends"

# The reclaimer pool started by a thread that a library's constructor waits
# for, while dlopen holds the loader's lock: the start must not need that
# lock (it looked up pthread_create with dlvsym there, and hung).
pool_main="$(runfile tests/preload_pool_dlopen_main)" || fail "preload_pool_dlopen_main is not in runfiles"
pool_plugin="$(runfile tests/libpreload_pool_plugin.so)" || fail "libpreload_pool_plugin.so is not in runfiles"
rc=0
FERRY_RECLAIMERS=1 FERRY_INLINE_WHEN_BUSY=0 LD_PRELOAD="$lib" timeout 60 "$pool_main" "$pool_plugin" \
  >"$tmp/pool_dlopen.out" 2>"$tmp/pool_dlopen.err" || rc=$?
cat "$tmp/pool_dlopen.out"
[[ $rc != 1 ]] || fail "the reclaimer pool's start waited for dlopen in another thread (a plugin's constructor)"
[[ $rc != 3 ]] || fail "preload_pool_dlopen_main started no reclaimer pool: its check proves nothing"
[[ $rc == 0 ]] || fail "preload_pool_dlopen_main exited $rc on ferry (124: it hung)"
echo "ok: the reclaimer pool starts while another thread is in dlopen"

# Fork handlers on both sides of ferry's: a library's, registered before
# ferry's, run on the forking thread while ferry's handlers hold its locks,
# and allocate and flush there; the program's, registered after ferry's
# (at load) and before its first malloc, wait for an allocating worker to
# pause, and number 60 (the 49th grows glibc's list by malloc).
# In a session of its own, so that a child stuck in a handler goes too.
atfork_alloc="$(runfile tests/preload_atfork_alloc)" || fail "preload_atfork_alloc is not in runfiles"
rc=0
FERRY_RECLAIMERS=1 FERRY_INLINE_WHEN_BUSY=0 FERRY_BATCH=256 FERRY_STATS=1 LD_PRELOAD="$lib" \
  setsid timeout 60 "$atfork_alloc" >"$tmp/atfork_alloc.out" 2>"$tmp/atfork_alloc.err" &
pid=$!
wait "$pid" || rc=$?
kill -KILL -- "-$pid" 2>/dev/null || true
[[ $rc == 0 ]] || {
  cat "$tmp/atfork_alloc.err" >&2
  fail "preload_atfork_alloc exited $rc on ferry (124: a fork or a registration hung; 4: a flush in a handler left batches)"
}
grep 'found batches still queued' "$tmp/atfork_alloc.err" || true
grep -qx done "$tmp/atfork_alloc.out" || fail "preload_atfork_alloc did not finish on ferry"
grep -Eq 'pool_starts +[1-9]' "$tmp/atfork_alloc.err" ||
  fail "preload_atfork_alloc: the reclaimer pool never started, so its flushes in the fork proved nothing"
atfork_libs="$(ldd "$atfork_alloc")" || fail "ldd preload_atfork_alloc failed"
grep -q 'libpreload_atfork_early.so => /' <<<"$atfork_libs" ||
  fail "preload_atfork_alloc: libpreload_atfork_early.so not found: $atfork_libs"
if grep -q 'libstdc++' <<<"$atfork_libs"; then
  fail "preload_atfork_alloc or its library loads libstdc++, whose start-up allocates before main"
fi
echo "ok: fork handlers before ferry's allocate and flush, those after it wait for an allocating thread"

# ferry opened with dlopen (no preload): its first call, from a second
# thread, races a fork whose prepare handler (registered before ferry's)
# calls it too. A setup that waited for the fork hung about half the runs.
first_call="$(runfile tests/dlopen_fork_first_call)" || fail "dlopen_fork_first_call is not in runfiles"
for spins in $(seq 0 1000 19000); do
  rc=0
  timeout 10 "$first_call" "$lib" "$spins" || rc=$?
  [[ $rc == 0 ]] || fail "dlopen_fork_first_call $spins exited $rc (124: the fork and ferry's setup hung)"
done
echo "ok: ferry's first call during a fork whose handler calls it"

# No thread to be had for the pool (RLIMIT_NPROC 0 before the first remote
# frees): batches go back inline, and ferry adds nothing to stderr unless
# asked (FERRY_VERBOSE=1, which also shows the run reached that path).
thread_limit="$(runfile tests/preload_thread_limit)" || fail "preload_thread_limit is not in runfiles"
FERRY_RECLAIMERS=1 FERRY_INLINE_WHEN_BUSY=0 compare thread_limit timeout 60 "$thread_limit"
if grep -q '^done$' "$tmp/thread_limit.ferry.out"; then
  FERRY_RECLAIMERS=1 FERRY_INLINE_WHEN_BUSY=0 FERRY_VERBOSE=1 LD_PRELOAD="$lib" timeout 60 "$thread_limit" \
    >/dev/null 2>"$tmp/thread_limit.verbose.err" || fail "preload_thread_limit failed with FERRY_VERBOSE=1"
  grep -q 'could not start the reclaimer threads' "$tmp/thread_limit.verbose.err" ||
    fail "preload_thread_limit: the pool's start never failed, so the quiet stderr proved nothing"
else
  echo "preload_thread_limit: $(cat "$tmp/thread_limit.ferry.out")"
fi

# 1. A multi-threaded Python program. PYTHONMALLOC=malloc sends every object
#    to malloc (not only those over 512 B), so ferry sees all of them; objects
#    made on one thread die on another through the queues.
cat >"$tmp/work.py" <<'PY'
import hashlib
import queue
import random
import threading

THREADS = 6
results = [None] * THREADS
handoff = [queue.Queue() for _ in range(THREADS)]


def work(i):
    rnd = random.Random(i)
    words, counts = [], {}
    for k in range(12000):
        s = "".join(chr(97 + rnd.randrange(26)) for _ in range(rnd.randrange(1, 30)))
        words.append(s * (1 + k % 40))  # some strings of a few KiB
        counts[s] = counts.get(s, 0) + k
    # Hand big structures to the next thread, which frees them.
    handoff[(i + 1) % THREADS].put([{"k": j, "v": list(range(j % 300))} for j in range(3000)])
    words.sort()
    h = hashlib.sha256()
    for s in words:
        h.update(s.encode())
    for key in sorted(counts):
        h.update(f"{key}={counts[key]};".encode())
    got = handoff[i].get()
    h.update(repr(sum(len(d["v"]) for d in got)).encode())
    del got
    matrix = [[(x * y) % 97 for x in range(120)] for y in range(120)]
    h.update(repr(matrix).encode())
    results[i] = (i, len(words), len(counts), h.hexdigest())


threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
for t in threads:
    t.start()
for t in threads:
    t.join()
for r in results:
    print(*r)
PY
export PYTHONHASHSEED=0 PYTHONMALLOC=malloc
compare python "$python" "$tmp/work.py"
expect_stats python "$python" "$tmp/work.py"

# 2. sort on 200,000 generated lines: a small buffer and two threads make it
#    spill to temporary files and merge.
awk 'BEGIN {
  x = 12345
  for (i = 0; i < 200000; i++) {
    x = (x * 69069 + 1) % 4294967296
    printf "%010d %s\n", x % 1000000007, substr("qwertyuiopasdfghjklzxcvbnm", x % 26 + 1, x % 17 + 1)
  }
}' >"$tmp/lines.txt"
[[ $(wc -l <"$tmp/lines.txt") == 200000 ]] || fail "generator made the wrong number of lines"
export LC_ALL=C
compare sort sort --parallel=2 -S 4M -T "$tmp" "$tmp/lines.txt"
compare sort_numeric_reverse sort --parallel=2 -n -r -k2,2 -k1,1 -S 1M -T "$tmp" "$tmp/lines.txt"
# (No FERRY_STATS check for sort: coreutils close stderr in an atexit hook,
# before any library can print at exit.)

# 3. A shell that forks and execs a few hundred processes, all on ferry.
compare shell bash -c 'for i in $(seq 1 150); do echo "line $i" | tr 0-9 a-j; done | sort | uniq -c | md5sum'

# 4. A GoogleTest program that knows nothing of ferry, on ferry: it checks
#    through dlsym that malloc's blocks are ferry's.
"$probe" --gtest_brief=1 >"$tmp/probe.glibc.out" 2>&1 || {
  cat "$tmp/probe.glibc.out" >&2
  fail "preload_probe_test fails without ferry"
}
for reclaimers in default 0 1; do
  env_args=(FERRY_EXPECT_PRELOADED=1 LD_PRELOAD="$lib")
  [[ $reclaimers == default ]] || env_args+=(FERRY_RECLAIMERS="$reclaimers")
  env "${env_args[@]}" "$probe" --gtest_brief=1 >"$tmp/probe.ferry.out" 2>&1 || {
    cat "$tmp/probe.ferry.out" >&2
    fail "preload_probe_test fails on ferry (FERRY_RECLAIMERS=$reclaimers)"
  }
  echo "ok: preload_probe_test on ferry (FERRY_RECLAIMERS=$reclaimers)"
done
env FERRY_EXPECT_PRELOADED=1 "$probe" --gtest_filter='Preload.FerryIs*' >/dev/null 2>&1 &&
  fail "the probe's preload check passes without the preload: it proves nothing"
expect_stats probe env FERRY_EXPECT_PRELOADED=1 "$probe" --gtest_brief=1

echo "PASS"
