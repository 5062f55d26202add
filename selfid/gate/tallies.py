"""What a gate compares: per-prompt tallies of every metric under every system prompt, from an audit run
folder or from a baseline file.

A run folder is read through `selfid.audit.report.summary.load_run`, which re-scores its logged replies with
today's scorers; that call and the two per-prompt counters beside it are this package's only entry into the
audit's log. A baseline file (`selfid gate --write-baseline`) keeps the same tallies frozen, with what makes
them comparable: the hash of every prompt asked, the chat template's hash and the scorer version.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from selfid import __version__
from selfid.audit.probes import IDENTITY_SUITES
from selfid.audit.report.summary import by_prompt, distinct_per_prompt, load_run
from selfid.audit.scorers import VERSION
from selfid.errors import SelfidError
from selfid.gate.thresholds import IDENTITY, system_name
from selfid.io import atomic_write_json

BASELINE_KIND = "selfid-gate-baseline"
BASELINE_FORMAT = 1


@dataclass
class Tallies:
    """One side of a gate. Rates are {metric: {system: {prompt: [k, n]}}}; NER is {system: {sentence: [tp, fp, fn]}}."""

    label: str
    source: str  # the run folder or baseline file read
    kind: str  # "run" or "baseline"
    own: str  # the model's own vendor: its claims are not foreign
    template_hash: str | None
    scorer: int  # the scorer version the verdicts come from
    grid: dict  # the audit parameters (run.json "params") that made it
    systems: dict[str, dict]  # name -> {"key" (the name in the run), "text", "effective", "persona"}
    probes: dict[str, str]  # prompt id -> sha256 of the conversation asked under the run's first system prompt
    rates: dict[str, dict[str, dict[str, list[int]]]] = field(default_factory=dict)
    ner: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    complete: bool = True
    run: str | None = None  # a baseline's source run folder (what `--rescore` reads again)
    target: dict = field(default_factory=dict)  # the model or endpoint audited (run.json "target")
    reply_tokens: float | None = None  # mean new tokens per reply (what a time estimate scales with)
    task: dict | None = None  # the user's task command's number for this side, {"value", "stderr"}, once run

    @property
    def probes_sha256(self) -> str:
        return _digest(sorted(self.probes.items()))


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()


def _label(target: dict) -> str:
    """The model a run audited, in a few words: its name, the adapter's last folders, or the endpoint."""
    if target.get("backend") == "http":
        return f"{target.get('model')} @ {target.get('base_url')}"
    name = str(target.get("model"))
    if target.get("adapter"):
        name += " + " + "/".join(Path(target["adapter"]).parts[-3:])
    return name


def from_run(run_dir: Path) -> Tallies:
    """The tallies of an audit run folder, its replies re-scored by today's scorers."""
    run_dir = Path(run_dir)
    meta, records, _ = load_run(run_dir)
    if meta.get("kind") != "selfid-audit-run":
        raise SelfidError(f"{run_dir / 'run.json'} is not an audit run's run.json")
    systems = {system_name(s["key"]): {"key": s["key"], "text": s.get("text"), "effective": s.get("effective"),
                                       "persona": s.get("persona")} for s in meta["systems"]}
    probes: dict[str, str] = {}
    rates: dict[str, dict] = {}
    ner: dict[str, dict] = {}
    identity = [r for r in records if r.suite in IDENTITY_SUITES and r.verdict.scored]
    rank = {s["key"]: i for i, s in enumerate(meta["systems"])}
    # each prompt's conversation as asked under the first of the run's system prompts that asked it (its system
    # message included), whatever order the log holds the replies in (the order they finished)
    for r in sorted(records, key=lambda r: rank.get(r.system, len(rank))):
        probes.setdefault(r.probe, _digest(r.messages))
    for name, spec in systems.items():
        group = [r for r in identity if r.system == spec["key"]]
        for metric in IDENTITY:
            counts = distinct_per_prompt(group) if metric.name == "distinct_replies" else by_prompt(group, metric.record)
            if counts:
                rates.setdefault(metric.name, {})[name] = {p: list(kn) for p, kn in counts.items()}
        sentences = {r.probe: [r.verdict.tp, r.verdict.fp, r.verdict.fn] for r in records
                     if r.suite == "ner" and r.system == spec["key"]}
        if sentences:
            ner[name] = sentences
    planned = meta.get("planned")
    tokens = [r.record["completion_tokens"] for r in records if r.record.get("completion_tokens") is not None]
    return Tallies(label=_label(meta["target"]), source=str(run_dir), kind="run", own=meta["own"],
                   template_hash=meta["target"].get("template_hash"), scorer=VERSION, grid=meta["params"],
                   systems=systems, probes=probes, rates=rates, ner=ner,
                   complete=planned is None or len(records) >= planned, target=meta["target"],
                   reply_tokens=sum(tokens) / len(tokens) if tokens else None)


def read(path: Path, rescore: bool = False) -> Tallies:
    """A run folder or a baseline file. A baseline scored by another scorer version is refused unless `rescore`,
    which reads its source run folder again with today's scorers."""
    path = Path(path)
    if path.is_dir():
        if not (path / "run.json").is_file():
            raise SelfidError(f"{path} is not an audit run folder (no run.json): point at a folder `selfid audit --out` "
                              "made, or at a baseline file `selfid gate --write-baseline` wrote")
        return from_run(path)
    if not path.is_file():
        raise SelfidError(f"no such run folder or baseline file: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise SelfidError(f"{path} is not JSON: a baseline is the file `selfid gate --write-baseline` wrote") from None
    if not isinstance(data, dict) or data.get("kind") != BASELINE_KIND:
        raise SelfidError(f"{path} is not a gate baseline (no \"kind\": \"{BASELINE_KIND}\"): give the file "
                          "`selfid gate --write-baseline` wrote, or an audit run folder")
    if data.get("format") != BASELINE_FORMAT:
        raise SelfidError(f"{path} is a baseline of format {data.get('format')}, this selfid reads format "
                          f"{BASELINE_FORMAT}: write it again with `selfid gate --write-baseline`")
    fields = {k: data[k] for k in Tallies.__dataclass_fields__ if k in data and k not in ("kind", "source")}
    try:
        tallies = Tallies(**fields, source=str(path), kind="baseline")
    except TypeError as e:
        raise SelfidError(f"{path} is a damaged baseline ({e}): write it again with `selfid gate --write-baseline`") from None
    if tallies.scorer != VERSION:
        if not rescore:
            raise SelfidError(f"{path} was scored by scorer version {tallies.scorer}, this selfid's is {VERSION}: "
                              "verdicts may differ, so the rates are not comparable. Pass --rescore to score its "
                              f"source run ({tallies.run}) again, or write a new baseline")
        if not tallies.run or not (Path(tallies.run) / "run.json").is_file():
            raise SelfidError(f"--rescore needs the run the baseline {path} was made from, {tallies.run}, which is not "
                              "here: write a new baseline from a reference run (`selfid gate --write-baseline`)")
        again = from_run(Path(tallies.run))
        if again.probes != tallies.probes:
            raise SelfidError(f"{tallies.run} no longer holds the prompts the baseline {path} was made from: "
                              "write a new baseline")
        return again
    return tallies


def check_baseline_target(path: Path) -> None:
    """Refuse, before any work, a --write-baseline path that is a folder or a file other than a baseline: a baseline
    is written over an older baseline only."""
    path = Path(path)
    if path.is_dir():
        raise SelfidError(f"--write-baseline {path} is a folder: give a file name, e.g. {path / 'baseline.json'}")
    if path.exists():
        try:
            kind = json.loads(path.read_text(encoding="utf-8")).get("kind")
        except (OSError, ValueError, AttributeError):
            kind = None
        if kind != BASELINE_KIND:
            raise SelfidError(f"--write-baseline {path} exists and is not a selfid baseline: it is left as it is; "
                              "give a new file name")


def write_baseline(tallies: Tallies, path: Path) -> dict:
    """Store a reference's tallies as a baseline file (written to a temporary file, then renamed)."""
    body = asdict(tallies)
    del body["kind"], body["source"]  # a baseline is its own source; `run` names the folder it was read from
    if tallies.kind == "run":
        body["run"] = str(Path(tallies.source).resolve())
    data = {"kind": BASELINE_KIND, "format": BASELINE_FORMAT, "selfid": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "probes_sha256": tallies.probes_sha256, **body}
    atomic_write_json(Path(path), data)
    return data


def check_comparable(reference: Tallies, candidate: Tallies) -> list[str]:
    """Refuse (SelfidError) what cannot be compared; return warnings about what can but differs."""
    if reference.own != candidate.own:
        raise SelfidError(f"the reference counts {reference.own} as the model's own vendor and the candidate "
                          f"{candidate.own}: a claim one counts as foreign the other counts as own. Audit the "
                          f"candidate with --own {reference.own}")
    shared = reference.probes.keys() & candidate.probes.keys()
    if not shared:
        raise SelfidError(f"the reference ({reference.source}) and the candidate ({candidate.source}) share no prompt: "
                          "they were made with other probes; audit both with the same suites")
    changed = sorted(p for p in shared if reference.probes[p] != candidate.probes[p])
    if changed:
        raise SelfidError(f"{len(changed)} prompts were asked in other words by the reference ({reference.source}) and "
                          f"the candidate ({candidate.source}), e.g. {changed[0]}: the reference was made with other "
                          "probes; make it again with this selfid's probes (a new baseline or reference run)")
    warnings = []
    if reference.template_hash and candidate.template_hash and reference.template_hash != candidate.template_hash:
        warnings.append(f"the chat templates differ (reference {reference.template_hash}, candidate "
                        f"{candidate.template_hash}): the system prompt 'template' may not mean the same text")
    for name in reference.systems.keys() & candidate.systems.keys():
        a, b = reference.systems[name].get("effective"), candidate.systems[name].get("effective")
        if a is not None and b is not None and a != b:
            warnings.append(f"system prompt {name!r}: the reference saw {a!r}, the candidate {b!r}")
    missing = len(reference.probes.keys() - candidate.probes.keys())
    if missing:
        warnings.append(f"the candidate asked {len(shared)} of the reference's {len(reference.probes)} prompts; "
                        "only those are compared")
    for side, t in (("reference", reference), ("candidate", candidate)):
        if not t.complete:  # a run stopped part-way asked fewer prompts than planned: a pass would not mean one
            raise SelfidError(f"the {side} run {t.source} is incomplete: resume it (`selfid audit --resume --out "
                              f"{t.source} ...`) first, then gate again")
    return warnings
