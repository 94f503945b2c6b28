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


def _check_with_plugins(policy: str) -> subprocess.CompletedProcess:
    env = {**__import__("os").environ, "VERL_USE_EXTERNAL_PLUGINS": policy}
    return subprocess.run(
        [sys.executable, "-m", "srpo_verl", "check"], capture_output=True, text=True, timeout=180, env=env
    )


def test_self_check_fails_when_plugins_are_disabled():
    proc = _check_with_plugins("none")
    # `check` re-imports the plugin loudly, which registers it: the report must still show the
    # missing registration from `import verl` and exit non-zero, naming the variable.
    assert proc.returncode == 1
    assert "MISSING" in proc.stdout
    assert "VERL_USE_EXTERNAL_PLUGINS='none' excludes the srpo_verl plugin" in proc.stderr


def test_self_check_names_a_plugin_list_without_srpo_verl():
    proc = _check_with_plugins("someone_else")
    assert proc.returncode == 1
    assert "VERL_USE_EXTERNAL_PLUGINS='someone_else' excludes the srpo_verl plugin" in proc.stderr


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
        token_level_rewards=tlr,
        response_mask=mask,
        index=uid,
        config=OmegaConf.create({"norm_adv_by_std_in_grpo": False, "srpo": {}}),
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


def test_registered_loss_and_estimator_refuse_to_run_outside_an_srpo_setup():
    """verl's stock config with `adv_estimator=srpo` or `loss_mode=srpo` has no SRPO trainer and no
    `algorithm.srpo` block: the registered functions would silently train GRPO (with verl's default
    rollout.n=1, nothing at all). Before: accepted silently."""
    import numpy as np
    import pytest
    import torch
    import verl  # noqa: F401
    from omegaconf import OmegaConf
    from verl.trainer.ppo import core_algos as ca

    stock = OmegaConf.create({"adv_estimator": "srpo", "norm_adv_by_std_in_grpo": True})
    args = dict(token_level_rewards=torch.ones(2, 3), response_mask=torch.ones(2, 3), index=np.array(["a", "a"]))
    with pytest.raises(ValueError, match="algorithm.adv_estimator=srpo outside an SRPO setup.*algorithm=srpo"):
        ca.get_adv_estimator_fn("srpo")(**args, config=stock)
    with pytest.raises(ValueError, match="loss_mode=srpo outside an SRPO setup.*algorithm=srpo"):
        ca.get_policy_loss_fn("srpo")(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3), torch.ones(2, 3))
    # Under algorithm=srpo (a block present) the estimator runs.
    adv, _ = ca.get_adv_estimator_fn("srpo")(**args, config=OmegaConf.create({"srpo": {"beta": 1.0}}))
    assert torch.equal(adv, torch.zeros(2, 3))


def test_a_registration_that_fails_leaves_plain_verl_working_and_names_the_cause():
    # A verl upgrade that moves a private name our trainer module imports: importing verl's v1 trainer
    # package must still work (a plain GRPO run), with one WARNING; the cause is kept for SRPO launches.
    code = (
        "import sys, types, logging\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "broken = types.ModuleType('srpo_verl.integration.trainer')\n"
        "def boom(name):\n"
        "    raise ImportError('cannot import name PPOTrainerSync (moved in a new verl)')\n"
        "broken.__getattr__ = boom\n"
        "import builtins\n"
        "real_import = builtins.__import__\n"
        "def fake_import(name, *a, **k):\n"
        "    if name == 'srpo_verl.integration.trainer':\n"
        "        raise ImportError('cannot import name PPOTrainerSync (moved in a new verl)')\n"
        "    return real_import(name, *a, **k)\n"
        "builtins.__import__ = fake_import\n"
        "import verl\n"
        "import verl.trainer.ppo.v1.trainer_base as tb\n"
        "builtins.__import__ = real_import\n"
        "from srpo_verl.integration import registrations\n"
        "print('grpo' in tb.TRAINER_REGISTRY or len(tb.TRAINER_REGISTRY) > 0, 'srpo' in tb.TRAINER_REGISTRY)\n"
        "print('ERROR', registrations.registration_error())\n"
    )
    proc = _fresh_python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-2] == "True False"
    assert "trainers: ImportError: cannot import name PPOTrainerSync" in lines[-1]
    assert proc.stderr.count("could not register its trainers") == 1
