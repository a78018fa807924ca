#!/bin/bash
# Packs the opt build of ferry, the comparison driver, the workload binary and
# Debian's peer allocators into DIR (default .dev, ignored by git through
# .git/info/exclude) so that the comparison can run on a bare machine with no
# Bazel and no peers installed (a lent 16-core machine, say). The peers travel
# so that both machines compare the same versions.
#
#   tools/bazel build -c opt //:libferry.so //perf:compare //perf:workload //perf:libpcsample.so
#   perf/device_bundle.sh .dev
#   # there, as root:  bash .dev/run.sh OUTDIR [prodcons_timeout others_timeout prodcons_scale]
#
# run.sh copies the peers into /usr/lib/x86_64-linux-gnu only where no file of
# that name exists (compare looks for them there), falls back to the carried
# libstdc++ only if the binaries cannot start, then runs prodcons at 2, 4 and
# 8 pairs (4, 8, 16 threads) with ferry's variants, and larson, mstress,
# onefree and cscratch with and without the pool (on 16 cores the pool was
# 7-11% slower than none on prodcons, 2026-12-04: does it pay anywhere?).
# Each part has its own timeout because compare writes its files only at the
# end. libpcsample.so travels too, with profile.sh (as root there:
# bash .dev/profile.sh OUTDIR [scale]) for prodcons profiles of ferry, ferry
# without a pool and mimalloc in one archive; perf/pcsample/pcsample.cc and
# report.py say how to read them. ab.sh OUTDIR [WORKLOAD] times one
# workload (larson by default) on ferry, ferry-r0 and mimalloc, more runs
# and longer ones than compare's, and profiles each once. pool.sh OUTDIR
# compares 0, 1, 2 and the default number of reclaimers on every
# multi-threaded workload.
set -euo pipefail
DIR=$(mkdir -p "${1:-.dev}" && cd "${1:-.dev}" && pwd)
cd "$(dirname "$0")/.."
BIN=bazel-out/k8-opt/bin
SYS=/usr/lib/x86_64-linux-gnu
mkdir -p "$DIR/bin" "$DIR/lib" "$DIR/fallback"
cp -f "$BIN/libferry.so" "$BIN/perf/compare" "$BIN/perf/workload" "$BIN/perf/libpcsample.so" "$DIR/bin/"
# compare reads the mode off bazel-out paths; here it reads this (and prints
# it in the report). -dirty: the tree had changes the commit does not name.
dirty=$(git diff --quiet HEAD -- . 2>/dev/null || echo -dirty)
echo "opt $(git rev-parse --short HEAD)$dirty" > "$DIR/bin/BUILD_INFO"
for f in libjemalloc.so.2 libmimalloc.so.2 libtcmalloc_minimal.so.4 libtbbmalloc_proxy.so.2 libtbbmalloc.so.2 libtbb.so.12; do
  cp -fL "$SYS/$f" "$DIR/lib/"
done
cp -fL "$SYS/libstdc++.so.6" "$SYS/libgcc_s.so.1" "$DIR/fallback/"
cat > "$DIR/run.sh" <<'RUN'
#!/bin/bash
set -u
B=$(cd "$(dirname "$0")" && pwd)
OUT=${1:?usage: run.sh OUTDIR [prodcons_timeout others_timeout prodcons_scale]}
TP=${2:-300}; TO=${3:-200}; SP=${4:-4}
L=/usr/lib/x86_64-linux-gnu
mkdir -p "$L" "$OUT/p" "$OUT/o"
{ date -u; uname -a; nproc; grep -m1 "model name" /proc/cpuinfo; free -g | head -2
  head -2 /etc/os-release; ldd --version | head -1; } > "$OUT/machine.txt" 2>&1
# A peer of the same name already there stays (the system may need it): say
# so, since that row then measures the system's version, not the carried one.
for f in "$B"/lib/*; do
  if [ -e "$L/$(basename "$f")" ]; then
    cmp -s "$f" "$L/$(basename "$f")" || echo "kept the system's $(basename "$f")" >> "$OUT/machine.txt"
  else
    cp "$f" "$L/"
  fi
done
C=("$B/bin/compare" --ferry-lib "$B/bin/libferry.so" --workload-bin "$B/bin/workload")
if ! "${C[@]}" --list > "$OUT/probe.txt" 2>&1; then
  echo "using the carried libstdc++" >> "$OUT/machine.txt"; export LD_LIBRARY_PATH="$B/fallback"
  if ! "${C[@]}" --list > "$OUT/probe.txt" 2>&1; then cat "$OUT/probe.txt" >> "$OUT/machine.txt"; exit 1; fi
fi
rm -f "$OUT/probe.txt"
timeout "$TP" "${C[@]}" --workload prodcons --pairs 2,4,8 --scale "$SP" --runs 5 \
  --alloc ferry --alloc ferry-r0 --alloc ferry-r2 --alloc ferry-tbb \
  --alloc jemalloc --alloc mimalloc --alloc tcmalloc --alloc tbbmalloc \
  --out "$OUT/p" > "$OUT/p/full.txt" 2>&1
echo "prodcons part: exit $? (124: out of time, no tables)" >> "$OUT/machine.txt"
timeout "$TO" "${C[@]}" --workload larson --workload mstress --workload onefree --workload cscratch --runs 3 \
  --alloc ferry --alloc ferry-r0 --alloc glibc --alloc jemalloc --alloc mimalloc --alloc tcmalloc --alloc tbbmalloc \
  --out "$OUT/o" > "$OUT/o/full.txt" 2>&1
echo "others part: exit $? (124: out of time, no tables)" >> "$OUT/machine.txt"
for part in p o; do tail -c 20000 "$OUT/$part/full.txt" > "$OUT/$part/log.txt"; rm -f "$OUT/$part/full.txt"; done
rm -f "$OUT"/*/run.png  # no gnuplot there, and the lent machine returns at most 8 files
date -u >> "$OUT/machine.txt"
RUN
chmod +x "$DIR/run.sh"
cat > "$DIR/profile.sh" <<'PROF'
#!/bin/bash
# profile.sh OUTDIR [scale]: prodcons at 2, 4 and 8 pairs on ferry, on ferry
# without a pool and on mimalloc, one run each under libpcsample.so. The
# samples, each run's output and exit status come back as one archive (the
# lent machine returns at most 8 files); read them on the development
# machine:
#   tar xzf OUTDIR/profiles.tgz
#   perf/pcsample/report.py profiles/ferry-2.PID --bin .dev/bin --bin .dev/lib --threads
# (the C library's own functions stay unnamed: its version there differs).
set -u
B=$(cd "$(dirname "$0")" && pwd)
OUT=${1:?usage: profile.sh OUTDIR [scale]}
S=${2:-6}
mkdir -p "$OUT/profiles"
# As run.sh: the carried libstdc++ only if the workload cannot start.
"$B/bin/workload" --list > /dev/null 2>&1 || export LD_LIBRARY_PATH="$B/fallback"
for P in 2 4 8; do
  for a in ferry ferry-r0 mimalloc; do
    pre="$B/bin/libferry.so"
    pool=()
    [ "$a" = ferry-r0 ] && pool=(FERRY_RECLAIMERS=0)
    [ "$a" = mimalloc ] && pre="$B/lib/libmimalloc.so.2"
    # A run killed by the timeout writes no samples (they are written at exit).
    timeout 120 env ${pool[@]+"${pool[@]}"} LD_PRELOAD="$pre $B/bin/libpcsample.so" \
      PCSAMPLE_OUT="$OUT/profiles/$a-$P" PCSAMPLE_US=250 "$B/bin/workload" prodcons --pairs "$P" --scale "$S" \
      > "$OUT/profiles/$a-$P.log" 2>&1
    echo "$a pairs=$P exit=$? $(grep -h RESULT "$OUT/profiles/$a-$P.log")" >> "$OUT/profiles/results.txt"
  done
done
tar czf "$OUT/profiles.tgz" -C "$OUT" profiles && rm -rf "$OUT/profiles"
PROF
chmod +x "$DIR/profile.sh"
cat > "$DIR/ab.sh" <<'AB'
#!/bin/bash
# ab.sh OUTDIR [WORKLOAD]: one workload (larson by default) at full scale (5
# alternating runs) and at --scale 4 (3 runs) on ferry, ferry without a pool
# and mimalloc, timed by bash's `time`; then one FERRY_STATS=1 run of ferry
# and one libpcsample.so profile of each at --scale 4. One archive
# (OUTDIR/ab.tgz); a compare table's short runs spread widely on the lent
# machine (larson 0.23-0.35 s, 2026-12-05), and this separates noise from a
# gap in a minute of lease.
set -u
B=$(cd "$(dirname "$0")" && pwd)
OUT=${1:?usage: ab.sh OUTDIR [WORKLOAD]}; WL=${2:-larson}
mkdir -p "$OUT/ab"
"$B/bin/workload" --list >/dev/null 2>&1 || export LD_LIBRARY_PATH="$B/fallback"
TIMEFORMAT='wall=%R user=%U sys=%S'
one() {  # one ALLOCATOR SCALE EXTRA_PRELOAD [ENV=VALUE...]
  local a=$1 s=$2 extra=$3; shift 3
  local pre="$B/bin/libferry.so" env=()
  [ "$a" = ferry-r0 ] && env=(FERRY_RECLAIMERS=0)
  [ "$a" = mimalloc ] && pre="$B/lib/libmimalloc.so.2"
  { time env ${env[@]+"${env[@]}"} "$@" LD_PRELOAD="$pre${extra:+ $extra}" \
      "$B/bin/workload" "$WL" --scale "$s" > /tmp/ab_out.txt 2>&1 ; } 2> /tmp/ab_time.txt
}
for s in 1 4; do
  n=5; [ "$s" = 4 ] && n=3
  for i in $(seq "$n"); do
    for a in ferry ferry-r0 mimalloc; do
      one "$a" "$s" ""
      echo "$a scale=$s run=$i $(cat /tmp/ab_time.txt) $(grep -h RESULT /tmp/ab_out.txt)" >> "$OUT/ab/times.txt"
    done
  done
done
one ferry 4 "" FERRY_STATS=1; cp /tmp/ab_out.txt "$OUT/ab/ferry_stats.txt"
for a in ferry ferry-r0 mimalloc; do
  one "$a" 4 "$B/bin/libpcsample.so" PCSAMPLE_OUT="$OUT/ab/$a" PCSAMPLE_US=200
  echo "$a profiled $(cat /tmp/ab_time.txt) $(grep -h RESULT /tmp/ab_out.txt)" >> "$OUT/ab/times.txt"
done
tar czf "$OUT/ab.tgz" -C "$OUT" ab && rm -rf "$OUT/ab"
AB
chmod +x "$DIR/ab.sh"
cat > "$DIR/pool.sh" <<'POOL'
#!/bin/bash
# pool.sh OUTDIR [prodcons_scale others_scale]: does the pool pay on this
# machine? ferry with its default reclaimers and with 0, 1 and 2, against
# mimalloc: prodcons at 2, 4 and 8 pairs, then larson, mstress, onefree,
# cscratch and phases, 5 runs each (on 16 cores no pool led the default in
# prodcons, and the pool made onefree 37% faster, 2026-12-05 19:31).
set -u
B=$(cd "$(dirname "$0")" && pwd)
OUT=${1:?usage: pool.sh OUTDIR [prodcons_scale others_scale]}; SP=${2:-4}; SO=${3:-full}
L=/usr/lib/x86_64-linux-gnu
mkdir -p "$L" "$OUT/p" "$OUT/o"
{ date -u; nproc; cat /sys/kernel/mm/transparent_hugepage/enabled; } > "$OUT/machine.txt" 2>&1
for f in "$B"/lib/*; do [ -e "$L/$(basename "$f")" ] || cp "$f" "$L/"; done
C=("$B/bin/compare" --ferry-lib "$B/bin/libferry.so" --workload-bin "$B/bin/workload")
"${C[@]}" --list > /dev/null 2>&1 || export LD_LIBRARY_PATH="$B/fallback"
A=(--alloc ferry --alloc ferry-r0 --alloc ferry-r1 --alloc ferry-r2 --alloc mimalloc)
timeout 240 "${C[@]}" --workload prodcons --pairs 2,4,8 --scale "$SP" --runs 5 "${A[@]}" \
  --out "$OUT/p" > "$OUT/p/full.txt" 2>&1
echo "prodcons part: exit $? (124: out of time, no tables)" >> "$OUT/machine.txt"
timeout 150 "${C[@]}" --workload larson --workload mstress --workload onefree --workload cscratch \
  --workload phases --scale "$SO" --runs 5 "${A[@]}" --out "$OUT/o" > "$OUT/o/full.txt" 2>&1
echo "others part: exit $? (124: out of time, no tables)" >> "$OUT/machine.txt"
for part in p o; do
  tail -c 20000 "$OUT/$part/full.txt" > "$OUT/$part/log.txt"
  rm -f "$OUT/$part/full.txt" "$OUT/$part/run.png"
done
date -u >> "$OUT/machine.txt"
POOL
chmod +x "$DIR/pool.sh"
echo "bundle in $DIR ($(du -sh "$DIR" | cut -f1))"
