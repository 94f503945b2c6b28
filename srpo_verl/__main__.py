"""`python -m srpo_verl check` (self-check) and `python -m srpo_verl config-dir`.

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


def check() -> int:
    import verl  # loads the `verl.plugins` entry points, exactly as in a worker

    from srpo_verl import SUPPORTED_VERL, cpu
    from srpo_verl.integration import registrations

    problems = []
    print(f"verl {verl.__version__} (supported: {SUPPORTED_VERL})")
    if verl.__version__ != SUPPORTED_VERL:
        problems.append(f"verl {verl.__version__} is not the supported {SUPPORTED_VERL}")
    from importlib.metadata import entry_points

    eps = [ep for ep in entry_points(group="verl.plugins") if ep.value.startswith("srpo_verl")]
    print(f"entry point: {', '.join(f'{ep.name} = {ep.value}' for ep in eps) or 'MISSING'}")
    if not eps:
        problems.append("the verl.plugins entry point is not installed (pip install srpo_verl)")
    for name, ok in registrations.registered().items():
        print(f"{name}: {'registered' if ok else 'MISSING'}")
        if not ok:
            problems.append(f"{name} not registered by `import verl`")
    if problems:
        # Re-run the plugin import loudly so the swallowed exception is shown.
        try:
            importlib.reload(importlib.import_module("srpo_verl.plugin"))
        except Exception as exc:  # noqa: BLE001 - shown to the user, then reported as failure
            problems.append(f"importing srpo_verl.plugin raised {type(exc).__name__}: {exc}")
    for key, value in cpu.status().items():
        print(f"cpu.{key}: {value}")
    print(f"config dir: {config_dir()}")
    for problem in problems:
        print(f"ERROR: {problem}", file=sys.stderr)
    print("OK" if not problems else "FAILED")
    return 1 if problems else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m srpo_verl")
    parser.add_argument("command", choices=["check", "config-dir"])
    args = parser.parse_args(argv)
    if args.command == "config-dir":
        print(config_dir())
        return 0
    return check()


if __name__ == "__main__":
    sys.exit(main())
