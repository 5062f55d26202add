"""Several devices, one model copy each (selfid/audit/devices.py): the grid split by whole groups, every reply the one
its seed gives on one device, a worker's failure named, and device lists checked before anything loads. On the CPU
the second "device" is a second CPU process, which is what runs there on a GPU machine too."""

import json

import pytest

from selfid.audit.backends import InProcessBackend, open_backend
from selfid.audit.devices import MultiDeviceBackend, parse_devices, split
from selfid.audit.log import LOG
from selfid.audit.probes import load_suite
from selfid.audit.run import AuditParams, audit_systems, plan, run_audit
from selfid.errors import SelfidError
from tests.audit_helpers import write_probes


def params(probes):
    return AuditParams(suites=["identity"], systems=audit_systems(["template,helpful"]), temperatures=[0.0, 1.0],
                       samples=3, seed=5, max_new_tokens=6, ner_limit=1, own="qwen", identity_probes=str(probes))


@pytest.fixture(scope="module")
def probes(tmp_path_factory):
    return write_probes(tmp_path_factory.mktemp("probes") / "three.jsonl",
                        ["en-direct-01", "zh-direct-01", "en-name-01"])


def items(probes):
    return plan(params(probes), {"identity": load_suite("identity", str(probes))})


def replies(run) -> dict:
    rows = [json.loads(line) for line in (run / LOG).read_text(encoding="utf-8").splitlines()]
    return {(r["probe"], r["system"], r["temperature"], r["sample"]): r["reply"] for r in rows}


def test_the_grid_is_split_by_whole_groups_round_robin(probes):
    grid = items(probes)
    shares = split(grid, 2)
    assert sorted(it.key for s in shares for it in s) == sorted(it.key for it in grid)  # each item once
    for s in shares:  # a group's samples share one request and seeds seed+i: never split
        assert not {it.group for it in s} & {it.group for t in shares if t is not s for it in t}
    groups = list(dict.fromkeys(it.group for it in grid))
    assert [g for g in groups if g in {it.group for it in shares[0]}] == groups[::2]


def test_two_processes_give_the_replies_one_gives(tiny_model_dir, probes, tmp_path):
    one, _ = open_backend(str(tiny_model_dir), device="cpu", dtype="float32")
    run_audit(one, params(probes), tmp_path / "one", show_progress=False, margin=False)
    two, loaded = open_backend(str(tiny_model_dir), device="cpu,cpu", dtype="float32")
    assert isinstance(two, MultiDeviceBackend) and two.loaded is loaded
    run_audit(two, params(probes), tmp_path / "two", show_progress=False, margin=False)
    a, b = replies(tmp_path / "one"), replies(tmp_path / "two")
    assert a == b and len(a) == len(items(probes))
    assert json.loads((tmp_path / "two" / "run.json").read_text())["target"]["devices"] == ["cpu", "cpu"]


def test_a_worker_that_fails_stops_the_run_naming_its_device_and_keeps_what_was_logged(tiny, probes, tmp_path):
    primary = InProcessBackend(tiny)
    spec = {"model": str(tmp_path / "no-such-model"), "adapter": None, "dtype": "float32", "chat_template": None,
            "batch_size": None}
    broken = MultiDeviceBackend(primary, ["cpu", "cpu"], spec)
    with pytest.raises(SelfidError, match=r"another device failed \(cpu#1: SelfidError: .*no-such-model.*--resume"):
        run_audit(broken, params(probes), tmp_path / "run", show_progress=False, margin=False)
    kept = replies(tmp_path / "run")
    assert kept and len(kept) == len(split(items(probes), 2)[0])  # the first device's share


@pytest.mark.parametrize("spec, message", [
    ("cuda:0,cuda:7", r"--device cuda:\d: this (PyTorch sees no CUDA GPU|machine has \d CUDA GPU)"),
    ("auto,cpu", "name each device of a list"),
    ("cpu,,cpu", "name each device of a list"),
    ("cpu,tpu:0", "unknown device 'tpu:0'"),
])
def test_a_bad_device_list_is_one_line_before_anything_loads(spec, message):
    with pytest.raises(SelfidError, match=message):
        parse_devices(spec)
    assert parse_devices("cuda:3") == ["cuda:3"]  # one device: checked where it loads, as before


def test_the_replay_splits_its_questions_the_same_way(tiny_model_dir):
    """`selfid replay --device cpu,cpu`: the same backend, each device's share in one engine call as the replay asks."""
    import sys

    from selfid.pipeline.replay_export import _open

    backend, loaded = _open(str(tiny_model_dir), None, None, None, None, "cpu,cpu", "float32", None, 8, 6)
    assert isinstance(backend, MultiDeviceBackend) and backend.loaded is loaded
    assert backend.primary.rows_per_call == sys.maxsize and backend.devices == ["cpu", "cpu"]
