"""Shared fixtures. Data fixtures start with ``data_`` to keep names apart."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from healthsync.data import Federation
from healthsync.data.synthetic import generate_federation
from tests.leftovers import pytest_sessionfinish, pytest_sessionstart  # noqa: F401

# The two hooks above fail the run if a HealthSync or Ray process the suite
# started is still running at its end (tests/leftovers.py).

# The app starts a warm training engine (a Flower simulation on Ray) on the Launch
# page; tests start their own only where they test it (tests/test_engine_warm.py).
os.environ["HEALTHSYNC_ENGINE"] = "off"


@pytest.fixture(scope="session")
def data_federation(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    """A small heterogeneous synthetic federation, shared read-only across tests."""
    out = tmp_path_factory.mktemp("data") / "federation"
    return generate_federation(out, hospitals=6, patients=80, seed=3, heterogeneity=0.6)


@pytest.fixture
def data_fresh_federation(tmp_path: Path) -> Federation:
    """A small synthetic federation that a test may tamper with."""
    return generate_federation(tmp_path / "fed", hospitals=3, patients=40, seed=1)
