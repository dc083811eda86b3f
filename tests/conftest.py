"""Shared test setup: CPU only, few threads, offscreen Qt, deterministic seeds."""
from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest
import torch

# Tests run on 2-core machines, often two pytest workers at once: oversubscribing threads only slows them.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
    yield
