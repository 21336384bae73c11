"""The stress test: sweeps of the same workload several ways, the vectorised lower
bound, and the memory of a process tree.
"""
