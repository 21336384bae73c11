"""What a local Ray head's workers import as they start (``launch.WORKER_PRELOAD``): the client
app and its training side (PyTorch: ``client_app.load_training``).

Ray imports a preload module before the worker takes any work and lets only
an ``ImportError`` pass (``simulation.compat.ray`` item on system settings):
any other error in the client app's import (a broken install, a bug in
``healthsync``) would end every worker before it could say why. Here every
error is left for later: the failed module is not kept, so the client app's
first message imports it again and fails there with its traceback, as a
Flower ``LoadClientAppError`` the run records.
"""

from __future__ import annotations

import contextlib
import importlib

CLIENT_APP = "simulation.client_app"

with contextlib.suppress(Exception):
    importlib.import_module(CLIENT_APP).load_training()
