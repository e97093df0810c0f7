"""Test-wide settings: one torch thread per test process (pytest-xdist runs two)."""

from __future__ import annotations

import os

import pytest
import torch

# Two xdist processes on two cores: more threads would only contend (and the tiny digits
# models gain nothing from intra-op parallelism).
torch.set_num_threads(1)
os.environ.setdefault("DM_TUNE_TORCH_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def float64():
    """Default dtype float64 for one test (the population engine's exactness tests)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
