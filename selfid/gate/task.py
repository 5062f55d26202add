"""The user's own task number: a shell command run once per side of the gate.

The command sees which side and model it is for in its environment (SELFID_GATE_SIDE: reference or candidate;
SELFID_GATE_MODEL, SELFID_GATE_ADAPTER, SELFID_GATE_BASE_URL, SELFID_GATE_MODEL_NAME; SELFID_GATE_RUN: the
side's audit run folder) and prints its number on the last line of its output: a bare number, or JSON
{"value": 0.91, "stderr": 0.01} when it knows its standard error (then the gate tests the difference; without
one it compares the two numbers as they are).
"""

from __future__ import annotations

import json
import os
import subprocess

from selfid.errors import SelfidError


def run_command(command: str, side: str, target: dict, run_dir: str | None) -> dict:
    """{"value", "stderr"} from the command's last line of output."""
    env = {**os.environ, "SELFID_GATE_SIDE": side, "SELFID_GATE_MODEL": str(target.get("model") or ""),
           "SELFID_GATE_ADAPTER": str(target.get("adapter") or ""), "SELFID_GATE_BASE_URL": str(target.get("base_url") or ""),
           "SELFID_GATE_MODEL_NAME": str(target.get("model") or "") if target.get("base_url") else "",
           "SELFID_GATE_RUN": str(run_dir or "")}
    # a shell, because the command is the user's own line (pipes, cd, environment) as they would type it
    proc = subprocess.run(command, shell=True, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output on stderr)"])[-1]
        raise SelfidError(f"the task command exited with status {proc.returncode} for the {side}: {last}")
    return parse(proc.stdout, side)


def parse(output: str, side: str) -> dict:
    lines = [line for line in output.splitlines() if line.strip()]
    if not lines:
        raise SelfidError(f"the task command printed nothing for the {side}: print its number on the last line")
    last = lines[-1].strip()
    try:
        value = json.loads(last)
    except ValueError:
        value = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {"value": float(value), "stderr": None}
    if isinstance(value, dict) and isinstance(value.get("value"), (int, float)):
        stderr = value.get("stderr")
        if stderr is not None and not (isinstance(stderr, (int, float)) and stderr >= 0):
            raise SelfidError(f"the task command's \"stderr\" for the {side} must be a number >= 0, got {stderr!r}")
        return {"value": float(value["value"]), "stderr": None if stderr is None else float(stderr)}
    raise SelfidError(f"the task command's last line for the {side} is {last[:80]!r}: print a number, or JSON "
                      "{\"value\": 0.91, \"stderr\": 0.01}")
