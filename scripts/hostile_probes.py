#!/usr/bin/env python3
"""A third round of hostile probes (after the two rounds behind docs/reliability.md, rows W.. and E..).

Each probe feeds one hostile input to the driver's checks (config, data), the rewards, the teacher
prompt builder or the step checks, and says whether the outcome is the one a user needs: a refusal
naming the key / row / file, or a score equal to what the reference rule gives (the reference rules
of the SDPO code the paper builds on are restated below as plain functions, written from their
description in docs/reproduction.md). Prints one line per probe and the counts:

    python scripts/hostile_probes.py            # all probes
    python scripts/hostile_probes.py -k tool    # probes whose name contains "tool"

A probe "misbehaves" when the input is accepted silently where it changes the objective, scores
differently from the reference rule on non-degenerate output, or fails with an error that names
neither the key, nor the row, nor the file. CPU only, no model download, a few seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
import traceback
from collections import Counter
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PROBES: list[tuple[str, str, Callable[[], tuple[bool, str]]]] = []


def probe(area: str):
    def register(fn):
        PROBES.append((f"{area}/{fn.__name__}", area, fn))
        return fn

    return register


# ----------------------------------------------------------------------------- helpers

_BASE = None


def base_config():
    """The shipped SRPO launch with srpo_verl's task reward, composed once (Hydra is slow)."""
    global _BASE
    if _BASE is None:
        from srpo_verl.preflight import compose

        _BASE = compose(
            [
                "algorithm=srpo",
                "reward.custom_reward_function.path=pkg://srpo_verl.tasks",
                "reward.custom_reward_function.name=compute_score",
            ]
        )
    from omegaconf import OmegaConf

    return OmegaConf.create(OmegaConf.to_container(_BASE))


def config_with(**updates):
    from omegaconf import OmegaConf, open_dict

    config = base_config()
    with open_dict(config):
        for key, value in updates.items():
            OmegaConf.update(config, key.replace("__", "."), value, force_add=True)
    return config


def refused(fn: Callable, *names: str) -> tuple[bool, str]:
    """ok when fn raises a ValueError/TypeError/NotImplementedError whose message holds every name."""
    try:
        fn()
    except (ValueError, TypeError, NotImplementedError) as err:
        text = str(err)
        missing = [n for n in names if n not in text]
        return (
            not missing,
            f"{type(err).__name__}: {text[:160]}" + (f"  [does not name {missing}]" if missing else ""),
        )
    except Exception as err:  # noqa: BLE001 - an unexpected kind of error is itself the finding
        return False, f"unexpected {type(err).__name__}: {str(err)[:160]}"
    return False, "accepted"


def check_config(config):
    from srpo_verl import SUPPORTED_VERL
    from srpo_verl.integration.config_checks import check_trainer_config

    return check_trainer_config(config, verl_version=SUPPORTED_VERL)


def check_rows(rows, **kw):
    from srpo_verl.integration.data_checks import check_data_rows

    return check_data_rows(rows, source="probe.parquet", **kw)


def teacher_spec(limit=None, feedback=False):
    from srpo_verl.algo_config import SRPOConfig
    from srpo_verl.integration.data_checks import TeacherSpec

    cfg = SRPOConfig()
    templates = [("algorithm.srpo.reprompt_template", cfg.reprompt_template, "solution")]
    if feedback:
        templates.append(("algorithm.srpo.feedback_template", cfg.feedback_template, "feedback"))
    return TeacherSpec(tuple(templates), limit, "algorithm.srpo.max_teacher_prompt_length")


def mcq_row(gold="A", labels=("A", "B", "C", "D"), **extra):
    info = {"split": "train", "index": 0, "labels": list(labels), **extra}
    return {
        "data_source": "sciknoweval",
        "prompt": [{"role": "user", "content": "Q?"}],
        "reward_model": {"ground_truth": gold},
        "extra_info": info,
    }


def tool_row(calls, index=0):
    return {
        "data_source": "tooluse",
        "prompt": [{"role": "user", "content": "Q?"}],
        "reward_model": {"ground_truth": calls if isinstance(calls, str) else json.dumps(calls)},
        "extra_info": {"split": "test", "index": index},
    }


# The reference rules, restated (docs/reproduction.md): MCQ reads the text after the last `<answer>`
# up to the next `</answer>`, stripped; tools compare the multiset of `Action:\s*(\w+)` names and the
# dict merged from every `Action Input:\s*({.*?})` block that json.loads reads on its own.
def reference_mcq(text: str, gold: str) -> float:
    after = text.split("<answer>")[-1]
    return float(after.split("</answer>")[0].strip() == gold)


def reference_tool(text: str, gold: str) -> float:
    calls = json.loads(gold)
    gold_inputs: dict = {}
    for call in calls:
        raw = call["Action_Input"]
        try:
            value = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            value = {}
        if value:
            gold_inputs.update(value)
    merged: dict = {}
    for block in re.findall(r"Action Input:\s*({.*?})", text, re.DOTALL):
        try:
            merged.update(json.loads(block))
        except ValueError:
            pass
    names = re.findall(r"Action:\s*(\w+)", text)
    return float(Counter(names) == Counter(c["Action"] for c in calls) and merged == gold_inputs)


def same_as_reference(task: str, response: str, gold: str, **extra) -> tuple[bool, str]:
    from srpo_verl import tasks

    if task == "mcq":
        ours = tasks.compute_score("sciknoweval", response, gold, {"labels": ["A", "B", "C", "D"], **extra})["score"]
        ref = reference_mcq(response, gold)
    else:
        ours = tasks.compute_score("tooluse", response, gold)["score"]
        ref = reference_tool(response, gold)
    return ours == ref, f"ours {ours:g}, reference {ref:g}"


def tokenizer():
    from srpo_verl.demo.tiny_model import build_tokenizer

    return build_tokenizer()


# ----------------------------------------------------------------------------- config


@probe("config")
def temperature_infinite():
    return refused(
        lambda: check_config(config_with(actor_rollout_ref__rollout__temperature=float("inf"))), "rollout.temperature"
    )


@probe("config")
def temperature_bool():
    return refused(
        lambda: check_config(config_with(actor_rollout_ref__rollout__temperature=True)), "rollout.temperature"
    )


@probe("config")
def success_threshold_infinite():
    return refused(
        lambda: check_config(config_with(algorithm__srpo__success_threshold=float("inf"))), "success_threshold"
    )


@probe("config")
def success_threshold_above_binary_reward():
    # The task rewards score 0 or 1: a threshold above 1 means no response is ever correct, so SRPO
    # would never find a demonstration (silently GRPO with extra work).
    return refused(lambda: check_config(config_with(algorithm__srpo__success_threshold=1.5)), "success_threshold")


@probe("config")
def success_threshold_zero_with_binary_reward():
    # 0 marks every response correct (0 >= 0): no failed sample is ever routed to distillation.
    return refused(lambda: check_config(config_with(algorithm__srpo__success_threshold=0.0)), "success_threshold")


@probe("config")
def topk_negative():
    return refused(lambda: check_config(config_with(algorithm__srpo__topk=-5)), "algorithm.srpo.topk")


@probe("config")
def trust_region_mix_nan():
    return refused(
        lambda: check_config(config_with(algorithm__srpo__trust_region_mix=float("nan"))), "trust_region_mix"
    )


@probe("config")
def mix_lambda_infinite():
    return refused(lambda: check_config(config_with(algorithm__srpo__mix_lambda=float("inf"))), "mix_lambda")


@probe("config")
def is_clip_nan():
    return refused(lambda: check_config(config_with(algorithm__srpo__is_clip=float("nan"))), "is_clip")


@probe("config")
def teacher_limit_bool():
    return refused(
        lambda: check_config(config_with(algorithm__srpo__max_teacher_prompt_length=True)), "max_teacher_prompt_length"
    )


@probe("config")
def feedback_key_with_spaces():
    cfg = config_with(algorithm__srpo__use_feedback=True, algorithm__srpo__feedback_key=" feedback ")
    return refused(lambda: check_config(cfg), "feedback_key")


@probe("config")
def feedback_key_acc():
    cfg = config_with(algorithm__srpo__use_feedback=True, algorithm__srpo__feedback_key="acc")
    return refused(lambda: check_config(cfg), "feedback_key")


@probe("config")
def reward_kwarg_ordered_yes():
    cfg = config_with(reward__custom_reward_function__reward_kwargs={"ordered": "yes"})
    return refused(lambda: check_config(cfg), "reward_kwargs.ordered")


@probe("config")
def rollout_n_float():
    return refused(lambda: check_config(config_with(actor_rollout_ref__rollout__n=2.0)), "rollout.n")


@probe("config")
def max_response_length_string():
    # Unset teacher limit = max_prompt_length + max_response_length, computed at the teacher step.
    return refused(lambda: check_config(config_with(data__max_response_length="512")), "data.max_response_length")


@probe("config")
def reprompt_template_without_solution():
    return refused(
        lambda: check_config(config_with(algorithm__srpo__reprompt_template="{question}")), "reprompt_template"
    )


# ----------------------------------------------------------------------------- data rows


@probe("data")
def user_role_capitalised():
    rows = [mcq_row()]
    rows[0]["prompt"] = [{"role": "User", "content": "Q?"}]
    return refused(lambda: check_rows(rows), "no user turn", "rows [0]")


@probe("data")
def last_user_turn_bytes():
    rows = [mcq_row(), mcq_row()]
    rows[1]["prompt"] = [{"role": "user", "content": "Q?"}, {"role": "user", "content": b"Q?"}]
    return refused(lambda: check_rows(rows, teacher=teacher_spec()), "last user turn is not text", "rows [1]")


@probe("data")
def mcq_gold_with_spaces_scores_like_the_letter():
    from srpo_verl import tasks

    check_rows([mcq_row(" A ")])
    score = tasks.compute_score("sciknoweval", "<answer>A</answer>", " A ", {"labels": ["A", "B"]})["score"]
    return score == 1.0, f"gold ' A ' accepted by the data check, `<answer>A</answer>` scores {score:g}"


@probe("data")
def mcq_gold_int():
    return refused(lambda: check_rows([mcq_row(1)]), "ground_truth", "rows [0]")


@probe("data")
def mcq_choices_fewer_than_labels():
    # Option texts feed the lenient reader's restated-option match; a mismatch pairs texts wrongly.
    return refused(lambda: check_rows([mcq_row("A", choices=["x", "y"])]), "choices", "rows [0]")


@probe("data")
def reward_model_as_json_string():
    rows = [mcq_row()]
    rows[0]["reward_model"] = json.dumps({"ground_truth": "A"})
    return refused(lambda: check_rows(rows), "reward_model.ground_truth", "rows [0]")


@probe("data")
def message_that_is_a_string():
    rows = [mcq_row()]
    rows[0]["prompt"] = ["Q?"]
    return refused(lambda: check_rows(rows), "chat messages", "rows [0]")


@probe("data")
def tool_gold_with_empty_action_is_warned():
    import logging

    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    log = logging.getLogger("srpo_verl.integration.data_checks")
    handler = Keep()
    log.addHandler(handler)
    try:
        check_rows([tool_row([{"Action": "", "Action_Input": "{}"}])])
    except ValueError as err:
        return True, f"refused: {str(err)[:120]}"
    finally:
        log.removeHandler(handler)
    return any("not one word" in r for r in records), (records[0][:120] if records else "accepted silently")


@probe("data")
def tool_gold_input_not_json_object():
    # `"Action_Input": "[1, 2]"`: the reference's merge would raise on a list; ours counts it as {}.
    return refused(lambda: check_rows([tool_row([{"Action": "a", "Action_Input": "[1, 2]"}])]), "rows [0]")


@probe("data")
def jsonl_line_that_is_an_array():
    from srpo_verl.integration.data_checks import read_rows

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "train.jsonl")
        with open(path, "w") as fh:
            fh.write(json.dumps(mcq_row()) + "\n" + json.dumps([1, 2]) + "\n")

        try:
            rows = read_rows(path)
        except ValueError as err:  # refused while reading: it must name the file
            return path in str(err), f"refused: {str(err)[:120]}"
        return refused(lambda: check_rows(rows), "rows [1]")  # read: the row check must name it


@probe("data")
def parquet_with_columns_but_no_rows():
    import pandas as pd

    from srpo_verl.integration.data_checks import check_data_files

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "train.parquet")
        pd.DataFrame({"prompt": pd.Series([], dtype=object)}).to_parquet(path)
        cfg = config_with(data__train_files=path, data__val_files=path)
        return refused(lambda: check_data_files(cfg, tokenizer=None), "has no rows", path)


@probe("data")
def jsonl_with_byte_order_mark():
    from srpo_verl.integration.data_checks import read_rows

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "train.jsonl")
        with open(path, "w", encoding="utf-8-sig") as fh:
            fh.write(json.dumps(mcq_row()) + "\n")
        try:
            rows = read_rows(path)
        except ValueError as err:
            return path in str(err), f"refused: {str(err)[:120]}"
        return len(rows) == 1 and "prompt" in rows[0], f"read {len(rows)} row(s), keys {sorted(rows[0])[:3]}"


@probe("data")
def teacher_budget_for_feedback_template():
    # The feedback template is longer than the reprompt one: the budget must be measured with it too.
    tok = tokenizer()
    rows = [mcq_row()]
    solo = check_rows(rows, tokenizer=tok, max_prompt_length=64, teacher=teacher_spec(10_000)).teacher_overhead
    both = check_rows(
        rows, tokenizer=tok, max_prompt_length=64, teacher=teacher_spec(10_000, feedback=True)
    ).teacher_overhead
    return both > solo, f"overhead {solo} (reprompt) vs {both} (with the feedback template)"


@probe("data")
def teacher_budget_with_system_prompt():
    tok = tokenizer()
    rows = [mcq_row()]
    rows[0]["prompt"] = [{"role": "system", "content": "S" * 40}, {"role": "user", "content": "Q?"}]
    longest = check_rows(rows, tokenizer=tok, max_prompt_length=500).max_prompt_tokens
    return refused(
        lambda: check_rows(rows, tokenizer=tok, max_prompt_length=longest, teacher=teacher_spec(longest)),
        "max_teacher_prompt_length",
        "data.max_prompt_length",
    )


# ----------------------------------------------------------------------------- model outputs


@probe("reward")
def mcq_zero_width_space_after_letter():
    return same_as_reference("mcq", "<answer>A\u200b</answer>", "A")


@probe("reward")
def mcq_fullwidth_tags():
    return same_as_reference("mcq", "\uff1canswer\uff1eA\uff1c/answer\uff1e", "A")


@probe("reward")
def mcq_nested_answer_tags():
    return same_as_reference("mcq", "<answer><answer>A</answer></answer>", "A")


@probe("reward")
def mcq_crlf_inside_answer():
    return same_as_reference("mcq", "<answer>\r\nA\r\n</answer>", "A")


@probe("reward")
def mcq_two_answers_last_wins():
    return same_as_reference("mcq", "<answer>B</answer> wait <answer>A</answer>", "A")


@probe("reward")
def mcq_lenient_two_letters_is_no_answer():
    from srpo_verl import tasks

    result = tasks.compute_score("sciknoweval", "<answer>A or B</answer>", "A", {"labels": ["A", "B"]}, lenient=True)
    return result["score"] == 0.0, f"lenient score {result['score']:g}"


@probe("reward")
def tool_no_space_after_action():
    gold = json.dumps([{"Action": "search", "Action_Input": '{"q": "x"}'}])
    return same_as_reference("tool", 'Action:search\nAction Input:{"q": "x"}', gold)


@probe("reward")
def tool_nbsp_before_input():
    gold = json.dumps([{"Action": "search", "Action_Input": '{"q": "x"}'}])
    return same_as_reference("tool", 'Action:\u00a0search\nAction Input:\u00a0{"q": "x"}', gold)


@probe("reward")
def tool_unicode_action_name():
    gold = json.dumps([{"Action": "поиск", "Action_Input": "{}"}])
    return same_as_reference("tool", "Action: поиск\nAction Input: {}", gold)


@probe("reward")
def tool_duplicate_keys_in_one_block():
    gold = json.dumps([{"Action": "s", "Action_Input": '{"a": 2}'}])
    return same_as_reference("tool", 'Action: s\nAction Input: {"a": 1, "a": 2}', gold)


@probe("reward")
def tool_nan_argument():
    gold = json.dumps([{"Action": "s", "Action_Input": '{"a": NaN}'}])
    return same_as_reference("tool", 'Action: s\nAction Input: {"a": NaN}', gold)


@probe("reward")
def tool_huge_exponent_argument():
    gold = json.dumps([{"Action": "s", "Action_Input": '{"a": 1e400}'}])
    return same_as_reference("tool", 'Action: s\nAction Input: {"a": 1e400}', gold)


@probe("reward")
def tool_think_tag_inside_an_argument():
    # A request about the string "<think>": the argument is data, not the model's thinking.
    gold = json.dumps([{"Action": "search", "Action_Input": '{"q": "<think>"}'}])
    return same_as_reference("tool", 'Action: search\nAction Input: {"q": "<think>"}', gold)


@probe("reward")
def tool_input_split_by_a_brace_in_a_string():
    gold = json.dumps([{"Action": "s", "Action_Input": '{"a": "}"}'}])
    return same_as_reference("tool", 'Action: s\nAction Input: {"a": "}"}', gold)


@probe("reward")
def tool_input_on_the_same_line_as_action():
    gold = json.dumps([{"Action": "s", "Action_Input": '{"a": 1}'}])
    return same_as_reference("tool", 'Action: s Action Input: {"a": 1}', gold)


@probe("reward")
def tool_lenient_parenthesised_name():
    from srpo_verl import tasks

    gold = json.dumps([{"Action": "search", "Action_Input": '{"q": "x"}'}])
    result = tasks.compute_score("tooluse", 'Action: search()\nAction Input: {"q": "x"}', gold, lenient=True)
    return result["score"] == 1.0, f"lenient score {result['score']:g}"


@probe("reward")
def mcq_response_one_megabyte_of_think_openers_is_fast():
    from srpo_verl import tasks

    text = "<think>" * 150_000 + "<answer>A</answer>"
    start = time.perf_counter()
    result = tasks.compute_score("sciknoweval", text, "A", {"labels": ["A", "B"]})
    took = time.perf_counter() - start
    return took < 2.0 and result["reward_error"] == 0, f"{took * 1000:.0f} ms, score {result['score']:g}"


# ----------------------------------------------------------------------------- teacher prompts


@probe("teacher")
def huge_feedback_is_cut_to_the_budget():
    from srpo_verl.algo_config import SRPOConfig
    from srpo_verl.integration.teacher_prompt import teacher_prompt_ids

    tok, cfg = tokenizer(), SRPOConfig()
    start = time.perf_counter()
    ids, cut = teacher_prompt_ids(
        tok,
        [{"role": "user", "content": "1+2="}],
        solution=None,
        feedback="9" * 200_000,
        reprompt_template=cfg.reprompt_template,
        feedback_template=cfg.feedback_template,
        strip_think=True,
        max_length=256,
        overflow="truncate",
    )
    took = time.perf_counter() - start
    return len(ids) == 256 and cut > 0 and took < 5, f"{len(ids)} tokens, {cut} cut, {took:.2f} s"


@probe("teacher")
def question_with_format_braces():
    from srpo_verl.algo_config import SRPOConfig
    from srpo_verl.integration.teacher_prompt import teacher_prompt_ids

    tok, cfg = tokenizer(), SRPOConfig()
    ids, _ = teacher_prompt_ids(
        tok,
        [{"role": "user", "content": "{solution} {0} {question}"}],
        solution="7",
        feedback=None,
        reprompt_template=cfg.reprompt_template,
        feedback_template=cfg.feedback_template,
        strip_think=True,
        max_length=512,
        overflow="error",
    )
    text = tok.decode(ids)
    return "{solution} {0} {question}" in text and "Correct solution:\n7" in text, text[-80:].replace("\n", "\\n")


@probe("teacher")
def question_used_twice_is_measured_twice():
    # A template may repeat {question}: the budget must count the question each time it appears.
    from srpo_verl.algo_config import SRPOConfig
    from srpo_verl.integration.data_checks import TeacherSpec

    tok = tokenizer()
    rows = [mcq_row()]
    rows[0]["prompt"] = [{"role": "user", "content": "Q" * 30}]

    def overhead(template):
        SRPOConfig(reprompt_template=template)  # a valid template
        spec = TeacherSpec((("algorithm.srpo.reprompt_template", template, "solution"),), 10_000, "limit")
        return check_rows(rows, tokenizer=tok, max_prompt_length=500, teacher=spec).teacher_overhead

    once = overhead("{question}\nCorrect solution:\n{solution}")
    twice = overhead("{question}\n{question}\nCorrect solution:\n{solution}")
    return twice - once == 31, f"overhead {once} with the question once, {twice} twice (+30 characters and a newline)"


# ----------------------------------------------------------------------------- step checks


@probe("step")
def rewards_as_numpy_array():
    import numpy as np
    import torch

    from srpo_verl.integration.step_checks import check_step_inputs

    step = check_step_inputs(np.array([1.0, 0.0]), ["u", "u"], torch.ones(2, 3))
    return step.rewards.tolist() == [1.0, 0.0], f"rewards {step.rewards.tolist()}"


@probe("step")
def uid_numpy_nan():
    import numpy as np
    import torch

    from srpo_verl.integration.step_checks import check_step_inputs

    return refused(lambda: check_step_inputs([1.0, 0.0], ["u", np.float64("nan")], torch.ones(2, 3)), "uid", "rows [1]")


@probe("step")
def reward_numpy_string():
    import numpy as np
    import torch

    from srpo_verl.integration.step_checks import check_step_inputs

    return refused(lambda: check_step_inputs([np.str_("1.0"), 0.0], ["u", "u"], torch.ones(2, 3)), "rewards")


@probe("step")
def response_mask_with_twos():
    import torch

    from srpo_verl.integration.step_checks import check_step_inputs

    step = check_step_inputs([1.0, 0.0], ["u", "u"], torch.tensor([[2, 0], [1, 1]]))
    return bool(step.usable.all()), f"usable {step.usable.tolist()}"


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", default="", help="run only probes whose name contains this")
    args = parser.parse_args(argv)
    counts = Counter()
    for name, _, fn in PROBES:
        if args.k not in name:
            continue
        try:
            ok, detail = fn()
        except Exception as err:  # noqa: BLE001 - a probe that crashes is a finding, not the end of the round
            ok, detail = False, f"probe raised {type(err).__name__}: {str(err)[:160]}"
            if os.environ.get("PROBE_TRACEBACK"):
                traceback.print_exc()
        counts["ok" if ok else "misbehaves"] += 1
        print(f"{'ok        ' if ok else 'MISBEHAVES'}  {name:55s} {detail}")
    total = counts["ok"] + counts["misbehaves"]
    print(f"\n{total} probes: {counts['ok']} ok, {counts['misbehaves']} misbehave")
    return 0


if __name__ == "__main__":
    sys.exit(main())
