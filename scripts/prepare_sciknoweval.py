#!/usr/bin/env python3
"""Prepare SciKnowEval L3 multiple choice for the SRPO paper runs (verl RL parquet).

Writes, for each domain (default: all four),

    <out-dir>/<domain>/train.parquet
    <out-dir>/<domain>/test.parquet        domain in chemistry, physics, biology, materials

with verl's RL columns, as the public SDPO code (github.com/lasgroup/SDPO) the paper builds on
writes them: data_source (`sciknoweval`), prompt (the fork's system prompt + the user turn
`question, A: … lines, Please reason step by step.`), ability (`mcq`), reward_model {style: rule,
ground_truth: letter}, extra_info {split, index, domain, question, labels, choices}. Questions are
the L3 records of type mcq-4-choices / mcq-2-choices of the domain, split 90/10 with seed 42 as
the fork splits them (paper sizes: Chemistry 1890/210, Physics 720/80, Biology 450/50, Materials
841/94). Prints what it wrote.

Sources (one of):
- the Hugging Face dataset hicai-zju/SciKnowEval (split `test`), downloaded with `datasets`;
- offline, --local-file with the upstream JSONL/JSON/parquet files (or a folder holding them),
  e.g. data/<Domain>/sciknoweval_<domain>_test.jsonl from the dataset repo;
- --local-file with the SDPO fork's datasets/sciknoweval folder (or its <domain>/{train,test}.json
  splits, or <domain>.json): the same rows, its split kept as shipped.

    python scripts/prepare_sciknoweval.py --out-dir ~/data/srpo
    python scripts/prepare_sciknoweval.py --local-file ./SciKnowEval/data --out-dir ~/data/srpo
    python scripts/prepare_sciknoweval.py --local-file ./SDPO/datasets/sciknoweval --out-dir ~/data/srpo
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from typing import Any, Iterable, Optional

from srpo_verl.tasks import sciknoweval as ske
from srpo_verl.tasks.common import describe_counts, hub_error

# Per-domain configs of older revisions of the hub dataset (the current one has a single default config).
_LEGACY_CONFIGS = ("Biology", "Chemistry", "Physics", "Material")


def _read_json(file: str) -> list[dict[str, Any]]:
    """A JSON list (or {"data": [...]}) or JSON lines, whatever the extension says."""
    with open(file, encoding="utf-8") as fh:
        text = fh.read()
    try:
        data = json.loads(text)
    except ValueError:  # JSON lines, as the SDPO fork's split files (`Dataset.to_json`)
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    if isinstance(data, dict):
        return list(data.get("data", [data]))
    return list(data)


def read_local(paths: Iterable[str]) -> list[tuple[str, list[dict[str, Any]]]]:
    """(file, records) of JSONL / JSON / parquet files, or of folders searched for them."""
    files: list[str] = []
    for path in paths:
        path = os.path.expanduser(path)
        if os.path.isdir(path):
            for ext in ("jsonl", "json", "parquet"):
                files += sorted(glob.glob(os.path.join(path, "**", f"*.{ext}"), recursive=True))
        elif os.path.exists(path):
            files.append(path)
        else:
            raise SystemExit(f"error: --local-file {path} does not exist")
    if not files:
        raise SystemExit(f"error: no .jsonl/.json/.parquet file found in {', '.join(paths)}")
    out = []
    for file in files:
        if file.endswith(".parquet"):
            import pandas as pd

            out.append((file, pd.read_parquet(file).to_dict(orient="records")))
        else:
            out.append((file, _read_json(file)))
    return out


def sort_sources(files: list[tuple[str, list[dict[str, Any]]]]) -> tuple[list[dict], dict[str, dict]]:
    """(upstream records, {domain: {split or None: SDPO fork records}}). A file whose records are
    all the fork's prepared rows is a fork file; its domain (and split) come from its path."""
    upstream: list[dict[str, Any]] = []
    fork: dict[str, dict[Optional[str], list[dict[str, Any]]]] = {}
    for file, records in files:
        if records and all(ske.is_fork_record(r) for r in records):
            domain = ske.fork_domain(file)
            if domain is None:
                raise SystemExit(
                    f"error: {file} holds SDPO fork rows, but its path names no domain "
                    f"(expected .../<domain>/{{train,test}}.json or .../<domain>.json)"
                )
            stem = os.path.basename(file).rsplit(".", 1)[0]
            fork.setdefault(domain, {})[stem if stem in ("train", "test") else None] = records
        else:
            upstream += records
    return upstream, fork


def domain_splits(
    domain: str, upstream: list[dict], fork: dict[str, dict], args: argparse.Namespace
) -> dict[str, list]:
    """The train/test rows of one domain, from the fork's files when given, else upstream records."""
    parts = fork.get(domain, {})
    if "train" in parts or "test" in parts:
        if not ("train" in parts and "test" in parts):
            raise SystemExit(
                f"error: {domain}: give both train.json and test.json of the SDPO fork (or its {domain}.json)"
            )
        return {**ske.fork_rows(parts["train"], domain, "train"), **ske.fork_rows(parts["test"], domain, "test")}
    if None in parts:
        return ske.fork_rows(parts[None], domain, seed=args.seed, test_fraction=args.test_fraction)
    try:
        return ske.build_splits(upstream, domain, seed=args.seed, test_fraction=args.test_fraction)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None


def read_hub(revision: str | None) -> list[dict[str, Any]]:
    """All records of hicai-zju/SciKnowEval (split test), via `datasets.load_dataset`."""
    import datasets

    where = f"https://huggingface.co/datasets/{ske.HF_DATASET}/tree/main/data"
    try:
        try:
            ds = datasets.load_dataset(ske.HF_DATASET, split=ske.HF_SPLIT, revision=revision)
            return [dict(r) for r in ds]
        except ValueError as exc:
            if "config" not in str(exc).lower():
                raise
            records = []
            for config in _LEGACY_CONFIGS:
                ds = datasets.load_dataset(ske.HF_DATASET, config, split=ske.HF_SPLIT, revision=revision)
                records += [dict(r) for r in ds]
            return records
    except Exception as exc:  # noqa: BLE001 - any download failure gets the same offline advice
        raise hub_error(ske.HF_DATASET, exc, local_flag="--local-file PATH", where=where) from exc


def write_parquet(rows: list[dict[str, Any]], path: str) -> None:
    import datasets

    datasets.disable_progress_bars()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    datasets.Dataset.from_list(rows).to_parquet(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out-dir", default="~/data/srpo", help="root folder of the parquet files (default: %(default)s)"
    )
    parser.add_argument(
        "--domains",
        nargs="+",
        default=None,
        choices=list(ske.DOMAINS),
        help="default: all four (with only SDPO fork files: the domains they hold)",
    )
    parser.add_argument(
        "--local-file",
        action="append",
        default=None,
        metavar="PATH",
        help="upstream JSONL/JSON/parquet file or folder, or the SDPO fork's datasets/sciknoweval "
        "files, instead of the hub (repeatable)",
    )
    parser.add_argument("--revision", default=None, help="hub revision (commit) to pin, default: main")
    parser.add_argument("--seed", type=int, default=ske.SEED, help="split seed (default: %(default)s)")
    parser.add_argument("--test-fraction", type=float, default=ske.TEST_FRACTION, help="default: %(default)s")
    args = parser.parse_args(argv)
    args.domains_given = args.domains is not None
    args.domains = args.domains or list(ske.DOMAINS)

    if args.local_file:
        upstream, fork = sort_sources(read_local(args.local_file))
        what = f"{len(upstream)} upstream records" + (f" and SDPO fork files for {', '.join(fork)}" if fork else "")
        domains = args.domains if args.domains_given or upstream else [d for d in args.domains if d in fork]
    else:
        upstream, fork, domains = read_hub(args.revision), {}, args.domains
        what = f"{len(upstream)} records of {ske.HF_DATASET}"
    out_dir = os.path.expanduser(args.out_dir)
    print(f"read {what}")
    for domain in domains:
        splits = domain_splits(domain, upstream, fork, args)
        empty = [split for split, rows in splits.items() if not rows]
        if empty:  # a 0-row parquet has no columns either: verl would fail on it far from here
            raise SystemExit(
                f"error: {domain}: no usable record for split {', '.join(empty)} (every answer key is outside its "
                "labels, or labels and option texts differ in number); nothing written"
            )
        paths = {}
        for split, rows in splits.items():
            paths[split] = os.path.join(out_dir, domain, f"{split}.parquet")
            write_parquet(rows, paths[split])
        counts = {split: len(rows) for split, rows in splits.items()}
        paper = ske.PAPER_SPLITS[domain] if (args.seed, args.test_fraction) == (ske.SEED, ske.TEST_FRACTION) else None
        print(f"{domain:10s} {describe_counts(counts, paper)}")
        for split, path in paths.items():
            print(f"           {split:5s} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
