"""Test-wide settings: one thread per process (the 2-core box thrashes otherwise) and a
per-session cache folder shared by all tests (derived datasets are built once per run)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """A cache root for derived datasets, shared across the test session."""
    path = os.environ.get("SCENEMOTION_TEST_CACHE")
    if path:
        return path
    return str(tmp_path_factory.mktemp("cache"))
