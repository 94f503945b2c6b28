"""Where a CPU trainer launch spends its start-up: one SRPO step of the demo's tiny model.

Launches `python -m srpo_verl.main_ppo algorithm=srpo platform=cpu` through the launch harness
(srpo_verl.demo.harness) for a single step with the demo's settings (warm-started 1M-parameter
Qwen3, 8 prompts x 8 rollouts, no checkpoint, no validation) and prints, from process start:

  ray_up            `ray.init` returned in the driver ("Started a local Ray instance")
  task_runner_up    the TaskRunner actor's first output (its process imported verl)
  workers_created   verl asked for the training worker group ("create worker group")
  model_loaded      actor (and teacher/ref) engines initialised in the training worker
  rollout_up        the rollout replicas and their HF servers are up ("checkpoint engine manager
                    initialized" follows the replicas' start)
  fit_start         "all initialize finished, ready to fit"
  step1_start       the training loop's progress bar appears (step 1 begins)
  agent_loop_up     the agent-loop worker's first output: verl creates it without waiting for it,
                    and step 1's rollout can only start once it has imported verl (on 2 cores this
                    comes after step1_start)
  step1_done        step 1's metrics line
and the process count and CPU seconds of everything the launch started (Ray's daemons and
actors), sampled every 0.5 s.

A line's time is the wall-clock time written in it when it carries one (verl's INFO lines, Ray's
own), else the time it reached the driver (Ray forwards worker output with ~0.1-0.5 s delay).

Before/after in one run: `--before REF` extracts `srpo_verl/` of a git commit into a temporary
directory and runs that variant with it first on PYTHONPATH (the package, its configs and its verl
plugin entry point then come from that commit); `--variants` picks and orders the variants.

    python scripts/bench_startup.py                        # this tree only
    python scripts/bench_startup.py --before b0402b1 --repeat 2   # old commit vs this tree, interleaved
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# (milestone, pattern of the log line that marks it): the first matching line counts.
MILESTONES = (
    ("ray_up", re.compile(r"Started a local Ray instance")),
    ("task_runner_up", re.compile(r"\(TaskRunner\w* pid=\d+\)")),
    ("workers_created", re.compile(r"create worker group")),
    ("model_loaded", re.compile(r"actor and ref model engine initialized")),
    ("rollout_up", re.compile(r"checkpoint engine manager initialized")),
    ("fit_start", re.compile(r"all initialize finished, ready to fit")),
    ("step1_start", re.compile(r"Training Progress:\s+0%")),
    ("agent_loop_up", re.compile(r"\(AgentLoopWorker\w* pid=\d+\)")),
    ("step1_done", re.compile(r"step:1 - ")),
)
STAMP = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _LineClock:
    """Stands in for sys.stdout while the harness echoes the trainer's output: records each line
    with its arrival time (the harness writes one whole line per call)."""

    def __init__(self, passthrough=None):
        self.lines: list[tuple[float, str]] = []
        self.passthrough = passthrough

    def write(self, text: str) -> int:
        now = time.time()
        for line in text.splitlines():
            self.lines.append((now, ANSI.sub("", line)))
        if self.passthrough is not None:
            self.passthrough.write(text)
        return len(text)

    def flush(self) -> None:
        if self.passthrough is not None:
            self.passthrough.flush()


def _line_time(arrival: float, line: str) -> float:
    m = STAMP.search(line)
    if m:
        stamped = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if abs(stamped - arrival) < 30:  # a date inside a message, not the line's own stamp
            return min(stamped, arrival)
    return arrival


def milestones(lines: list[tuple[float, str]], t0: float) -> dict[str, float]:
    out: dict[str, float] = {}
    for arrival, line in lines:
        for name, pattern in MILESTONES:
            if name not in out and pattern.search(line):
                out[name] = _line_time(arrival, line) - t0
    return out


class _ProcessSampler(threading.Thread):
    """CPU seconds and names of every process in the launch's session (the trainer's driver started
    it with start_new_session, and Ray's daemons and workers stay in it)."""

    def __init__(self, marker: str):
        super().__init__(daemon=True)
        self.marker = marker  # a string only the driver's command line contains
        self.stop = threading.Event()
        self.seen: dict[int, tuple[str, float]] = {}

    def run(self) -> None:
        import psutil

        sid = None
        while not self.stop.wait(0.5):
            if sid is None:
                for p in psutil.process_iter(["pid", "cmdline"]):
                    if self.marker in " ".join(p.info["cmdline"] or []):
                        sid = os.getsid(p.info["pid"])
                        break
                continue
            for p in psutil.process_iter(["pid", "cmdline", "cpu_times", "name"]):
                try:
                    if os.getsid(p.info["pid"]) != sid:
                        continue
                    cmd = " ".join(p.info["cmdline"] or []) or p.info["name"]
                    cpu = p.info["cpu_times"].user + p.info["cpu_times"].system
                except (ProcessLookupError, psutil.Error, TypeError, AttributeError):
                    continue
                self.seen[p.info["pid"]] = (_short_name(cmd), cpu)


def _short_name(cmd: str) -> str:
    if cmd.startswith("ray::"):
        return cmd.split()[0]
    for key in (
        "srpo_verl.main_ppo",
        "gcs_server",
        "raylet",
        "dashboard.py",
        "log_monitor",
        "monitor.py",
        "runtime_env",
    ):
        if key in cmd:
            return key
    if "ray-dashboard-" in cmd:
        return "dashboard module"
    return cmd.split()[0].rsplit("/", 1)[-1] if cmd else "?"


def extract_commit(ref: str, dest: str) -> str:
    """`srpo_verl/` of git commit `ref` under dest/; returns dest."""
    data = subprocess.run(["git", "-C", REPO, "archive", ref, "srpo_verl"], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def run_variant(name: str, src: str | None, assets: dict, workdir: str, timeout_s: float, verbose: bool) -> dict:
    from srpo_verl.demo.harness import launch, tiny_cpu_overrides

    ckpt = os.path.join(workdir, f"ckpt_{name}_{time.time_ns()}")
    overrides = tiny_cpu_overrides(
        assets["model"],
        assets["data"],
        ckpt,
        algorithm="srpo",
        total_steps=1,
        batch_size=8,
        n=8,
        micro_batch_size=64,
        lr=1e-4,
        experiment=f"startup_{name}",
    )
    # Packed sequences (the SRPO teacher pass needs them), whatever the variant's platform default.
    overrides.append("actor_rollout_ref.model.use_remove_padding=True")
    env = {"PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)} if src else {}
    sampler = _ProcessSampler(ckpt)
    clock = _LineClock(sys.__stdout__ if verbose else None)
    sampler.start()
    saved, sys.stdout = sys.stdout, clock
    t0 = time.time()
    try:
        result = launch(workdir, f"startup_{name}", overrides, timeout_s=timeout_s, env=env, echo=True)
    finally:
        sys.stdout = saved
        sampler.stop.set()
        sampler.join()
    marks = milestones(clock.lines, t0)
    marks["exit"] = result.wall_s
    step = result.steps.get(1, {})
    procs: dict[str, list[float]] = {}
    for pname, cpu in sampler.seen.values():
        procs.setdefault(pname, []).append(cpu)
    if result.returncode != 0:
        print(f"[{name}] launch failed ({result.returncode}); log tail:\n{result.log[-3000:]}", file=sys.stderr)
    return {
        "returncode": result.returncode,
        "marks": marks,
        "step_s": step.get("timing_s/step"),
        "gen_s": step.get("timing_s/gen"),
        "procs": procs,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default=None, help="git commit whose srpo_verl/ is the 'before' variant")
    parser.add_argument("--variants", default=None, help="comma-separated order, from 'before' and 'after'")
    parser.add_argument("--repeat", type=int, default=1, help="launches per variant (interleaved); medians printed")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--verbose", action="store_true", help="echo the trainers' output")
    args = parser.parse_args(argv)
    variants = (args.variants or ("before,after" if args.before else "after")).split(",")
    if "before" in variants and not args.before:
        parser.error("--before COMMIT is needed for the 'before' variant")

    from srpo_verl.demo import run as demo_run

    assets = demo_run.prepare_assets(log=lambda msg: None)
    workdir = tempfile.mkdtemp(prefix="bench_startup_")
    sources = {"after": None}
    if args.before:
        sources["before"] = extract_commit(args.before, os.path.join(workdir, "before_src"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    try:
        for i in range(args.repeat):
            for v in variants:
                r = run_variant(v, sources[v], assets, workdir, args.timeout, args.verbose)
                runs[v].append(r)
                m = r["marks"]
                print(
                    f"[{v} #{i + 1}] rc={r['returncode']} step1_start={m.get('step1_start', float('nan')):.1f} s "
                    f"step1_done={m.get('step1_done', float('nan')):.1f} s exit={m['exit']:.1f} s",
                    flush=True,
                )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    def med(values):
        values = [x for x in values if x is not None]
        return statistics.median(values) if values else float("nan")

    names = [n for n, _ in MILESTONES] + ["exit"]
    print(
        f"\nStart-up of one SRPO step on CPU, seconds from launch (median of {args.repeat}; load "
        f"{os.getloadavg()[0]:.2f})"
    )
    print(f"{'milestone':<18}" + "".join(f"{v:>12}" for v in variants))
    for n in names:
        print(f"{n:<18}" + "".join(f"{med([r['marks'].get(n) for r in runs[v]]):>12.1f}" for v in variants))
    for key in ("step_s", "gen_s"):
        print(f"{'step1 ' + key[:-2]:<18}" + "".join(f"{med([r[key] for r in runs[v]]):>12.1f}" for v in variants))
    print("\nProcesses the launch started (last run of each variant): count x name, CPU s")
    for v in variants:
        procs = runs[v][-1]["procs"]
        total = sum(sum(c) for c in procs.values())
        parts = sorted(procs.items(), key=lambda kv: -sum(kv[1]))
        print(f"  {v}: {sum(len(c) for c in procs.values())} processes, {total:.0f} CPU s")
        print("    " + ", ".join(f"{len(c)}x {n} {sum(c):.1f}" for n, c in parts))
    return 0 if all(r["returncode"] == 0 for rs in runs.values() for r in rs) else 1


if __name__ == "__main__":
    sys.exit(main())
