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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from selfid import __version__
from selfid.audit import probes as probe_sets, scorers
from selfid.audit.backends import Item, Reply
from selfid.audit.detect import Judge, detect
from selfid.audit.endpoint import examine_for_run
from selfid.audit.log import LOG, MARGIN, META, RENAMED, Log, migrate_record, read_log, read_margin, read_meta
from selfid.audit.report import write_reports
from selfid.audit.scorers import VERSION as SCORER_VERSION, save_training_replies
from selfid.errors import SelfidError
from selfid.io import atomic_write_json, check_out_folder
from selfid.manifest import training_system
from selfid.model.embedded import EMBEDDED
from selfid.progress import Progress
from selfid.system_prompt import NAMED, OLD_TEXT_PREFIX, SERVING, SystemPrompt, canonical, resolve, sent
from selfid.vendors import KEYS, vendor_of

FORMAT = 1
TASK_SUITES = ("ner", "general")
# a generation's seed derives from the name its system prompt had in runs before the one vocabulary, so a run
# made today draws the samples the study's runs drew
_SEED_NAME = {new: old for old, new in RENAMED.items()}


def audit_systems(values: Sequence[str], template_default: str | None = None,
                  training: SystemPrompt | None = None) -> dict[str, SystemPrompt]:
    """`--systems` values (`template,helpful,empty,adapter,personas,text:TEXT`) as {name in the run's results:
    SystemPrompt}, each setting resolved by selfid.system_prompt.resolve. A text runs to the end of its value
    (it may hold commas). `template_default`: the chat template's own system prompt (None: not known, as over
    HTTP); `training`: the audited adapter's training SystemPrompt, for `adapter`. Older spellings (default,
    train, custom:TEXT) are read with a deprecation message."""
    out: dict[str, SystemPrompt] = {}
    texts = 0
    personas = probe_sets.personas()

    def add(key: str, chosen: SystemPrompt) -> None:
        if key in out:
            raise SelfidError(f"--systems names the same system prompt twice: {key}")
        out[key] = chosen

    for value in values:
        rest = value
        while rest:
            head, sep, tail = rest.partition(",")
            if head.strip().startswith(("text:", OLD_TEXT_PREFIX)):
                texts += 1
                add("text" if texts == 1 else f"text{texts}", resolve(rest.strip(), template_default, "--systems"))
                break
            rest = tail if sep else ""
            token = canonical(head.strip(), "--systems")
            if not token:
                continue
            if token in ("template", "empty", *NAMED):
                add(token, resolve(token, template_default, "--systems"))
            elif token in personas or token == "personas":
                for key, p in personas.items():
                    if token in (key, "personas"):
                        add(key, sent(p["text"], template_default, "--systems"))
            elif token == "adapter":
                if training is None:
                    raise SelfidError("--systems adapter needs an adapter whose selfid.json records its training "
                                      "system prompt; pass the prompt as text:TEXT instead")
                add("adapter", resolve("adapter", template_default, "--systems", training))
            elif token == "none":
                raise SelfidError("--systems none: an audit names what it sends; use empty (an empty system message, "
                                  "what none sends under a template with a default of its own) or template")
            else:
                raise SelfidError(f"unknown system prompt {token!r} in --systems: use template, {', '.join(NAMED)}, "
                                  f"empty, adapter, personas ({', '.join(personas)}) or text:TEXT")
    if not out:
        raise SelfidError("--systems is empty: give at least one of template, helpful, empty, text:TEXT")
    return out


def serving_systems(template_default: str | None = None) -> dict[str, SystemPrompt]:
    """The system prompts users serve with (selfid.system_prompt.SERVING), as an audit names them."""
    return audit_systems([",".join(SERVING)], template_default)


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
    """The grid: what an audit generates. Its size has no defaults here: `selfid audit` has its options', the
    study and the demo a selfid.study.scale.Scale."""

    suites: list[str]
    systems: dict[str, SystemPrompt]  # {name in the run's results: the system prompt} (`audit_systems`)
    temperatures: list[float]
    samples: int  # per prompt at each temperature above 0
    max_new_tokens: int  # identity and general replies
    ner_limit: int
    ner_max_new_tokens: int = 256
    seed: int = 0
    own: str = "auto"
    identity_probes: str | None = None  # a custom identity probe file instead of the shipped one
    task_systems: list[str] | None = None  # names in `systems` the task suites run under (None: all of them)

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
            unknown = [k for k in self.task_systems if k not in self.systems]
            if unknown or not self.task_systems:
                raise SelfidError(f"task system prompts {unknown or '(none)'} are not among the audit's system "
                                  f"prompts ({', '.join(self.systems)}): name some of those")

    def as_dict(self) -> dict:
        """As run.json records it (a resumed run must ask for the same)."""
        d = asdict(self)
        d["systems"] = [{"key": key, "text": chosen.message} for key, chosen in self.systems.items()]
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
            systems = {k: v for k, v in params.systems.items() if k in params.task_systems}
        for probe in suites[suite]:
            for key, chosen in systems.items():
                for t in temps:
                    k = 1 if (task or t == 0) else params.samples
                    base = _seed(params.seed, suite, probe.id, _SEED_NAME.get(key, key), f"{t:g}")
                    for i in range(k):
                        items.append(Item(f"{suite}|{probe.id}|{key}|t={t:g}|s={i}", suite, probe, key,
                                          chosen.message, float(t), i, base + i, base, max_new))
    return items


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
    meta_path = out / META
    target = backend.describe()
    if out.exists() and not out.is_dir():
        raise SelfidError(f"{out} exists and is not a folder: choose another --out")
    has_log = (out / LOG).is_file() and (out / LOG).stat().st_size > 0
    check_out_folder(out, ("summary.json", "report.html", MARGIN), META)
    if meta_path.is_file() and not resume:
        raise SelfidError(f"{out} already holds an audit run: pass --resume to continue it, or choose a new --out")
    if has_log and not meta_path.is_file():
        raise SelfidError(f"{out / LOG} exists without run.json: this is not a selfid run folder, choose a new --out")
    own, own_source = own or resolve_own(params, target)
    systems = []
    personas = probe_sets.personas()
    for key, chosen in params.systems.items():
        if hasattr(backend, "render"):  # what the model saw, from its own template
            r = backend.render(([{"role": "system", "content": chosen.message}] if chosen.message is not None else [])
                               + [{"role": "user", "content": "x"}])
            entry = {"key": key, "text": chosen.message, "effective": r.system.effective, "source": chosen.kind}
        else:  # over HTTP only what is sent is known
            entry = {"key": key, "text": chosen.message, "effective": chosen.message,
                     "source": "endpoint (the server's template decides)" if chosen.kind == "template" else chosen.kind}
        if key in personas:
            entry["persona"] = {"name": personas[key]["name"], "aliases": personas[key].get("aliases", [])}
        systems.append(entry)
    suites = {name: probe_sets.suite_info(name, params.identity_probes if name == "identity" else None,
                                          params.ner_limit, params.seed) for name in params.suites}
    trained = training_system(target.get("adapter_manifest"))
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
        old = read_meta(out)
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
        save_training_replies(out, target)
    return meta


def run_audit(backend, params: AuditParams, out: Path, resume: bool = False, judge: Judge | None = None,
              show_progress: bool = True, margin: bool = True) -> dict:
    """Run (or resume) the grid into `out`; write summary.json and report.html; return the summary.

    Each generation is scored as it is logged (from its logged line, as a later read of the log would see it), so the
    reports are made without reading the log back; with an endpoint the scoring overlaps the requests in flight."""
    params.validate()
    out = Path(out)
    endpoint = None
    if backend.describe().get("backend") == "http":  # whose model it is and what the server does, measured
        endpoint = examine_for_run(out, backend, params, resume)
        own = endpoint["own"]["vendor"], endpoint["own"]["source"]
    else:
        own = resolve_own(params, backend.describe())
    suites = {s: probe_sets.load_suite(s, params.identity_probes if s == "identity" else None, params.ner_limit,
                                       params.seed) for s in params.suites}
    suites = {s: [p.for_own(own[0]) for p in ps] if s in probe_sets.IDENTITY_SUITES else ps for s, ps in suites.items()}
    items = plan(params, suites)
    meta = prepare(out, backend, params, resume, judge, len(items), own, endpoint)
    ctx = scorers.context_for(read_meta(out), out)
    scored = [scorers.score(r, ctx) for r in read_log(out / LOG, repair=True)]
    done = {s.key for s in scored}
    pending = [it for it in items if it.key not in done]
    log = Log(out / LOG)

    def logged(item, reply) -> None:
        line = log.write(make_record(item, reply, judge))
        scored.append(scorers.score(migrate_record(json.loads(line)), ctx))
    try:
        with Progress(TextColumn("[bold]audit[/bold] {task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), TimeRemainingColumn(), disable=not show_progress, transient=False,
                      label="audit", unit="generations") as bar:
            task = bar.add_task(f"{len(done)} done before" if done else "", total=len(pending))
            backend.run(pending, logged, lambda n: bar.advance(task, n))
    finally:
        log.close()
    if (margin and any(s in params.suites for s in probe_sets.IDENTITY_SUITES) and hasattr(backend, "loaded")
            and not (out / MARGIN).is_file()):
        from selfid.audit.margin import identity_margin  # torch

        atomic_write_json(out / MARGIN, identity_margin(
            backend.loaded, [(k, chosen.message) for k, chosen in params.systems.items()], meta["own"]))
    return write_reports(out, (read_meta(out), scored, read_margin(out)))


def rescore(run_dir: Path) -> dict:
    """Re-apply today's scorers to a finished (or interrupted) run: summary.json and report.html are written
    again from its log, and run.json records the scorer version and when. Returns the summary."""
    run_dir = Path(run_dir)
    meta = read_meta(run_dir)  # in today's vocabulary, as it is written back
    if meta.get("kind") != "selfid-audit-run":
        raise SelfidError(f"{run_dir / META} is not an audit run's run.json")
    if not (run_dir / LOG).is_file() and not (run_dir / (LOG + ".gz")).is_file():
        raise SelfidError(f"{run_dir} has no {LOG} (or .gz): there are no replies to score again, and its "
                          "summary.json is left as it is")
    summary = write_reports(run_dir)
    meta["scorer"] = {"version": SCORER_VERSION,
                      "rescored": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    meta["rescored"] = meta.get("rescored", 0) + 1
    atomic_write_json(run_dir / META, meta)
    return summary
