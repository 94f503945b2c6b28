"""The cache's one atomic directory writer (`tiny_model.write_dir_atomically`), used for the tiny
model, the warm start and the SmolLM2 conversion: a reader never sees half a directory, a builder
that loses the race to an identical copy does not fail, and a real failure is not hidden."""

import os

import pytest

from srpo_verl.demo import tiny_model
from srpo_verl.demo.tiny_model import write_dir_atomically


def write_files(**files):
    def write(staging):
        for name, text in files.items():
            with open(os.path.join(staging, name), "w") as f:
                f.write(text)

    return write


def test_builds_the_directory_and_leaves_no_staging(tmp_path):
    out = tmp_path / "cache" / "model"
    assert write_dir_atomically(str(out), write_files(a="1", b="2")) == str(out)
    assert sorted(os.listdir(out)) == ["a", "b"] and (out / "a").read_text() == "1"
    assert os.listdir(tmp_path / "cache") == ["model"]


def test_a_stale_directory_is_replaced(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "old").write_text("stale")
    write_dir_atomically(str(out), write_files(new="fresh"))
    assert os.listdir(out) == ["new"]


def test_losing_the_race_keeps_the_winners_copy(tmp_path, monkeypatch):
    out = tmp_path / "model"
    real_rename = os.rename

    def another_builder_finishes_first(src, dst):
        os.makedirs(dst)
        with open(os.path.join(dst, "a"), "w") as f:
            f.write("winner")
        real_rename(src, dst)  # a non-empty target: OSError, as in the real race

    monkeypatch.setattr(tiny_model.os, "rename", another_builder_finishes_first)
    assert write_dir_atomically(str(out), write_files(a="loser")) == str(out)
    assert (out / "a").read_text() == "winner"
    assert os.listdir(tmp_path) == ["model"]  # our staging copy is gone


def test_a_failure_while_writing_is_raised_and_cleaned_up(tmp_path):
    def fail(staging):
        write_files(a="half")(staging)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_dir_atomically(str(tmp_path / "model"), fail)
    assert os.listdir(tmp_path) == []


def test_a_failing_rename_without_a_winner_is_raised(tmp_path, monkeypatch):
    def refuse(src, dst):
        raise OSError("read-only file system")

    monkeypatch.setattr(tiny_model.os, "rename", refuse)
    with pytest.raises(OSError, match="read-only"):
        write_dir_atomically(str(tmp_path / "model"), write_files(a="1"))
    assert os.listdir(tmp_path) == []
