"""Held-out accuracy of a policy on the demo task: greedy, sampled, and with the teacher's prompt.

The demo evaluates saved weights itself rather than through verl's validation: one pass gives
both greedy and sampled accuracy (verl validates with one `val_kwargs` setting per run), the
trainer's wall time is not charged with evaluation, and every method is scored on identical
random numbers (`seed`), which removes sampling noise from the differences between methods.

Protocol, the same as the RL rollouts: the prompt is the chat template with the generation
prompt; at most `max_new_tokens` new tokens; the response is decoded without special tokens and
scored by `addition.rg_correct` (reasoning-gym's verifier, full credit only). Sampling is at T = 1 with
no top-k/top-p, like training rollouts.

* `greedy_acc`: share of the prompts answered correctly by greedy decoding.
* `sampled_acc`: share of correct answers over `samples` draws per prompt.
* `hinted_acc`: greedy accuracy when the prompt is the SRPO teacher prompt carrying the correct
  answer as the sibling's solution (`teacher_prompt.teacher_prompt_ids`, the plugin's default
  `reprompt_template`): whether the policy can read a demonstration, which the self-teacher needs.
"""

from __future__ import annotations

import torch

from srpo_verl.evaluate import generate

# The teacher-prompt budget of the demo (algorithm.srpo.max_teacher_prompt_length); the
# character tokenizer spells the reprompt template out letter by letter (~85 tokens).
TEACHER_PROMPT_BUDGET = 256


def prompt_ids(tokenizer, question: str) -> list[int]:
    """Chat-templated user turn with the generation prompt, as verl's dataset builds it."""
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True
    )
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def hinted_prompt_ids(tokenizer, question: str, solution: str) -> list[int]:
    """The SRPO teacher prompt for `question` with `solution` as the correct sibling's response."""
    from srpo_verl.algo_config import SRPOConfig
    from srpo_verl.integration.teacher_prompt import teacher_prompt_ids

    defaults = SRPOConfig()
    ids, _ = teacher_prompt_ids(
        tokenizer,
        [{"role": "user", "content": question}],
        solution=solution,
        feedback=None,
        reprompt_template=defaults.reprompt_template,
        feedback_template=defaults.feedback_template,
        strip_think=defaults.strip_thinking,
        max_length=TEACHER_PROMPT_BUDGET,
        overflow="error",
    )
    return ids


def evaluate(
    model,
    tokenizer,
    problems: list[tuple[str, str]],
    *,
    samples: int = 4,
    seed: int = 1234,
    max_new_tokens: int = 8,
    hinted: bool = True,
) -> dict:
    """Accuracies of `model` on `problems` [(user question, answer)]; see the module docstring."""
    from srpo_verl.demo.addition import rg_correct

    was_training = model.training
    model.eval()
    plain = [prompt_ids(tokenizer, q) for q, _ in problems]
    answers = [a for _, a in problems]

    greedy = generate(model, tokenizer, plain, greedy=True, max_new_tokens=max_new_tokens, seed=seed)
    sampled = generate(
        model,
        tokenizer,
        [p for p in plain for _ in range(samples)],
        greedy=False,
        max_new_tokens=max_new_tokens,
        seed=seed,
    )
    result = {
        "n_prompts": len(problems),
        "samples": samples,
        "greedy_acc": sum(map(rg_correct, greedy, answers)) / len(problems),
        "sampled_acc": sum(rg_correct(r, answers[i // samples]) for i, r in enumerate(sampled)) / len(sampled),
    }
    if hinted:
        rows = [hinted_prompt_ids(tokenizer, q, a) for q, a in problems]
        responses = generate(model, tokenizer, rows, greedy=True, max_new_tokens=max_new_tokens, seed=seed)
        result["hinted_acc"] = sum(map(rg_correct, responses, answers)) / len(problems)
    model.train(was_training)
    return result


def val_problems(val_parquet: str) -> list[tuple[str, str]]:
    """[(user question, answer)] of a verl RL parquet file (the last user turn)."""
    import pandas as pd

    frame = pd.read_parquet(val_parquet)
    return [
        ([m for m in prompt if m["role"] == "user"][-1]["content"], str(rm["ground_truth"]))
        for prompt, rm in zip(frame["prompt"], frame["reward_model"])
    ]


def load_checkpoint_policy(model_dir: str, ckpt_dir: str, step: int):
    """The student of verl's checkpoint `ckpt_dir/global_step_{step}` as a HF model built from `model_dir`."""
    from transformers import AutoModelForCausalLM

    import logging

    from srpo_verl.demo.harness import checkpoint_weights

    # Loading DTensor shards outside a process group warns once per file; nothing is wrong here.
    logging.getLogger("torch.distributed.device_mesh").setLevel(logging.ERROR)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    state = checkpoint_weights(ckpt_dir, step)["student"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied embeddings: lm_head.weight may be absent from the checkpoint; anything else is a bug.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {ckpt_dir} step {step}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model
