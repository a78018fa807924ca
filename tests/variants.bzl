"""Environments that suites depending on how frees travel run under.

    load("//tests:variants.bzl", "RECLAIMER_VARIANTS")
"""

# name suffix -> environment of the variant: the default pool, the pool off
# (every batch returned inline), and one reclaimer fed one free at a time.
RECLAIMER_VARIANTS = {
    "": {},
    "_inline": {"FERRY_RECLAIMERS": "0"},
    "_one_reclaimer_batch1": {
        "FERRY_RECLAIMERS": "1",
        "FERRY_BATCH": "1",
    },
}
