"""docs/configuration.md lists every algorithm.srpo key with the shipped default."""

import re
from collections.abc import Mapping
from pathlib import Path

from srpo_verl.algo_config import SRPOConfig

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def _doc_rows() -> dict[str, str]:
    section = DOC.read_text().split("## `algorithm.srpo.*`")[1].split("\n## ")[0]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"\|\s*`([a-z_.]+)`\s*\|\s*`(.*?)`\s*\|", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def _parse(text: str):
    if text == "null":
        return None
    if text in ("True", "False"):
        return text == "True"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text.replace("\\n", "\n")


def test_every_key_is_documented_with_its_default():
    rows = _doc_rows()
    defaults = {}
    for key, value in SRPOConfig().items():
        # A nested block (guard) is documented key by key, as `block.key`.
        items = value.items() if isinstance(value, Mapping) else [(None, value)]
        defaults.update({key if sub is None else f"{key}.{sub}": v for sub, v in items if sub != "_target_"})
    defaults.pop("_target_")
    assert set(rows) == set(defaults), f"undocumented: {set(defaults) - set(rows)}, stale: {set(rows) - set(defaults)}"
    for key, text in rows.items():
        assert _parse(text) == defaults[key], f"docs say {key}={text!r}, code says {defaults[key]!r}"
