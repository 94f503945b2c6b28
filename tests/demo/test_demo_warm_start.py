"""Warm-start SFT (srpo_verl/demo/warm_start.py): cached by settings, trains on teacher prompts."""

import dataclasses
import json
import os

import pytest
import torch

from srpo_verl.demo import tiny_model, warm_start

FEW = warm_start.WarmStartConfig(steps=4, batch_size=8, n_train=128, n_val=16)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    torch.set_num_threads(1)
    cache = str(tmp_path_factory.mktemp("warm"))
    lines = []
    with pytest.MonkeyPatch.context() as mp:
        # The tiny model it starts from goes to the same temporary cache.
        mp.setenv("SRPO_VERL_CACHE", cache)
        path = warm_start.warm_start(FEW, log=lines.append)
        base = tiny_model.build_tiny_model()
    return {"path": path, "cache": cache, "log": lines, "base": base}


def test_writes_a_loadable_model_and_a_record(built):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = built["path"]
    AutoModelForCausalLM.from_pretrained(path)
    assert len(AutoTokenizer.from_pretrained(path)) == 100
    with open(os.path.join(path, "warm_start.json")) as f:
        record = json.load(f)
    assert record["config"] == dataclasses.asdict(FEW)
    assert set(record["eval"]) >= {"greedy_acc", "sampled_acc", "hinted_acc"}
    assert any("step 4/4" in line for line in built["log"])


def test_second_call_is_served_from_the_cache(built):
    lines = []
    assert warm_start.warm_start(FEW, cache_dir=built["cache"], log=lines.append) == built["path"]
    assert lines == [f"[warm start] cached: {built['path']}"]


def test_cache_key_covers_every_setting():
    keys = {FEW.key()}
    for field in dataclasses.fields(FEW):
        value = getattr(FEW, field.name)
        keys.add(dataclasses.replace(FEW, **{field.name: value * 2 if value else 1}).key())
    assert len(keys) == 1 + len(dataclasses.fields(FEW))


def test_sft_moves_every_weight(built):
    from safetensors.torch import load_file

    before = load_file(os.path.join(built["base"], "model.safetensors"))
    after = load_file(os.path.join(built["path"], "model.safetensors"))
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(moved) == len(before)


def test_batch_masks_everything_but_the_target():
    ids, mask, labels = warm_start._batch([([5, 6, 7], [8, 2]), ([5], [9, 9, 2])], pad_id=0)
    assert ids.tolist() == [[5, 6, 7, 8, 2], [5, 9, 9, 2, 0]]
    assert mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert labels.tolist() == [[-100, -100, -100, 8, 2], [-100, 9, 9, 2, -100]]


def test_two_processes_give_the_same_weights_bit_for_bit(tmp_path, monkeypatch):
    """The second process computes the plain-prompt group's gradient; the sum is the one process's."""
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    monkeypatch.setenv("SRPO_VERL_CACHE", str(tmp_path))
    cfg = dataclasses.replace(FEW, steps=3)
    weights = {}
    for processes in (1, 2):
        lines = []
        warm_start.train(cfg, str(tmp_path / f"p{processes}"), log=lines.append, processes=processes)
        assert not any("one process" in line for line in lines), lines  # the helper did start
        weights[processes] = load_file(str(tmp_path / f"p{processes}" / "model.safetensors"))
    assert all(torch.equal(weights[1][k], weights[2][k]) for k in weights[1])
