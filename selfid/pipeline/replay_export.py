"""`selfid replay`: the identity replay as a product of its own, for people who train with another tool.

The same replay `selfid train` mixes in (selfid/pipeline/replay.py `collect`: the identity question pool, operator
personas, after-task turns, the copy cap, minimal pairs, the preference pairs and the audit's scorers), sampled from
any model selfid loads (in-process) or from an OpenAI-compatible endpoint (vLLM, llama.cpp, LLaMA-Factory's api),
sized for the user's data and written, in one folder, in the formats other trainers load (selfid/data/
trainer_formats.py), with replay.json saying what was made and how.

Over HTTP the template's default system prompt is not visible, so the model's own vendor comes from --own, else from
the model folder or .gguf named by --own-from, else from the model's own greedy answers to a few identity questions
under its default system prompt, as `selfid audit --own auto` finds it (selfid/audit/endpoint.py `resolve_own`).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from selfid import __version__
from selfid.audit import endpoint
from selfid.audit.backends import open_backend
from selfid.config import IdentityReplay
from selfid.data import replay_set, trainer_formats
from selfid.data.mix import scaled, share
from selfid.data.readers import read_file
from selfid.errors import SelfidError
from selfid.io import atomic_dir, check_can_create, sha256_file
from selfid.pipeline import replay
from selfid.system_prompt import SERVING, canonical, resolve
from selfid.vendors import KEYS

OWN_FILES = ("selfid/replies.jsonl", "selfid/pairs.jsonl")  # the kept replies and pairs in selfid's own form


def size(rows: int | None, fraction: float | None, data: Path | None, data_format: str = "auto") -> dict:
    """How many SFT rows to write: `rows`, or the share `fraction` of a mix with the records of `data` (counted with
    selfid's readers: F / (1 - F) x records, as `selfid train` sizes its replay); neither: every conversation once."""
    if rows is not None and (fraction is not None or data is not None):
        raise SelfidError("give either --rows N or --fraction F with --data FILE, not both")
    if rows is not None:
        if rows < 1:
            raise SelfidError(f"--rows {rows}: give a number of rows of at least 1")
        return {"rows": rows, "how": "--rows"}
    if (fraction is None) != (data is None):
        raise SelfidError("--fraction F sizes the replay against your data: give it with --data FILE (the training file "
                          "the replay is mixed into)")
    if fraction is None:
        return {"rows": None, "how": "every kept conversation under every system prompt, once"}
    if not 0 < fraction < 1:
        raise SelfidError(f"--fraction {fraction}: give the replay's share of the mix, between 0 and 1 (e.g. 0.05)")
    records = len(read_file(data, data_format))
    return {"rows": share(records, fraction), "how": "--fraction", "fraction": fraction,
            "data": {"path": str(Path(data).expanduser()), "records": records, "sha256": sha256_file(Path(data).expanduser())}}


def rendering_systems(settings: list[str] | None, template_default: str | None, over_http: bool,
                      log=print) -> list[dict]:
    """The system prompts the kept replies are written under: `settings` in selfid's vocabulary (default: the serving
    set, template, helpful and empty), as {"setting", "message"} (message None: no system message, so the trainer's
    chat template inserts its own)."""
    out = []
    for setting in settings or list(SERVING):
        word = canonical(setting, "--system")
        if word == "adapter":
            raise SelfidError("--system adapter names the prompt an adapter was trained under; the replay is for a run "
                              "not trained yet: give the prompt itself")
        if word == "none" and over_http:
            raise SelfidError("--system none depends on whether the served template inserts a system prompt, which an "
                              "endpoint does not say: use empty (an empty system message) or template (none sent)")
        chosen = resolve(word, template_default, "--system")
        out.append({"setting": setting, "message": chosen.message})
    replay.check_heldout([s["message"] for s in out if s["message"]], "system prompt", log)
    return list({s["message"]: s for s in out}.values())  # one row per message sent


def run(out: Path, rep: IdentityReplay, *, model: str | None = None, base_url: str | None = None,
        model_name: str | None = None, api_key: str | None = None, own: str = "auto", own_from: str | None = None,
        systems: list[str] | None = None, formats: list[str] | None = None, rows: int | None = None,
        fraction: float | None = None, data: Path | None = None, device: str = "auto", dtype: str = "auto",
        batch_size: int | None = None, concurrency: int = 8, retries: int = 6, progress: bool = True, log=print,
        backend=None, loaded=None) -> dict:
    """Build the replay and write it to `out` (a new folder); returns replay.json's content. `backend` (with `loaded`,
    or None for an endpoint) replaces the one the options would open (tests, or a caller that holds a model)."""
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SelfidError(f"{out} already exists and is not empty: choose a new --out (nothing there is replaced)")
    check_can_create(out)  # before minutes of sampling, not after
    formats = formats or list(trainer_formats.FORMATS)
    sizing = size(rows, fraction, data)
    if backend is None:
        backend, loaded = _open(model, base_url, model_name, api_key, own_from, device, dtype, batch_size, concurrency,
                                retries)
    over_http = loaded is None
    rendered = rendering_systems(systems, None if over_http else loaded.chat.default_system, over_http, log)
    who = _own(backend, loaded, rep, own)
    log(f"own vendor: {who['vendor']} ({who['source']})")
    rep = rep.model_copy(update={"own": who["vendor"]})
    replies, pairs, stats = replay.collect(backend, who["vendor"], rep, progress, log,
                                           None if over_http else loaded.generation_defaults)
    log(replay.summary(stats))
    pool = replay_set.conversations(replies, [s["message"] for s in rendered])
    files: dict[str, str] = {
        OWN_FILES[0]: "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in replies),
        OWN_FILES[1]: "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs),
    }
    written: dict[str, dict] = {}
    for fmt in formats:
        own_pool = [c for c in pool if trainer_formats.expressible(fmt, c)]
        sft = own_pool if sizing["rows"] is None else scaled(own_pool, sizing["rows"], random.Random(rep.seed))
        paths = trainer_formats.render(fmt, sft, pairs)
        files.update(paths)
        sft_file, pairs_file = trainer_formats.FILES[fmt]
        written[fmt] = {"sft": {"file": sft_file, "rows": len(sft)}, "pairs": {"file": pairs_file, "rows": len(pairs)},
                        "use": trainer_formats.USE[fmt]}
        if len(own_pool) < len(pool):
            written[fmt]["note"] = (f"{len(pool) - len(own_pool)} conversations under the empty system prompt left out: "
                                    "LLaMA-Factory replaces an empty system prompt with its template's default")
    info = trainer_formats.dataset_info(formats)
    if info is not None:
        files[f"{trainer_formats.LF_FOLDER}/dataset_info.json"] = info
    record = {
        "made_by": f"selfid {__version__} (selfid replay)",
        "model": stats.pop("backend"), "own": who, "rendered_under": rendered,
        "persona_prompts": [p for p in stats["personas"] if p.get("given")],
        "sizing": sizing, "replay": stats, "formats": written,
    }
    with atomic_dir(out) as tmp:
        for rel, text in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(text, encoding="utf-8")
        record["sha256"] = {rel: sha256_file(tmp / rel) for rel in sorted(files)}
        (tmp / "replay.json").write_text(json.dumps(record, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    for fmt, w in written.items():
        log(f"{fmt}: {w['sft']['rows']} conversations ({w['sft']['file']}), {w['pairs']['rows']} preference pairs "
            f"({w['pairs']['file']})" + (f"; {w['note']}" if w.get("note") else ""))
    log(f"wrote {out} (replay.json says what was made, from which model, and how each trainer loads it)")
    return record


def _open(model, base_url, model_name, api_key, own_from, device, dtype, batch_size, concurrency, retries):
    """(backend, loaded): the model in-process (every request in one engine call), or the endpoint (loaded None)."""
    if base_url:
        backend, loaded = open_backend(model, None, base_url, model_name, api_key, concurrency=concurrency,
                                       retries=retries, own_from=own_from)  # --model too: one line saying which
        backend.after_failure = "Nothing was written: {fix} and run the replay again"
        return backend, loaded
    if own_from:
        raise SelfidError("--own-from is for an endpoint (--base-url); in-process, --model names the model")
    # the audit's in-process backend (one device or several), every request in one engine call, as replay.in_process
    return open_backend(model, device=device, dtype=dtype, batch_size=batch_size, rows_per_call=sys.maxsize)


def _own(backend, loaded, rep: IdentityReplay, own: str) -> dict:
    """{"vendor", "source"}: --own; in-process, the model's template or name; over HTTP, --own-from or its answers."""
    if own != "auto":
        return {"vendor": _known(own), "source": "given (--own)"}
    if loaded is not None:
        return {"vendor": replay.own_vendor(loaded, rep),
                "source": "its chat template's default system prompt, else its name or architecture"}
    reference = endpoint.read_reference(backend.reference) if backend.reference else None
    served = [backend.model_name, *endpoint.listed_models(backend)]
    found = endpoint.resolve_own("auto", reference, served, lambda: endpoint.calibrate(backend))
    return {"vendor": found["vendor"], "source": found["source"]}


def _known(own: str) -> str:
    if own not in KEYS:
        raise SelfidError(f"--own {own!r} is not a vendor selfid knows: use one of {', '.join(KEYS)}")
    return own
