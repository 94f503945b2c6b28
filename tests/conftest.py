"""Shared test setup: offline hub, the `slow` marker, and session-scoped tiny model and data.

Tests never touch the model hub (HF_HUB_OFFLINE=1). `tiny_model_path` builds the ~1M-parameter
Qwen3 with the character tokenizer (srpo_verl/demo/tiny_model.py) once per session in a temporary
cache; `addition_data` writes the 2-digit-addition parquet files next to it.
"""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: launches verl's trainer or other multi-process runs (~1 min each); part of the suite"
    )


@pytest.fixture(scope="session")
def srpo_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("srpo_verl_cache"))


@pytest.fixture(scope="session")
def tiny_model_path(srpo_cache) -> str:
    from srpo_verl.demo.tiny_model import build_tiny_model

    return build_tiny_model(os.path.join(srpo_cache, "tiny_qwen3"))


@pytest.fixture(scope="session")
def addition_data(srpo_cache) -> dict:
    """{"train": path, "val": path} of the addition task's parquet files."""
    from srpo_verl.demo.addition import write_addition_data

    return write_addition_data(os.path.join(srpo_cache, "addition"), n_train=512, n_val=64)
