"""verl registrations: the `srpo` advantage estimator, the `srpo` policy loss and the SRPO trainers.

The estimator calls the pure functions of `srpo_verl.core_algos`; nothing here holds math. Both refuse
to run outside an SRPO setup (they would silently train GRPO). verl's `register_adv_est` refuses a name
bound to a different function object, so registration reuses the module-level functions below and is
idempotent. A registration that fails (a verl upgrade moving a private name) logs one WARNING and
leaves plain verl working; only an SRPO launch then fails, naming the cause (`registration_error`).

Each registration happens when its registry's module is imported (`srpo_verl.import_hooks`), so a
Ray worker that never looks at a registry (TransferQueue, the rollout server, its load balancer,
the reward worker) does not import verl's core_algos, the v1 trainer or the SRPO trainer for it.
"""

from __future__ import annotations

import logging

from typing import Any, Optional

import torch

from srpo_verl import core_algos, import_hooks

NAME = "srpo"
OUTSIDE_SRPO = (
    "{what} outside an SRPO setup: the routing, the teacher pass and the EMA teacher live in the SRPO "
    "trainer, which this launch does not run (it would train plain GRPO, with rollout.n=1 nothing at "
    "all). Launch with algorithm=srpo: `python -m srpo_verl.main_ppo algorithm=srpo ...`, or verl's entry "
    "point with `--config-path=$(python -m srpo_verl config-dir) --config-name=srpo_trainer algorithm=srpo`"
)


def srpo_advantage(
    token_level_rewards: torch.Tensor,  # (B, T)
    response_mask: torch.Tensor,  # (B, T)
    index,
    config=None,
    **_unused,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A_i = r_i - mean_group(r), broadcast to the response tokens (docs/spec.md §1.4).

    verl's estimator signature sees only rewards, mask, uid and the `algorithm` node, so this is
    the GRPO branch's advantage for every sample; the routing and the SDPO branch are added by the
    SRPO trainer step, which has the whole batch. Without that step (verl's stock config with
    `adv_estimator=srpo`: no `algorithm.srpo` block) it would silently train GRPO, so it refuses.
    """
    if config is None or config.get("srpo", None) is None:
        raise ValueError(OUTSIDE_SRPO.format(what="algorithm.adv_estimator=srpo"))
    norm_by_std = bool(config.get("norm_adv_by_std_in_grpo", False)) if config is not None else False
    rewards = token_level_rewards.sum(dim=-1)  # (B,)
    adv = core_algos.grpo_advantage(rewards, index, norm_by_std=norm_by_std)  # (B,)
    adv = adv.unsqueeze(-1) * response_mask  # (B, T)
    return adv, adv


def srpo_policy_loss(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config: Optional[Any] = None,
    rollout_is_weights: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Refuses: under `algorithm=srpo` the SRPO trainer installs the whole SRPO loss with `set_loss_fn`, so
    verl calls this registered loss only outside an SRPO setup (`policy_loss.loss_mode=srpo` with another
    trainer), where it would silently train without routing or teacher. Registered so that verl's config
    validation knows the name `algorithm=srpo` sets."""
    raise ValueError(OUTSIDE_SRPO.format(what="actor_rollout_ref.actor.policy_loss.loss_mode=srpo"))


def register() -> None:
    """Register with verl's registries as each is imported (idempotent: the same function objects
    every time). The `srpo` and `srpo_colocate_async` v1 trainers are registered by importing the
    trainer module, in the processes that import verl's v1 trainer package (the TaskRunner)."""
    import_hooks.when_imported("verl.trainer.ppo.core_algos", _register_functions)
    import_hooks.when_imported("verl.trainer.ppo.v1", _register_trainers)


def _register_functions(verl_core_algos) -> None:
    try:
        verl_core_algos.register_adv_est(NAME)(srpo_advantage)
        verl_core_algos.register_policy_loss(NAME)(srpo_policy_loss)
    except Exception as exc:  # noqa: BLE001 - plain verl must keep working; an SRPO launch reports it
        _failed("adv_estimator/policy_loss", exc)


def _register_trainers(_v1=None) -> None:
    try:
        import srpo_verl.integration.trainer  # noqa: F401
    except ImportError as exc:
        # A process that imports one of our modules before verl's v1 package (say
        # srpo_verl.integration.config_checks) can reach this while that module is half-imported,
        # so the trainer module cannot import it yet. Nothing is lost: `registered()` (the
        # self-check and pre-flight) and any later import of the trainer module register the trainers.
        if not _half_imported():
            _failed("trainers", exc)
            return
        global _DEFERRED
        _DEFERRED = True
        logging.getLogger(__name__).debug("SRPO trainers registered later: %s", exc)
    except Exception as exc:  # noqa: BLE001 - as above
        _failed("trainers", exc)


_DEFERRED = False  # _register_trainers() ran while one of our modules was half-imported (see register)
_ERRORS: dict[str, str] = {}  # what failed to register in this process, and why


def _failed(what: str, exc: BaseException) -> None:
    _ERRORS[what] = f"{type(exc).__name__}: {exc}"
    logging.getLogger(__name__).warning(
        "srpo_verl could not register its %s with verl (%s); plain verl runs are unaffected, SRPO launches "
        "will fail. Is the installed verl the supported release? `python -m srpo_verl check` reports it.",
        what,
        _ERRORS[what],
    )


def registration_error() -> str | None:
    """Why SRPO is not (fully) registered with verl in this process, or None."""
    if not _ERRORS:
        return None
    return "; ".join(f"{what}: {why}" for what, why in _ERRORS.items())


def _half_imported() -> bool:
    """True while one of srpo_verl's modules is still executing its own import."""
    import sys

    return any(
        name.startswith("srpo_verl.") and getattr(getattr(module, "__spec__", None), "_initializing", False)
        for name, module in list(sys.modules.items())
    )


def registered() -> dict[str, bool]:
    """What verl's registries currently hold under our names (used by the self-check)."""
    from verl.trainer.ppo import core_algos as verl_core_algos
    from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY

    if _DEFERRED:
        _register_trainers()  # completes the registration the plugin had to defer

    return {
        "adv_estimator:srpo": verl_core_algos.ADV_ESTIMATOR_REGISTRY.get(NAME) is srpo_advantage,
        "policy_loss:srpo": verl_core_algos.POLICY_LOSS_REGISTRY.get(NAME) is srpo_policy_loss,
        "trainer:srpo": NAME in TRAINER_REGISTRY,
        "trainer:srpo_colocate_async": "srpo_colocate_async" in TRAINER_REGISTRY,
    }
