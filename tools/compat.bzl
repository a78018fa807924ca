"""target_compatible_with values shared by the test packages."""

# Tests that ThreadSanitizer cannot judge (tag "no_tsan"): oneTBB's libtbb.so
# is not built with it, so every hand-off through a oneTBB task looks like a
# race; and it kills (die_after_fork) or gives a background thread to a child
# that a multi-threaded process forked.
NOT_UNDER_TSAN = select({
    "//tools:tsan": ["//tools:incompatible"],
    "//conditions:default": [],
})

# Forks from a multi-threaded process cannot run under AddressSanitizer
# either (tag "no_asan"): seen, one child in about 50 hung, never without
# ASan. GCC 12's libasan does not hold its allocator's locks across fork()
# (LLVM's runtime gained fork handlers for that in 2023, llvm-project#75290),
# so a child forked while another thread was in the test's own malloc (the
# sanitizer's, in API mode) can wait forever on that lock: the likely cause.
NOT_UNDER_TSAN_OR_ASAN = select({
    "//tools:tsan": ["//tools:incompatible"],
    "//tools:asan": ["//tools:incompatible"],
    "//conditions:default": [],
})
