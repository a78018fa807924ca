"""target_compatible_with values shared by the test packages."""

# Tests that ThreadSanitizer cannot judge (tag "no_tsan"): oneTBB's libtbb.so
# is not built with it, so every hand-off through a oneTBB task looks like a
# race; and it kills (die_after_fork) or gives a background thread to a child
# that a multi-threaded process forked.
NOT_UNDER_TSAN = select({
    "//tools:tsan": ["//tools:incompatible"],
    "//conditions:default": [],
})
