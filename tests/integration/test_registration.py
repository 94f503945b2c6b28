"""The `verl.plugins` entry point registers SRPO in any process that imports verl."""

import json
import subprocess
import sys



def _fresh_python(code: str, env_extra=None) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, **(env_extra or {})}
    env.pop("SRPO_VERL_PLATFORM", None)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=180)


def test_plain_import_verl_registers_srpo_without_importing_srpo_verl():
    # The process never imports srpo_verl itself: only verl's plugin discovery can register it.
    code = (
        "import json, sys\n"
        "import verl\n"
        "from verl.trainer.ppo import core_algos as ca\n"
        "fn = ca.get_adv_estimator_fn('srpo')\n"
        "loss = ca.get_policy_loss_fn('srpo')\n"
        "print(json.dumps({'adv': fn.__module__, 'loss': loss.__module__}))\n"
    )
    proc = _fresh_python(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"adv": "srpo_verl.integration.registrations", "loss": "srpo_verl.integration.registrations"}


def test_plugin_discovery_disabled_means_no_srpo():
    # Control: with verl's plugin discovery off, nothing registers srpo (the test above can fail).
    code = "import verl\nfrom verl.trainer.ppo import core_algos as ca\nprint('srpo' in ca.ADV_ESTIMATOR_REGISTRY)\n"
    proc = _fresh_python(code, {"VERL_USE_EXTERNAL_PLUGINS": "none"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "False"


def test_registration_is_idempotent():
    import importlib

    import verl  # noqa: F401
    from verl.trainer.ppo import core_algos as ca

    from srpo_verl.integration import registrations

    before = ca.get_adv_estimator_fn("srpo")
    registrations.register()
    importlib.reload(importlib.import_module("srpo_verl.plugin"))
    assert ca.get_adv_estimator_fn("srpo") is before
    assert all(registrations.registered().values())


def test_self_check_passes_and_reports():
    proc = subprocess.run([sys.executable, "-m", "srpo_verl", "check"], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "adv_estimator:srpo: registered" in proc.stdout
    assert "policy_loss:srpo: registered" in proc.stdout
    assert proc.stdout.strip().endswith("OK")


def test_self_check_fails_when_plugins_are_disabled():
    proc = subprocess.run(
        [sys.executable, "-m", "srpo_verl", "check"],
        capture_output=True,
        text=True,
        timeout=180,
        env={**__import__("os").environ, "VERL_USE_EXTERNAL_PLUGINS": "none"},
    )
    # `check` re-imports the plugin loudly, which registers it: the report must still show the
    # missing registration from `import verl` and exit non-zero.
    assert proc.returncode == 1
    assert "MISSING" in proc.stdout


def test_srpo_estimator_matches_verl_grpo_without_std():
    """The registered estimator equals verl's own GRPO (no std) on the same batch."""
    import numpy as np
    import torch
    import verl  # noqa: F401
    from omegaconf import OmegaConf
    from verl.trainer.ppo import core_algos as ca

    torch.manual_seed(0)
    rewards = torch.randint(0, 2, (12,)).float()
    mask = torch.ones(12, 5)
    mask[3, 2:] = 0
    tlr = torch.zeros(12, 5)
    tlr[torch.arange(12), mask.sum(-1).long() - 1] = rewards
    uid = np.array([f"p{i // 4}" for i in range(12)], dtype=object)
    ref, _ = ca.compute_grpo_outcome_advantage(tlr, mask, uid, norm_adv_by_std_in_grpo=False)
    ours, _ = ca.get_adv_estimator_fn("srpo")(
        token_level_rewards=tlr, response_mask=mask, index=uid, config=OmegaConf.create({"norm_adv_by_std_in_grpo": False})
    )
    torch.testing.assert_close(ours, ref)


def test_importing_our_checks_before_verl_still_registers_the_trainers():
    # verl loads the plugin while srpo_verl.integration.config_checks is half-imported; the trainer module
    # cannot import it then, and the registration completes when the registry is asked.
    code = (
        "import srpo_verl.integration.config_checks\n"
        "import verl\n"
        "from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY\n"
        "print('during', 'srpo' in TRAINER_REGISTRY)\n"
        "from srpo_verl.integration.registrations import registered\n"
        "print('after', all(registered().values()), 'srpo' in TRAINER_REGISTRY)\n"
    )
    proc = _fresh_python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "after True True" in proc.stdout, proc.stdout + proc.stderr[-2000:]


def test_registered_srpo_policy_loss_is_the_clipped_surrogate_over_the_global_batch():
    """verl's `policy_loss.loss_mode=srpo` (what runs without the SRPO trainer): the asymmetric clipped
    surrogate, aggregated by verl's agg_loss over the global token count (`global_batch_info`)."""
    import torch
    import verl  # noqa: F401
    from verl.trainer.ppo import core_algos as ca

    class Cfg(dict):  # the attributes verl's ActorConfig gives a policy loss
        clip_ratio, clip_ratio_low, clip_ratio_high = 0.2, 0.2, 0.28
        global_batch_info = {"dp_size": 2, "batch_num_tokens": 16, "global_batch_size": 4}

    old = torch.zeros(2, 3)
    log_prob = torch.log(torch.tensor([[1.5, 0.5, 1.0], [1.1, 2.0, 0.7]]))  # ratios
    adv = torch.tensor([[1.0, 1.0, -1.0], [-1.0, 1.0, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    loss, metrics = ca.get_policy_loss_fn("srpo")(old, log_prob, adv, mask, "token-mean", Cfg(clip_ratio_c=3.0))
    # Per token -min(r A, clip(r, 0.8, 1.28) A) (dual clip at 3 does not bind here):
    # (1.5, +1) -> -1.28 clipped; (0.5, +1) -> -0.5; (1.0, -1) -> 1.0; (1.1, -1) -> 1.1; (2.0, +1) -> -1.28
    # clipped; the masked token counts nowhere. token-mean over the global batch: sum * dp_size / 16
    # (a mean over this micro-batch's 5 tokens would be sum / 5).
    expected = (-1.28 - 0.5 + 1.0 + 1.1 - 1.28) * 2 / 16
    torch.testing.assert_close(loss, torch.tensor(expected), rtol=1e-6, atol=1e-7)
    assert abs(metrics["actor/pg_clipfrac"] - 2 / 5) < 1e-7  # the two clipped of five valid tokens
