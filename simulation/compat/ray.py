"""The Ray settings HealthSync relies on that only Ray's own (private) code names.

Relies on, in Ray 2.55 (checked by ``tests/test_compat.py``):

- ``RAY_DEDUP_LOGS`` (``ray._private.ray_constants``): "0" keeps each actor's
  log lines instead of Ray folding repeated ones into a summary line.
- ``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO``
  (``ray._private.accelerators.RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO_ENV_VAR``):
  "0" keeps Ray from clearing ``CUDA_VISIBLE_DEVICES`` in actors that ask for
  zero GPUs, and silences the ``FutureWarning`` Ray prints about that change
  in every worker. Our client actors ask for ``num_gpus=0``.

Everything else HealthSync asks of Ray goes through public APIs: ``ray.init``
arguments in Flower's ``backend_config`` (``simulation.launch``) and
``ray.get``/``.remote`` in the Flower backend (``simulation.compat.flower``).
"""

from __future__ import annotations

import os

ENVIRONMENT = {"RAY_DEDUP_LOGS": "0", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}


def set_environment() -> None:
    """Set the variables above for Ray processes started from here, unless already set."""
    for name, value in ENVIRONMENT.items():
        os.environ.setdefault(name, value)
