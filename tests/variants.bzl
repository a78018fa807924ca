"""Environments that suites depending on how frees travel run under.

    load("//tests:variants.bzl", "RECLAIMER_VARIANTS")
"""

# name suffix -> environment of the variant: the default pool, the pool off
# (every batch returned inline), and one reclaimer fed one free at a time.
# That one keeps the pool at work on a crowded machine too (CI runs tests
# side by side on two CPUs, where the default turns batches away from the
# pool: FERRY_INLINE_WHEN_BUSY).
RECLAIMER_VARIANTS = {
    "": {},
    "_inline": {"FERRY_RECLAIMERS": "0"},
    "_one_reclaimer_batch1": {
        "FERRY_RECLAIMERS": "1",
        "FERRY_BATCH": "1",
        "FERRY_INLINE_WHEN_BUSY": "0",
    },
}
