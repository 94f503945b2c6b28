#!/usr/bin/env python3
"""Prepare ToolAlpaca tool use for the SRPO paper runs (verl RL parquet).

Writes

    <out-dir>/toolalpaca/train.parquet     every training instance with a tool call (paper: 4046)
    <out-dir>/toolalpaca/test.parquet      the simulated evaluation requests      (paper: 68)

with verl's RL columns, as the public SDPO code (github.com/lasgroup/SDPO) the paper builds on
writes them: data_source (`tooluse`), prompt (one user message: the fork's task prompt with the
API's tool documentation and the request), ability, reward_model {style: rule, ground_truth: JSON
list of {"Action", "Action_Input"}}, extra_info {split, index, api, question, num_calls}. The
split is upstream's own (train_data.json / eval_simulated.json, of which the 68 requests whose
golden inputs hold no `$` placeholder), so no seed is involved. Prints what it wrote.

Sources (one of):
- data/train_data.json and data/eval_simulated.json of the GitHub repository
  tangqiaoyu/ToolAlpaca, downloaded (and cached) with the `datasets` library's download manager;
- offline, --local-dir with a clone of that repository (or its data/ folder);
- --local-file with the SDPO fork's prepared split files (datasets/tooluse/{train,test}.json, or
  the folder holding them): the same rows.

    python scripts/prepare_toolalpaca.py --out-dir ~/data/srpo
    git clone https://github.com/tangqiaoyu/ToolAlpaca && \\
        python scripts/prepare_toolalpaca.py --local-dir ToolAlpaca --out-dir ~/data/srpo
    python scripts/prepare_toolalpaca.py --local-file SDPO/datasets/tooluse --out-dir ~/data/srpo
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from srpo_verl.tasks import toolalpaca as ta
from srpo_verl.tasks.common import describe_counts, hub_error


def find_local(local_dir: str, name: str) -> str:
    """`name` in `local_dir` or `local_dir/data`."""
    local_dir = os.path.expanduser(local_dir)
    for candidate in (os.path.join(local_dir, name), os.path.join(local_dir, "data", name)):
        if os.path.isfile(candidate):
            return candidate
    raise SystemExit(f"error: {name} not found in {local_dir} or {os.path.join(local_dir, 'data')}")


def download(name: str, revision: str) -> str:
    """A cached local copy of data/<name> from GitHub, via `datasets.DownloadManager`."""
    import datasets

    url = f"https://raw.githubusercontent.com/{ta.GITHUB_REPO}/{revision}/data/{name}"
    try:
        return datasets.DownloadManager().download(url)
    except Exception as exc:  # noqa: BLE001 - any download failure gets the same offline advice
        where = f"git clone https://github.com/{ta.GITHUB_REPO}"
        raise hub_error(url, exc, local_flag="--local-dir <clone of ToolAlpaca>", where=where) from exc


def load_json(path: str) -> list[dict[str, Any]]:
    # The json module, not datasets' JSON loader: upstream's files are one JSON list of nested,
    # irregular API records that an Arrow table cannot hold as is, and a parse error names the line.
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, list):
        raise SystemExit(f"error: {path} is not a JSON list of APIs (upstream ToolAlpaca format)")
    return data


def fork_splits(paths: list[str]) -> dict[str, list[dict[str, Any]]]:
    """{'train', 'test'} rows from the SDPO fork's datasets/tooluse/{train,test}.json (JSON lines),
    given as files or as the folder holding them."""
    files: dict[str, str] = {}
    for path in map(os.path.expanduser, paths):
        candidates = [os.path.join(path, f"{s}.json") for s in ("train", "test")] if os.path.isdir(path) else [path]
        for file in candidates:
            split = os.path.basename(file).rsplit(".", 1)[0]
            if os.path.isfile(file) and split in ("train", "test"):
                files[split] = file
            elif not os.path.isdir(path):
                raise SystemExit(f"error: --local-file {file}: expected the SDPO fork's train.json or test.json")
    missing = [s for s in ("train", "test") if s not in files]
    if missing:
        raise SystemExit(
            f"error: --local-file: no SDPO fork {' or '.join(m + '.json' for m in missing)} in {', '.join(paths)}"
        )
    splits = {}
    for split, file in files.items():
        with open(file, encoding="utf-8") as fh:
            records = [json.loads(line) for line in fh if line.strip()]
        if not all(ta.is_fork_record(r) for r in records):
            raise SystemExit(
                f"error: {file} is not the SDPO fork's tooluse format (JSON lines with prompt, answer, dataset=tooluse)"
            )
        splits[split] = [ta.from_fork_record(r, split=split, index=i) for i, r in enumerate(records)]
    return splits


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
        "--local-dir",
        default=None,
        metavar="DIR",
        help="a ToolAlpaca clone (or its data/ folder) instead of downloading",
    )
    parser.add_argument(
        "--local-file",
        action="append",
        default=None,
        metavar="PATH",
        help="the SDPO fork's datasets/tooluse/{train,test}.json, or their folder (repeatable)",
    )
    parser.add_argument(
        "--revision", default="main", help="git revision of tangqiaoyu/ToolAlpaca to download (default: %(default)s)"
    )
    args = parser.parse_args(argv)

    if args.local_file:
        splits = fork_splits(args.local_file)
        source = ", ".join(args.local_file)
    else:
        if args.local_dir:
            train_path, test_path = find_local(args.local_dir, ta.TRAIN_FILE), find_local(args.local_dir, ta.TEST_FILE)
        else:
            train_path, test_path = download(ta.TRAIN_FILE, args.revision), download(ta.TEST_FILE, args.revision)
        splits = {"train": ta.train_rows(load_json(train_path)), "test": ta.test_rows(load_json(test_path))}
        source = f"{train_path} and {test_path}"

    out_dir = os.path.join(os.path.expanduser(args.out_dir), "toolalpaca")
    print(f"read {source}")
    for split, rows in splits.items():
        if not rows:
            raise SystemExit(f"error: no {split} rows: is {source} in the upstream format?")
        write_parquet(rows, os.path.join(out_dir, f"{split}.parquet"))
    print(f"tooluse    {describe_counts({s: len(r) for s, r in splits.items()}, ta.PAPER_SPLITS)}")
    for split in splits:
        print(f"           {split:5s} -> {os.path.join(out_dir, split + '.parquet')}")
    for split, rows in splits.items():
        # The reference rule reads `Action: <one word>`: these rows score 0 under it whatever the response.
        unreadable = [r for r in rows if ta.unreadable_actions(r["reward_model"]["ground_truth"], r["extra_info"])]
        if unreadable:
            print(
                f"           {split:5s}: {len(unreadable)} row(s) with a gold tool name that is not one word "
                "(score 0 under the reference rule; docs/reproduction.md)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
