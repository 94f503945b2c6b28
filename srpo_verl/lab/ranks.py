"""Run a probe script as several torch.distributed ranks on this host (gloo), as a launcher would."""

from __future__ import annotations

import os
import subprocess
import sys

from srpo_verl.cpu.local import free_port


def run_ranks(argv: list[str], world: int, env: dict | None = None, timeout: int = 900) -> list[str]:
    """Start `python argv...` once per rank with RANK/WORLD_SIZE/MASTER_* set, wait for all, and return
    their logs; an AssertionError carries the log tail of the first rank that failed."""
    port, procs = free_port(), []
    for rank in range(world):
        rank_env = {k: v for k, v in os.environ.items() if k != "VERL_PLATFORM"}
        rank_env.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        rank_env.update(LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), OMP_NUM_THREADS="1", **(env or {}))
        procs.append(
            subprocess.Popen(
                [sys.executable, *argv], env=rank_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    logs = [p.communicate(timeout=timeout)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-6000:]
    return logs
