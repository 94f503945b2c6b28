"""Bad data rows and files, refused in the driver before Ray starts (`check_data_rows`,
`check_data_files` in srpo_verl/integration/data_checks.py, called by `srpo_verl.main_ppo.prepare`)."""

import logging
import re

import pandas as pd
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from srpo_verl.demo.addition import to_row
from srpo_verl.demo.tiny_model import build_tokenizer
from srpo_verl.integration.data_checks import check_data_files, check_data_rows


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def rows(n=3):
    return [to_row(i, i + 1, split="train", index=i) for i in range(n)]


def with_row(i, **changes):
    data = rows()
    data[i] = {**data[i], **changes}
    return data


def without(i, key):
    data = rows()
    data[i].pop(key)
    return data


def prompt_tokens(tok, row):
    # Independent count: render the template as text, then one token per character (+ specials).
    return len(
        tok(
            tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False), add_special_tokens=False
        )["input_ids"]
    )


BAD_ROWS = [
    ("missing_prompt", lambda: without(1, "prompt"), "missing `prompt` at rows [1]"),
    (
        "prompt_is_a_string",
        lambda: with_row(2, prompt="1+2="),
        "`prompt` is not a list of {role, content} chat messages at rows [2]",
    ),
    ("prompt_without_content", lambda: with_row(0, prompt=[{"role": "user"}]), "is not a list of {role, content}"),
    ("empty_prompt", lambda: with_row(1, prompt=[]), "empty `prompt` (no messages) at rows [1]"),
    (
        "no_user_turn",
        lambda: with_row(0, prompt=[{"role": "system", "content": "Add."}]),
        "`prompt` has no user turn (the teacher prompt rewrites the last user turn) at rows [0]",
    ),
    (
        "blank_user_turn",
        lambda: with_row(2, prompt=[{"role": "user", "content": "  \n"}]),
        "only empty user turns at rows [2]",
    ),
    ("missing_data_source", lambda: without(1, "data_source"), "missing `data_source` at rows [1]"),
    (
        "missing_ground_truth",
        lambda: with_row(2, reward_model={"style": "rule"}),
        "missing `reward_model.ground_truth` at rows [2]",
    ),
    (
        "ground_truth_none",
        lambda: with_row(0, reward_model={"style": "rule", "ground_truth": None}),
        "ground_truth` at rows [0]",
    ),
]


@pytest.mark.parametrize("make, text", [c[1:] for c in BAD_ROWS], ids=[c[0] for c in BAD_ROWS])
def test_bad_row_is_an_error_naming_field_and_rows(make, text):
    with pytest.raises(ValueError, match=re.escape("train.parquet: ") + ".*" + re.escape(text)):
        check_data_rows(make(), source="train.parquet")


def test_several_problems_are_reported_together():
    data = without(0, "prompt")
    data[2]["reward_model"] = {}
    with pytest.raises(
        ValueError, match=r"missing `prompt` at rows \[0\]; missing `reward_model.ground_truth` at rows \[2\]"
    ):
        check_data_rows(data)


def test_prompt_longer_than_the_limit_is_an_error_naming_the_rows(tok):
    data = rows()
    data[1]["prompt"] = [{"role": "user", "content": "1" * 40 + "+2="}]
    limit = prompt_tokens(tok, data[0])  # rows 0 and 2 fit exactly
    assert prompt_tokens(tok, data[2]) <= limit < prompt_tokens(tok, data[1])
    with pytest.raises(ValueError, match=re.escape(f"longer than data.max_prompt_length={limit} at rows [1]")):
        check_data_rows(data, tokenizer=tok, max_prompt_length=limit)
    report = check_data_rows(data, tokenizer=tok, max_prompt_length=prompt_tokens(tok, data[1]))
    assert report.overlong_rows == [] and report.max_prompt_tokens == prompt_tokens(tok, data[1])


@pytest.mark.parametrize(
    "mode, text", [("filter", "dropped by verl"), ("truncate", "cut from the left")], ids=["filter", "truncate"]
)
def test_overlong_prompt_allowed_by_the_config_is_logged(tok, caplog, mode, text):
    data = rows()
    data[0]["prompt"] = [{"role": "user", "content": "9" * 60}]
    with caplog.at_level(logging.WARNING, logger="srpo_verl.integration.data_checks"):
        report = check_data_rows(data, tokenizer=tok, max_prompt_length=32, overlong=mode)
    assert report.overlong_rows == [0]
    assert "1 prompt(s) longer than data.max_prompt_length=32 (rows [0])" in caplog.text and text in caplog.text


# ------------------------------------------------------------------------------------------ files


ADDITION_REWARD = Path(__file__).resolve().parents[2] / "srpo_verl" / "demo" / "addition.py"


def _config(tmp_path, train_rows, *overrides):
    train = tmp_path / "train.parquet"
    pd.DataFrame(train_rows).to_parquet(train, index=False)
    with initialize_config_module("srpo_verl.config", version_base=None):
        return compose(
            "srpo_trainer",
            overrides=[
                "algorithm=srpo",
                f"data.train_files={train}",
                f"data.val_files={train}",
                "data.max_prompt_length=32",
                f"reward.custom_reward_function.path={ADDITION_REWARD}",  # the demo's reward, as the demo runs it
                "reward.custom_reward_function.name=compute_score",
                *overrides,
            ],
        )


def test_parquet_roundtrip_is_checked_like_rows(tmp_path, tok):
    # pandas returns prompts as numpy arrays of dicts: they are chat messages all the same.
    data = rows()
    data[1]["prompt"] = [{"role": "system", "content": "x"}]
    config = _config(tmp_path, data)
    with pytest.raises(
        ValueError, match=r"data.train_files .*train.parquet: `prompt` has no user turn .* at rows \[1\]"
    ):
        check_data_files(config, tokenizer=tok)


def test_overlong_prompt_in_a_file_follows_verl_settings(tmp_path, tok):
    data = rows()
    data[2]["prompt"] = [{"role": "user", "content": "5" * 50}]
    with pytest.raises(ValueError, match=r"rows \[2\]"):
        check_data_files(_config(tmp_path, data), tokenizer=tok)  # verl's default data.truncation=error
    reports = check_data_files(_config(tmp_path, data, "data.filter_overlong_prompts=True"), tokenizer=tok)
    assert [r.overlong_rows for r in reports.values()] == [[2]]
    reports = check_data_files(_config(tmp_path, data, "data.truncation=left"), tokenizer=tok)
    assert [r.overlong_rows for r in reports.values()] == [[2]]


def test_missing_data_file_is_an_error_naming_it(tmp_path):
    config = _config(tmp_path, rows(), f"data.val_files={tmp_path}/nope.parquet")
    with pytest.raises(ValueError, match=re.escape(f"data.val_files: {tmp_path}/nope.parquet does not exist")):
        check_data_files(config, tokenizer=None)


def test_unsupported_data_format_is_an_error(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("prompt\nhi\n")
    config = _config(tmp_path, rows(), f"data.train_files={path}")
    with pytest.raises(ValueError, match="unsupported format"):
        check_data_files(config, tokenizer=None)


def test_custom_reward_manager_does_not_require_reward_fields(tmp_path):
    data = without(0, "data_source")
    with pytest.raises(ValueError, match="data_source"):
        check_data_files(_config(tmp_path, data), tokenizer=None)
    config = _config(tmp_path, data, "reward.reward_manager.source=importlib")
    assert len(check_data_files(config, tokenizer=None)) == 1


def test_addition_data_with_the_e2e_settings_passes(tiny_model_path, addition_data):
    # Control: the demo / end-to-end data at max_prompt_length=32, with the model's own tokenizer
    # loaded by the check (tokenizer="auto"), passes; so prepare() keeps those launches working.
    from srpo_verl.demo.harness import tiny_cpu_overrides

    with initialize_config_module("srpo_verl.config", version_base=None):
        config = compose(
            "srpo_trainer", overrides=tiny_cpu_overrides(tiny_model_path, addition_data, "/tmp/x", total_steps=1)
        )
    reports = check_data_files(config)
    assert sum(r.rows for r in reports.values()) == 512 + 64
    assert all(r.overlong_rows == [] and 0 < r.max_prompt_tokens <= 32 for r in reports.values())


# ---------------------------------------------------------------- issue 23: what the teacher step would refuse


def _teacher_step_refuses(tok, row, limit) -> bool:
    """Whether the trainer's teacher builder refuses this row at `limit` with a one-token demonstration."""
    from srpo_verl.algo_config import SRPOConfig
    from srpo_verl.integration.teacher_prompt import plain_ids, teacher_prompt_ids

    cfg = SRPOConfig()
    try:
        teacher_prompt_ids(
            tok,
            row["prompt"],
            solution=plain_ids(tok, "7")[:1],
            feedback=None,
            reprompt_template=cfg.reprompt_template,
            feedback_template=cfg.feedback_template,
            strip_think=True,
            max_length=limit,
            overflow="truncate",
        )
    except ValueError as err:
        assert "question alone is too long" in str(err)
        return True
    return False


@pytest.mark.parametrize("which", ["char", "bpe"], ids=["char", "bpe"])
def test_teacher_budget_is_checked_with_the_real_tokenizer(tmp_path, which):
    """Before: only max_teacher_prompt_length >= data.max_prompt_length was required, so a prompt within
    the template's own overhead of the data limit passed every driver check (and `check`) and raised
    "the question alone is too long" at the first teacher step. Now the driver measures the overhead
    with the run's tokenizer, and refuses exactly the rows the teacher step would refuse."""
    from test_teacher_prompt_checks import bpe_chatml_tokenizer

    tok = build_tokenizer() if which == "char" else bpe_chatml_tokenizer()
    data = rows()
    longest = max(prompt_tokens(tok, r) for r in data)
    report = check_data_rows(data, tokenizer=tok, max_prompt_length=longest, teacher=_teacher(10_000))
    overhead = report.teacher_overhead
    assert overhead > 5  # the template's wording: ~58 tokens on the character tokenizer, ~12+ on the BPE
    # At the data limit: the budget must hold the prompt, the template overhead and one demonstration token.
    with pytest.raises(
        ValueError,
        match=rf"algorithm.srpo.max_teacher_prompt_length={longest} cannot hold a prompt at "
        rf"data.max_prompt_length={longest}: .* adds up to {overhead} tokens",
    ):
        check_data_rows(
            data,
            source="data.train_files t.parquet",
            tokenizer=tok,
            max_prompt_length=longest,
            teacher=_teacher(longest),
        )
    check_data_rows(data, tokenizer=tok, max_prompt_length=longest, teacher=_teacher(longest + overhead + 1))
    # Row by row (no data limit, as with data.truncation=left): refused exactly where the step refuses.
    for limit in range(longest, longest + overhead + 3):
        refused = [i for i, r in enumerate(data) if _teacher_step_refuses(tok, r, limit)]
        if refused:
            with pytest.raises(ValueError, match=re.escape(f"at rows [{', '.join(map(str, refused))}]")):
                check_data_rows(data, tokenizer=tok, teacher=_teacher(limit))
        else:
            check_data_rows(data, tokenizer=tok, teacher=_teacher(limit))


def _teacher(limit, feedback=False):
    from srpo_verl.algo_config import SRPOConfig
    from srpo_verl.integration.data_checks import TeacherSpec

    cfg = SRPOConfig()
    templates = [("algorithm.srpo.reprompt_template", cfg.reprompt_template, "solution")]
    if feedback:
        templates.append(("algorithm.srpo.feedback_template", cfg.feedback_template, "feedback"))
    return TeacherSpec(tuple(templates), limit, "algorithm.srpo.max_teacher_prompt_length")


def test_teacher_budget_in_a_file_names_the_key_and_the_file(tmp_path, tok):
    config = _config(tmp_path, rows(), "algorithm.srpo.max_teacher_prompt_length=32")  # passes the old `>=` check
    with pytest.raises(
        ValueError,
        match=r"data.train_files .*train.parquet: algorithm.srpo.max_teacher_prompt_length=32 "
        r"cannot hold a prompt at data.max_prompt_length=32",
    ):
        check_data_files(config, tokenizer=tok)
    assert check_data_files(_config(tmp_path, rows(), "algorithm.srpo.max_teacher_prompt_length=128"), tokenizer=tok)


NON_TEXT = [
    ("openai_parts", [{"type": "text", "text": "1+2="}], "a list"),
    ("none", None, "a NoneType"),
    ("nan", float("nan"), "a NoneType"),  # pandas reads a nested NaN back as None
    ("number", 12, "a int"),
]


@pytest.mark.parametrize("content, kind", [c[1:] for c in NON_TEXT], ids=[c[0] for c in NON_TEXT])
def test_non_text_last_user_turn_is_refused_naming_row_and_file(tmp_path, tok, content, kind):
    """Before: another user turn with text let the row pass; the teacher builder then refused it at the
    first teacher step, naming neither row nor file."""
    import json

    data = rows(4)
    data[2]["prompt"] = [
        {"role": "user", "content": "What is 1+2?"},
        {"role": "assistant", "content": "Which format?"},
        {"role": "user", "content": content},
    ]
    path = tmp_path / "val.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in data))
    config = _config(tmp_path, rows(), f"data.val_files={path}")
    with pytest.raises(ValueError) as err:
        check_data_files(config, tokenizer=tok)
    message = str(err.value)
    assert f"data.val_files {path}: `prompt`'s last user turn is not text (its content is {kind})" in message
    assert message.endswith("at rows [2]")
    # The same rows in memory (a caller's own rows: NaN stays NaN).
    with pytest.raises(
        ValueError, match=r"last user turn is not text \(its content is a (NaN|list|NoneType|int)\).* at rows \[2\]"
    ):
        check_data_rows(data, source="rows", teacher=_teacher(None))


def test_question_holding_the_builders_placeholder_is_refused(tok):
    data = rows()
    data[1]["prompt"] = [{"role": "user", "content": "1+\ue000srpo-slot\ue001="}]
    with pytest.raises(ValueError, match=r"holds the teacher builder's private placeholder .* at rows \[1\]"):
        check_data_rows(data, teacher=_teacher(None))
    check_data_rows(data)  # not an SRPO run: no teacher prompt is built


def test_misspelt_data_source_is_refused_naming_rows_and_file(tmp_path):
    """Before: passed the data check; verl's default scorer raised NotImplementedError at the first reward."""
    data = rows()
    for r in data:
        r["data_source"] = "sciknoweva"
    with pytest.raises(
        ValueError,
        match=r"data.train_files .*train.parquet: data_source 'sciknoweva' is neither one of "
        r"srpo_verl's tasks .* at rows \[0, 1, 2\]",
    ):
        check_data_files(
            _config(tmp_path, data, "reward.custom_reward_function.path=pkg://srpo_verl.tasks"), tokenizer=None
        )
    with pytest.raises(ValueError, match="'sciknoweva' is neither"):  # verl's default scorer: the same dispatch
        check_data_files(_config(tmp_path, data, "reward.custom_reward_function.path=null"), tokenizer=None)
    assert check_data_files(_config(tmp_path, data), tokenizer=None)  # another custom function decides itself


def test_empty_train_file_is_refused_naming_it(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(ValueError, match=re.escape(f"data.train_files {path}: the file has no rows")):
        check_data_files(_config(tmp_path, rows(), f"data.train_files={path}"), tokenizer=None)


def test_malformed_json_lines_name_the_file_and_the_line(tmp_path):
    import json

    path = tmp_path / "train.jsonl"
    lines = [json.dumps(r) for r in rows()]
    lines.insert(2, '{"prompt": [}')
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=re.escape(f"data file {path}, line 3: not valid JSON")):
        check_data_files(_config(tmp_path, rows(), f"data.train_files={path}"), tokenizer=None)


def test_gold_tool_names_that_are_not_one_word_are_warned_with_the_count(caplog):
    import json

    from srpo_verl.tasks import toolalpaca

    def tool_row(i, names):
        gold = json.dumps([{"Action": n, "Action_Input": "{}"} for n in names])
        return {
            "data_source": "tooluse",
            "prompt": [{"role": "user", "content": "q"}],
            "reward_model": {"ground_truth": gold},
            "extra_info": {"split": "test", "index": i},
        }

    data = [tool_row(0, ["getUser"]), tool_row(1, ["getUser", "[Optional]updateUserProfile"]), tool_row(2, ["a b"])]
    with caplog.at_level(logging.WARNING, logger="srpo_verl.integration.data_checks"):
        check_data_rows(data, source="data.val_files test.parquet")
    assert (
        "data.val_files test.parquet: 2 row(s) (rows [1, 2]) have a gold tool name that is not one word" in caplog.text
    )
    assert (
        toolalpaca.compute_score(
            "tooluse", "Action: [Optional]updateUserProfile\nAction Input: {}", data[2]["reward_model"]["ground_truth"]
        )["score"]
        == 0.0
    )


def test_jsonl_line_that_is_not_an_object_names_the_file_and_the_line(tmp_path):
    """Before: pandas raised a bare TypeError ("cannot convert dictionary update sequence")."""
    import json

    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(rows()[0]) + "\n" + json.dumps([1, 2]) + "\n")
    with pytest.raises(ValueError, match=re.escape(f"data file {path}, line 2: a list, not a JSON object (one row)")):
        check_data_files(_config(tmp_path, rows(), f"data.train_files={path}"), tokenizer=None)


# ------------------------------------------- issue 24: the check reads what verl's own dataset keeps


def _long_rows():
    data = rows(6)
    for i in (1, 4):
        data[i]["prompt"] = [{"role": "user", "content": "7" * 40 + "+1="}]
    return data


def _verl_kept(config, path, tok):
    """The rows verl's trainer trains on, from verl's own dataset built independently of the check."""
    from verl.trainer.ppo.utils import create_rl_dataset

    dataset = create_rl_dataset([str(path)], config.data, tok, None, is_train=True)
    return [row["extra_info"]["index"] for row in dataset.dataframe]


@pytest.mark.parametrize(
    "overrides, dropped",
    [(["data.filter_overlong_prompts=True"], [1, 4]), (["data.truncation=left"], [])],
    ids=["filter", "truncate"],
)
def test_the_check_agrees_with_verls_dataset_row_for_row(tmp_path, tok, overrides, dropped):
    """verl's own option decides which rows survive; the check reports exactly the rows verl's dataset
    drops (filter) or keeps whole and cuts later (truncate)."""
    config = _config(tmp_path, _long_rows(), *overrides)
    (report,) = check_data_files(config, tokenizer=tok).values()
    kept = _verl_kept(config, tmp_path / "train.parquet", tok)
    assert kept == [i for i in range(6) if i not in dropped]
    assert report.verl_rows == len(kept) and report.overlong_rows == [1, 4]
    if dropped:
        assert [i for i in range(6) if i not in report.overlong_rows] == kept


def test_the_check_follows_a_verl_that_filters_differently(tmp_path, tok, monkeypatch, caplog):
    """Would fail if the check re-derived verl's filtering: a verl whose dataset drops other rows (here
    every odd row, whatever its length) is followed row for row, and the disagreement is logged."""
    from verl.utils.dataset import rl_dataset

    def odd_rows_out(self, dataframe=None):
        return (
            dataframe.filter(lambda doc: doc["extra_info"]["index"] % 2 == 0)
            if self.filter_overlong_prompts
            else dataframe
        )

    monkeypatch.setattr(rl_dataset.RLHFDataset, "maybe_filter_out_long_prompts", odd_rows_out)
    config = _config(tmp_path, _long_rows(), "data.filter_overlong_prompts=True")
    with caplog.at_level(logging.WARNING, logger="srpo_verl.integration.data_checks"):
        (report,) = check_data_files(config, tokenizer=tok).values()
    kept = _verl_kept(config, tmp_path / "train.parquet", tok)
    assert kept == [0, 2, 4]
    assert report.overlong_rows == [1, 3, 5] and report.verl_rows == 3
    assert "verl's dataset drops rows [1, 3, 5]; measured here, rows [1, 4] are over" in caplog.text


def test_a_prompt_the_chat_template_fails_on_is_refused_naming_the_rows(tmp_path, tok):
    """Before: verl's dataset filter printed a traceback and dropped the row silently (or the rollout
    failed on it); now the check names the file and the rows."""
    data = rows(4)
    data[2]["prompt"] = [{"role": "user", "content": "2+3="}, {"role": "assistant", "content": None}]
    data[2]["prompt"].append({"role": "user", "content": "and 4+5="})
    with pytest.raises(
        ValueError, match=r"data.train_files .*train.parquet: the chat template fails on these prompts .* at rows \[2\]"
    ):
        check_data_files(_config(tmp_path, data, "data.filter_overlong_prompts=True"), tokenizer=tok)


def test_a_big_file_shows_progress_for_each_length_pass(tmp_path, tok, monkeypatch, capsys):
    """Lengths are measured row by row (with verl's own filter, 3-4 passes over the file): a big file
    shows a bar per pass on stderr instead of minutes of silence."""
    from srpo_verl.integration import data_checks

    monkeypatch.setattr(data_checks, "PROGRESS_FROM", 3)
    check_data_files(_config(tmp_path, rows(4), "data.filter_overlong_prompts=True"), tokenizer=tok)
    err = capsys.readouterr().err
    assert "Filtering prompts longer than 32 tokens" in err  # verl's own bar
    for name in ("prompt lengths", "teacher prompt budget"):
        assert f"data.train_files {tmp_path / 'train.parquet'}: {name}: 100%" in err


# ---------------------------------------------------------------- the guard's teacher-prompted validation
TEACHER_PROMPTED = "algorithm.srpo.guard.teacher_prompted_validation=True"


def test_teacher_prompted_validation_needs_every_validation_rows_gold_answer(tmp_path):
    data = rows()
    data[1] = {**data[1], "reward_model": {"style": "rule"}}  # no ground_truth
    custom = "reward.reward_manager.source=importlib"  # otherwise every row needs one anyway
    assert len(check_data_files(_config(tmp_path, data, custom), tokenizer=None)) == 1  # off: nothing to show
    with pytest.raises(
        ValueError, match=r"data.val_files .*teacher_prompted_validation .*ground_truth, missing at rows \[1\]"
    ):
        check_data_files(_config(tmp_path, data, custom, TEACHER_PROMPTED), tokenizer=None)


def test_teacher_prompted_validation_refuses_chats_the_rollout_would_cut(tmp_path, tok):
    """The limit is measured on the chats the trainer's validation builds (`teacher_prompted_batch`),
    counted independently: a limit one below the longest names exactly the longest rows."""
    from srpo_verl.algo_config import srpo_config_of
    from srpo_verl.integration.trainer import teacher_prompted_batch

    data = rows(4)
    data[2]["reward_model"] = {**data[2]["reward_model"], "ground_truth": "12345678"}
    srpo = srpo_config_of(_config(tmp_path, data))
    batch = {"raw_prompt": [r["prompt"] for r in data], "reward_model": [r["reward_model"] for r in data]}
    lengths = [prompt_tokens(tok, {"prompt": list(c)}) for c in teacher_prompted_batch(batch, srpo)["raw_prompt"]]
    longest = max(lengths)
    assert longest > max(prompt_tokens(tok, r) for r in data)  # the plain prompts fit either way

    def config(limit, *more):
        return _config(tmp_path, data, f"data.max_prompt_length={limit}", "data.max_response_length=512", *more)

    assert check_data_files(config(longest - 1), tokenizer=tok)  # off: the plain prompts fit
    assert check_data_files(config(longest, TEACHER_PROMPTED), tokenizer=tok)
    expected = [i for i, n in enumerate(lengths) if n == longest]
    with pytest.raises(
        ValueError,
        match=rf"data.val_files .*teacher-prompted chats of rows {re.escape(str(expected))} \(longest {longest} "
        rf"tokens\) exceed data.max_prompt_length={longest - 1}",
    ):
        check_data_files(config(longest - 1, TEACHER_PROMPTED), tokenizer=tok)
