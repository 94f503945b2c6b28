"""One SRPO update through verl's engine on CPU, and the same update from the pure functions.

`engine_update` builds `SRPOActorRolloutRefWorker(role="actor")` exactly as verl does, installs the
SRPO loss (`srpo_setup`), runs the teacher pass on the routed rows (`compute_srpo_teacher`) and one
optimiser step (`update_actor`) on its rank's half of a fixed batch. The optimiser is SGD with lr 1
and no clipping, so theta_0 - theta_1 is the gradient. `reference_update` computes, in float64 from
the HF checkpoint, the loss and gradient that `srpo_verl.core_algos` gives on the whole batch at once.

tests/cpu/srpo_update_probe.py runs one rank of it (tests/cpu/test_srpo_update.py starts the
ranks); tests/gpu/engine_cuda_probe.py and scripts/gpu_check.py --engine reuse the pieces (config,
batch, passes, float64 reference). Nothing here runs at import.
"""

import os

import torch

from srpo_verl.cpu.local import as_batch, compose, update_info
from srpo_verl.integration import wire

ROWS = 8  # two groups of four responses
TOPK = 8  # below the 100-token vocabulary, so the tail bucket is exercised
ROUTED = [1, 2, 5, 6]  # rows on the SDPO branch (failed, with a correct sibling)


TRUST_REGION_MIX = 0.3


def srpo_config(
    model_path: str, micro_batch: int, teacher: str = "ema", *, topk: int = TOPK, platform="cpu", overrides=()
):
    """platform=None composes verl's own (GPU) defaults; `overrides` come last."""
    return compose(
        [
            f"algorithm.srpo.teacher={teacher}",
            f"algorithm.srpo.trust_region_mix={TRUST_REGION_MIX}",
            "algorithm=srpo",
            *([f"platform={platform}"] if platform else []),
            f"algorithm.srpo.topk={topk}",
            f"actor_rollout_ref.model.path={model_path}",
            "actor_rollout_ref.model.use_remove_padding=True",
            f"actor_rollout_ref.actor.ppo_mini_batch_size={ROWS}",
            f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={micro_batch}",
            f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={micro_batch}",
            "actor_rollout_ref.rollout.n=1",
            # theta_0 - theta_1 = gradient.
            "actor_rollout_ref.actor.optim.optimizer=SGD",
            "actor_rollout_ref.actor.optim.lr=1.0",
            "actor_rollout_ref.actor.optim.weight_decay=0.0",
            "actor_rollout_ref.actor.optim.clip_grad=1e9",
            "actor_rollout_ref.actor.optim.lr_warmup_steps=0",
            *overrides,
        ]
    )


def fixed_batch(high: int = 90):
    """Prompts, responses, teacher prompts, advantages, old log-prob offsets and IS weights (token
    ids in [4, high))."""
    gen = torch.Generator().manual_seed(0)
    rand = lambda n, lo=4, hi=high: torch.randint(lo, hi, (n,), generator=gen).tolist()  # noqa: E731
    prompts = [rand(6 + i % 3) for i in range(ROWS)]
    prompts[1:4] = [prompts[0]] * 3  # group 0 shares a prompt, as a rollout group does
    prompts[5:8] = [prompts[4]] * 3
    responses = [rand(3 + (i * 5) % 4) for i in range(ROWS)]
    teacher_prompts = [rand(12 + i) for i in range(ROWS)]
    advantages = [torch.full((len(r),), 0.75 if i % 4 == 0 else -0.25) for i, r in enumerate(responses)]
    old_offsets = [0.3 * torch.randn(len(r), generator=gen) for r in responses]  # ratios != 1, some clipped
    is_weights = [0.5 + 1.5 * torch.rand(len(r), generator=gen) for r in responses]
    return prompts, responses, teacher_prompts, advantages, old_offsets, is_weights


def full_params(worker) -> dict[str, torch.Tensor]:
    return {
        name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().double().clone()
        for name, p in worker.actor.engine.module.named_parameters()
    }


def new_worker(config):
    """verl's actor worker as a launch builds it (init_model), without the SRPO loss yet."""
    from srpo_verl.integration.worker import SRPOActorRolloutRefWorker

    worker = SRPOActorRolloutRefWorker(config=config.actor_rollout_ref, role="actor")
    worker.init_model()
    return worker


def srpo_setup(worker, config) -> None:
    from omegaconf import OmegaConf

    worker.srpo_setup(OmegaConf.to_container(config.algorithm.srpo, resolve=True), int(config.algorithm.srpo.topk))


def _nested(rows):
    return torch.nested.as_nested_tensor(rows, layout=torch.jagged)


def old_log_prob_pass(worker, sequences):
    """verl's old-log-prob forward with the teacher rows marked: response log-probs and the
    student's top-K ids of the marked rows (an empty row for the others)."""
    import verl.utils.tensordict_utils as tu
    from srpo_verl.integration import wire

    data = as_batch(sequences)
    data[wire.TAUGHT.name] = torch.tensor([int(i in ROUTED) for i in range(len(sequences))])
    tu.assign_non_tensor(data, temperature=1.0, calculate_entropy=True, compute_loss=False)
    out = worker.compute_log_prob(data)
    log_probs = [out["log_probs"][i][len(p) - 1 : len(p) - 1 + len(r)] for i, (p, r) in enumerate(sequences)]
    return log_probs, list(out[wire.TOPK_IDS.name].unbind())


def teacher_pass(worker, topk, teacher_prompts, responses):
    """The teacher pass on the routed rows, as the trainer dispatches it: wire.TEACHER_OUTPUT_NAMES and the
    top-K ids, one entry per routed row."""
    import verl.utils.tensordict_utils as tu
    from srpo_verl.integration import wire

    teacher_in = tu.get_tensordict(
        {
            wire.TEACHER_INPUT_IDS.name: _nested([torch.tensor(teacher_prompts[i] + responses[i]) for i in ROUTED]),
            "responses": _nested([torch.tensor(responses[i]) for i in ROUTED]),
            wire.TOPK_IDS.name: _nested([topk[i] for i in ROUTED]),
        }
    )
    tu.assign_non_tensor(teacher_in, temperature=1.0)
    out = worker.compute_srpo_teacher(teacher_in)
    fields = {key: list(out[key].unbind()) for key in wire.TEACHER_OUTPUT_NAMES}
    fields[wire.TOPK_IDS.name] = [topk[i] for i in ROUTED]
    return fields


def update_batch(sequences, old, advantages, is_weights, taught, mine, *, distilled: bool = True):
    """The actor-update batch of rows `mine`: what the trainer stores (teacher values on routed
    rows, an empty row on the others) with the GRPO fields, and verl's update settings. distilled=False
    (advantage_mix): the ROUTED rows are taught but none is on the distillation branch."""
    rows = len(sequences)
    fields = {key: [values[0][:0]] * rows for key, values in taught.items()}
    for key, values in taught.items():
        for j, i in enumerate(ROUTED):
            fields[key] = fields[key][:i] + [values[j]] + fields[key][i + 1 :]
    pick = lambda values: [values[i] for i in mine]  # noqa: E731
    data = as_batch(
        pick(sequences),
        old_log_probs=pick(old),
        advantages=pick(advantages),
        rollout_is_weights=pick(is_weights),
        **{key: pick(values) for key, values in fields.items()},
    )
    data[wire.ROUTE.name] = torch.tensor([int(distilled and i in ROUTED) for i in mine])
    update_info(data, rows)
    return data


def update_loss(output) -> torch.Tensor:
    """The pg_loss verl's update reports (local_sum / global_tokens * dp_size on each rank)."""
    metrics = output["metrics"] if output is not None else {}
    pg_loss = [v for k, v in metrics.items() if k.endswith("pg_loss")]
    value = sum(pg_loss[0]) if pg_loss and isinstance(pg_loss[0], list) else (pg_loss[0] if pg_loss else 0.0)
    return torch.tensor(float(value), dtype=torch.float64)


def engine_update(model_path: str, micro_batch: int, teacher: str = "ema") -> dict:
    import verl  # noqa: F401  (activates the CPU backend through the plugin)

    if os.environ.get("SRPO_PROBE_INPLACE_CE"):
        # verl's token log-probs as with flash-attn installed: the backward overwrites the logits.
        from verl.workers.engine.fsdp import transformer_impl

        from srpo_verl.lab.virtual_cuda import inplace_logprobs_from_logits

        transformer_impl.logprobs_from_logits = inplace_logprobs_from_logits

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    config = srpo_config(model_path, micro_batch, teacher)
    worker = new_worker(config)
    srpo_setup(worker, config)

    prompts, responses, teacher_prompts, advantages, old_offsets, is_weights = fixed_batch()
    sequences = list(zip(prompts, responses))

    # Every rank runs the no-grad passes on the whole batch (FSDP forwards are collective).
    log_probs, topk = old_log_prob_pass(worker, sequences)
    assert all(len(topk[i]) == 0 for i in range(ROWS) if i not in ROUTED)  # nothing for GRPO rows
    old = [lp + off for lp, off in zip(log_probs, old_offsets)]
    taught = teacher_pass(worker, topk, teacher_prompts, responses)

    theta0 = full_params(worker)
    mine = list(range(rank * ROWS // world, (rank + 1) * ROWS // world))
    output = worker.update_actor(update_batch(sequences, old, advantages, is_weights, taught, mine))
    theta1 = full_params(worker)
    loss = update_loss(output)
    # Each rank reports local_sum / global_tokens * dp_size; verl's trainer logs the mean over ranks.
    torch.distributed.all_reduce(loss)
    loss /= world
    result = {
        "loss": float(loss),
        "grad": {name: theta0[name] - theta1[name] for name in theta0},
        "teacher_fields": taught,
        "old": old,
    }
    if teacher == "trust_region":
        # After the step the trust-region teacher mixes the frozen theta_0 with the moved student.
        result["teacher_after_step"] = teacher_pass(
            worker, old_log_prob_pass(worker, sequences)[1], teacher_prompts, responses
        )
        result["theta1"] = {name: p.float() for name, p in theta1.items()}
    torch.distributed.destroy_process_group()
    return result


def reference_update(
    model_path: str,
    result: dict,
    *,
    topk: int = TOPK,
    high: int = 90,
    topk_ids=None,
    distil: bool = True,
    method: str = "srpo",
    distill_mode: str = "topk_tail",
) -> dict:
    """Loss and gradient of the whole batch from core_algos, float64, from the HF weights.

    topk_ids (one (R, K) tensor per routed row) replaces the float64 top-K of the routed rows: in
    bf16 near-equal logits can order differently, and the comparison is then of the same K ids.
    distil=False routes no row: GRPO's loss and gradient on the same batch (a scale for bf16 errors).
    method="advantage_mix" or distill_mode="sampled_token": the SDPO signal is the sampled token's
    teacher log-prob (the ROUTED rows are the taught ones), as `SRPOConfig.advantage` and the loss
    form it; `SRPOConfig.distils_rows` says whether the taught rows are also distilled."""
    from transformers import AutoModelForCausalLM

    from srpo_verl import core_algos
    from srpo_verl.algo_config import SRPOConfig

    srpo = SRPOConfig(topk=topk, method=method, distill_mode=distill_mode)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float64, attn_implementation="eager")
    prompts, responses, teacher_prompts, advantages, _, is_weights = fixed_batch(high)
    T = max(len(r) for r in responses)
    pad = lambda rows: torch.stack([torch.nn.functional.pad(r.double(), (0, T - len(r))) for r in rows])  # noqa: E731

    def response_logits(prompt, response, grad=True):
        with torch.set_grad_enabled(grad):
            ids = torch.tensor([prompt + response])
            logits = model(ids).logits[0, len(prompt) - 1 : -1]  # (R, V)
        return torch.nn.functional.pad(logits, (0, 0, 0, T - len(response)))  # (T, V)

    student = torch.stack([response_logits(p, r) for p, r in zip(prompts, responses)])  # (B, T, V)
    teacher = torch.stack(
        [response_logits(teacher_prompts[i], responses[i], grad=False) for i in range(ROWS)]
    )  # (B, T, V); the EMA teacher starts as the student
    mask = pad([torch.ones(len(r)) for r in responses]).bool()
    ids = pad([torch.tensor(r) for r in responses]).long()
    log_prob = core_algos.gather_log_softmax(student, ids[..., None])[..., 0]  # (B, T)
    old = pad(result["old"])
    index = core_algos.student_topk(student.detach(), k=topk)  # (B, T, K)
    for j, i in enumerate(ROUTED if topk_ids is not None else []):
        index[i, : len(responses[i])] = topk_ids[j].long()
    log_q = core_algos.teacher_topk_log_probs(teacher, index)  # (B, T, K)
    divergence = core_algos.topk_tail_divergence(student, log_q, index, alpha=srpo.alpha, tail=True)
    taught = torch.tensor([i in ROUTED for i in range(ROWS)])
    route = taught & distil & srpo.distils_rows
    weights = core_algos.entropy_weights(core_algos.teacher_entropy(teacher), mask & route[:, None], beta=srpo.beta)
    rho = pad(is_weights)
    clip = dict(clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0, rollout_is_weights=rho)
    advantage = pad(advantages)
    if srpo.distils_logits:
        sdpo = core_algos.sdpo_token_loss(divergence, log_prob, old, is_clip=srpo.is_clip, rollout_is_weights=rho)
    else:
        teacher_log_prob = core_algos.gather_log_softmax(teacher, ids[..., None])[..., 0]  # (B, T)
        sampled = core_algos.sampled_token_advantage(teacher_log_prob, old) * taught[:, None]
        advantage = srpo.advantage(advantage, sampled, taught)
        sdpo, _ = core_algos.ppo_clip_token_loss(log_prob, old, sampled, **clip)
    grpo, _ = core_algos.ppo_clip_token_loss(log_prob, old, advantage, **clip)
    loss = core_algos.srpo_loss(grpo, sdpo, route, weights, mask, num_tokens=int(mask.sum()), dp_size=1)
    model.zero_grad()
    loss.backward()
    return {
        "loss": float(loss),
        "grad": {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None},
        "topk_ids": [index[i][mask[i]] for i in ROUTED],
        "teacher_topk": [log_q[i][mask[i]] for i in ROUTED],
        "teacher_entropy": [core_algos.teacher_entropy(teacher[i][mask[i]]) for i in ROUTED],
        "log_probs": [log_prob[i][mask[i]].detach() for i in range(ROWS)],
        # Descending logits at the routed rows' top-K ids and the true float64 top-K.
        "topk_logits": [
            student[i][mask[i]].detach().gather(-1, index[i][mask[i]]).sort(-1, descending=True).values for i in ROUTED
        ],
        "true_topk_logits": [student[i][mask[i]].detach().topk(topk, dim=-1).values for i in ROUTED],
    }


def reference_trust_region(model_path: str, result: dict) -> dict:
    """Trust-region teacher after the step, float64: log_softmax((1-m) z(theta_0) + m z(theta_1))."""
    from transformers import AutoModelForCausalLM

    from srpo_verl import core_algos

    load = lambda: AutoModelForCausalLM.from_pretrained(  # noqa: E731
        model_path, dtype=torch.float64, attn_implementation="eager"
    ).eval()
    ref, student = load(), load()
    student.load_state_dict({k: v.double() for k, v in result["theta1"].items()}, strict=False)
    prompts, responses, teacher_prompts, *_ = fixed_batch()
    out = {"entropy": [], "topk_ids": [], "teacher_topk": []}
    with torch.no_grad():
        for i in ROUTED:

            def scored(model, prompt, i=i):
                return model(torch.tensor([prompt + responses[i]])).logits[0, len(prompt) - 1 : -1]

            mixed = core_algos.trust_region_teacher_log_probs(
                torch.log_softmax(scored(ref, teacher_prompts[i]), -1),
                torch.log_softmax(scored(student, teacher_prompts[i]), -1),
                mix=TRUST_REGION_MIX,
            ).double()
            ids = scored(student, prompts[i]).topk(TOPK, dim=-1).indices
            out["entropy"].append(-(mixed.exp() * mixed).sum(-1))
            out["topk_ids"].append(ids)
            out["teacher_topk"].append(mixed.gather(-1, ids))
    return out
