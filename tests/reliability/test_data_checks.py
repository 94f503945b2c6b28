"""Bad data rows and files, refused in the driver before Ray starts (`check_data_rows`,
`check_data_files` in srpo_verl/integration/data_checks.py, called by `srpo_verl.main_ppo.prepare`)."""

import logging
import re

import pandas as pd
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
    return len(tok(tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False), add_special_tokens=False)["input_ids"])


BAD_ROWS = [
    ("missing_prompt", lambda: without(1, "prompt"), "missing `prompt` at rows [1]"),
    ("prompt_is_a_string", lambda: with_row(2, prompt="1+2="), "`prompt` is not a list of {role, content} chat messages at rows [2]"),
    ("prompt_without_content", lambda: with_row(0, prompt=[{"role": "user"}]), "is not a list of {role, content}"),
    ("empty_prompt", lambda: with_row(1, prompt=[]), "empty `prompt` (no messages) at rows [1]"),
    (
        "no_user_turn",
        lambda: with_row(0, prompt=[{"role": "system", "content": "Add."}]),
        "`prompt` has no user turn (the teacher prompt rewrites the last user turn) at rows [0]",
    ),
    ("blank_user_turn", lambda: with_row(2, prompt=[{"role": "user", "content": "  \n"}]), "only empty user turns at rows [2]"),
    ("missing_data_source", lambda: without(1, "data_source"), "missing `data_source` at rows [1]"),
    ("missing_ground_truth", lambda: with_row(2, reward_model={"style": "rule"}), "missing `reward_model.ground_truth` at rows [2]"),
    ("ground_truth_none", lambda: with_row(0, reward_model={"style": "rule", "ground_truth": None}), "ground_truth` at rows [0]"),
]


@pytest.mark.parametrize("make, text", [c[1:] for c in BAD_ROWS], ids=[c[0] for c in BAD_ROWS])
def test_bad_row_is_an_error_naming_field_and_rows(make, text):
    with pytest.raises(ValueError, match=re.escape("train.parquet: ") + ".*" + re.escape(text)):
        check_data_rows(make(), source="train.parquet")


def test_several_problems_are_reported_together():
    data = without(0, "prompt")
    data[2]["reward_model"] = {}
    with pytest.raises(ValueError, match=r"missing `prompt` at rows \[0\]; missing `reward_model.ground_truth` at rows \[2\]"):
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


@pytest.mark.parametrize("mode, text", [("filter", "dropped by verl"), ("truncate", "cut from the left")], ids=["filter", "truncate"])
def test_overlong_prompt_allowed_by_the_config_is_logged(tok, caplog, mode, text):
    data = rows()
    data[0]["prompt"] = [{"role": "user", "content": "9" * 60}]
    with caplog.at_level(logging.WARNING, logger="srpo_verl.integration.data_checks"):
        report = check_data_rows(data, tokenizer=tok, max_prompt_length=32, overlong=mode)
    assert report.overlong_rows == [0]
    assert "1 prompt(s) longer than data.max_prompt_length=32 (rows [0])" in caplog.text and text in caplog.text


# ------------------------------------------------------------------------------------------ files


def _config(tmp_path, train_rows, *overrides):
    train = tmp_path / "train.parquet"
    pd.DataFrame(train_rows).to_parquet(train, index=False)
    with initialize_config_module("srpo_verl.config", version_base=None):
        return compose(
            "srpo_trainer",
            overrides=["algorithm=srpo", f"data.train_files={train}", f"data.val_files={train}", "data.max_prompt_length=32", *overrides],
        )


def test_parquet_roundtrip_is_checked_like_rows(tmp_path, tok):
    # pandas returns prompts as numpy arrays of dicts: they are chat messages all the same.
    data = rows()
    data[1]["prompt"] = [{"role": "system", "content": "x"}]
    config = _config(tmp_path, data)
    with pytest.raises(ValueError, match=r"data.train_files .*train.parquet: `prompt` has no user turn .* at rows \[1\]"):
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
        config = compose("srpo_trainer", overrides=tiny_cpu_overrides(tiny_model_path, addition_data, "/tmp/x", total_steps=1))
    reports = check_data_files(config)
    assert sum(r.rows for r in reports.values()) == 512 + 64
    assert all(r.overlong_rows == [] and 0 < r.max_prompt_tokens <= 32 for r in reports.values())
