"""Options for the code that goes into libferry (not its tests).

No exceptions (C programs link libferry.a without the C++ runtime), hidden
symbols except those marked FERRY_EXPORT, and no thread-safe statics (their
guards would need the C++ runtime too; ferry has none on purpose).
"""

load("//tools:copts.bzl", "FERRY_COPTS")

FERRY_LIBRARY_COPTS = FERRY_COPTS + [
    "-fno-exceptions",
    "-fno-rtti",
    "-fvisibility=hidden",
    "-fno-threadsafe-statics",
    "-fno-plt",
]
