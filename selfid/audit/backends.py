"""Where the audit's generations come from: the in-process engine (batched) or any OpenAI-compatible endpoint.

Both take a list of work items and call `on_done(item, reply)` as each finishes, so the runner can
append it to the log at once; an interruption loses at most the work in flight.
"""

from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable, Sequence
from urllib.parse import unquote

from selfid.audit.devices import parse_devices, several
from selfid.errors import SelfidError
from selfid.model.load import load_model
from selfid.system_prompt import KINDS, deprecated, sent


@dataclass(frozen=True)
class Item:
    """One generation the grid asks for."""

    key: str
    suite: str
    probe: object  # selfid.audit.probes.Probe
    system: str  # the system spec's key
    system_text: str | None  # None: no system message (the template's own applies)
    temperature: float
    sample: int
    seed: int  # this sample's seed
    group_seed: int  # sample 0's seed; sample i uses group_seed + i
    max_new_tokens: int

    @property
    def group(self) -> tuple:
        return self.suite, self.probe.id, self.system, self.temperature

    def messages(self) -> list[dict]:
        head = [] if self.system_text is None else [{"role": "system", "content": self.system_text}]
        return head + [dict(m) for m in self.probe.messages]


@dataclass
class Reply:
    text: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    rendered: str | None = None  # the exact prompt text (in-process only)
    effective_system: str | None = None
    system_source: str | None = None  # how it was chosen: template | none | empty | text | adapter; or endpoint
    # (nothing sent to an endpoint that does not say what its template inserted)
    template_hash: str | None = None


OnDone = Callable[[Item, Reply], None]


class InProcessBackend:
    """Generation with selfid's batched engine; samples of one prompt share a request (n) with seeds seed+i."""

    kind = "inprocess"

    def __init__(self, loaded, engine=None, rows_per_call: int | None = None):
        from selfid.engine import InProcessEngine  # torch

        self.loaded = loaded
        self.engine = engine or InProcessEngine(loaded)
        self.rows_per_call = rows_per_call or self.engine.max_batch_size * 2

    def describe(self) -> dict:
        m = self.loaded
        import torch

        return {
            "backend": self.kind, "model": m.name, "source": m.source, "path": str(m.path) if m.path else None,
            "adapter": str(m.adapter) if m.adapter else None, "adapter_manifest": m.manifest.record() if m.manifest else None,
            "template_hash": m.chat.template_hash, "template_default_system": m.chat.default_system,
            "template_source": m.template_source, "template_warnings": list(m.template_warnings),
            "trained_with": m.trained_with.record() if m.trained_with else None,
            "generation_defaults": m.generation_defaults, "generation_defaults_source": m.generation_defaults_source,
            "device": str(m.device), "dtype": str(next(m.model.parameters()).dtype).replace("torch.", ""),
            "model_type": getattr(m.model.config, "model_type", None), "torch": torch.__version__,
        }

    def render(self, messages: list[dict]):
        return self.loaded.chat.render(messages)

    def run(self, items: Sequence[Item], on_done: OnDone, advance: Callable[[int], None] = lambda n: None) -> None:
        from selfid.engine import Request, SamplingParams  # torch

        groups: dict[tuple, list[Item]] = {}
        for it in items:
            groups.setdefault(it.group, []).append(it)
        # a request per group whose samples are all pending (n samples, seeds seed+i), else one per sample
        work: list[tuple[Request, list[Item], object]] = []
        for members in groups.values():
            members.sort(key=lambda i: i.sample)
            first = members[0]
            rendered = self.render(first.messages())
            contiguous = [m.sample for m in members] == list(range(first.sample, first.sample + len(members)))
            batches = [members] if contiguous else [[m] for m in members]
            for b in batches:
                params = SamplingParams.from_defaults(
                    self.loaded.generation_defaults, temperature=first.temperature, max_new_tokens=first.max_new_tokens,
                    seed=b[0].seed, n=len(b))
                work.append((Request(self.loaded.chat.encode(rendered), params), b, rendered))
        pending: list = []
        rows = 0
        for entry in work:
            pending.append(entry)
            rows += len(entry[1])
            if rows >= self.rows_per_call:
                self._generate(pending, on_done, advance)
                pending, rows = [], 0
        if pending:
            self._generate(pending, on_done, advance)

    def _generate(self, work, on_done: OnDone, advance) -> None:
        """Each sample logged (and scored, by `on_done`) as soon as it finishes, between decoding steps: the engine
        has queued the next step on the GPU by then, so the scoring overlaps generation instead of following it."""
        prompt_tokens: dict[int, int] = {}
        for ev in self.engine.events([w[0] for w in work], prompt_tokens=prompt_tokens):
            if ev.finished is None:
                continue
            _, members, rendered = work[ev.request]
            c = ev.finished
            on_done(members[ev.index], Reply(c.text, c.finish_reason, prompt_tokens[ev.request], len(c.token_ids),
                                             rendered.text, rendered.system.effective, rendered.system.kind,
                                             rendered.template_hash))
            advance(1)


class HttpBackend:
    """An OpenAI-compatible /v1/chat/completions endpoint, `concurrency` requests at a time.

    The openai client retries connection errors, 408/409/429 and 5xx with exponential backoff
    (`retries` times); when an item still fails the run stops, keeping everything already logged,
    and `--resume` continues it.
    """

    kind = "http"
    # what a failed request's message tells the user to do next (the replay, which writes nothing until the end,
    # sets its own)
    after_failure = "Finished work is logged: {fix} and rerun with --resume"

    def __init__(self, base_url: str, model_name: str, api_key: str | None = None, concurrency: int = 8,
                 retries: int = 6, timeout: float = 120.0, reference: str | None = None):
        from openai import OpenAI

        if concurrency < 1:
            raise SelfidError("--concurrency must be at least 1")
        if not str(base_url).startswith(("http://", "https://")):
            raise SelfidError(f"--base-url {base_url!r} is not an http(s) address: give one like http://localhost:8000/v1")
        self.base_url, self.model_name = base_url, model_name
        self.concurrency = concurrency
        self.retries = retries
        self.reference = reference  # a local copy of the served model (--own-from), read by audit/endpoint.py
        self.client = OpenAI(base_url=base_url, api_key=api_key or os.environ.get("OPENAI_API_KEY") or "selfid",
                             max_retries=retries, timeout=timeout)

    def describe(self) -> dict:
        return {"backend": self.kind, "base_url": self.base_url, "model": self.model_name,
                "template_hash": None, "template_default_system": None,
                "note": "sampling parameters other than temperature, seed and max_tokens are the server's own; "
                        "run.json's endpoint block says which of those it evidently ignored"}

    def _one(self, item: Item) -> Reply:
        raw = self.client.chat.completions.with_raw_response.create(
            model=self.model_name, messages=item.messages(), temperature=item.temperature, seed=item.seed,
            max_tokens=item.max_new_tokens, n=1)
        resp = raw.parse()
        choice = first_choice(resp)
        usage = resp.usage
        system, source = endpoint_system(raw.headers, item.system_text)
        return Reply(choice.message.content or "", choice.finish_reason,
                     usage.prompt_tokens if usage else None, usage.completion_tokens if usage else None,
                     effective_system=system, system_source=source)

    def run(self, items: Sequence[Item], on_done: OnDone, advance: Callable[[int], None] = lambda n: None) -> None:
        todo = list(items)
        failure: SelfidError | None = None
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="selfid-audit") as pool:
            running: dict = {}
            try:
                while running or (todo and failure is None):
                    while todo and failure is None and len(running) < self.concurrency * 2:
                        it = todo.pop(0)
                        running[pool.submit(self._one, it)] = it
                    finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                    for fut in finished:
                        it = running.pop(fut)
                        try:
                            reply = fut.result()
                        except Exception as e:  # keep what is in flight, then stop
                            failure = failure or self._failure(it, e)
                            continue
                        on_done(it, reply)
                        advance(1)
            except BaseException:
                for fut in running:
                    fut.cancel()
                raise
        if failure is not None:
            raise failure

    def _failure(self, item: Item, e: Exception) -> SelfidError:
        import openai

        if isinstance(e, openai.APIStatusError):
            retried = e.status_code in (408, 409, 429) or e.status_code >= 500
            how = f"after {self.retries} retries" if retried else "(a client error, not retried)"
            check = " (check --api-key)" if e.status_code in (401, 403) else ""
            return SelfidError(f"{self.base_url} answered {e.status_code} for request {item.key} {how}{check}: "
                               f"{_short(e)}. " + self.after_failure.format(fix="fix the endpoint or the options"))
        if isinstance(e, openai.APIError):
            return SelfidError(f"could not reach {self.base_url} for request {item.key} after {self.retries} retries "
                               f"({_short(e)}). " + self.after_failure.format(fix="start the endpoint"))
        if isinstance(e, ValueError):  # a 200 whose body is no chat completion (NotACompletion, bad JSON)
            return SelfidError(f"{self.base_url} answered request {item.key} with something other than an OpenAI "
                               f"chat completion ({_short(e)}): check that --base-url is the endpoint's /v1 address. "
                               + self.after_failure.format(fix="fix --base-url"))
        raise e


class NotACompletion(ValueError):
    """An endpoint's 200 answer that is not a chat completion (a web page, an empty list of choices)."""


def first_choice(resp):
    """The first choice of a parsed chat completion; NotACompletion where the answer is none."""
    if isinstance(resp, (str, bytes)) or not getattr(resp, "choices", None):
        raise NotACompletion(f"the body is {'not JSON' if isinstance(resp, (str, bytes)) else 'one with no choices'}")
    return resp.choices[0]

def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:200]


# how `selfid api` before the one vocabulary spelled x-selfid-system-source ("request": a text or an empty one)
_OLD_SOURCES = {"request": "text", "adapter-manifest": "adapter"}


def endpoint_system(headers, message: str | None) -> tuple[str | None, str]:
    """The system prompt in effect at the endpoint and how it was chosen: `selfid api` says so in x-selfid-*
    headers; other servers don't, so a request without a system message is recorded as "endpoint" (its
    template may insert one)."""
    kind = headers.get("x-selfid-system-source")
    prompt = headers.get("x-selfid-system-prompt")
    text = unquote(prompt) if prompt is not None else None
    if kind in _OLD_SOURCES:
        new = "empty" if kind == "request" and text == "" else _OLD_SOURCES[kind]
        deprecated("the endpoint's x-selfid-system-source header (an older selfid api)", kind, new)
        kind = new
    if kind in KINDS:
        return text, kind
    return message, sent(message, None).kind if message is not None else "endpoint"


def open_backend(model: str | None = None, adapter=None, base_url: str | None = None, model_name: str | None = None,
                 api_key: str | None = None, device: str = "auto", dtype: str = "auto", batch_size: int | None = None,
                 concurrency: int = 8, retries: int = 6, own_from: str | None = None, chat_template=None,
                 rows_per_call: int | None = None):
    """The backend an audit generates with, and the loaded model (None for an endpoint): a model (with an
    adapter) loaded in-process, on one device or several, or an OpenAI-compatible endpoint. `rows_per_call`: rows
    handed to the in-process engine at a time (default twice its batch; the replay gives it everything at once)."""
    if base_url and (model or adapter or chat_template):
        raise SelfidError("give either --model/--adapter/--chat-template (in-process) or --base-url/--model-name "
                          "(endpoint), not both")
    if own_from and not base_url:
        raise SelfidError("--own-from is for auditing an endpoint (--base-url); in-process, --model names the model")
    if base_url:
        if not model_name:
            raise SelfidError("--base-url needs --model-name (the name the endpoint serves)")
        return HttpBackend(base_url, model_name, api_key, concurrency=concurrency, retries=retries,
                           reference=own_from), None
    from selfid.engine import InProcessEngine  # torch

    devices = parse_devices(device)  # several ("cuda:0,cuda:1"): one model copy per device (selfid/audit/devices.py)
    loaded = load_model(model or "embedded", adapter=adapter, device=devices[0], dtype=dtype, chat_template=chat_template)
    primary = InProcessBackend(loaded, InProcessEngine(loaded, max_batch_size=batch_size), rows_per_call=rows_per_call)
    return several(primary, devices, model or "embedded", adapter, dtype, chat_template, batch_size), loaded
