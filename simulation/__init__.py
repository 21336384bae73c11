"""Flower wiring for HealthSync: the ServerApp, the ClientApp and their launch on Ray.

This package stands on top of the ``healthsync`` library; the library never
imports it. ``launch`` is the only module that starts Flower or Ray.
"""

import os

# Before NumPy loads in a run or engine process: its OpenBLAS would start a thread
# per CPU, which spin while they wait for work; measured during a 1,000-hospital
# round, one of them took a quarter of a core from the Ray actors that train.
# The server's array work (averaging a few thousand updates) needs no BLAS threads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
