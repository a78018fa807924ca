"""Options for the code that goes into libferry (not its tests).

No exceptions (C programs link libferry.a without the C++ runtime) and no
thread-safe statics (their guards would need the C++ runtime too; ferry has
none on purpose). Symbols stay default-visible here because Bazel links tests
against per-library shared objects; libferry.so hides everything but the
public names with a version script (//allocator:libferry.lds).
"""

load("//tools:copts.bzl", "FERRY_COPTS")

FERRY_LIBRARY_COPTS = FERRY_COPTS + [
    "-fno-exceptions",
    "-fno-rtti",
    "-fno-threadsafe-statics",
    "-fno-plt",
    # The toolchain keeps frame pointers; on the fast paths the spare
    # register saves a push/pop pair per call.
    "-fomit-frame-pointer",
]
