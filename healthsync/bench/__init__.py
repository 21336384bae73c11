"""The stress test: sweeps of the same workload several ways, the vectorised lower
bound, and the memory of a process tree.
"""

#: The work of one measured round, fixed so measurements compare across versions and ways:
#: one local epoch per hospital (not chosen from its size), no validation rows held out,
#: and the prevalent outcome every version has (the demo's default became an incident
#: one, which trains on the at-risk rows only).
BENCH_WORK = {"local_epochs": 1, "validation_share": 0.0, "target": "diabetes"}
