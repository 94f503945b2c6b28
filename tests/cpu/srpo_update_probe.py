"""One SRPO update through verl's engine on CPU, and the same update from the pure functions.

`python tests/cpu/srpo_update_probe.py MODEL OUT.pt MICRO_BATCH` runs one rank; with
WORLD_SIZE=2 (RANK, MASTER_ADDR/PORT set by the caller) two copies form a gloo group and FSDP2
shards the model over them. `test_srpo_update.py` starts the ranks and compares the results.

Each rank builds `SRPOActorRolloutRefWorker(role="actor")` exactly as verl does, installs the
SRPO loss (`srpo_setup`), runs the teacher pass on the routed rows (`compute_srpo_teacher`) and one
optimiser step (`update_actor`) on its half of a fixed batch. The optimiser is SGD with lr 1 and
no clipping, so theta_0 - theta_1 is the gradient. Rank 0 also computes, in float64 from the HF
checkpoint, the loss and gradient that `srpo_verl.core_algos` gives on the whole batch at once.
"""

import os
import sys

from srpo_verl.cpu.local import as_batch, compose, local_env, update_info

local_env()

import torch  # noqa: E402

ROWS = 8  # two groups of four responses
TOPK = 8  # below the 100-token vocabulary, so the tail bucket is exercised
ROUTED = [1, 2, 5, 6]  # rows on the SDPO branch (failed, with a correct sibling)


TRUST_REGION_MIX = 0.3


def srpo_config(model_path: str, micro_batch: int, teacher: str = "ema"):
    return compose(
        [
            f"algorithm.srpo.teacher={teacher}",
            f"algorithm.srpo.trust_region_mix={TRUST_REGION_MIX}",
            "algorithm=srpo",
            "platform=cpu",
            f"algorithm.srpo.topk={TOPK}",
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
        ]
    )


def fixed_batch():
    """Prompts, responses, teacher prompts, advantages, old log-prob offsets and IS weights."""
    gen = torch.Generator().manual_seed(0)
    rand = lambda n, lo=4, hi=90: torch.randint(lo, hi, (n,), generator=gen).tolist()  # noqa: E731
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


def engine_update(model_path: str, micro_batch: int, teacher: str = "ema") -> dict:
    import verl  # noqa: F401  (activates the CPU backend through the plugin)

    if os.environ.get("SRPO_PROBE_INPLACE_CE"):
        # verl's token log-probs as with flash-attn installed: the backward overwrites the logits.
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "gpu"))
        from virtual_cuda import inplace_logprobs_from_logits
        from verl.workers.engine.fsdp import transformer_impl

        transformer_impl.logprobs_from_logits = inplace_logprobs_from_logits
    from omegaconf import OmegaConf

    import verl.utils.tensordict_utils as tu
    from srpo_verl.integration.worker import TAUGHT_FIELD, TEACHER_FIELDS, TOPK_FIELD, SRPOActorRolloutRefWorker

    nested = lambda rows: torch.nested.as_nested_tensor(rows, layout=torch.jagged)  # noqa: E731

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    config = srpo_config(model_path, micro_batch, teacher)
    worker = SRPOActorRolloutRefWorker(config=config.actor_rollout_ref, role="actor")
    worker.init_model()
    worker.srpo_setup(OmegaConf.to_container(config.algorithm.srpo, resolve=True), TOPK)

    prompts, responses, teacher_prompts, advantages, old_offsets, is_weights = fixed_batch()
    sequences = list(zip(prompts, responses))

    def old_log_prob_pass():
        """verl's old-log-prob forward with the teacher rows marked: response log-probs and the
        student's top-K ids of the marked rows (an empty row for the others)."""
        data = as_batch(sequences)
        data[TAUGHT_FIELD] = torch.tensor([int(i in ROUTED) for i in range(ROWS)])
        tu.assign_non_tensor(data, temperature=1.0, calculate_entropy=True, compute_loss=False)
        out = worker.compute_log_prob(data)
        log_probs = [out["log_probs"][i][len(p) - 1 : len(p) - 1 + len(r)] for i, (p, r) in enumerate(sequences)]
        return log_probs, list(out[TOPK_FIELD].unbind())

    def teacher_pass(topk):
        """The teacher pass on the routed rows, as the trainer dispatches it."""
        teacher_in = tu.get_tensordict(
            {
                "srpo_teacher_input_ids": nested([torch.tensor(teacher_prompts[i] + responses[i]) for i in ROUTED]),
                "responses": nested([torch.tensor(responses[i]) for i in ROUTED]),
                TOPK_FIELD: nested([topk[i] for i in ROUTED]),
            }
        )
        tu.assign_non_tensor(teacher_in, temperature=1.0)
        out = worker.compute_srpo_teacher(teacher_in)
        fields = {key: list(out[key].unbind()) for key in TEACHER_FIELDS}
        fields[TOPK_FIELD] = [topk[i] for i in ROUTED]
        return fields

    # Every rank runs the no-grad passes on the whole batch (FSDP forwards are collective).
    log_probs, topk = old_log_prob_pass()
    assert all(len(topk[i]) == 0 for i in range(ROWS) if i not in ROUTED)  # nothing for GRPO rows
    old = [lp + off for lp, off in zip(log_probs, old_offsets)]
    taught = teacher_pass(topk)
    # What the trainer stores: teacher values on routed rows, an empty row on the others.
    fields = {key: [values[0][:0]] * ROWS for key, values in taught.items()}
    for key, values in taught.items():
        for j, i in enumerate(ROUTED):
            fields[key] = fields[key][:i] + [values[j]] + fields[key][i + 1 :]
    fields["srpo_sampled_adv"] = [torch.zeros(len(responses[i]) if i in ROUTED else 0) for i in range(ROWS)]

    theta0 = full_params(worker)
    mine = list(range(rank * ROWS // world, (rank + 1) * ROWS // world))
    pick = lambda values: [values[i] for i in mine]  # noqa: E731
    data = as_batch(
        pick(sequences),
        old_log_probs=pick(old),
        advantages=pick(advantages),
        rollout_is_weights=pick(is_weights),
        **{key: pick(values) for key, values in fields.items()},
    )
    data["srpo_route"] = torch.tensor([int(i in ROUTED) for i in mine])
    update_info(data, ROWS)
    output = worker.update_actor(data)
    theta1 = full_params(worker)
    metrics = output["metrics"] if output is not None else {}
    pg_loss = [v for k, v in metrics.items() if k.endswith("pg_loss")]
    value = sum(pg_loss[0]) if pg_loss and isinstance(pg_loss[0], list) else (pg_loss[0] if pg_loss else 0.0)
    loss = torch.tensor(float(value), dtype=torch.float64)
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
        result["teacher_after_step"] = teacher_pass(old_log_prob_pass()[1])
        result["theta1"] = {name: p.float() for name, p in theta1.items()}
    torch.distributed.destroy_process_group()
    return result


def reference_update(model_path: str, result: dict) -> dict:
    """Loss and gradient of the whole batch from core_algos, float64, from the HF weights."""
    from transformers import AutoModelForCausalLM

    from srpo_verl import core_algos
    from srpo_verl.algo_config import SRPOConfig

    srpo = SRPOConfig(topk=TOPK)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float64, attn_implementation="eager")
    prompts, responses, teacher_prompts, advantages, _, is_weights = fixed_batch()
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
    index = core_algos.student_topk(student.detach(), k=TOPK)  # (B, T, K)
    log_q = core_algos.teacher_topk_log_probs(teacher, index)  # (B, T, K)
    divergence = core_algos.topk_tail_divergence(student, log_q, index, alpha=srpo.alpha, tail=True)
    route = torch.tensor([i in ROUTED for i in range(ROWS)])
    weights = core_algos.entropy_weights(
        core_algos.teacher_entropy(teacher), mask & route[:, None], beta=srpo.beta
    )
    rho = pad(is_weights)
    grpo, _ = core_algos.ppo_clip_token_loss(
        log_prob, old, pad(advantages), clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0, rollout_is_weights=rho
    )
    sdpo = core_algos.sdpo_token_loss(divergence, log_prob, old, is_clip=srpo.is_clip, rollout_is_weights=rho)
    loss = core_algos.srpo_loss(grpo, sdpo, route, weights, mask, num_tokens=int(mask.sum()), dp_size=1)
    model.zero_grad()
    loss.backward()
    return {
        "loss": float(loss),
        "grad": {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None},
        "topk_ids": [index[i][mask[i]] for i in ROUTED],
        "teacher_topk": [log_q[i][mask[i]] for i in ROUTED],
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
            scored = lambda model, prompt: model(torch.tensor([prompt + responses[i]])).logits[  # noqa: E731
                0, len(prompt) - 1 : -1
            ]
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


if __name__ == "__main__":
    model_path, out_path, micro_batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
    result = engine_update(model_path, micro_batch, *(sys.argv[4:5] or ["ema"]))
    if os.environ["RANK"] == "0":
        result["reference"] = reference_update(model_path, result) if os.environ.get("SRPO_PROBE_REFERENCE") else None
        if "theta1" in result:
            result["reference_trust_region"] = reference_trust_region(model_path, result)
        torch.save(result, out_path)
