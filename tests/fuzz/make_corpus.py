#!/usr/bin/env python3
"""Writes the hand-made seeds of the API fuzz target into tests/fuzz/corpus/.

    tests/fuzz/make_corpus.py [DIR]      (default: the corpus/ next to this file)

Each seed is a short program in the format api_fuzz.cc reads, one per
operation or combination worth starting from: every size range, every
alignment and bad alignment, realloc chains, blocks handed between threads,
taken back, freed remotely, threads exiting with blocks in flight. Files are
named seed-<what>; the files named by their SHA-1 were added by fuzz runs
(`tools/fuzz --merge`). Rerunning this script rewrites the seeds only.
"""

import os
import random
import sys

# Ops: the low 4 bits of an op byte (enum Op in api_fuzz.cc).
(MALLOC, CALLOC, REALLOC, FREE, FREE_SIZED, ALIGNED_ALLOC, POSIX_MEMALIGN, CHECK,
 FLUSH, COLLECT, STATS, GIVE, SYNC, TAKE, EXIT, BURST) = range(16)
WORKERS = 3
MAIN = 0


def op(code, thread=MAIN):
    return bytes([(thread << 4) | code])


def u16(value):
    return bytes([value & 0xFF, value >> 8])


def int8(value):
    return bytes([value & 0xFF])


# Sizes (Program::ReadSize).
def tiny(n):  # 0..31
    return bytes([n])


def small(n):  # 32..1055
    return bytes([0x20]) + u16(n - 32)


def upto64k(n):
    return bytes([0x40]) + u16(n)


def medium(n):  # up to 512 KiB, n = 8 * u16 + low
    return bytes([0x60 | (n % 8)]) + u16(n // 8)


def large(extra):  # 512 KiB + extra, to ~2 MiB
    return bytes([0x80 | (extra % 24)]) + u16(extra // 24)


def huge(extra):  # 2 MiB + extra, to ~9 MiB
    return bytes([0xA0 | (extra % 112)]) + u16(extra // 112)


def pow2(shift, delta=0):  # 2^shift + delta, shift < 24, |delta| <= 16
    return bytes([0xC0 | shift]) + int8(delta)


def impossible(i):  # kImpossibleSizes[i], i < 10
    return bytes([0xE0 | i])


def segment(delta64):  # 4 MiB + 64 * delta64
    return bytes([0xE0 | 10]) + int8(delta64)


# Alignments (Program::ReadAlignment).
def align(shift):  # 2^shift, shift <= 26
    if shift < 21:
        return bytes([shift])
    return bytes([next(a for a in range(0xE0, 0xF0) if a % 6 == shift - 21)])


def odd_align(i):  # kOddAlignments[i]
    return bytes([0xF0 | i])


def worker(w):  # the byte that names worker w (1..WORKERS)
    return bytes([w - 1])


def give(slot, to, to_slot, free_there=False, thread=MAIN):
    return op(GIVE, thread) + bytes([slot, ((to - 1) << 1) | int(free_there), to_slot])


def seeds():
    s = {}
    s["malloc-sizes"] = b"".join(
        op(MALLOC) + bytes([i]) + size
        for i, size in enumerate([tiny(0), tiny(1), tiny(24), small(100), small(1000),
                                  upto64k(40000), medium(300000), large(1000000),
                                  huge(100), huge(5000000), segment(0), segment(-1), segment(1)])
    ) + b"".join(op(FREE) + bytes([i]) for i in range(13))
    s["malloc-pow2"] = b"".join(
        op(MALLOC) + bytes([shift]) + pow2(shift, delta)
        for shift in range(0, 24, 3) for delta in (-1, 0, 1)
    )
    s["malloc-impossible"] = b"".join(op(MALLOC) + bytes([i]) + impossible(i) for i in range(10))
    s["calloc"] = (op(CALLOC) + bytes([1, 10]) + small(100) + op(CALLOC) + bytes([2, 0]) + tiny(8)
                   + op(CALLOC) + bytes([3, 3]) + large(200000) + op(CALLOC) + bytes([4, 0xF3]) + tiny(4)
                   + op(CALLOC) + bytes([5, 2]) + impossible(0) + op(FREE) + bytes([1]))
    s["realloc-chain"] = (op(MALLOC) + bytes([7]) + small(100)
                          + b"".join(op(REALLOC) + bytes([7]) + size
                                     for size in [small(900), upto64k(5000), tiny(10), medium(400000),
                                                  huge(1000000), large(1000), impossible(3), tiny(0),
                                                  upto64k(64000)])
                          + op(FREE_SIZED) + bytes([7]))
    s["realloc-null"] = op(REALLOC) + bytes([9]) + small(500) + op(REALLOC) + bytes([10]) + impossible(0)
    s["free-sized"] = b"".join(op(MALLOC) + bytes([i]) + small(40 * i + 32) for i in range(8)) + b"".join(
        op(FREE_SIZED) + bytes([i]) for i in range(8)) + op(FREE_SIZED) + bytes([20])
    s["aligned-alloc"] = b"".join(
        op(ALIGNED_ALLOC) + bytes([shift]) + align(shift) + size
        for shift, size in [(0, tiny(3)), (4, tiny(16)), (6, small(100)), (12, upto64k(4096)),
                            (16, small(32)), (20, medium(100)), (21, tiny(1)), (22, huge(0)),
                            (26, tiny(64))])
    s["aligned-alloc-odd"] = b"".join(
        op(ALIGNED_ALLOC) + bytes([i]) + odd_align(i) + small(64) for i in range(16)
    ) + op(ALIGNED_ALLOC) + bytes([1]) + align(12) + impossible(2)
    s["posix-memalign"] = b"".join(
        op(POSIX_MEMALIGN) + bytes([shift]) + align(shift) + size
        for shift, size in [(3, tiny(0)), (4, tiny(17)), (8, small(300)), (16, upto64k(65535)),
                            (20, large(0)), (22, tiny(8)), (23, segment(2))])
    s["posix-memalign-odd"] = b"".join(
        op(POSIX_MEMALIGN) + bytes([i]) + odd_align(i) + tiny(8) for i in range(16)
    ) + op(POSIX_MEMALIGN) + bytes([1]) + align(6) + impossible(6)
    s["check"] = op(MALLOC) + bytes([3]) + small(333) + op(CHECK) + bytes([3]) + op(CHECK) + bytes([4])
    s["flush-collect-stats"] = (op(MALLOC) + bytes([0]) + small(64) + op(FREE) + bytes([0])
                                + op(FLUSH) + op(COLLECT) + op(STATS)
                                + b"".join(op(code, w) for w in range(1, WORKERS + 1)
                                           for code in (FLUSH, COLLECT, STATS)))
    s["give-remote-free"] = b"".join(
        op(MALLOC) + bytes([i]) + small(64 + i) + give(i, 1 + i % WORKERS, i, free_there=True)
        for i in range(12)) + op(FLUSH, 1) + op(FLUSH, 2)
    s["give-realloc-there"] = (op(MALLOC) + bytes([2]) + small(200) + give(2, 1, 5)
                               + op(REALLOC, 1) + bytes([5]) + upto64k(9000)
                               + give(5, 2, 6, thread=1) + op(REALLOC, 2) + bytes([6]) + tiny(3)
                               + op(FREE, 2) + bytes([6]))
    s["worker-made-main-takes"] = (op(MALLOC, 1) + bytes([1]) + small(128) + op(ALIGNED_ALLOC, 2)
                                   + bytes([2]) + align(10) + small(50) + op(TAKE) + worker(1)
                                   + bytes([1, 4]) + op(TAKE, 2) + bytes([2, 5]) + op(FREE) + bytes([4])
                                   + op(REALLOC) + bytes([5]) + upto64k(20000) + op(COLLECT))
    s["exit-in-flight"] = (b"".join(op(MALLOC, 1) + bytes([i]) + upto64k(100 * i + 16) for i in range(6))
                           + op(MALLOC) + bytes([0]) + small(80) + give(0, 1, 9, free_there=True)
                           + op(EXIT) + worker(1) + b"".join(op(FREE) + bytes([2 * i + 1]) for i in range(3))
                           + op(MALLOC, 1) + bytes([0]) + tiny(5) + op(STATS))
    s["exit-self"] = (op(MALLOC, 3) + bytes([0]) + huge(10) + op(MALLOC, 3) + bytes([1]) + small(40)
                      + give(1, 1, 1, thread=3) + op(EXIT, 3) + op(EXIT, 1) + op(COLLECT) + op(SYNC))
    s["burst"] = (op(BURST) + bytes([63]) + tiny(16) + bytes([1]) + op(BURST, 2) + bytes([40]) + small(700)
                  + bytes([3]) + op(BURST, 1) + bytes([20]) + tiny(8) + bytes([1]) + op(BURST) + bytes([10])
                  + tiny(0) + bytes([0]) + op(SYNC) + op(FLUSH))
    s["sync-everywhere"] = b"".join(op(MALLOC, w) + bytes([w]) + small(100) + op(SYNC) for w in range(4))
    # A few longer programs of random bytes, for variety.
    rng = random.Random(20261201)
    for i in range(6):
        s["random-%d" % i] = bytes(rng.randrange(256) for _ in range(64 << i % 3))
    return s


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
    os.makedirs(out, exist_ok=True)
    for name, data in sorted(seeds().items()):
        with open(os.path.join(out, "seed-" + name), "wb") as f:
            f.write(data)
    print("wrote %d seeds to %s" % (len(seeds()), out))


if __name__ == "__main__":
    main()
