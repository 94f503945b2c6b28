"""Shared paths and helpers for the task tests (fixtures are small files in the upstream formats)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SCIKNOWEVAL_FILE = FIXTURES / "sciknoweval_sample.jsonl"
TOOLALPACA_DIR = FIXTURES / "toolalpaca"


@pytest.fixture(scope="session")
def sciknoweval_records():
    with open(SCIKNOWEVAL_FILE, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@pytest.fixture(scope="session")
def toolalpaca_train():
    with open(TOOLALPACA_DIR / "data" / "train_data.json", encoding="utf-8") as fh:
        return json.load(fh)


@pytest.fixture(scope="session")
def toolalpaca_eval():
    with open(TOOLALPACA_DIR / "data" / "eval_simulated.json", encoding="utf-8") as fh:
        return json.load(fh)


@pytest.fixture(scope="session")
def run_script():
    """Run scripts/<name> with the current interpreter, offline (no download is ever tried)."""

    def run(name, *args):
        env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        return subprocess.run(
            [sys.executable, str(REPO / "scripts" / name), *map(str, args)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    return run
