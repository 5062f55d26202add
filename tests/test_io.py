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
