"""bench/gpu_suite.py, the one command the GPU benchmarks run from: its --smoke mode runs every step on the
CPU with the tiny model, and a step that fails, or does not fit in the budget, costs only itself."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def test_smoke_mode_runs_every_step_and_reports_each(tmp_path):
    out = tmp_path / "suite"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_suite.py"), "--smoke", "--out", str(out)],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    for step in ("varlen", "audit", "profile", "serve", "train", "variants", "ddp"):
        assert summary[step]["status"] == "ok", (step, summary[step].get("log_tail"))
    for level in summary["profile"]["result"]["results"]:  # every level ran its steps and ranked the host's functions
        assert level["steps"] > 0 and level["tokens"] > 0 and level["top_host_functions"]
    assert summary["varlen"]["result"]["check"]["reason"] is None
    audit = summary["audit"]["result"]
    assert audit["eager"]["identical_replies"] == audit["eager"]["replies"] == audit["grid"]["generations"]
    assert audit["decode"]["using"] == "static"
    assert 0 < audit["selfid"]["generate_seconds"] <= audit["selfid"]["seconds"]
    variants = summary["variants"]["result"]["variants"]
    assert "error" in variants["train.liger=true"]  # no CUDA here: reported, and the other variants still ran
    assert variants["train.ce_chunk=16"]["tokens_per_s"] > 0
    assert summary["ddp"]["result"]["loss_curve"]["max_abs_diff"] < 1e-3
    lines = run.stdout.splitlines()
    assert any(line.startswith("audit: selfid") for line in lines) and any(line.startswith("[") for line in lines)


def test_a_failing_step_and_a_step_that_does_not_fit_cost_only_themselves(tmp_path, monkeypatch, capsys):
    from bench import gpu_suite

    def fake_steps(out, smoke):
        return [gpu_suite.Step("broken", ["-c", "raise SystemExit(3)"], 0, 60),
                gpu_suite.Step("big", ["-c", "print('never')"], 10**6, 60),
                gpu_suite.Step("fine", ["-c", f"open({str(out / 'fine.json')!r}, 'w').write('{{\"x\": 1}}')"], 0, 60,
                               out="fine.json")]

    monkeypatch.setattr(gpu_suite, "steps", fake_steps)
    monkeypatch.setattr(sys, "argv", ["gpu_suite.py", "--out", str(tmp_path), "--budget", "300"])
    gpu_suite.main()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["broken"]["status"] == "exit 3"
    assert summary["big"]["status"].startswith("skipped")
    assert summary["fine"]["status"] == "ok" and summary["fine"]["result"] == {"x": 1}
    assert "broken: exit 3" in capsys.readouterr().out
