"""Atomic writes leave files as readable as a plain open() would, and checksums.json finds damage."""

import json
import os
import stat

import pytest

from selfid.io import (CHECKSUMS, DIR_MODE, FILE_MODE, atomic_dir, atomic_write_json, atomic_write_text,
                       verify_checksums, write_checksums)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_writes_get_the_mode_open_gives(tmp_path):
    with open(tmp_path / "log.jsonl", "a") as f:  # how generations.jsonl is written
        f.write("{}\n")
    atomic_write_json(tmp_path / "summary.json", {"a": 1})
    atomic_write_text(tmp_path / "report.html", "<html></html>")
    assert mode(tmp_path / "summary.json") == mode(tmp_path / "report.html") == mode(tmp_path / "log.jsonl")
    assert mode(tmp_path / "summary.json") == FILE_MODE


def test_atomic_dir_leaves_folders_and_files_readable(tmp_path):
    from safetensors.torch import save_file
    import torch

    with atomic_dir(tmp_path / "adapter") as tmp:
        save_file({"w": torch.zeros(2)}, str(tmp / "adapter_model.safetensors"))  # safetensors writes 0600
        (tmp / "sub").mkdir()
        (tmp / "sub" / "x.txt").write_text("x")
    out = tmp_path / "adapter"
    assert mode(out) == mode(out / "sub") == DIR_MODE
    assert mode(out / "adapter_model.safetensors") == mode(out / "sub" / "x.txt") == FILE_MODE


@pytest.fixture
def folder(tmp_path):
    f = tmp_path / "run"
    (f / "adapter").mkdir(parents=True)
    (f / "adapter" / "weights.bin").write_bytes(bytes(range(256)) * 10)
    (f / "state.pt").write_bytes(b"optimizer state")
    write_checksums(f)
    return f


def test_checksums_record_every_file_and_pass_when_untouched(folder):
    record = json.loads((folder / CHECKSUMS).read_text())
    assert set(record["files"]) == {"adapter/weights.bin", "state.pt"}
    assert record["files"]["state.pt"]["size"] == len(b"optimizer state")
    assert verify_checksums(folder) is None


@pytest.mark.parametrize("damage, said", [
    (lambda f: (f / "adapter" / "weights.bin").write_bytes(b"short"), "adapter/weights.bin has 5 bytes, 2,560 were written"),
    (lambda f: (f / "state.pt").write_bytes(b"optimizer stat!"), "state.pt has changed since it was written"),
    (lambda f: (f / "state.pt").unlink(), "state.pt is missing"),
    (lambda f: (f / CHECKSUMS).write_text("{not json"), "checksums.json itself is damaged"),
])
def test_damage_is_named_in_one_phrase(folder, damage, said):
    damage(folder)
    assert verify_checksums(folder).startswith(said)


def test_a_folder_written_elsewhere_has_nothing_to_check(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x")
    assert verify_checksums(tmp_path) is None


# --- files a user gives are read in bounded pieces -------------------------------------------------------------

def test_a_line_longer_than_the_record_limit_is_refused_naming_file_line_and_limit(tmp_path, monkeypatch):
    from selfid import io as selfid_io
    from selfid.errors import SelfidError

    monkeypatch.setattr(selfid_io, "MAX_RECORD_BYTES", 1 << 20)
    monkeypatch.setattr(selfid_io, "_PIECE", 64 << 10)
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "fine"}\n' + '{"text": "' + "x" * (3 << 20) + '"}\n')
    read = selfid_io.read_jsonl(path)
    assert next(read) == (1, {"text": "fine"})
    with pytest.raises(SelfidError, match=rf"{path}:2: a line longer than 1 MiB, the most selfid reads as one record"):
        next(read)


def test_a_file_without_line_feeds_is_refused_before_it_is_held_whole(monkeypatch):
    """/dev/zero never ends: reading it whole (what `selfid scan /dev/zero` once did) fills memory until the kernel
    kills the process; read in pieces, it is refused at the limit."""
    from selfid import io as selfid_io
    from selfid.errors import SelfidError

    with pytest.raises(SelfidError, match=r"/dev/zero:1: a line longer than 16 MiB"):
        list(selfid_io.text_lines("/dev/zero"))


def test_selfid_scan_of_dev_zero_is_one_line(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "selfid.cli", "scan", "/dev/zero"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["selfid: error: /dev/zero:1: a line longer than 16 MiB, the most "
                                                "selfid reads as one record: a JSONL file holds one record per line "
                                                "(is this the file you meant?)"]


def test_classify_reads_stdin_in_bounded_lines(monkeypatch):
    from typer.testing import CliRunner

    from selfid import io as selfid_io
    from selfid.cli import app

    monkeypatch.setattr(selfid_io, "MAX_RECORD_BYTES", 64 << 10)
    big = '{"text": "' + "y" * (128 << 10) + '"}\n'
    res = CliRunner().invoke(app, ["classify"], input='{"text": "I am Qwen."}\n' + big)
    assert '"claims": ["qwen"]' in res.stdout  # the first line was answered before the second was refused
    assert "stdin:2: a line longer than 64 KiB" in str(res.exception)


def test_a_small_file_read_whole_is_refused_past_its_limit(tmp_path):
    from selfid.config import load_config
    from selfid.errors import SelfidError
    from selfid import io as selfid_io

    path = tmp_path / "run.yaml"
    path.write_bytes(b"#" * (selfid_io.MAX_SMALL_FILE_BYTES + 1))
    with pytest.raises(SelfidError, match=rf"{path} is larger than 16 MiB, the most selfid reads as a run config"):
        load_config(path, [])
