"""The `python -m srpo_verl` (or `srpo-verl`) command line.

    check [OVERRIDES...]                  self-check of the install; with a run's Hydra overrides also
                                          its pre-flight (srpo_verl/preflight.py); --recipe SCRIPT or
                                          --overrides-file FILE give them as a recipe prints them
    config-dir                            the Hydra config folder, for verl's own entry point
    export-teacher CHECKPOINT_DIR OUT_DIR the EMA teacher as a Hugging Face model (srpo_verl/export.py)
    evaluate ...                          avg@n of saved models per task (srpo_verl/evaluate.py)

verl imports plugins inside a try/except that only logs at DEBUG, so a broken install looks like a
missing algorithm much later. `check` imports verl the way any process does, reports what the
entry point registered, and exits non-zero when something is missing.
"""

import argparse
import importlib
import os
import sys


def config_dir() -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "config")


def check(*, cpu_lines: bool = False) -> int:
    import verl  # loads the `verl.plugins` entry points, exactly as in a worker

    from srpo_verl import SUPPORTED_VERL, cpu
    from srpo_verl.integration import registrations

    problems = []
    print(f"verl {verl.__version__} (supported: {SUPPORTED_VERL})")
    from srpo_verl.verl_compat import ALLOW_ENV, is_build_of

    if not is_build_of(verl.__version__, SUPPORTED_VERL):
        problems.append(
            f"verl {verl.__version__} is not a build of the supported {SUPPORTED_VERL} ({ALLOW_ENV}=1 overrides)"
        )
    from importlib.metadata import entry_points

    eps = [ep for ep in entry_points(group="verl.plugins") if ep.value.startswith("srpo_verl")]
    print(f"entry point: {', '.join(f'{ep.name} = {ep.value}' for ep in eps) or 'MISSING'}")
    if not eps:
        problems.append("the verl.plugins entry point is not installed (pip install srpo_verl)")
    for name, ok in registrations.registered().items():
        print(f"{name}: {'registered' if ok else 'MISSING'}")
        if not ok:
            problems.append(f"{name} not registered by `import verl`")
    policy = os.environ.get("VERL_USE_EXTERNAL_PLUGINS", "auto").strip().lower()
    allowed = {name.strip() for name in policy.split(",")}
    if policy != "auto" and not any(ep.name in allowed for ep in eps):
        # verl loads only the named plugins (or none): ours is not among them.
        problems.append(
            f"VERL_USE_EXTERNAL_PLUGINS={os.environ['VERL_USE_EXTERNAL_PLUGINS']!r} excludes the srpo_verl plugin: "
            "unset it or add srpo_verl to the list"
        )
    if registrations.registration_error():
        problems.append(f"registration failed: {registrations.registration_error()}")
    if problems:
        # Re-run the plugin import loudly so the swallowed exception is shown.
        try:
            importlib.reload(importlib.import_module("srpo_verl.plugin"))
        except Exception as exc:  # noqa: BLE001 - shown to the user, then reported as failure
            problems.append(f"importing srpo_verl.plugin raised {type(exc).__name__}: {exc}")
    # The CPU backend's state is noise for a GPU run: shown when requested (platform=cpu or its env var).
    if cpu_lines or cpu.requested():
        for key, value in cpu.status().items():
            print(f"cpu.{key}: {value}")
    print(f"config dir: {config_dir()}")
    for problem in problems:
        print(f"ERROR: {problem}", file=sys.stderr)
    print("OK" if not problems else "FAILED")
    return 1 if problems else 0


def main(argv=None) -> int:
    from srpo_verl import __version__

    parser = argparse.ArgumentParser(prog="python -m srpo_verl")
    parser.add_argument("--version", action="version", version=f"srpo_verl {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    check_cmd = commands.add_parser("check", help="self-check; with a run's overrides also its pre-flight")
    check_cmd.add_argument("overrides", nargs="*", help="the Hydra overrides of the run (as for srpo_verl.main_ppo)")
    check_cmd.add_argument("--verbose", action="store_true", help="print the traceback of each failed item")
    check_cmd.add_argument(
        "--overrides-file", metavar="FILE", help="overrides one per line (spaces kept), before OVERRIDES"
    )
    check_cmd.add_argument(
        "--recipe",
        metavar="SCRIPT",
        help="a recipe cell script: its DRY_RUN=1 overrides, before OVERRIDES (env knobs apply)",
    )
    commands.add_parser("config-dir", help="print the Hydra config folder")
    export = commands.add_parser("export-teacher", help="write a checkpoint's EMA teacher as a Hugging Face model")
    export.add_argument("checkpoint_dir", help="trainer.default_local_dir, a global_step_N folder or its actor folder")
    export.add_argument("out_dir")
    export.add_argument("--step", type=int, default=None, help="global step (default: the latest checkpoint)")
    export.add_argument("--dtype", default=None, help="cast the weights, e.g. bfloat16 (default: as trained)")
    export.add_argument(
        "--allow-nonfinite", action="store_true", help="export a teacher holding NaN/inf (refused by default)"
    )
    evaluate = commands.add_parser("evaluate", help="avg@n of saved models on each task's test split")
    from srpo_verl.evaluate import add_arguments

    add_arguments(evaluate)
    args = parser.parse_args(argv)
    if args.command == "config-dir":
        print(config_dir())
        return 0
    if args.command == "export-teacher":
        from srpo_verl.export import export_teacher

        try:
            out = export_teacher(
                args.checkpoint_dir,
                args.out_dir,
                step=args.step,
                dtype=args.dtype,
                allow_nonfinite=args.allow_nonfinite,
            )
        except (OSError, ValueError) as exc:  # each names the flag or the file; a traceback would add nothing
            print(f"export-teacher: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        print(f"EMA teacher written to {out}")
        return 0
    if args.command == "evaluate":
        from srpo_verl.evaluate import run_from_args

        return run_from_args(args)
    from srpo_verl import preflight

    overrides = list(args.overrides)
    try:
        if args.recipe:
            overrides = preflight.recipe_overrides(args.recipe) + overrides
        if args.overrides_file:
            overrides = preflight.read_overrides_file(args.overrides_file) + overrides
    except (OSError, RuntimeError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    status = check(cpu_lines=any(o.lstrip("+") in ("platform=cpu", "srpo_verl.platform=cpu") for o in overrides))
    if not overrides:
        return status
    return preflight.report(preflight.preflight(overrides, verbose=args.verbose)) or status


if __name__ == "__main__":
    sys.exit(main())
