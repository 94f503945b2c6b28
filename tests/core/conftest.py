"""Shared settings for the pure-math tests: small, single-threaded, deterministic."""

import pytest
import torch
from hypothesis import HealthCheck, settings

# The CI/dev machines are small and shared; these tensors are tiny, one thread is enough.
torch.set_num_threads(1)

settings.register_profile(
    "srpo_core",
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("srpo_core")


@pytest.fixture
def gen():
    """A seeded torch generator so every test sees the same random inputs."""
    return torch.Generator().manual_seed(0)
