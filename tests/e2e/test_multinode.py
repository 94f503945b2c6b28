"""SRPO on a two-node Ray cluster started beforehand, on this machine, with the CPU backend.

A head (`ray start --head`) and a worker node (`ray start --address=...`), each with 1 fake GPU
and its own ports, temp folder and a random cluster token; the trainer connects to it
(`ray_kwargs.ray_init.address`) with `trainer.nnodes=2 trainer.n_gpus_per_node=1`, so the two
FSDP ranks, their rollout replicas and the EMA teacher shards live on different raylets. The
`ray start` processes get none of the driver's variables: the metrics file and the CPU platform
reach the workers only through the runtime_env that srpo_verl.main_ppo forwards.

Three launches (~7 min on 2 shared cores):
  two_nodes          2 steps on the cluster, a checkpoint after each            (dir A, shared)
  two_nodes_resumed  the same command to step 3: resumes from step 2            (dir A)
  one_node           the same seed on one node with 2 fake GPUs (the same 2 ranks), steps 1-3 (dir B)
The cluster is stopped (its process sessions killed) at the end, also on failure.

Settings, and why: algorithm=sdpo with success_threshold=0 (every sample counts as correct, so every
sample with a non-empty sibling answer is taught) and top-1 rollouts (a group's 4 samples are
identical, so a request's answer does not depend on which of the two rollout replicas serves it).
Taught rows then come in whole groups, a multiple of 4, so they split evenly over the 2 ranks. A
routed SRPO step with an odd number of teacher rows fails at DP > 1 today (one node or several):
the trainer pads the teacher rows to a multiple of the DP size by repeating rows, and
TransferQueue refuses the repeated keys ("Got duplicated keys").
"""

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import torch
from transformers import AutoModelForCausalLM

from srpo_verl.export import export_teacher
from srpo_verl.demo.harness import kill_session, launch, tiny_cpu_overrides

pytestmark = pytest.mark.slow

RAY = os.path.join(os.path.dirname(sys.executable), "ray")
ALL_TAUGHT = ["reward.custom_reward_function.name=compute_digit_score", "algorithm.srpo.success_threshold=0.0"]
# Top-1 sampling: a request's answer does not depend on which of the two rollout replicas serves it.
# With free sampling verl's load balancer spreads a group's identical requests over the replicas by
# timing, so two launches draw different samples (measured: step-1 mean score 0.107 vs 0.138).
DETERMINISTIC_ROLLOUT = ["actor_rollout_ref.rollout.top_k=1"]
VOLATILE = ("timing", "perf/", "throughput", "time", "memory", "wall")
TIMEOUT_S = 480


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TwoNodeCluster:
    """`ray start --head` + `ray start --address=...` on this host, each in its own process session."""

    def __init__(self, log_dir: str, cpus_per_node: int = 8):
        self.token = secrets.token_hex(32)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Short path: Ray's unix sockets live under it (108-byte limit).
        self.temp_dir = tempfile.mkdtemp(prefix="srpo_ray_", dir="/tmp")
        self.log_dir, self.cpus = log_dir, cpus_per_node
        self.procs: list[subprocess.Popen] = []
        # Token authentication with our own token: the nodes listen on the host's address (Ray
        # replaces 127.0.0.1 by it), and an unrelated ~/.ray/auth_token must not be picked up.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("SRPO_VERL_", "VERL_", "RAY_"))}
        self.env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token)

    def _node_args(self) -> list[str]:
        ports = (
            "dashboard-agent-listen",
            "dashboard-agent-grpc",
            "runtime-env-agent",
            "metrics-export",
            "node-manager",
            "object-manager",
        )
        return [
            f"--num-cpus={self.cpus}",
            "--num-gpus=1",  # a fake GPU: the CPU platform's workers ask Ray for "GPU"
            "--object-store-memory=200000000",
            "--disable-usage-stats",
            "--block",
            *[f"--{name}-port={free_port()}" for name in ports],
        ]

    def _start(self, name: str, args: list[str]) -> None:
        log = open(os.path.join(self.log_dir, f"ray_{name}.log"), "w")
        proc = subprocess.Popen(
            [RAY, "start", *args, *self._node_args()],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        self.procs.append(proc)

    def nodes_alive(self) -> int:
        probe = (
            "import ray; ray.init(address=%r, logging_level='ERROR'); "
            "print(sum(n['Alive'] for n in ray.nodes()))" % self.address
        )
        proc = subprocess.run([sys.executable, "-c", probe], env=self.env, capture_output=True, text=True, timeout=120)
        return int(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else 0

    def __enter__(self):
        self._start(
            "head",
            [
                "--head",
                f"--port={self.port}",
                f"--temp-dir={self.temp_dir}",
                "--include-dashboard=false",
                f"--ray-client-server-port={free_port()}",
            ],
        )
        self._wait_for(1)
        self._start("worker", [f"--address={self.address}"])
        self._wait_for(2)
        return self

    def _wait_for(self, nodes: int, timeout_s: float = 180) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"a `ray start` exited early; see {self.log_dir}/ray_*.log")
            if self.nodes_alive() >= nodes:
                return
            time.sleep(2)
        raise TimeoutError(f"the Ray cluster did not reach {nodes} nodes in {timeout_s} s")

    def __exit__(self, *exc):
        for proc in self.procs:
            kill_session(proc.pid)  # the raylet, GCS and every worker of that node
            proc.wait()
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        sids = {p.pid for p in self.procs}
        deadline = time.time() + 30  # killed processes take a moment to be reaped
        while (left := [pid for pid, sid in _sessions() if sid in sids]) and time.time() < deadline:
            for sid in sids:
                kill_session(sid)  # anything a dying raylet still spawned
            time.sleep(1)
        self.left_over = left


def _sessions() -> list[tuple[int, int]]:
    ps = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout
    return [tuple(map(int, line.split())) for line in ps.splitlines()]


def overrides(model, data, ckpt, *, steps: int, save_freq: int, name: str, cluster=None) -> list[str]:
    args = tiny_cpu_overrides(
        model, data, ckpt, algorithm="sdpo", total_steps=steps, save_freq=save_freq, experiment=name
    )
    if cluster is None:
        return [*args, *ALL_TAUGHT, *DETERMINISTIC_ROLLOUT, "trainer.n_gpus_per_node=2"]
    return [
        *args,
        *ALL_TAUGHT,
        *DETERMINISTIC_ROLLOUT,
        "trainer.nnodes=2",
        "trainer.n_gpus_per_node=1",
        f"+ray_kwargs.ray_init.address={cluster.address}",
        # A running cluster declares its own resources; ray.init refuses them when connecting.
        "ray_kwargs.ray_init.num_cpus=null",
        "ray_kwargs.ray_init.num_gpus=null",
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_path, addition_data):
    work = str(tmp_path_factory.mktemp("multinode"))
    dirs = {"A": os.path.join(work, "two_nodes_ckpt"), "B": os.path.join(work, "one_node_ckpt")}
    out = {"dirs": dirs, "wall_s": {}}
    common = dict(model=tiny_model_path, data=addition_data)
    cluster = TwoNodeCluster(work)
    out["cluster"] = cluster
    with cluster:
        env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": cluster.token}
        for name, steps in (("two_nodes", 2), ("two_nodes_resumed", 3)):
            args = overrides(ckpt=dirs["A"], steps=steps, save_freq=1, name=name, cluster=cluster, **common)
            result = launch(work, name, args, timeout_s=TIMEOUT_S, env=env)
            assert result.returncode == 0, result.log[-6000:]
            out[name] = result
    result = launch(
        work,
        "one_node",
        overrides(ckpt=dirs["B"], steps=3, save_freq=3, name="one_node", **common),
        timeout_s=TIMEOUT_S,
    )
    assert result.returncode == 0, result.log[-6000:]
    out["one_node"] = result
    out["work"] = work
    for name in ("two_nodes", "two_nodes_resumed", "one_node"):
        print(f"{name}: {out[name].wall_s:.0f} s")
    return out


def stable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not any(word in k for word in VOLATILE)}


def test_two_nodes_run_the_srpo_steps_and_log_them_through_runtime_env(runs):
    # The metrics file reached the TaskRunner only through the forwarded runtime_env.
    steps = runs["two_nodes"].steps
    assert sorted(steps) == [1, 2]
    for m in steps.values():
        for key in (
            "srpo/routed_share",
            "actor/srpo/sdpo_token_share",
            "actor/srpo/divergence_mean",
            "srpo/teacher_student_l2",
        ):
            assert key in m, key
        # Top-1 rollouts make a group's samples identical, so a group is taught whole (empty answers
        # are no demonstration): a multiple of n = 4 rows, split evenly over the 2 ranks.
        assert m["srpo/teacher_rows"] == m["srpo/teacher_pass_rows"] > 0  # counted on both ranks
        assert m["srpo/teacher_rows"] % 4 == 0
    assert "Connecting to existing Ray cluster" in runs["two_nodes"].log


def test_the_cluster_is_gone_afterwards(runs):
    assert runs["cluster"].left_over == []
    assert not os.path.exists(runs["cluster"].temp_dir)


def test_checkpoint_holds_both_ranks_of_student_and_teacher(runs):
    actor = os.path.join(runs["dirs"]["A"], "global_step_2", "actor")
    for rank in (0, 1):
        assert os.path.exists(os.path.join(actor, f"model_world_size_2_rank_{rank}.pt"))
        assert os.path.exists(os.path.join(actor, "srpo_ema_teacher", f"rank_{rank}.pt"))


def test_resume_on_the_cluster_continues_from_step_2(runs):
    resumed = runs["two_nodes_resumed"]
    assert f"Resuming from {runs['dirs']['A']}/global_step_2" in resumed.log
    assert sorted(resumed.steps) == [3]


def test_two_nodes_match_one_node_with_the_same_ranks(runs, capsys):
    """Same seed, same world size (2 ranks): the step metrics agree; the differences are reported."""
    two = {**runs["two_nodes"].steps, **runs["two_nodes_resumed"].steps}
    one = runs["one_node"].steps
    worst = {}
    for step in (1, 2, 3):
        a, b = stable(two[step]), stable(one[step])
        assert a.keys() == b.keys(), (step, sorted(a.keys() ^ b.keys()))
        for key in a:
            worst[key] = max(worst.get(key, 0.0), abs(float(a[key]) - float(b[key])))
    with capsys.disabled():
        differing = {k: v for k, v in worst.items() if v > 0}
        print(
            f"\ntwo nodes vs one node, steps 1-3: {len(worst)} metrics, {len(differing)} differ; largest: "
            + ", ".join(f"{k} {v:.2e}" for k, v in sorted(differing.items(), key=lambda kv: -kv[1])[:5])
        )
    for key, diff in worst.items():
        assert diff <= 1e-5 * max(1.0, abs(float(one[3].get(key, 0.0)))), (key, diff)


def test_two_rank_teacher_exports_like_the_one_node_teacher(runs, tmp_path):
    a = export_teacher(runs["dirs"]["A"], str(tmp_path / "two_nodes"), step=3)
    b = export_teacher(runs["dirs"]["B"], str(tmp_path / "one_node"), step=3)
    sa = AutoModelForCausalLM.from_pretrained(a).state_dict()
    sb = AutoModelForCausalLM.from_pretrained(b).state_dict()
    assert sa.keys() == sb.keys()
    diff = max(float((sa[k] - sb[k]).abs().max()) for k in sa)
    print(f"EMA teacher at step 3, two nodes vs one node: max abs diff {diff:.2e}")
    assert diff <= 1e-6
    assert all(torch.isfinite(t).all() for t in sa.values())
