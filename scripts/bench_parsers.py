#!/usr/bin/env python3
"""Time of each reward parser against response size, on adversarial responses (1 KB .. 1 MB).

A looping model writes exactly these: an opening tag repeated without its closer, a bracket
nested ten thousand deep, a cue phrase over and over. A parser that is linear in the input takes
~16x longer at 1 MB than at 64 KB (the `1M/64K` column); a backtracking one grows with the square
of the size (256x) or never finishes. Each cell is the best of a few calls in milliseconds; a
family stops growing once one call takes longer than --cap seconds ("stop"), and an exception is
shown by its type (a reward function must never raise: "ERR:<type>").

    python scripts/bench_parsers.py                 # every parser, every family
    python scripts/bench_parsers.py --max-kb 64     # a quicker look

Requires no GPU and no verl start-up; ~1 min on one core.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable

from srpo_verl.tasks import common, sciknoweval, toolalpaca

LABELS = {"labels": ["A", "B", "C", "D"], "choices": ["one", "two", "three", "four"]}
TOOL_GOLD = json.dumps([{"Action": "search", "Action_Input": json.dumps({"q": "x"})}])


def _fill(unit: str, size: int, head: str = "", tail: str = "") -> str:
    body = size - len(head) - len(tail)
    return head + (unit * (body // len(unit) + 1))[: max(body, 0)] + tail


# Adversarial response families: name -> size -> text of exactly `size` characters.
FAMILIES: dict[str, Callable[[int], str]] = {
    "open <think>": lambda n: _fill("<think>", n),
    "open <answer>": lambda n: _fill("<answer>", n),
    "think+answer": lambda n: _fill("<think> x <answer> B ", n),
    "cue phrases": lambda n: _fill("The answer is (B), not A. ", n, tail="<answer>B</answer>"),
    "Action lines": lambda n: _fill('Action: search\nAction Input: {"q": ', n),
    "call lines": lambda n: _fill('Action: search\nAction Input: {"q": 1}\n', n),
    "bad inputs": lambda n: _fill('Action Input: {"q": x}\n', n, head="Action: search\n"),
    "nested [[[": lambda n: _fill("[", n, head="Action: search\nAction Input: "),
    'nested {"a":': lambda n: _fill('{"a":', n, head="Action: search\nAction Input: "),
}


def _parsers() -> dict[str, Callable[[str], Any]]:
    parsers: dict[str, Callable[[str], Any]] = {
        "strip_thinking": common.strip_thinking,
        "mcq extract_choice (lenient)": lambda t: sciknoweval.extract_choice(t, LABELS["labels"], LABELS["choices"]),
        "mcq compute_score": lambda t: sciknoweval.compute_score("sciknoweval", t, "B", LABELS),
        "tool parse_calls": toolalpaca.parse_calls,
        "tool compute_score": lambda t: toolalpaca.compute_score("tooluse", t, TOOL_GOLD),
    }
    if hasattr(sciknoweval, "reference_answer"):  # the reference (strict) extractor, when present
        parsers["mcq reference_answer"] = sciknoweval.reference_answer
    if hasattr(toolalpaca, "reference_calls"):
        parsers["tool reference_calls"] = toolalpaca.reference_calls
    return parsers


def time_call(fn: Callable[[str], Any], text: str, repeats: int) -> tuple[float, str]:
    """(best seconds over `repeats` calls, '' or the exception type a call raised)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        try:
            fn(text)
        except BaseException as exc:  # noqa: BLE001 - the benchmark reports any failure
            return time.perf_counter() - start, type(exc).__name__
        best = min(best, time.perf_counter() - start)
        if best > 1.0:  # slow enough to read; no need to repeat
            break
    return best, ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-kb", type=int, default=1024, help="largest input in KiB (default: %(default)s)")
    parser.add_argument("--cap", type=float, default=3.0, help="stop a family after a call this slow, seconds")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    sizes = [kb * 1024 for kb in (1, 4, 16, 64, 256, 1024) if kb <= args.max_kb]
    header = "".join(f"{f'{s // 1024}K':>9}" for s in sizes)
    print(f"time per call in ms, best of {args.repeats}; sizes in KiB; 1M/64K ~16 means linear")
    for name, fn in _parsers().items():
        print(f"\n{name}\n  {'family':<16}{header}  1M/64K")
        for family, make in FAMILIES.items():
            cells, times, stopped = [], {}, False
            for size in sizes:
                if stopped:
                    cells.append(f"{'stop':>9}")
                    continue
                seconds, error = time_call(fn, make(size), args.repeats if size < 256 * 1024 else 1)
                if error:
                    cells.append(f"{'ERR:' + error[:4]:>9}")
                    stopped = True
                    continue
                times[size] = seconds
                cells.append(f"{seconds * 1e3:>9.2f}")
                stopped = seconds > args.cap
            big, mid = 1024 * 1024, 64 * 1024
            ratio = f"{times[big] / max(times[mid], 1e-9):7.1f}" if big in times and mid in times else "      -"
            print(f"  {family:<16}{''.join(cells)}  {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
