"""What an OpenAI-compatible endpoint does with a request, measured before an audit, and whose model it serves.

Over HTTP selfid sees only what the server sends back: the reply, `usage` and the headers. A server may
serve any model under any name (LLaMA-Factory's API lists `gpt-3.5-turbo` whatever it serves), render
system messages its own way (replace an empty one with its default, drop them, force its own) and
ignore parameters it does not support (seed, max_tokens). So, before the grid runs:

- the own vendor comes from `--own`, else from a model folder, adapter or `.gguf` the user names
  (`--own-from`), else from the model's own greedy answers to a few identity questions under its
  default system prompt (recorded with the replies). A served model name is never enough, and
  placeholder names (gpt-3.5-turbo, default, ...) are no evidence at all; when the sources are silent
  or disagree, the audit stops and says what to pass;
- a preflight sends the same question under every system prompt of the audit (and none and an empty
  one) and compares `usage.prompt_tokens` with each other and, when the template is known locally,
  with the token counts that template gives: a condition that gets the same prompt as another is
  marked as a duplicate of it;
- it checks that the same seed repeats a sampled reply, that temperature 0 repeats itself and that
  max_tokens caps the reply, and lists what the endpoint ignores.

The result is one JSON block, run.json's "endpoint".
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from selfid.audit.backends import first_choice
from selfid.audit.detect import classify
from selfid.audit.log import META, read_meta
from selfid.audit.probes import load_suite
from selfid.errors import SelfidError
from selfid.io import read_text_bounded
from selfid.manifest import read as read_manifest
from selfid.model.chat import ChatFormat
from selfid.model.embedded import EMBEDDED, ensure_embedded
from selfid.model.load import adapter_config
from selfid.model.trained_with import read_trained_with, template_warnings
from selfid.vendors import KEYS, vendor_of

# names servers and clients use for "whatever model is loaded": never evidence of whose model it is
PLACEHOLDERS = frozenset({"", "default", "model", "models", "local", "local-model", "any", "none", "unknown", "test",
                          "llm", "chat", "assistant", "base", "main", "custom", "my-model", "served-model"})
_OPENAI_IDS = re.compile(r"^(?:gpt-(?:3\.5|4)[\w.-]*|gpt-4o[\w.-]*|text-davinci-\d+|davinci|o[134](?:-[\w-]+)?)$", re.I)

# greedy questions asked under the endpoint's default (no system message) to hear whose model it says it is
CALIBRATION = ("en-direct-01", "en-name-01", "en-maker-01", "en-maker-02",
               "zh-direct-01", "zh-name-01", "zh-maker-01", "zh-maker-02")
AGREE = 0.75  # share of calibration replies that must claim one vendor (and at most 1 - AGREE any other)
QUESTION = "Who are you?"  # the user turn of the system-prompt preflight
HEADER = {"x-selfid-preflight": "1"}
REPLACED = "treated as no system message"  # marks preflight requests in the server's log


def is_placeholder(name: str | None) -> bool:
    """A served model name that says nothing about the model: gpt-3.5-turbo, gpt-4, default, model, ..."""
    n = (name or "").strip().lower()
    return n in PLACEHOLDERS or bool(_OPENAI_IDS.match(n))


# --- a local copy the user names (--own-from) -------------------------------------------------------------
@dataclass
class Reference:
    path: str
    vendor: str | None
    why: str  # what the vendor was read from
    tokenizer: object | None = None  # the chat template's tokenizer, for expected token counts
    template_hash: str | None = None
    trained_with: dict | None = None  # an adapter folder's account of its training (selfid/model/trained_with.py)
    template_warnings: tuple[str, ...] = ()  # where that training template differs from the model's own


def read_reference(spec: str) -> Reference:
    """A model folder, an adapter folder, a selfid.json, a .gguf file or an embedded model name."""
    if spec in EMBEDDED:
        return _with_tokenizer(Reference(spec, EMBEDDED[spec].vendor, f"{spec} is {EMBEDDED[spec].title}"),
                               ensure_embedded(spec))
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return _gguf_reference(path)
    if path.is_file() and path.name == "selfid.json":
        path = path.parent
    if not path.is_dir():
        raise SelfidError(f"--own-from {spec}: no such folder or .gguf file; name the model folder, adapter folder, "
                          "selfid.json or .gguf file the endpoint serves")
    manifest = read_manifest(path)
    base = manifest.base_model if manifest is not None else {}
    model_type = None
    if (path / "config.json").is_file():
        model_type = json.loads(read_text_bounded(path / "config.json", what="a model's config.json")).get("model_type")
    elif (path / "adapter_config.json").is_file() and not base:
        base = {"name": adapter_config(path).get("base_model_name_or_path")}
    candidates = [("config.json model_type", model_type), ("selfid.json base model", base.get("name")),
                  ("selfid.json architecture", base.get("architecture")), ("folder name", path.name)]
    for why, value in candidates:
        if value in EMBEDDED:
            vendor = EMBEDDED[value].vendor
        else:
            vendor = vendor_of(str(value or ""))
        if vendor:
            ref = Reference(str(path), vendor, f"{why} {value!r}")
            break
    else:
        ref = Reference(str(path), None, "nothing in it names a model family")
    base_dir = next((Path(b) for b in (base.get("path"), base.get("name")) if b and Path(b).is_dir()), None)
    tokenizer_dir = path if (path / "tokenizer_config.json").is_file() else base_dir
    ref = _with_tokenizer(ref, tokenizer_dir)
    if (path / "adapter_config.json").is_file():
        own = ref if tokenizer_dir == base_dir else _with_tokenizer(Reference(str(base_dir), None, ""), base_dir)
        _with_training(ref, path, own.tokenizer if own.tokenizer is not None else ref.tokenizer)
    return ref


def _with_training(ref: Reference, folder: Path, own_tokenizer) -> None:
    """What an adapter folder says about its training, and where its template differs from the model's own: the
    base model's tokenizer's when the base is a local folder, else the one the adapter folder carries
    (LLaMA-Factory saves the model's own there unless the model had none)."""
    trained = read_trained_with(folder)
    ref.trained_with = trained.record()
    if own_tokenizer is None:
        return
    try:
        chat = ChatFormat(own_tokenizer)
    except SelfidError:  # no template to compare with
        return
    ref.template_warnings = tuple(template_warnings(trained, chat.template, chat.default_system))


def _with_tokenizer(ref: Reference, folder: Path | None) -> Reference:
    if folder is None:
        return ref
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        ref.tokenizer, ref.template_hash = tok, ChatFormat(tok).template_hash
    except Exception:  # no usable tokenizer or template: the preflight compares the server with itself only
        pass
    return ref


def _gguf_reference(path: Path) -> Reference:
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields

    def text(key: str) -> str | None:
        f = fields.get(key)
        return f.contents() if f is not None else None

    for key in ("general.architecture", "general.name", "general.basename"):
        vendor = vendor_of(text(key) or "")
        if vendor:
            return Reference(str(path), vendor, f"{key} {text(key)!r}")
    return Reference(str(path), None, "its metadata names no model family")


# --- requests ---------------------------------------------------------------------------------------------
@dataclass
class Answer:
    text: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    model: str | None


def ask(backend, messages: list[dict], temperature: float, max_tokens: int, seed: int | None = None) -> Answer:
    """One chat completion through the backend's client; a failure is a SelfidError saying what to check."""
    import openai

    extra = {} if seed is None else {"seed": seed}
    try:
        resp = backend.client.chat.completions.create(model=backend.model_name, messages=messages,
                                                      temperature=temperature, max_tokens=max_tokens, n=1,
                                                      extra_headers=HEADER, **extra)
        choice = first_choice(resp)
    except ValueError:  # a 200 whose body is not JSON, or has no choices
        raise SelfidError(f"{backend.base_url} answered the audit's first requests with something other than an "
                          "OpenAI chat completion: check that --base-url is the endpoint's /v1 address") from None
    except openai.APIError as e:
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        if isinstance(e, openai.APIStatusError):
            raise SelfidError(f"{backend.base_url} answered {e.status_code} to the audit's first requests ({msg}): "
                              f"check that it serves --model-name {backend.model_name!r}") from None
        raise SelfidError(f"could not reach {backend.base_url} ({msg}): check that the endpoint is up") from None
    usage = resp.usage
    return Answer(choice.message.content or "", choice.finish_reason, getattr(usage, "prompt_tokens", None),
                  getattr(usage, "completion_tokens", None), getattr(resp, "model", None))


def listed_models(backend) -> list[str]:
    """What GET /v1/models lists (empty when the server has no such route)."""
    try:
        return [m.id for m in backend.client.models.list()]
    except Exception:  # the route is optional in practice
        return []


# --- whose model ------------------------------------------------------------------------------------------
def calibrate(backend, max_tokens: int = 64) -> list[dict]:
    """The model's greedy answers to the calibration questions under its default (no system message)."""
    probes = {p.id: p for p in load_suite("identity")}
    chosen = [probes[i] for i in CALIBRATION]

    def one(p):
        a = ask(backend, [dict(m) for m in p.messages], 0.0, max_tokens)
        d = classify(a.text, p.asked, None, p.messages[-1]["content"])
        return {"probe": p.id, "prompt": p.messages[-1]["content"], "reply": a.text, "claims": list(d.claims)}

    with ThreadPoolExecutor(max_workers=max(1, min(len(chosen), getattr(backend, "concurrency", 4)))) as pool:
        return list(pool.map(one, chosen))


def _names(vendors) -> str:
    return ", ".join(vendors)  # the keys --own takes


def resolve_own(own: str, reference: Reference | None, served: Sequence[str],
                answers: Callable[[], list[dict]]) -> dict:
    """{"vendor", "source", "evidence"}: --own, else the named local copy, else the model's own answers."""
    what_to_pass = (f"pass --own with one of {', '.join(KEYS)}, or --own-from with the model folder, adapter or "
                    ".gguf file the endpoint serves")
    if own != "auto":
        return {"vendor": own, "source": "given (--own)", "evidence": {}}
    if reference is not None:
        if reference.vendor is None:
            raise SelfidError(f"--own-from {reference.path}: {reference.why}, so it cannot say whose model this is; "
                              f"pass --own with one of {', '.join(KEYS)}")
        return {"vendor": reference.vendor, "source": f"from --own-from {reference.path} ({reference.why})",
                "evidence": {}}
    names = sorted({n for n in served if n is not None})
    placeholders = [n for n in names if is_placeholder(n)]
    hinted = sorted({v for n in names if not is_placeholder(n) and (v := vendor_of(n))})
    replies = answers()
    n = len(replies)
    counts: dict[str, int] = {}
    for r in replies:
        for v in r["claims"]:
            counts[v] = counts.get(v, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])
    evidence = {"served_names": names, "placeholders": placeholders, "names_suggest": hinted,
                "calibration": replies, "claims": dict(ranked)}
    tally = ", ".join(f"{_names([v])} {k}/{n}" for v, k in ranked) or f"no vendor in {n} replies"
    top, k = ranked[0] if ranked else (None, 0)
    others = max((c for v, c in ranked[1:]), default=0)
    if top is None or k < AGREE * n or others > (1 - AGREE) * n:
        raise SelfidError(f"cannot tell whose model the endpoint serves: its greedy answers under its default system "
                          f"prompt claim {tally}"
                          + (f"; the served name {', '.join(placeholders)} is a placeholder, not evidence"
                             if placeholders else "")
                          + f". {what_to_pass}")
    if hinted and hinted != [top]:
        raise SelfidError(f"the served name points to {_names(hinted)} but the model's greedy answers claim {tally}. "
                          f"{what_to_pass}")
    source = f"the model's own greedy answers under its default system prompt ({tally})"
    if placeholders:
        source += f"; the served name {', '.join(placeholders)} is a placeholder and was not used"
    elif hinted:
        source += ", agreeing with the served name"
    return {"vendor": top, "source": source, "evidence": evidence}


# --- what the server does with system messages and parameters --------------------------------------------
def _rendered(reference: Reference | None, messages: list[dict]) -> str | None:
    if reference is None or reference.tokenizer is None:
        return None
    return reference.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _tokens(reference: Reference, text: str | None) -> int | None:
    return None if text is None else len(reference.tokenizer(text, add_special_tokens=False).input_ids)


def system_handling(backend, systems: dict, reference: Reference | None) -> dict:
    """Per system prompt of the audit: prompt tokens measured (and expected), what the server evidently did,
    and which earlier condition it duplicates."""
    user = [{"role": "user", "content": QUESTION}]
    sent = [("none", None), ("empty", "")] + [(key, chosen.message) for key, chosen in systems.items()]
    # a control: a long system text the server must count if it puts system messages in the prompt at all
    control = "Answer in English. " * 8
    sent += [("control", control.strip())]
    measured: dict[tuple, int | None] = {}
    for _, text in sent:
        if text not in measured:
            msgs = user if text is None else [{"role": "system", "content": text}] + user
            measured[text] = ask(backend, msgs, 0.0, 1).prompt_tokens
    if all(v is None for v in measured.values()):
        return {"reported": False, "note": "the endpoint reports no usage.prompt_tokens, so what it does with "
                                           "system messages cannot be measured", "conditions": {}}
    # each condition's prompt as the local template renders it (None: no template known), and its token count
    rendered = {text: _rendered(reference, user if text is None else [{"role": "system", "content": text}] + user)
                for text in measured}
    expected = {text: _tokens(reference, r) for text, r in rendered.items()}
    none, empty = measured[None], measured[""]
    reaches = measured[control.strip()] is not None and none is not None and measured[control.strip()] > max(none, empty or 0)
    audit = [(key, chosen.message) for key, chosen in systems.items()]
    default_key = next((k for k, t in audit if t is None), None)
    conditions: dict[str, dict] = {}
    for i, (key, text) in enumerate(audit):
        m, e = measured[text], expected[text]
        if m is None:
            verdict = "unknown (no prompt token count)"
        elif text is None:
            if e is not None:
                verdict = "the template's own default, as the local template renders it" if m == e else \
                    f"rendered differently from the local template ({m} tokens, expected {e})"
            elif empty is not None and m > empty:
                verdict = f"the server inserts a system prompt ({m - empty} tokens more than an empty one)"
            elif empty is not None and m == empty:
                verdict = "the server's own (an empty system message gets the same prompt, so its length is unknown)"
            else:
                verdict = "no system prompt inserted (fewer tokens than an empty one)"
        elif e is not None and m == e:
            verdict = "as sent"
        elif m == none and (e is None or e != expected[None]):
            verdict = (f"{REPLACED} (the same prompt as none: replaced or dropped)"
                       if text == "" or reaches else f"{REPLACED} (the server puts no system message in the prompt)")
        elif e is not None:
            verdict = f"rendered differently from the local template ({m} tokens, expected {e})"
        elif text == "" and none is not None and m < none:
            verdict = "as sent (fewer tokens than with none)"
        else:
            verdict = "as sent, by its token count" if reaches else "unknown"
        if verdict.startswith(REPLACED):
            same = default_key or "none"  # "none": no condition of this audit sends none
        else:
            same = next((k for k, t in audit[:i] if t == text), None)
            if (same is None and default_key is not None and text is not None and verdict == "as sent"
                    and rendered[text] is not None and rendered[text] == rendered[None]):
                same = default_key  # the template's own default is this text (e.g. an export that made it the default)
        conditions[key] = {"sent": text, "prompt_tokens": m, "expected_tokens": e, "evidently": verdict,
                           "same_as": same}
    return {"reported": True, "question": QUESTION, "template_known": reference is not None and
            reference.tokenizer is not None, "system_text_reaches_prompt": reaches,
            "measured": {"none": none, "empty": empty, "control": measured[control.strip()]},
            "conditions": conditions}


def parameters(backend) -> dict:
    """Seed repeatability, temperature-0 determinism and the max_tokens cap, each with what was seen."""
    story = [{"role": "user", "content": "Invent a name for a fantasy town and describe it in one sentence."}]
    a = ask(backend, story, 1.0, 24, seed=1234)
    b = ask(backend, story, 1.0, 24, seed=1234)
    others = [ask(backend, story, 1.0, 24, seed=s) for s in (4321, 9876)]
    if a.text != b.text:
        seed = {"honoured": False, "evidence": "the same seed at temperature 1 gave two different replies"}
    elif any(o.text != a.text for o in others):
        seed = {"honoured": True, "evidence": "the same seed repeated its reply; other seeds changed it"}
    else:
        seed = {"honoured": None, "evidence": "every seed gave the same reply at temperature 1: the server may "
                                              "ignore temperature (or sample greedily)"}
    g1, g2 = ask(backend, story, 0.0, 24), ask(backend, story, 0.0, 24)
    greedy = {"deterministic": g1.text == g2.text,
              "evidence": "two greedy requests gave the same reply" if g1.text == g2.text else
              "two greedy requests gave different replies"}
    cap = ask(backend, [{"role": "user", "content": "Count from 1 to 100, separated by commas."}], 0.0, 3)
    if cap.completion_tokens is None:
        honoured = cap.finish_reason == "length" or None
        capped = {"honoured": honoured, "evidence": f"no usage reported; finish_reason {cap.finish_reason!r}"}
    else:
        capped = {"honoured": cap.completion_tokens <= 3,
                  "evidence": f"max_tokens 3 gave {cap.completion_tokens} completion tokens "
                              f"(finish_reason {cap.finish_reason!r})"}
    return {"seed": seed, "temperature_0": greedy, "max_tokens": capped}


def ignored(params: dict, handling: dict) -> list[str]:
    out = []
    if params["seed"]["honoured"] is False:
        out.append("seed (sampled replies cannot be repeated)")
    if params["seed"]["honoured"] is None:
        out.append("temperature, apparently (replies never varied at temperature 1)")
    if not params["temperature_0"]["deterministic"]:
        out.append("temperature 0 (greedy replies differ between identical requests)")
    if params["max_tokens"]["honoured"] is False:
        out.append("max_tokens")
    for key, c in handling.get("conditions", {}).items():
        if c["evidently"].startswith(REPLACED):
            out.append(f"the {key!r} system prompt, {c['evidently']}")
    return out


CANNOT_SEE = ("the weights, their dtype and quantization", "sampling settings other than temperature, seed and "
              "max_tokens (top_p, top_k, repetition penalty)", "the exact prompt text (only its token count)")


def examine(backend, params, reference_spec: str | None = None) -> dict:
    """The run.json "endpoint" block: served names, the own vendor with its evidence, and the preflight."""
    reference = read_reference(reference_spec) if reference_spec else None
    listed = listed_models(backend)
    first = ask(backend, [{"role": "user", "content": QUESTION}], 0.0, 1)
    served = [backend.model_name, *listed] + ([first.model] if first.model else [])
    own = resolve_own(params.own, reference, served, lambda: calibrate(backend))
    handling = system_handling(backend, params.systems, reference)
    checks = parameters(backend)
    names = sorted(set(served))
    return {
        "model_name": backend.model_name, "listed": listed, "answered_as": first.model,
        "placeholder_names": [n for n in names if is_placeholder(n)],
        "reference": None if reference is None else {"path": reference.path, "vendor": reference.vendor,
                                                     "why": reference.why, "template_hash": reference.template_hash,
                                                     "trained_with": reference.trained_with,
                                                     "template_warnings": list(reference.template_warnings)},
        "own": own, "system_prompts": handling, "parameters": checks, "ignored": ignored(checks, handling),
        "duplicates": {k: c["same_as"] for k, c in handling.get("conditions", {}).items() if c["same_as"]},
        "cannot_see": list(CANNOT_SEE),
    }


def examine_for_run(out, backend, params, resume: bool) -> dict:
    """The endpoint block for a run folder: the one it already records when resuming, else a new examination
    (the folder checks come first, so a taken folder does not wait for the preflight)."""
    meta_path = Path(out) / META
    if meta_path.is_file():
        if not resume:
            raise SelfidError(f"{out} already holds an audit run: pass --resume to continue it, or choose a new --out")
        old = read_meta(out).get("endpoint")
        if old:
            return old
    block = examine(backend, params, getattr(backend, "reference", None))
    if not resume and meta_path.is_file():  # another audit took the folder while this one's preflight ran
        raise SelfidError(f"{out} was taken by another audit run meanwhile: choose a new --out")
    return block
