"""verl's FSDP2 engine on CPU and the `hf` rollout server agree on log-probs, before and after a
weight update. The measurements come from `engine_probe.py`, run once in a fresh interpreter."""

import json
import os
import subprocess
import sys

import pytest

TOL = 1e-5


@pytest.fixture(scope="module")
def probe(tiny_model_path):
    script = os.path.join(os.path.dirname(__file__), "engine_probe.py")
    env = {k: v for k, v in os.environ.items() if k != "VERL_PLATFORM"}
    proc = subprocess.run(
        [sys.executable, script, tiny_model_path], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("PROBE ")][-1]
    return json.loads(line[len("PROBE ") :])


def test_cpu_engine_is_verls_fsdp_engine(probe):
    assert probe["engine"] == "FSDPEngineWithLMHead"


def test_engine_log_probs_match_plain_transformers_forward(probe):
    assert probe["engine_vs_hf_max_abs"] <= TOL


def test_weight_sync_gives_the_server_the_engine_weights(probe):
    assert probe["checksum_synced_0"] == pytest.approx(probe["checksum_engine_0"], abs=1e-6)
    assert probe["server_weight_version"] == 0


def test_server_log_probs_match_engine_log_probs(probe):
    # IS weights exp(engine - server) are 1 to within 1e-5.
    assert probe["server_vs_engine_max_abs"] <= TOL


def test_server_generates_with_updated_weights(probe):
    # One optimizer step moves the engine; the stale server disagrees, the re-synced one agrees.
    assert probe["stale_server_vs_engine_max_abs"] > 1e-3
    assert probe["checksum_synced_1"] != pytest.approx(probe["checksum_synced_0"], abs=1e-6)
    assert probe["resynced_server_vs_engine_max_abs"] <= TOL
    assert probe["resynced_weight_version"] == 1
