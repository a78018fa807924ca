#!/usr/bin/env python3
"""Turns a pcsample file (libpcsample.so's output) into a flat profile.

    report.py FILE [--bin DIR]... [--top N] [--threads] [--addresses N]

Each sample's address is placed in the mapping it fell in; a module found
locally is symbolised with readelf and addr2line: DIR/<basename> for the
first --bin DIR that has it (binaries copied from another machine; with
--bin, a module under none of them is not symbolised, since the file at its
path here may be another version), else the file at its own path. Any other
module is reported by name only. The header says how much of the
process's CPU time the samples account for.

--threads     one table per sampled thread (thread 0 is the main thread)
--addresses N the N hottest addresses of the top functions, with file:line
"""
import argparse
import bisect
import collections
import os
import subprocess
import sys


def parse(path):
    header, maps, samples = {}, [], []
    in_samples = False
    with open(path) as f:
        for line in f:
            if in_samples:
                pc, thread, weight = line.split()
                samples.append((int(pc, 16), int(thread), int(weight)))
            elif line.startswith('=='):
                in_samples = True
            elif line.startswith('# '):
                key, value = line[2:].split()
                header[key] = float(value)
            else:
                parts = line.split()
                if len(parts) >= 6 and 'x' in parts[1]:
                    begin, end = (int(x, 16) for x in parts[0].split('-'))
                    maps.append((begin, end, int(parts[2], 16), parts[5]))
    return header, maps, samples


def load_segments(binary):
    """(file offset, virtual address, file size) of each PT_LOAD."""
    out = subprocess.run(['readelf', '-lW', binary], capture_output=True, text=True).stdout
    segments = []
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] == 'LOAD':
            segments.append((int(parts[1], 16), int(parts[2], 16), int(parts[4], 16)))
    return segments


def local_copy(module, bin_dirs):
    """The file to symbolise `module` with: under the --bin directories when
    any are given (samples from another machine, whose libraries at the same
    path here may be other versions: those are not symbolised), else at its
    own path."""
    if bin_dirs:
        for bin_dir in bin_dirs:
            candidate = os.path.join(bin_dir, os.path.basename(module))
            if os.path.exists(candidate):
                return candidate
        return None
    return module if os.path.exists(module) else None


def symbolise(binary, offsets, with_lines=False):
    """file offset -> function name (or 'function file:line')."""
    segments = load_segments(binary)

    def vaddr(offset):
        for file_offset, virtual, size in segments:
            if file_offset <= offset < file_offset + size:
                return offset - file_offset + virtual
        return offset

    # A stripped library (Debian's peers) names an address after the
    # nearest exported function before it, which may be another function
    # altogether: say so on each such name.
    sections = subprocess.run(['readelf', '-SW', binary], capture_output=True, text=True).stdout
    stripped = '.symtab' not in sections
    unique = sorted(set(offsets))
    addresses = [vaddr(o) for o in unique]
    # On stdin, not the command line: a long run has more addresses than
    # the command line would hold.
    out = subprocess.run(['addr2line', '-f', '-C', '-e', binary], input='\n'.join(hex(a) for a in addresses),
                         capture_output=True, text=True).stdout.splitlines()
    names = {}
    for k, offset in enumerate(unique):
        name = out[2 * k] if 2 * k < len(out) else '??'
        if stripped and name != '??':
            name = '~' + name + ' (stripped: nearest export)'
        if with_lines and 2 * k + 1 < len(out):
            name = '@%x %s  %s' % (addresses[k], os.path.basename(out[2 * k + 1]), name)
        names[offset] = name
    return names


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('file')
    parser.add_argument('--bin', action='append', help='directory holding local copies of the sampled binaries')
    parser.add_argument('--top', type=int, default=30)
    parser.add_argument('--threads', action='store_true')
    parser.add_argument('--addresses', type=int, default=0)
    args = parser.parse_args()

    header, maps, samples = parse(args.file)
    maps.sort()
    begins = [m[0] for m in maps]
    placed = []  # (module, file offset, thread, weight)
    for pc, thread, weight in samples:
        module, offset = '[unknown]', 0
        k = bisect.bisect_right(begins, pc) - 1  # the mappings do not overlap
        if k >= 0 and pc < maps[k][1]:
            begin, _, file_offset, path = maps[k]
            module, offset = path, pc - begin + file_offset
        placed.append((module, offset, thread, weight))

    by_module = collections.defaultdict(list)
    for module, offset, _, _ in placed:
        by_module[module].append(offset)
    names = {}
    for module, offsets in by_module.items():
        binary = local_copy(module, args.bin)
        if binary is None:
            continue
        for offset, name in symbolise(binary, offsets).items():
            names[(module, offset)] = name

    def label(module, offset):
        base = os.path.basename(module)
        name = names.get((module, offset))
        return '%s %s' % (base, name) if name else base

    period = header.get('period_us', 0) / 1e6
    cpu = header.get('cpu_s', 0)
    total = sum(w for _, _, _, w in placed)
    covered = total * period
    # A signal stands for 1 + the periods its timer overran (the kernel
    # checks CPU-time timers once a tick): every figure below is weighted.
    print('samples %d standing for %d periods of %.0f us: %.3f s of the process\'s %.3f s user+sys (%.0f%%)' %
          (len(samples), total, period * 1e6, covered, cpu, 100 * covered / cpu if cpu else 0))
    print('threads sampled %d, unsampled %d, SIGPROF unblocked in %d, samples lost %d' %
          (header.get('threads', 0), header.get('unsampled_threads', 0), header.get('unblocked_threads', 0),
           header.get('samples_lost', 0)))

    groups = collections.defaultdict(collections.Counter)
    for module, offset, thread, weight in placed:
        groups[thread if args.threads else None][label(module, offset)] += weight
    for key in sorted(groups, key=lambda k: -sum(groups[k].values())):
        counts = groups[key]
        weight = sum(counts.values())
        if args.threads:
            print('\n-- thread %d: %d (%.1f%%)' % (key, weight, 100 * weight / total))
        for name, count in counts.most_common(args.top):
            print('%5.1f%% %7d  %s' % (100 * count / weight, count, name[:110]))

    if args.addresses:
        by_label = collections.Counter()
        for m, o, _, w in placed:
            by_label[label(m, o)] += w
        top = [n for n, _ in by_label.most_common(5)]
        hot = collections.Counter()
        for m, o, _, w in placed:
            if label(m, o) in top:
                hot[(m, o)] += w
        by_binary = collections.defaultdict(list)
        for (module, offset), _ in hot.most_common(args.addresses):
            by_binary[module].append(offset)
        print('\nhottest addresses of the top functions:')
        lines = {}
        for module, offsets in by_binary.items():
            binary = local_copy(module, args.bin)
            if binary:
                for offset, name in symbolise(binary, offsets, with_lines=True).items():
                    lines[(module, offset)] = name
        for (module, offset), count in hot.most_common(args.addresses):
            where = lines.get((module, offset), '+%x' % offset)
            print('%7d  %s %s' % (count, os.path.basename(module), where[:140]))
    return 0


if __name__ == '__main__':
    sys.exit(main())
