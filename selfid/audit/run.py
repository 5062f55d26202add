"""The audit grid: suites x system prompts x temperatures x samples, seeded, logged, resumable.

A run directory holds everything a report needs:
  run.json           parameters, the model (or endpoint) and its template hash, the exact system
                     prompts, probe-set versions, the adapter's manifest and training system prompt
  generations.jsonl  one line per generation, appended as each finishes: messages, rendered prompt,
                     parameters, seed, reply, and what the scorers need of the probe (append-only;
                     `--resume` skips what is there). No verdicts: selfid.audit.scorers computes those
                     from the log whenever a summary is made, so `selfid rescore RUN` re-applies
                     today's scorers to any run
  margin.json        the identity margin (in-process runs)
  training_replies.json  the identity replies the audited adapter was trained on (for the recitation score)
  summary.json, report.html   derived from the above, rewritten at the end of every run

Identity probes run at every temperature with `samples` samples per prompt; temperature 0 is
greedy, so it gets one. The task suites (ner, general) run greedy, once per system prompt (or per
one of `task_systems`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from selfid.audit import probes as probe_sets
from selfid.audit.backends import Item, Reply
from selfid.audit.detect import Judge, detect
from selfid.audit.scorers import VERSION as SCORER_VERSION
from selfid.errors import SelfidError
from selfid.io import atomic_write_json, jsonl_lines
from selfid.manifest import training_system
from selfid.model.embedded import EMBEDDED
from selfid.system_prompt import NAMED, OLD_TEXT_PREFIX, SERVING, canonical, message_of, sent
from selfid.vendors import KEYS, vendor_of

FORMAT = 1
# the name a system prompt has in audit results where it is not the setting's own: the study's results (and
# every audit run before the one vocabulary) call the template's own "default"
REPORT_NAMES = {"template": "default"}
# the system prompts users serve with, by their names in audit results: {"default": None, "helpful": ..., "empty": ""}
PRESETS = {REPORT_NAMES.get(s, s): message_of(s) for s in SERVING}
TASK_SUITES = ("ner", "general")
LOG = "generations.jsonl"


@dataclass(frozen=True)
class SystemSpec:
    key: str  # the condition's name in the run's results
    text: str | None  # the system message sent (None: none, so the chat template inserts its own)
    persona: dict | None = None  # a persona system prompt's {"name", "aliases"} (held-out split)
    kind: str | None = None  # how it was chosen (selfid/system_prompt.py); None: from `text` (template, empty, text)

    def label(self) -> str:
        if self.text is None:
            return f"{self.key} (the template's own)"
        return f"{self.key}: {self.text!r}"


def parse_systems(values: Sequence[str], manifest=None) -> list[SystemSpec]:
    """`template,helpful,empty,adapter,personas,text:TEXT`; a text runs to the end of its value (it may hold
    commas). `manifest`: the audited adapter's, for `adapter`. Older spellings (default, train, custom:TEXT)
    are read with a deprecation message."""
    out: list[SystemSpec] = []
    texts = 0
    personas = probe_sets.personas()
    for value in values:
        rest = value
        while rest:
            head, sep, tail = rest.partition(",")
            if head.strip().startswith(("text:", OLD_TEXT_PREFIX)):
                texts += 1
                full = canonical(rest.strip(), "--systems")
                out.append(SystemSpec("text" if texts == 1 else f"text{texts}", full[len("text:"):], kind="text"))
                break
            rest = tail if sep else ""
            token = canonical(head.strip(), "--systems")
            if not token:
                continue
            if token in ("template", "empty") or token in NAMED:
                out.append(SystemSpec(REPORT_NAMES.get(token, token), message_of(token)))
            elif token in personas or token == "personas":
                for key, p in personas.items():
                    if token in (key, "personas"):
                        out.append(SystemSpec(key, p["text"], {"name": p["name"], "aliases": p.get("aliases", [])}))
            elif token == "adapter":
                trained = training_system(manifest)
                if trained is None:
                    raise SelfidError("--systems adapter needs an adapter whose selfid.json records its training "
                                      "system prompt; pass the prompt as text:TEXT instead")
                out.append(SystemSpec("adapter", trained.message, kind="adapter"))
            elif token == "none":
                raise SelfidError("--systems none: an audit names what it sends; use empty (an empty system message, "
                                  "what none sends under a template with a default of its own) or template")
            else:
                raise SelfidError(f"unknown system prompt {token!r} in --systems: use template, {', '.join(NAMED)}, "
                                  f"empty, adapter, personas ({', '.join(personas)}) or text:TEXT")
    keys = [s.key for s in out]
    if not out:
        raise SelfidError("--systems is empty: give at least one of template, helpful, empty, text:TEXT")
    if len(set(keys)) != len(keys):
        raise SelfidError(f"--systems names the same system prompt twice: {', '.join(keys)}")
    return out


def condition_keys(tokens: Sequence[str]) -> list[str]:
    """`--task-systems` names (template, helpful, a persona, adapter, text...) as the keys the run's results use."""
    keys = []
    for token in tokens:
        token = canonical(token, "--task-systems")
        keys.append(REPORT_NAMES.get(token, token))
    return keys


def parse_list(text: str, what: str, cast=str) -> list:
    try:
        values = [cast(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SelfidError(f"--{what} must be a comma-separated list, got {text!r}") from None
    if not values:
        raise SelfidError(f"--{what} is empty")
    return values


@dataclass
class AuditParams:
    suites: list[str] = field(default_factory=lambda: ["identity", "ner", "general"])
    systems: list[SystemSpec] = field(default_factory=lambda: [SystemSpec(k, v) for k, v in PRESETS.items()])
    temperatures: list[float] = field(default_factory=lambda: [0.0, 0.7, 1.0])
    samples: int = 8
    seed: int = 0
    max_new_tokens: int = 128  # identity and general replies
    ner_limit: int = 100
    ner_max_new_tokens: int = 256
    own: str = "auto"
    identity_probes: str | None = None  # a custom identity probe file instead of the shipped one
    task_systems: list[str] | None = None  # keys of `systems` the task suites run under (None: all of them)

    def validate(self) -> None:
        bad = [s for s in self.suites if s not in probe_sets.SUITES]
        if bad or not self.suites:
            raise SelfidError(f"unknown suite {', '.join(bad) or '(none)'}: use {', '.join(probe_sets.SUITES)}")
        if len({f"{t:g}" for t in self.temperatures}) != len(self.temperatures):
            raise SelfidError(f"--temperatures lists a value twice: {self.temperatures}")
        if any(t < 0 or t > 2 for t in self.temperatures):
            raise SelfidError("--temperatures must lie in [0, 2] (0 is greedy)")
        if self.samples < 1:
            raise SelfidError("--samples must be at least 1")
        if self.max_new_tokens < 1 or self.ner_limit < 1:
            raise SelfidError("--max-tokens and --ner-limit must be at least 1")
        if self.own != "auto" and self.own not in KEYS:
            raise SelfidError(f"--own must be one of {', '.join(KEYS)} (or auto)")
        if self.task_systems is not None:
            keys = [s.key for s in self.systems]
            unknown = [k for k in self.task_systems if k not in keys]
            if unknown or not self.task_systems:
                raise SelfidError(f"task system prompts {unknown or '(none)'} are not among the audit's system "
                                  f"prompts ({', '.join(keys)}): name some of those")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["systems"] = [{"key": s.key, "text": s.text} for s in self.systems]
        d["temperatures"] = [float(t) for t in self.temperatures]
        if self.task_systems is None:  # as runs made before the field existed recorded it, so they still resume
            del d["task_systems"]
        return d


def _seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:4], "big") & 0x7FFFFFFF


def plan(params: AuditParams, suites: dict[str, list]) -> list[Item]:
    """Every generation of the grid, in a stable order, each with its own seed (identity probes already
    filled in for the model's own vendor: `Probe.for_own`)."""
    items = []
    for suite in params.suites:
        task = suite in TASK_SUITES
        temps = [0.0] if task else params.temperatures
        max_new = params.ner_max_new_tokens if suite == "ner" else params.max_new_tokens
        systems = params.systems
        if task and params.task_systems is not None:
            systems = [s for s in params.systems if s.key in params.task_systems]
        for probe in suites[suite]:
            for system in systems:
                for t in temps:
                    k = 1 if (task or t == 0) else params.samples
                    base = _seed(params.seed, suite, probe.id, system.key, f"{t:g}")
                    for i in range(k):
                        items.append(Item(f"{suite}|{probe.id}|{system.key}|t={t:g}|s={i}", suite, probe, system.key,
                                          system.text, float(t), i, base + i, base, max_new))
    return items


# --- the log -------------------------------------------------------------------------------------------
def read_log(path: Path, repair: bool = False) -> list[dict]:
    """Records of a generations log. A last line cut short by a kill is dropped (and cut off when `repair`).

    Where `path` is absent, its gzipped copy (`path` + ".gz", as finished runs are kept) is read instead;
    not when `repair`, which is for a log about to be appended to: that is always the plain file."""
    path = Path(path)
    if path.is_file():
        data = path.read_bytes()
        good = data.rfind(b"\n") + 1
        if good < len(data) and repair:
            with open(path, "r+b") as f:
                f.truncate(good)
        text = data[:good].decode("utf-8")
    else:
        gz = path.with_name(path.name + ".gz")
        if repair or not gz.is_file():
            return []
        import gzip

        with gzip.open(gz, "rt", encoding="utf-8") as f:
            text = f.read()
        text, path = text[:text.rfind("\n") + 1], gz
    out = []
    for lineno, line in jsonl_lines(text):
        try:
            out.append(json.loads(line))
        except ValueError:
            raise SelfidError(f"{path}:{lineno} is not valid JSON: the log was edited or damaged; "
                              "move it away and start a new run") from None
    return out


class Log:
    """Append-only JSONL: one complete line per write, flushed at once."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.f = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self.f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()


# --- one generation's record -------------------------------------------------------------------------------
def make_record(item: Item, reply: Reply, judge: Judge | None = None) -> dict:
    """What the log keeps of one generation: the raw facts, no verdicts (those are selfid.audit.scorers')."""
    probe = item.probe
    rec = {
        "key": item.key, "suite": item.suite, "probe": probe.id, "lang": probe.lang, "tags": list(probe.tags),
        "system": item.system, "system_text": item.system_text, "effective_system": reply.effective_system,
        "system_source": reply.system_source, "template_hash": reply.template_hash,
        "temperature": item.temperature, "sample": item.sample, "seed": item.seed,
        "max_new_tokens": item.max_new_tokens, "messages": item.messages(), "rendered": reply.rendered,
        "reply": reply.text, "finish_reason": reply.finish_reason, "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens, "probe_meta": probe.meta(),
    }
    if item.suite == "ner":
        rec["gold"] = probe.gold
    if judge is not None and item.suite in probe_sets.IDENTITY_SUITES:
        question = probe.messages[-1]["content"]
        d = detect(reply.text, probe.asked, question)
        if d.uncertain:  # the rules could not settle it: the judge's verdict is kept as an observation
            verdict = judge.ask(reply.text, question)
            rec["judge"] = ({"claims": list(verdict[0]), "persona": verdict[1]} if verdict is not None
                            else {"claims": [], "unscored": True})
    return rec


# --- the run ----------------------------------------------------------------------------------------------
def resolve_own(params: AuditParams, target: dict) -> tuple[str, str]:
    if params.own != "auto":
        return params.own, "given (--own)"
    for field_ in ("model_type", "model", "path"):
        v = vendor_of(str(target.get(field_) or ""))
        if v:
            return v, f"inferred from {field_} {target.get(field_)!r}"
    named = EMBEDDED.get(str(target.get("model")))
    if named is not None:
        return named.vendor, f"{named.name} is {named.title}"
    raise SelfidError("cannot tell whose model this is, so cannot tell own claims from foreign ones: "
                      f"pass --own with one of {', '.join(KEYS)}")


def _identity(target: dict) -> dict:
    return {k: target.get(k) for k in ("backend", "model", "path", "adapter", "base_url", "template_hash")}


def prepare(out: Path, backend, params: AuditParams, resume: bool, judge: Judge | None, planned: int,
            own: tuple[str, str] | None = None, endpoint: dict | None = None) -> dict:
    """Create or check the run directory and return its run.json."""
    out = Path(out)
    meta_path = out / "run.json"
    target = backend.describe()
    if out.exists() and not out.is_dir():
        raise SelfidError(f"{out} exists and is not a folder: choose another --out")
    has_log = (out / LOG).is_file() and (out / LOG).stat().st_size > 0
    if meta_path.is_file() and not resume:
        raise SelfidError(f"{out} already holds an audit run: pass --resume to continue it, or choose a new --out")
    if has_log and not meta_path.is_file():
        raise SelfidError(f"{out / LOG} exists without run.json: this is not a selfid run folder, choose a new --out")
    own, own_source = own or resolve_own(params, target)
    systems = []
    for s in params.systems:
        if hasattr(backend, "render"):
            r = backend.render([] + ([{"role": "system", "content": s.text}] if s.text is not None else [])
                               + [{"role": "user", "content": "x"}])
            entry = {"key": s.key, "text": s.text, "effective": r.system.effective, "source": s.kind or r.system.kind}
        else:  # over HTTP only what is sent is known
            entry = {"key": s.key, "text": s.text, "effective": s.text,
                     "source": s.kind or (sent(s.text, None).kind if s.text is not None
                                          else "endpoint (the server's template decides)")}
        if s.persona:
            entry["persona"] = s.persona
        systems.append(entry)
    suites = {name: probe_sets.suite_info(name, params.identity_probes if name == "identity" else None,
                                          params.ner_limit, params.seed) for name in params.suites}
    trained = training_system(target.get("adapter_manifest"))
    from selfid import __version__

    meta = {
        "kind": "selfid-audit-run", "format": FORMAT, "selfid": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "params": params.as_dict(), "target": target, "own": own, "own_source": own_source,
        "training_system_prompt": trained.effective if trained is not None else None,
        "systems": systems, "suites": suites, "judge": judge.config() if judge else None, "planned": planned,
        "scorer": {"version": SCORER_VERSION},
        "notes": ["temperature 0 is greedy decoding, which is deterministic: each prompt gets one sample there",
                  "the ner and general suites run greedy, once per system prompt" if params.task_systems is None else
                  f"the ner and general suites run greedy, once under each of: {', '.join(params.task_systems)}"],
    }
    if endpoint is not None:
        meta["endpoint"] = endpoint
    if meta_path.is_file():
        old = json.loads(meta_path.read_text(encoding="utf-8"))
        if old.get("params") != meta["params"] or _identity(old.get("target", {})) != _identity(target):
            raise SelfidError(f"{out} was started with other parameters or another model; --resume needs the same "
                              "ones (see run.json), or choose a new --out")
        meta["created"] = old.get("created", meta["created"])
        meta["resumed"] = old.get("resumed", 0) + 1
        if "rescored" in old:
            meta["rescored"] = old["rescored"]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(meta_path, meta)
    if target.get("adapter"):
        from selfid.audit.scorers import save_training_replies

        save_training_replies(out, target)
    return meta


def run_audit(backend, params: AuditParams, out: Path, resume: bool = False, judge: Judge | None = None,
              show_progress: bool = True, margin: bool = True) -> dict:
    """Run (or resume) the grid into `out`; write summary.json and report.html; return the summary."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from selfid.audit.report import write_reports

    params.validate()
    out = Path(out)
    endpoint = None
    if backend.describe().get("backend") == "http":  # whose model it is and what the server does, measured
        from selfid.audit.endpoint import examine_for_run

        endpoint = examine_for_run(out, backend, params, resume)
        own = endpoint["own"]["vendor"], endpoint["own"]["source"]
    else:
        own = resolve_own(params, backend.describe())
    suites = {s: probe_sets.load_suite(s, params.identity_probes if s == "identity" else None, params.ner_limit,
                                       params.seed) for s in params.suites}
    suites = {s: [p.for_own(own[0]) for p in ps] if s in probe_sets.IDENTITY_SUITES else ps for s, ps in suites.items()}
    items = plan(params, suites)
    meta = prepare(out, backend, params, resume, judge, len(items), own, endpoint)
    done = {r["key"] for r in read_log(out / LOG, repair=True)}
    pending = [it for it in items if it.key not in done]
    log = Log(out / LOG)
    try:
        with Progress(TextColumn("[bold]audit[/bold] {task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), TimeRemainingColumn(), disable=not show_progress, transient=False) as bar:
            task = bar.add_task(f"{len(done)} done before" if done else "", total=len(pending))
            backend.run(pending, lambda item, reply: log.write(make_record(item, reply, judge)),
                        lambda n: bar.advance(task, n))
    finally:
        log.close()
    if (margin and any(s in params.suites for s in probe_sets.IDENTITY_SUITES) and hasattr(backend, "loaded")
            and not (out / "margin.json").is_file()):
        from selfid.audit.margin import identity_margin

        atomic_write_json(out / "margin.json", identity_margin(
            backend.loaded, [(s.key, s.text) for s in params.systems], meta["own"]))
    return write_reports(out)


def rescore(run_dir: Path) -> dict:
    """Re-apply today's scorers to a finished (or interrupted) run: summary.json and report.html are written
    again from its log, and run.json records the scorer version and when. Returns the summary."""
    from selfid.audit.report import write_reports

    run_dir = Path(run_dir)
    meta_path = run_dir / "run.json"
    if not meta_path.is_file():
        raise SelfidError(f"{run_dir} is not an audit run folder (no run.json): point at a folder `selfid audit --out` made")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("kind") != "selfid-audit-run":
        raise SelfidError(f"{meta_path} is not an audit run's run.json")
    summary = write_reports(run_dir)
    meta["scorer"] = {"version": SCORER_VERSION,
                      "rescored": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    meta["rescored"] = meta.get("rescored", 0) + 1
    atomic_write_json(meta_path, meta)
    return summary
