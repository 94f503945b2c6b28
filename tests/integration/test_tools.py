"""The command-line tools fail before the expensive part and keep what they made: `evaluate` checks
every flag, task file and model path before a model loads and writes each result as it completes;
`export-teacher` checks the checkpoint and the flags before reading shards and names the file
that is wrong. Fast: the tiny model and hand-made checkpoint folders, no training run."""

import json
import shutil
import sys
import types

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

from srpo_verl import __main__ as cli
from srpo_verl import evaluate, export
from srpo_verl.demo import addition

ADDITION_REWARD = ["--reward-path", addition.__file__, "--reward-name", "compute_score"]


def run_evaluate(*args):
    return cli.main(["evaluate", *args])


@pytest.fixture
def base(tiny_model_path, addition_data, tmp_path):
    return [
        "--out",
        str(tmp_path / "eval"),
        "--model",
        f"tiny={tiny_model_path}",
        "--task",
        f"add={addition_data['val']}",
        *ADDITION_REWARD,
    ]


@pytest.fixture
def no_loading(monkeypatch):
    """Any model load fails the test: the refusals must come before it."""

    def load(*_):
        raise AssertionError("a model was loaded before the flags were checked")

    monkeypatch.setattr(evaluate, "load_model", load)
    monkeypatch.setattr(evaluate, "resolve_model", load)


# --------------------------------------------------------------------------- evaluate: flags


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--dtype", "bfloat"], "--dtype 'bfloat': expected one of auto, float32, float16, bfloat16, fp32, fp16, bf16"),
        (
            ["--chat-template-kwargs", "{enable_thinking: false}"],
            "--chat-template-kwargs '{enable_thinking: false}': not JSON",
        ),
        (["--chat-template-kwargs", "[1]"], "--chat-template-kwargs '[1]': must be a JSON object"),
        (["--n", "0"], "--n 0: must be at least 1"),
        (["--limit", "0"], "--limit 0: must be at least 1"),
        (["--batch-size", "0"], "--batch-size 0: must be at least 1"),
        (["--max-new-tokens", "0"], "--max-new-tokens 0: must be at least 1"),
        (["--top-p", "1.5"], "--top-p 1.5: must be in (0, 1]"),
        (["--temperature", "0"], "--temperature 0.0: must be a finite number > 0"),
        (["--backend", "sglang"], "--backend 'sglang': expected one of hf, vllm"),
        (["--tensor-parallel-size", "0"], "--tensor-parallel-size 0: must be at least 1"),
        (["--tensor-parallel-size", "2"], "--tensor-parallel-size 2: splits a model only with --backend vllm"),
    ],
    ids=[
        "dtype",
        "kwargs_not_json",
        "kwargs_not_object",
        "n_0",
        "limit_0",
        "batch_size_0",
        "max_new_tokens_0",
        "top_p",
        "temperature_0",
        "backend",
        "tp_0",
        "tp_without_vllm_backend",
    ],
)
def test_evaluate_refuses_a_bad_flag_before_loading(base, no_loading, flags, message):
    with pytest.raises(SystemExit) as exc:
        run_evaluate(*base, *flags)
    assert message in str(exc.value)


def test_evaluate_accepts_verls_short_dtype_names(base, monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(
        evaluate, "load_model", lambda model_dir, args: seen.append(evaluate.DTYPES[args.dtype]) or (None, None)
    )
    monkeypatch.setattr(evaluate, "score_model", lambda *a, **k: [1.0])
    assert run_evaluate(*base, "--dtype", "bf16", "--limit", "1") == 0
    assert seen == ["bfloat16"]


def test_evaluate_refuses_a_missing_task_file_or_model_before_loading(base, no_loading, tmp_path):
    with pytest.raises(SystemExit) as exc:
        run_evaluate(*base, "--task", f"gone={tmp_path / 'test.parquet'}")
    assert f"--task gone={tmp_path / 'test.parquet'}: no such file" in str(exc.value)
    with pytest.raises(SystemExit) as exc:
        run_evaluate(*base, "--model", f"gone={tmp_path / 'model'}")
    assert f"--model gone={tmp_path / 'model'}: no such folder" in str(exc.value)
    (tmp_path / "empty_model").mkdir()
    with pytest.raises(SystemExit) as exc:
        run_evaluate(*base, "--model", f"empty={tmp_path / 'empty_model'}")
    assert "--model empty=" in str(exc.value) and "the folder has no config.json" in str(exc.value)


def test_evaluate_refuses_a_task_file_without_verls_columns(base, no_loading, tmp_path):
    bad = tmp_path / "bad.parquet"
    pd.DataFrame([{"question": "1+1", "answer": "2"}]).to_parquet(bad)
    with pytest.raises(SystemExit) as exc:
        run_evaluate(*base, "--task", f"bad={bad}")
    assert f"--task bad={bad}: no column(s) ['prompt', 'data_source', 'reward_model']" in str(exc.value)


def test_evaluate_refuses_a_reward_that_cannot_score_the_task_before_loading(base, no_loading):
    with pytest.raises(SystemExit) as exc:
        run_evaluate(*base, "--reward-name", "no_such_reward")
    assert "--reward-name no_such_reward" in str(exc.value)
    # srpo_verl.tasks' reward does not know the addition task's data_source: found before generating.
    with pytest.raises(SystemExit) as exc:
        run_evaluate(*base, "--reward-path", "pkg://srpo_verl.tasks", "--reward-name", "compute_score")
    assert "--reward-name compute_score cannot score --task add's first row: NotImplementedError" in str(exc.value)


def test_evaluate_backend_vllm_without_vllm_is_refused_before_loading(base, no_loading, monkeypatch):
    """Before: no vLLM route at all (HF generate only). Now --backend vllm where vLLM does not import is
    refused before any model loads or merges, naming the flag and the install."""
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError, installed or not
    with pytest.raises(SystemExit) as exc:
        run_evaluate(*base, "--backend", "vllm")
    message = str(exc.value)
    assert message.startswith("--backend vllm: vLLM does not import in this environment")
    assert "`pip install vllm`" in message and "or use --backend hf" in message


def _answers(truths: dict):
    """A deterministic response for (prompt ids, sample k): the gold answer for some samples only, so
    per-prompt accuracies vary."""

    def answer(ids, k):
        return truths[tuple(ids)] if k < sum(ids) % 4 else "0"

    return answer


def _fake_vllm(answer, calls: dict) -> types.ModuleType:
    """A stand-in for `vllm`: LLM records its arguments; generate returns RequestOutput-shaped objects
    (prompt_token_ids, outputs: CompletionOutput-shaped index/text/token_ids), the completions out of
    index order as vLLM may return them."""
    module = types.ModuleType("vllm")

    class SamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    class LLM:
        def __init__(self, **kwargs):
            calls["llm"].append(kwargs)

        def generate(self, prompts, sampling_params, use_tqdm=True):
            calls["generate"].append(([p["prompt_token_ids"] for p in prompts], sampling_params.kwargs))
            n = sampling_params.kwargs["n"]
            return [
                types.SimpleNamespace(
                    prompt_token_ids=p["prompt_token_ids"],
                    outputs=[
                        types.SimpleNamespace(index=k, text=answer(p["prompt_token_ids"], k), token_ids=[1])
                        for k in reversed(range(n))
                    ],
                )
                for p in prompts
            ]

    module.LLM, module.SamplingParams = LLM, SamplingParams
    return module


def test_evaluate_backend_vllm_gets_what_hf_gets_and_writes_the_same_results(
    base, tiny_model_path, addition_data, tmp_path, monkeypatch
):
    """The vLLM path receives the prompt token ids the HF path forms (same chat templating), the same
    sampling settings, and writes the same results.md and results.json (but for the backend flags)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    rows = evaluate.load_split(addition_data["val"], 4)
    truths = {tuple(evaluate.chat_prompt_ids(tok, r["prompt"], {})): r["reward_model"]["ground_truth"] for r in rows}
    answer = _answers(truths)
    settings = ["--n", "3", "--limit", "4", "--temperature", "0.7", "--top-p", "0.9", "--max-new-tokens", "5"]
    settings += ["--seed", "7", "--dtype", "fp32"]

    hf_calls = []

    def fake_generate(model, tokenizer, prompt_rows, **kwargs):
        hf_calls.append((prompt_rows, kwargs))
        return [answer(ids, i % 3) for i, ids in enumerate(prompt_rows)]  # n samples per prompt, in a row

    monkeypatch.setattr(evaluate, "generate", fake_generate)
    hf_out, vllm_out = tmp_path / "hf", tmp_path / "vllm"
    assert run_evaluate(*base, *settings, "--out", str(hf_out)) == 0

    calls = {"llm": [], "generate": []}
    monkeypatch.setitem(sys.modules, "vllm", _fake_vllm(answer, calls))
    assert (
        run_evaluate(*base, *settings, "--out", str(vllm_out), "--backend", "vllm", "--tensor-parallel-size", "2") == 0
    )

    assert calls["llm"] == [{"model": tiny_model_path, "dtype": "float32", "tensor_parallel_size": 2}]
    ((hf_rows, hf_kwargs),) = hf_calls
    ((vllm_prompts, params),) = calls["generate"]
    assert vllm_prompts == hf_rows[::3] == [list(ids) for ids in truths]  # one request per prompt, n samples each
    assert hf_rows == [ids for ids in vllm_prompts for _ in range(3)]
    assert params == {"n": 3, "temperature": 0.7, "top_p": 0.9, "max_tokens": 5, "seed": 7}
    assert {k: hf_kwargs[k] for k in ("temperature", "top_p", "max_new_tokens", "seed", "greedy")} == {
        "temperature": 0.7,
        "top_p": 0.9,
        "max_new_tokens": 5,
        "seed": 7,
        "greedy": False,
    }
    assert (hf_out / "results.md").read_text() == (vllm_out / "results.md").read_text()
    hf_json, vllm_json = (json.loads((d / "results.json").read_text()) for d in (hf_out, vllm_out))
    assert hf_json["results"] == vllm_json["results"] and hf_json["complete"] and vllm_json["complete"]
    per_prompt = hf_json["results"]["tiny"]["add"]["per_prompt"]
    assert len(per_prompt) == 4 and len(set(per_prompt)) > 1  # the scores really vary with the responses
    differ = {k for k in hf_json["settings"] if hf_json["settings"][k] != vllm_json["settings"][k]}
    assert differ == {"backend", "tensor_parallel_size", "out"}


# --------------------------------------------------------------------------- evaluate: results kept


def test_evaluate_never_overwrites_results_silently(base, tmp_path, monkeypatch):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "results.json").write_text('{"old": true}')
    with pytest.raises(SystemExit) as exc:
        run_evaluate(*base)
    assert "results.json exists; pass --overwrite" in str(exc.value)
    assert json.loads((out / "results.json").read_text()) == {"old": True}
    monkeypatch.setattr(evaluate, "load_model", lambda *a: (None, None))
    monkeypatch.setattr(evaluate, "score_model", lambda *a, **k: [0.5])
    assert run_evaluate(*base, "--overwrite", "--limit", "1") == 0
    assert json.loads((out / "results.json").read_text())["complete"] is True


def test_a_failure_in_the_fourth_result_keeps_the_first_three(tiny_model_path, addition_data, tmp_path, monkeypatch):
    calls = []

    def score(model, tokenizer, rows, reward_fn, args, progress=None):
        calls.append(progress)
        if len(calls) == 4:
            raise RuntimeError("CUDA out of memory")
        return [len(calls) / 10]

    monkeypatch.setattr(evaluate, "load_model", lambda *a: (None, None))
    monkeypatch.setattr(evaluate, "score_model", score)
    out = tmp_path / "eval"
    args = ["--out", str(out), "--limit", "2", "--model", f"a={tiny_model_path}", "--model", f"b={tiny_model_path}"]
    args += ["--task", f"x={addition_data['val']}", "--task", f"y={addition_data['val']}", *ADDITION_REWARD]
    with pytest.raises(RuntimeError, match="out of memory"):
        run_evaluate(*args)
    saved = json.loads((out / "results.json").read_text())
    assert saved["complete"] is False
    assert {label: sorted(r) for label, r in saved["results"].items()} == {"a": ["x", "y"], "b": ["x"]}
    assert saved["results"]["b"]["x"]["avg"] == pytest.approx(30.0)
    table = (out / "results.md").read_text().splitlines()
    assert table[4:] == ["| a | 10.0 | 20.0 | 15.0 |", "| b | 30.0 | - | 30.0* |"]


def test_a_pipe_in_a_label_stays_in_its_cell():
    results = {"srpo|ema": {"a|b": {"avg": 50.0}}}
    line = evaluate.markdown_table(results, ["a|b"], 4).splitlines()[4]
    assert line == "| srpo\\|ema | 50.0 | 50.0 |"
    cells = [c for c in pd.Series([line]).str.split(r"(?<!\\)\|").iloc[0] if c.strip()]
    assert len(cells) == 3


def test_evaluate_runs_the_tiny_model_with_a_progress_bar(base, tmp_path, capsys):
    assert run_evaluate(*base, "--n", "2", "--limit", "2", "--max-new-tokens", "2", "--dtype", "fp32") == 0
    err = capsys.readouterr().err
    assert "tiny add" in err and "4/4" in err  # 2 prompts x 2 samples
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["complete"] is True and saved["results"]["tiny"]["add"]["n_prompts"] == 2


# --------------------------------------------------------------------------- export-teacher


@pytest.fixture
def ckpt(tiny_model_path, tmp_path):
    """trainer.default_local_dir of a 1-rank run with steps 2 and 4 (latest 4), laid out as verl and the
    SRPO worker write it; the teacher is the tiny model's weights (step 4: weights + 1)."""
    root = tmp_path / "ckpt"
    state = AutoModelForCausalLM.from_pretrained(tiny_model_path).state_dict()
    state.pop("lm_head.weight", None)  # tied: the worker's shards hold the embedding once
    for step in (2, 4):
        actor = root / f"global_step_{step}" / "actor"
        shutil.copytree(tiny_model_path, actor / "huggingface", ignore=shutil.ignore_patterns("*.safetensors"))
        (actor / "fsdp_config.json").write_text(json.dumps({"FSDP_version": 2, "world_size": 1}))
        (actor / "srpo_ema_teacher").mkdir()
        torch.save({k: v + (step == 4) for k, v in state.items()}, actor / "srpo_ema_teacher" / "rank_0.pt")
    (root / "latest_checkpointed_iteration.txt").write_text("4")
    return {"root": root, "state": state}


def export_cli(*args) -> int:
    return cli.main(["export-teacher", *map(str, args)])


def exported_weight(out) -> torch.Tensor:
    return AutoModelForCausalLM.from_pretrained(out).state_dict()["model.embed_tokens.weight"]


def test_export_takes_the_latest_step_or_the_one_asked_for(ckpt, tmp_path):
    embed = ckpt["state"]["model.embed_tokens.weight"]
    assert export_cli(ckpt["root"], tmp_path / "latest") == 0
    assert torch.equal(exported_weight(tmp_path / "latest"), embed + 1)
    assert export_cli(ckpt["root"], tmp_path / "two", "--step", 2) == 0
    assert torch.equal(exported_weight(tmp_path / "two"), embed)


def test_step_on_a_step_folder_is_honoured_or_refused(ckpt, tmp_path, capsys):
    """Before: `--step 2` on global_step_4/ exported step 4 silently."""
    step4 = ckpt["root"] / "global_step_4"
    assert export_cli(step4, tmp_path / "same", "--step", 4) == 0
    for folder in (step4, step4 / "actor"):
        assert export_cli(folder, tmp_path / "other", "--step", 2) == 1
        err = capsys.readouterr().err
        assert f"--step 2: {step4} is the folder of step 4; give trainer.default_local_dir to choose a step" in err
    assert not (tmp_path / "other").exists()


def test_a_missing_step_names_the_steps_there_not_not_a_checkpoint(ckpt, tmp_path):
    with pytest.raises(FileNotFoundError) as exc:
        export.export_teacher(str(ckpt["root"]), str(tmp_path / "out"), step=3)
    assert not isinstance(exc.value, export.NotACheckpoint)
    assert "no global_step_3/actor (step 3 from --step); steps there: [2, 4]" in str(exc.value)
    (ckpt["root"] / "latest_checkpointed_iteration.txt").write_text("6")
    with pytest.raises(
        FileNotFoundError,
        match=r"no global_step_6/actor \(step 6 from .*latest_checkpointed_iteration.txt\); steps there: \[2, 4\]",
    ):
        export.export_teacher(str(ckpt["root"]), str(tmp_path / "out"))
    with pytest.raises(export.NotACheckpoint, match="is not a verl checkpoint"):
        export.export_teacher(str(tmp_path), str(tmp_path / "out"))


def test_a_bad_tracker_file_is_named(ckpt, tmp_path):
    tracker = ckpt["root"] / "latest_checkpointed_iteration.txt"
    tracker.write_text("global_step_4\n")
    with pytest.raises(ValueError) as exc:
        export.export_teacher(str(ckpt["root"]), str(tmp_path / "out"))
    assert f"{tracker}: expected the latest step number, found 'global_step_4\\n'" in str(exc.value)


def test_dtype_is_checked_before_any_shard_is_read(ckpt, tmp_path, monkeypatch):
    """Before: an unknown --dtype failed after every shard was read and merged (32 GB at 8B)."""
    monkeypatch.setattr(export, "load_shard", lambda path: pytest.fail(f"{path} was read"))
    with pytest.raises(
        ValueError, match=r"--dtype 'bfloat': expected one of float32, float16, bfloat16, fp32, fp16, bf16"
    ):
        export.export_teacher(str(ckpt["root"]), str(tmp_path / "out"), dtype="bfloat")
    assert not (tmp_path / "out").exists()


def test_a_short_dtype_name_is_accepted(ckpt, tmp_path):
    assert export_cli(ckpt["root"], tmp_path / "bf16", "--dtype", "bf16") == 0
    assert exported_weight(tmp_path / "bf16").dtype == torch.bfloat16


def test_a_truncated_shard_is_named(ckpt, tmp_path):
    shard = ckpt["root"] / "global_step_4" / "actor" / "srpo_ema_teacher" / "rank_0.pt"
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(ValueError) as exc:
        export.export_teacher(str(ckpt["root"]), str(tmp_path / "out"))
    assert f"{shard}: not a readable teacher shard, truncated or corrupt?" in str(exc.value)


def test_a_corrupt_fsdp_config_is_named(ckpt, tmp_path):
    record = ckpt["root"] / "global_step_4" / "actor" / "fsdp_config.json"
    record.write_text('{"FSDP_version": 2, "world_si')
    with pytest.raises(ValueError) as exc:
        export.export_teacher(str(ckpt["root"]), str(tmp_path / "out"))
    assert f"{record}: not verl's FSDP record" in str(exc.value)


def test_a_nan_teacher_is_refused_naming_the_tensor_unless_allowed(ckpt, tmp_path, capsys):
    shard = ckpt["root"] / "global_step_4" / "actor" / "srpo_ema_teacher" / "rank_0.pt"
    state = torch.load(shard)
    state["model.norm.weight"][:3] = float("nan")
    torch.save(state, shard)
    assert export_cli(ckpt["root"], tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "NaN/inf in 1 of" in err and "model.norm.weight (3 entries)" in err and "--allow-nonfinite" in err
    assert not (tmp_path / "out").exists()
    assert export_cli(ckpt["root"], tmp_path / "out", "--allow-nonfinite") == 0
    assert (
        torch.isnan(AutoModelForCausalLM.from_pretrained(tmp_path / "out").state_dict()["model.norm.weight"]).sum() == 3
    )


def test_a_cast_that_overflows_is_refused(ckpt, tmp_path):
    shard = ckpt["root"] / "global_step_4" / "actor" / "srpo_ema_teacher" / "rank_0.pt"
    state = torch.load(shard)
    state["model.norm.weight"][0] = 1e6  # beyond float16's 65504
    torch.save(state, shard)
    with pytest.raises(ValueError, match=r"model\.norm\.weight \(1 entries\): --dtype float16 overflows them"):
        export.export_teacher(str(ckpt["root"]), str(tmp_path / "out"), dtype="float16")


def test_evaluate_names_a_broken_checkpoint_instead_of_loading_it_as_a_model(ckpt, base, no_loading):
    (ckpt["root"] / "latest_checkpointed_iteration.txt").write_text("x")
    with pytest.raises(SystemExit) as exc:
        run_evaluate(*base, "--model", f"run={ckpt['root']}")
    assert f"--model run={ckpt['root']}: " in str(exc.value) and "expected the latest step number" in str(exc.value)
