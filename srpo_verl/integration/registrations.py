"""verl registrations: the `srpo` advantage estimator and the `srpo` policy loss.

Both call the pure functions of `srpo_verl.core_algos`; nothing here holds math. verl's
`register_adv_est` refuses a name bound to a different function object, so registration reuses
the module-level functions below and is idempotent.

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
    SRPO trainer step, which has the whole batch.
    """
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
    """The GRPO branch's clipped surrogate with asymmetric clipping and rollout IS weights.

    verl's policy-loss signature cannot receive teacher tensors, so under `algorithm=srpo` the
    trainer installs the full SRPO loss with `set_loss_fn`; this registered loss is what runs
    when that loss is not installed (e.g. `policy_loss.loss_mode=srpo` with verl's sync trainer),
    i.e. plain GRPO with the paper's clipping.
    """
    from verl.trainer.ppo import core_algos as verl_core_algos

    clip = config.clip_ratio
    loss_mat, clipped = core_algos.ppo_clip_token_loss(
        log_prob,
        old_log_prob,
        advantages,
        clip_ratio_low=config.clip_ratio_low if config.clip_ratio_low is not None else clip,
        clip_ratio_high=config.clip_ratio_high if config.clip_ratio_high is not None else clip,
        clip_ratio_c=config.get("clip_ratio_c", None),
        rollout_is_weights=rollout_is_weights,
    )
    loss = verl_core_algos.agg_loss(
        loss_mat=loss_mat, loss_mask=response_mask, loss_agg_mode=loss_agg_mode, **config.global_batch_info
    )
    mask = response_mask.bool()
    clipfrac = (clipped & mask).sum() / mask.sum().clamp(min=1)
    return loss, {"actor/pg_clipfrac": clipfrac.item()}


def register() -> None:
    """Register with verl's registries as each is imported (idempotent: the same function objects
    every time). The `srpo` and `srpo_colocate_async` v1 trainers are registered by importing the
    trainer module, in the processes that import verl's v1 trainer package (the TaskRunner)."""
    import_hooks.when_imported("verl.trainer.ppo.core_algos", _register_functions)
    import_hooks.when_imported("verl.trainer.ppo.v1", _register_trainers)


def _register_functions(verl_core_algos) -> None:
    verl_core_algos.register_adv_est(NAME)(srpo_advantage)
    verl_core_algos.register_policy_loss(NAME)(srpo_policy_loss)


def _register_trainers(_v1=None) -> None:
    try:
        import srpo_verl.integration.trainer  # noqa: F401
    except ImportError as exc:
        # A process that imports one of our modules before verl's v1 package (say
        # srpo_verl.integration.config_checks) can reach this while that module is half-imported,
        # so the trainer module cannot import it yet. Nothing is lost: `registered()` (the
        # self-check and pre-flight) and any later import of the trainer module register the trainers.
        if not _half_imported():
            raise
        global _DEFERRED
        _DEFERRED = True
        logging.getLogger(__name__).debug("SRPO trainers registered later: %s", exc)


_DEFERRED = False  # _register_trainers() ran while one of our modules was half-imported (see register)


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
