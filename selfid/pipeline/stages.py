"""Named stages in one run folder, with one resume mechanism: what the study (`selfid study run`) and `selfid demo` run.

A stage declares the paths it reads (`inputs`) and writes (`outputs`), relative to the run folder. The stage
that writes a path another stage reads runs first, so asking for the last stage of a chain runs the chain.
When a stage finishes and its outputs pass their check, the runner writes a stage record,
RUN/stages/NAME.json (atomically: it exists whole or not at all), holding the sha256 of every input as it was
read. On the next run a stage is skipped when its record is there, its inputs still hash the same and its
outputs still pass the check; otherwise:

- its inputs changed since it ran (an upstream stage ran again): its outputs are moved aside and removed, and
  it runs afresh;
- it was interrupted (no record, outputs unfinished): it runs again on what it left, which selfid's own
  long steps continue (audits append to their log, training resumes from its last checkpoint); a stage
  marked `resumable=False` starts afresh instead;
- its record is damaged (not JSON): the record is dropped and the outputs are checked as if there were none;
- it has no record but finished outputs (a run folder from before stage records): the outputs are kept and a
  record is written for them ("adopted").

Each stage takes a lock file while it is checked and run, so processes that share a run folder (the study's
chains side by side on one GPU) never run the same stage twice at once.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from rich.console import Console
from rich.markup import escape

from selfid.errors import SelfidError
from selfid.io import CHECKSUMS, atomic_write_json, file_lock, sha256_file

RECORDS = "stages"  # the folder in the run folder that holds the stage records
FORMAT = 1


@dataclass(frozen=True)
class Stage:
    """One step of a pipeline. Paths are relative to the run folder."""

    name: str
    title: str  # what it does, for a reader ("audit the base model")
    run: Callable[[], dict | None]  # does the work; what it returns is kept in the stage record as `info`
    outputs: tuple[str, ...]
    inputs: tuple[str, ...] = ()
    check: Callable[[], str | None] | None = None  # beyond the outputs existing: None when finished, else why not
    detail: Callable[[], str] | None = None  # one line on what it is about to do, shown when it starts
    describe: Callable[[], str] | None = None  # one line on what its outputs hold, shown once it is done
    resumable: bool = True  # False: what an interrupted attempt left is removed before it runs again


# --- what counts as finished, for selfid's own outputs ------------------------------------------------------

def audit_problem(run_dir: Path) -> str | None:
    """None when the audit in `run_dir` finished (its summary.json says every planned generation is logged)."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        return f"{path.parent.name}/summary.json is missing"
    try:
        complete = json.loads(path.read_text(encoding="utf-8"))["run"].get("complete")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"{path.parent.name}/summary.json is damaged"
    return None if complete else f"the audit in {path.parent.name}/ has not logged every generation"


def model_problem(folder: Path) -> str | None:
    """None when `folder` holds an adapter or model selfid finished writing: selfid writes those into a temporary
    folder and renames it (selfid.io.atomic_dir), with selfid.json and checksums.json, so both being there says
    it is whole (every loader checks the checksums)."""
    folder = Path(folder)
    for name in ("selfid.json", CHECKSUMS):
        if not (folder / name).is_file():
            return f"{folder.name}/{name} is missing"
    return None


# --- the runner -----------------------------------------------------------------------------------------

def fingerprint(path: Path) -> str | None:
    """sha256 of a file, or of a folder's file names and contents; None when the path does not exist. A folder
    selfid wrote with checksums.json (an adapter, an exported model) is fingerprinted by that file, which holds
    the sha256 of all the others: a merged model is not read again on every run."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        return None
    if (path / CHECKSUMS).is_file():
        return sha256_file(path / CHECKSUMS)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path).as_posix()}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def read_record(root: Path, name: str) -> dict | None:
    """The record of stage `name` in run folder `root`, or None (none, or damaged)."""
    try:
        rec = json.loads((Path(root) / RECORDS / f"{name}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("inputs"), dict) else None


def _overlaps(a: str, b: str) -> bool:
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def _check_path(stage: str, path: str) -> None:
    p = Path(path)
    if not p.parts or p.is_absolute() or ".." in p.parts or p.parts[0] == RECORDS:
        raise ValueError(f"stage {stage}: {path!r} is not a path inside the run folder")


class Runner:
    """Runs stages in `root`. `say(kind, label, text)` shows progress (kinds: start, skip, redo, done, info,
    stopped; see `console_say`); `resume_hint` is the command that continues the run, for the messages."""

    def __init__(self, root: Path, stages: Sequence[Stage], say: Callable[[str, str, str], None] | None = None,
                 resume_hint: str = "the same command"):
        self.root = Path(root)
        self.stages = {}
        for s in stages:
            if s.name in self.stages:
                raise ValueError(f"two stages named {s.name}")
            for p in (*s.inputs, *s.outputs):
                _check_path(s.name, p)
            self.stages[s.name] = s
        self.say = say or console_say()
        self.resume_hint = resume_hint

    # the order -------------------------------------------------------------------------------------------
    def needs(self, stage: Stage) -> list[str]:
        """The stages that write what `stage` reads, in the order of its inputs."""
        found = []
        for path in stage.inputs:
            found += [s.name for s in self.stages.values() if s is not stage and s.name not in found
                      and any(_overlaps(path, o) for o in s.outputs)]
        return found

    def plan(self, targets: Sequence[str] | None = None) -> list[Stage]:
        """`targets` and every stage they need, each once, the needed ones first."""
        order: list[Stage] = []
        visiting: list[str] = []

        def visit(name: str) -> None:
            if name not in self.stages:
                raise SelfidError(f"unknown stage {name}: use one of {', '.join(self.stages)}")
            if any(s.name == name for s in order):
                return
            if name in visiting:
                raise SelfidError(f"stages {' -> '.join(visiting + [name])} need each other")
            visiting.append(name)
            for dep in self.needs(self.stages[name]):
                visit(dep)
            visiting.pop()
            order.append(self.stages[name])

        for name in (self.stages if targets is None else targets):
            visit(name)
        return order

    # the records -----------------------------------------------------------------------------------------
    def record_path(self, name: str) -> Path:
        return self.root / RECORDS / f"{name}.json"

    def record(self, name: str) -> dict | None:
        return read_record(self.root, name)

    def problem(self, stage: Stage) -> str | None:
        """None when the stage's outputs are there and pass its check, else what is missing."""
        for p in stage.outputs:
            if not (self.root / p).exists():
                return f"{p} is missing"
        return stage.check() if stage.check else None

    def inputs(self, stage: Stage) -> dict[str, str]:
        found = {}
        for p in stage.inputs:
            digest = fingerprint(self.root / p)
            if digest is None:
                raise SelfidError(f"stage {stage.name} needs {self.root / p}, which is missing")
            found[p] = digest
        return found

    def _write(self, stage: Stage, inputs: dict, wall_s: float | None, info: dict | None, adopted: bool) -> dict:
        rec = {"stage": stage.name, "format": FORMAT, "title": stage.title,
               "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "wall_s": None if wall_s is None else round(wall_s, 1), "inputs": inputs,
               "outputs": list(stage.outputs), "info": info or {}}
        if adopted:
            rec["adopted"] = True
        atomic_write_json(self.record_path(stage.name), rec)
        return rec

    def _clear(self, stage: Stage) -> None:
        """Remove the stage's outputs: each is first moved into one folder (a rename), then that is removed, so
        an interruption leaves either an output whole in its place or nothing there."""
        aside = self.root / RECORDS / f".replaced-{stage.name}"
        shutil.rmtree(aside, ignore_errors=True)
        for i, p in enumerate(stage.outputs):
            src = self.root / p
            if src.exists() or src.is_symlink():
                aside.mkdir(parents=True, exist_ok=True)
                os.replace(src, aside / str(i))
        self.record_path(stage.name).unlink(missing_ok=True)
        shutil.rmtree(aside, ignore_errors=True)

    # running ---------------------------------------------------------------------------------------------
    def run(self, targets: Sequence[str] | None = None) -> dict[str, dict]:
        """Run what `targets` need (default: every stage) that is not done; return the stage records."""
        plan = self.plan(targets)
        records = {}
        for i, stage in enumerate(plan, start=1):
            label = f"{i}/{len(plan)} {stage.title}"
            try:
                records[stage.name] = self._run_one(stage, label)
            except KeyboardInterrupt:
                self.say("stopped", label, f"interrupted during stage {label}. Everything finished so far is in "
                                           f"{self.root}; continue with: {self.resume_hint}")
                raise
            except SelfidError as e:
                raise SelfidError(f"{e} (stage {label}; finished stages are kept in {self.root}: continue with "
                                  f"{self.resume_hint})") from None
            if stage.describe:
                self.say("info", label, stage.describe())
        return records

    def _run_one(self, stage: Stage, label: str) -> dict:
        with file_lock(self.root / RECORDS / f".{stage.name}.lock"):
            shutil.rmtree(self.root / RECORDS / f".replaced-{stage.name}", ignore_errors=True)  # a cut-off _clear's
            damaged = self.record_path(stage.name).exists() and self.record(stage.name) is None
            if damaged:
                self.say("redo", label, f"its record {self.record_path(stage.name)} is damaged: checking its "
                                        "outputs again")
                self.record_path(stage.name).unlink()
            inputs = self.inputs(stage)
            rec, problem = self.record(stage.name), self.problem(stage)
            fresh = False
            if rec is not None and rec["inputs"] != inputs:
                changed = ", ".join(p for p in dict.fromkeys([*inputs, *rec["inputs"]])
                                    if rec["inputs"].get(p) != inputs.get(p))
                self.say("redo", label, f"{changed} changed since it ran: running it again from the start")
                fresh = True
            elif rec is not None and problem is None:
                self.say("skip", label, "finished earlier")
                return rec
            elif rec is None and problem is None:
                self.say("skip", label, "finished earlier (recorded now)")
                return self._write(stage, inputs, None, None, adopted=True)
            else:
                self.record_path(stage.name).unlink(missing_ok=True)
                fresh = not stage.resumable
                if any((self.root / p).exists() for p in stage.outputs):
                    self.say("redo", label, f"not finished ({problem}): "
                                            + ("starting it again" if fresh else "continuing it"))
            if fresh:
                self._clear(stage)
            self.say("start", label, stage.detail() if stage.detail else "")
            t0 = time.perf_counter()
            info = stage.run()
            wall = time.perf_counter() - t0
            problem = self.problem(stage)
            if problem is not None:
                raise SelfidError(f"stage {stage.name} ended without finishing its outputs: {problem}")
            self.say("done", label, f"done in {duration(wall)}")
            return self._write(stage, inputs, wall, info, adopted=False)


# --- showing progress -----------------------------------------------------------------------------------

def duration(s: float) -> str:
    m, sec = divmod(int(round(s)), 60)
    return f"{m}m{sec:02d}s" if m else f"{sec}s"


def console_say(console=None) -> Callable[[str, str, str], None]:
    """Progress on a rich console (stderr by default)."""
    console = console or Console(stderr=True, highlight=False)

    def say(kind: str, label: str, text: str) -> None:
        label, text = escape(label), escape(text)
        if kind == "start":
            console.print(f"\n[bold cyan]▶ {label}[/bold cyan]" + (f" · {text}" if text else ""), soft_wrap=True)
        elif kind == "skip":
            console.print(f"[dim]✓ {label}: {text}[/dim]", soft_wrap=True)
        elif kind == "redo":
            console.print(f"[yellow]↻ {label}: {text}[/yellow]", soft_wrap=True)
        elif kind == "done":
            console.print(f"[dim]{label}: {text}[/dim]", soft_wrap=True)
        elif kind == "stopped":
            console.print(f"\n[yellow]{text}[/yellow]", soft_wrap=True)
        else:
            console.print(text, soft_wrap=True)

    return say


def line_say(log: Callable[[str], None]) -> Callable[[str, str, str], None]:
    """Progress as plain lines through `log` (for log files)."""
    marks = {"start": "▶ ", "skip": "✓ ", "redo": "↻ ", "done": ""}

    def say(kind: str, label: str, text: str) -> None:
        if kind in marks:
            log(f"{marks[kind]}{label}" + (f" · {text}" if kind == "start" and text else f": {text}" if text else ""))
        else:
            log(text)

    return say
