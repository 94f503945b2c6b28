"""verl's workers in the current process, without Ray: for probes, tests and benchmarks on CPU.

verl's trainer starts its workers as Ray actors; the worker classes themselves are plain Python
and run in one process once torch.distributed's environment variables are set. That is how the
engine-level tests and benchmarks call exactly the worker code a launch runs (same engine, same
loss hooks, same micro-batching) while controlling the batch row by row.

    local_env()                      # before importing verl: CPU backend on, rank/world set
    config = compose(["algorithm=srpo", ...])
    worker = SRPOActorRolloutRefWorker(config=config.actor_rollout_ref, role="actor")
    worker.init_model()
    data = as_batch([(prompt_ids, response_ids), ...], old_log_probs=[...])
"""

from __future__ import annotations

import os
import socket


def free_port() -> int:
    """A TCP port free on this host right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def local_env(rank: int | None = None, world: int | None = None, port: int | None = None, *, cpu: bool = True) -> None:
    """Environment for a local verl worker: CPU backend, offline hub, torch.distributed rank/world.

    Values already in the environment win (a launcher of several ranks sets them). cpu=False leaves
    the backend off, for verl's own GPU path (scripts/gpu_check.py --engine on a GPU).
    """
    if cpu:
        os.environ["SRPO_VERL_PLATFORM"] = "cpu"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if port is None and "MASTER_PORT" not in os.environ:
        port = free_port()
    defaults = dict(RANK=rank or 0, WORLD_SIZE=world or 1, MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    for key, value in defaults.items():
        os.environ.setdefault(key, str(value))
    os.environ.setdefault("LOCAL_RANK", os.environ["RANK"])
    os.environ.setdefault("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])


def compose(overrides: list[str]):
    """srpo_trainer.yaml with `overrides` (Hydra), as the launcher would compose it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    config_dir = os.path.join(os.path.dirname(os.path.dirname(__file__)), "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return hydra_compose("srpo_trainer", overrides=list(overrides))


def as_batch(sequences, **extra_rows):
    """The TensorDict layout verl's agent loop stores: one jagged row per (prompt, response).

    sequences: [(prompt_ids, response_ids)]; extra_rows: field -> one tensor per row.
    """
    import torch
    from tensordict import TensorDict

    columns: dict[str, list] = {}
    for i, (prompt, response) in enumerate(sequences):
        prompt, response = torch.as_tensor(prompt), torch.as_tensor(response)
        ids = torch.cat([prompt, response])
        row = dict(
            prompts=prompt,
            responses=response,
            response_mask=torch.ones_like(response),
            loss_mask=torch.ones_like(response),
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            position_ids=torch.arange(len(ids)),
        )
        row.update({key: torch.as_tensor(values[i]) for key, values in extra_rows.items()})
        for key, value in row.items():
            columns.setdefault(key, []).append(value)
    # Jagged even when every row has the same length: verl's code reads offsets() of these fields.
    fields = {key: torch.nested.as_nested_tensor(values, layout=torch.jagged) for key, values in columns.items()}
    return TensorDict(fields, batch_size=len(sequences))


def update_info(data, rows: int) -> None:
    """The non-tensor settings verl's trainer attaches to an actor update of `rows` rows (one mini-batch)."""
    import verl.utils.tensordict_utils as tu

    tu.assign_non_tensor(
        data,
        temperature=1.0,
        calculate_entropy=False,
        distillation_use_topk=False,
        distillation_only=False,
        global_batch_size=rows,
        mini_batch_size=rows,
        epochs=1,
        seed=1,
        dataloader_kwargs={"shuffle": False},
    )


def response_log_probs(worker, sequences):
    """Per-row response log-probs (temperature 1) from the worker's compute_log_prob."""
    import verl.utils.tensordict_utils as tu

    data = as_batch(sequences)
    tu.assign_non_tensor(data, temperature=1.0, calculate_entropy=False, compute_loss=False)
    out = worker.compute_log_prob(data)["log_probs"]
    return [out[i][len(p) - 1 : len(p) - 1 + len(r)] for i, (p, r) in enumerate(sequences)]
