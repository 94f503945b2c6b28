"""Around a finished CPU run: the student through verl's merger, the EMA teacher through
`python -m srpo_verl export-teacher`, evaluation of both, and the TensorBoard logger.

One launch is shared by every test here: algorithm=srpo, 2 steps, a checkpoint after each,
`trainer.logger=[console,file,tensorboard]` (~1-2 min on 2 cores). The reassembly of N-rank teacher
shards is checked on shard files cut from the real 1-rank teacher, as FSDP2 cuts them (dim-0
`torch.chunk` in rank order); tests/e2e/test_multinode.py exports a real 2-rank checkpoint.
"""

import json
import re
import os
import shutil
import subprocess
import sys

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from srpo_verl import export
from srpo_verl.demo.harness import checkpoint_weights, launch, tiny_cpu_overrides

pytestmark = pytest.mark.slow

ROUTED = ["reward.custom_reward_function.name=compute_digit_score", "algorithm.srpo.success_threshold=0.15"]
# Metric families of the SRPO step: the trainer's (srpo/...) and the loss's (actor/srpo/...).
SRPO_PREFIXES = ("srpo/", "actor/srpo/")


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model_path, addition_data):
    work = str(tmp_path_factory.mktemp("export_tracking"))
    ckpt = os.path.join(work, "ckpt")
    tb_dir = os.path.join(work, "tensorboard")
    args = tiny_cpu_overrides(tiny_model_path, addition_data, ckpt, total_steps=2, save_freq=1, experiment="export")
    args = [a for a in args if not a.startswith("trainer.logger=")] + ["trainer.logger=[console,file,tensorboard]"]
    result = launch(work, "export", [*args, *ROUTED], timeout_s=600, env={"TENSORBOARD_DIR": tb_dir})
    assert result.returncode == 0, result.log[-6000:]
    return {"work": work, "ckpt": ckpt, "tb": tb_dir, "result": result}


def cli(*args) -> str:
    proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def model_with(hf_dir: str, state: dict, dtype=torch.float32):
    """The checkpoint's architecture (its huggingface/ config) holding `state`."""
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(hf_dir), dtype=dtype)
    missing, unexpected = model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False)
    assert set(missing) <= {"lm_head.weight"} and not unexpected, (missing, unexpected)
    model.tie_weights()
    return model.eval()


@torch.no_grad()
def logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "37+45="}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )["input_ids"]
    return model(input_ids=ids).logits.float()  # (1, T, V)


# --------------------------------------------------------------------------- student: verl's merger


def test_verl_merger_exports_the_trained_student(run, tmp_path):
    actor = os.path.join(run["ckpt"], "global_step_2", "actor")
    out = str(tmp_path / "student")
    cli("verl.model_merger", "merge", "--backend", "fsdp", "--local_dir", actor, "--target_dir", out)

    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    trained = checkpoint_weights(run["ckpt"], 2)["student"]
    # verl's merger writes bfloat16: its weights are the trained fp32 weights rounded once.
    assert merged.dtype == torch.bfloat16
    merged_state = merged.state_dict()
    for name, t in trained.items():
        assert torch.equal(merged_state[name], t.to(torch.bfloat16)), name
    reference_bf16 = model_with(os.path.join(actor, "huggingface"), trained, torch.bfloat16)
    reference_fp32 = model_with(os.path.join(actor, "huggingface"), trained)
    got = logits(merged, tokenizer)
    assert torch.equal(got, logits(reference_bf16, tokenizer))
    diff = float((got - logits(reference_fp32, tokenizer)).abs().max())
    print(f"student: merged (bf16) vs trained fp32 weights, logits max abs diff {diff:.3e}")
    assert diff < 0.1  # bf16 rounding of 1M parameters, not a wrong weight (those differ by > 1)


# --------------------------------------------------------------------------- EMA teacher


def test_export_teacher_gives_the_teachers_logits(run, tmp_path):
    out = str(tmp_path / "teacher")
    assert "EMA teacher written to" in cli("srpo_verl", "export-teacher", run["ckpt"], out)  # latest: step 2
    teacher = checkpoint_weights(run["ckpt"], 2)["teacher"]
    hf_dir = os.path.join(run["ckpt"], "global_step_2", "actor", "huggingface")

    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    assert exported.dtype == torch.float32
    state = exported.state_dict()
    for name, t in teacher.items():
        assert torch.equal(state[name], t), name
    tokenizer = AutoTokenizer.from_pretrained(out)
    diff = float((logits(exported, tokenizer) - logits(model_with(hf_dir, teacher), tokenizer)).abs().max())
    print(f"teacher: exported vs checkpointed EMA state, logits max abs diff {diff:.3e}")
    assert diff == 0.0
    # The student's tokenizer and chat template, and its architecture.
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        with open(os.path.join(out, name)) as a, open(os.path.join(hf_dir, name)) as b:
            assert a.read() == b.read(), name
    student_config = AutoConfig.from_pretrained(hf_dir).to_dict()
    exported_config = AutoConfig.from_pretrained(out).to_dict()
    for key in ("architectures", "hidden_size", "num_hidden_layers", "vocab_size", "tie_word_embeddings"):
        assert exported_config[key] == student_config[key], key
    # It is the teacher, not the student.
    student = checkpoint_weights(run["ckpt"], 2)["student"]
    assert max(float((student[n] - t).abs().max()) for n, t in teacher.items()) > 1e-4


def split_checkpoint(actor: str, out_actor: str, world: int) -> None:
    """A copy of a 1-rank actor checkpoint whose teacher is cut into `world` FSDP2 dim-0 shards."""
    shutil.copytree(os.path.join(actor, "huggingface"), os.path.join(out_actor, "huggingface"))
    with open(os.path.join(out_actor, "fsdp_config.json"), "w") as f:
        json.dump({"FSDP_version": 2, "world_size": world}, f)
    state = torch.load(os.path.join(actor, "srpo_ema_teacher", "rank_0.pt"))
    os.makedirs(os.path.join(out_actor, "srpo_ema_teacher"))
    for rank in range(world):
        shard = {name: torch.chunk(t, world, dim=0)[rank].clone() for name, t in state.items()}
        torch.save(shard, os.path.join(out_actor, "srpo_ema_teacher", f"rank_{rank}.pt"))


@pytest.mark.parametrize("world", [2, 3])  # 3: uneven chunks (vocab 100 -> 34, 34, 32 rows)
def test_teacher_shards_of_several_ranks_export_the_same_model(run, tmp_path, world):
    actor = os.path.join(run["ckpt"], "global_step_2", "actor")
    split = str(tmp_path / f"world{world}" / "actor")
    split_checkpoint(actor, split, world)
    one = export.export_teacher(actor, str(tmp_path / "one"))
    many = export.export_teacher(split, str(tmp_path / "many"))
    a = AutoModelForCausalLM.from_pretrained(one).state_dict()
    b = AutoModelForCausalLM.from_pretrained(many).state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_a_missing_rank_is_refused(run, tmp_path):
    actor = os.path.join(run["ckpt"], "global_step_2", "actor")
    split = str(tmp_path / "actor")
    split_checkpoint(actor, split, 3)
    os.remove(os.path.join(split, "srpo_ema_teacher", "rank_1.pt"))
    with pytest.raises(FileNotFoundError, match=r"not ranks 0\.\.1"):
        export.export_teacher(split, str(tmp_path / "out"))


def test_a_run_without_teacher_is_refused(run, tmp_path):
    actor = str(tmp_path / "actor")
    shutil.copytree(
        os.path.join(run["ckpt"], "global_step_1", "actor", "huggingface"), os.path.join(actor, "huggingface")
    )
    with pytest.raises(FileNotFoundError, match="no EMA teacher"):
        export.export_teacher(actor, str(tmp_path / "out"))


def test_step_selects_the_checkpoint(run, tmp_path):
    out = export.export_teacher(run["ckpt"], str(tmp_path / "step1"), step=1)
    state = AutoModelForCausalLM.from_pretrained(out).state_dict()
    for name, t in checkpoint_weights(run["ckpt"], 1)["teacher"].items():
        assert torch.equal(state[name], t), name


# --------------------------------------------------------------------------- evaluation


def test_evaluate_scores_checkpoints_and_exports(run, tmp_path, addition_data):
    """`python -m srpo_verl evaluate` on the run's checkpoint (merged by verl's merger) and on the
    exported teacher, two task columns.

    At temperature 1e-4 every sample is the greedy answer, so avg@n must equal the mean score of
    greedy decoding computed here prompt by prompt with plain `generate` (no batching, no padding,
    no sampling). The reward (`overlap`) is fractional, so a wrong aggregation cannot pass by
    being 0 or 100."""
    from srpo_verl.evaluate import chat_prompt_ids, load_split

    teacher_dir = export.export_teacher(run["ckpt"], str(tmp_path / "teacher"))
    out = tmp_path / "eval"
    n, limit = 3, 6
    cli(
        "srpo_verl", "evaluate", "--out", str(out), "--n", str(n), "--limit", str(limit),
        "--temperature", "1e-4", "--top-p", "1.0", "--max-new-tokens", "8", "--dtype", "float32",
        "--model", f"student={run['ckpt']}", "--model", f"teacher={teacher_dir}",
        "--task", f"add={addition_data['val']}", "--task", f"add_again={addition_data['val']}",
        "--reward-path", __file__, "--reward-name", "overlap",
    )  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert results["metric"] == f"avg@{n}"
    rows = load_split(addition_data["val"], limit)
    merged_student = out / "models" / "student"
    assert (merged_student / "config.json").exists()  # the checkpoint went through verl's merger
    expected_avg = {}
    for label, model_dir in (("student", str(merged_student)), ("teacher", teacher_dir)):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        scores = []
        for row in rows:
            ids = torch.tensor([chat_prompt_ids(tokenizer, row["prompt"], {})])
            seq = model.generate(input_ids=ids, do_sample=False, max_new_tokens=8, pad_token_id=tokenizer.pad_token_id)
            text = tokenizer.decode(seq[0, ids.shape[1] :], skip_special_tokens=True)
            scores.append(overlap(row["data_source"], text, row["reward_model"]["ground_truth"])["acc"])
        for task in ("add", "add_again"):
            got = results["results"][label][task]
            assert got["n_prompts"] == limit
            assert got["per_prompt"] == pytest.approx(scores, abs=1e-9), (label, task)
            assert got["avg"] == pytest.approx(100 * sum(scores) / limit, abs=1e-9)
        expected_avg[label] = 100 * sum(scores) / limit
    assert any(0 < v < 100 for v in expected_avg.values()), "degenerate scores: the check would prove little"
    table = (out / "results.md").read_text().splitlines()
    assert table[2] == "| model | add | add_again | Avg |"
    for line, label in zip(table[4:], ("student", "teacher")):
        v = f"{expected_avg[label]:.1f}"
        assert line == f"| {label} | {v} | {v} | {v} |"


def overlap(data_source, solution_str, ground_truth, extra_info=None):
    """Test reward: `acc` = share of the response's characters that occur in the ground truth.
    `score` is a decoy: verl's validation (and so avg@16) reports `acc` when there is one."""
    text = solution_str.strip()
    return {"score": -1.0, "acc": sum(c in str(ground_truth) for c in text) / len(text) if text else 0.0}


def test_tensorboard_holds_every_srpo_metric(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = [f for f in os.listdir(run["tb"]) if f.startswith("events.out.tfevents")]
    assert events, f"no event file in {run['tb']}"
    board = EventAccumulator(run["tb"], size_guidance={"scalars": 0})
    board.Reload()
    tags = set(board.Tags()["scalars"])
    steps = run["result"].steps  # verl's file logger: the same metrics, one JSON line per step
    logged = {k for m in steps.values() for k in m if k.startswith(SRPO_PREFIXES)}
    assert {"srpo/routed_share", "srpo/teacher_student_l2", "actor/srpo/sdpo_loss", "actor/srpo/weight_std"} <= logged
    assert logged <= tags, sorted(logged - tags)
    for key in logged:
        by_step = {e.step: e.value for e in board.Scalars(key)}
        for step, m in steps.items():
            if key in m:
                assert by_step[step] == pytest.approx(m[key], rel=1e-6, abs=1e-6), (key, step)


def test_docs_name_every_srpo_metric_the_run_logs(run):
    doc = open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "tracking.md")).read()
    rows = "\n".join(line for line in doc.splitlines() if line.startswith("| `"))  # the metric tables
    documented = set(re.findall(r"`((?:actor/)?srpo/[a-z0-9_/*]+)`", rows))
    logged = {k for m in run["result"].steps.values() for k in m if k.startswith(SRPO_PREFIXES)}
    wildcards = tuple(name[:-1] for name in documented if name.endswith("*"))
    missing = sorted(k for k in logged if k not in documented and not k.startswith(wildcards))
    assert not missing, f"docs/tracking.md does not describe {missing}"
