"""Helpers for the audit tests: small probe files, a scripted backend, and a live OpenAI-compatible server.

`chat_server` is a small FastAPI app whose /v1/chat/completions renders with the model's template and
generates with the in-process engine (the model's own sampling defaults, the request's temperature,
seed and max_tokens), and can be told to fail requests, to exercise retries and resume, or to behave
like a deployed server that renames the model, replaces empty system messages or drops the seed
(the tests against `selfid api` itself use selfid.serve).
"""


import contextlib
import json
import os
import threading
import time
from pathlib import Path

from selfid.audit.backends import Reply
from selfid.audit.probes import PROBES
from selfid.system_prompt import sent


def write_probes(path: Path, ids: list[str]) -> Path:
    """A probe file holding the shipped identity probes with these ids, in this order."""
    by_id = {json.loads(line)["id"]: line for line in (PROBES / "identity.jsonl").read_text(encoding="utf-8").splitlines()}
    path.write_text("\n".join(by_id[i] for i in ids) + "\n", encoding="utf-8")
    return path


class EventsFromGenerate:
    """For engine stand-ins that script `generate`: the engine's `events`, which the in-process audit backend reads,
    each sample finishing in request order."""

    def events(self, requests, prompt_tokens=None, admit=None):
        from selfid.engine.types import Event

        for i, res in enumerate(self.generate(requests)):
            if prompt_tokens is not None:
                prompt_tokens[i] = res.prompt_tokens
            for j, c in enumerate(res.completions):
                yield Event(i, j, c.text, c)


class ScriptedBackend:
    """Replies from a function of the work item, so every count in a summary is known in advance."""

    kind = "scripted"

    def __init__(self, reply, model: str = "scripted-qwen", template_hash: str = "feedface00000000"):
        self.reply, self.model, self.template_hash = reply, model, template_hash
        self.calls: list[str] = []

    def describe(self) -> dict:
        return {"backend": self.kind, "model": self.model, "template_hash": self.template_hash}

    def run(self, items, on_done, advance=lambda n: None):
        for it in items:
            self.calls.append(it.key)
            on_done(it, Reply(self.reply(it), "stop", 10, 5, effective_system=it.system_text,
                              system_source=sent(it.system_text, None).kind,
                              template_hash=self.template_hash))
            advance(1)


def as_before_the_rename(out):
    """Rewrite a run folder as runs made before the one vocabulary wrote it: the template's own prompt "default"."""
    from selfid.audit.log import LOG

    meta = json.loads((out / "run.json").read_text())
    def old(key):
        return "default" if key == "template" else key

    for s in (*meta["params"]["systems"], *meta["systems"]):
        s["key"] = old(s["key"])
    if meta["params"].get("task_systems"):
        meta["params"]["task_systems"] = [old(k) for k in meta["params"]["task_systems"]]
    meta["notes"] = [n.replace("each of: template", "each of: default") for n in meta["notes"]]
    (out / "run.json").write_text(json.dumps(meta))
    if (out / "margin.json").is_file():
        margin = json.loads((out / "margin.json").read_text())
        (out / "margin.json").write_text(json.dumps({old(k): v for k, v in margin.items()}))
    lines = []
    for line in (out / LOG).read_text().splitlines():
        r = json.loads(line)
        if r["system"] == "template":
            r["system"], r["key"] = "default", r["key"].replace("|template|", "|default|")
        lines.append(json.dumps(r))
    (out / LOG).write_text("\n".join(lines) + "\n")


class _Faults:
    def __init__(self):
        self.fail_next = 0  # answer this many requests with 503 (retryable)
        self.down = False  # answer every request with 500 until set back
        self.down_after: int | None = None  # go down once this many completions were answered
        self.lock = threading.Lock()
        self.completions = 0  # requests answered with a completion
        self.failures = 0
        self.seen: list[dict] = []
        # what a deployed server may do to a request (LLaMA-Factory's API does the first three)
        self.served_name: str | None = None  # /v1/models lists this, and responses name it, whatever was asked
        self.empty_system = "keep"  # "replace": an empty system message is swapped for the template's default
        self.drop_seed = False  # the request's seed is ignored (each request draws its own)
        self.ignore_max_tokens = False  # replies run to 64 tokens whatever max_tokens says
        self.script = None  # messages -> a reply text, or None to generate with the model
        self.preflight = 0  # preflight requests answered (not counted in completions, never failed)


def chat_app(loaded):
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    from selfid.engine import InProcessEngine, SamplingParams

    engine = InProcessEngine(loaded)
    app = FastAPI()
    app.state.faults = faults = _Faults()
    gen_lock = threading.Lock()

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": faults.served_name or "tiny", "object": "model", "created": 0,
                                            "owned_by": "test"}]}

    @app.post("/v1/chat/completions")
    async def completions(request: Request):
        body = await request.json()
        if request.headers.get("x-selfid-preflight"):
            with faults.lock:
                faults.preflight += 1
            return respond(body)
        with faults.lock:
            faults.seen.append(body)
            if faults.down_after is not None and faults.completions >= faults.down_after:
                faults.down = True
            fail = faults.down or faults.fail_next > 0
            if faults.fail_next > 0:
                faults.fail_next -= 1
            if fail:
                faults.failures += 1
        if fail:
            return JSONResponse({"error": {"message": "overloaded", "type": "server_error", "param": None, "code": None}},
                                status_code=500 if faults.down else 503, headers={"retry-after-ms": "1"})
        out = respond(body)
        with faults.lock:
            faults.completions += 1
        return out

    def respond(body: dict) -> dict:
        messages = body["messages"]
        if faults.empty_system == "replace" and messages[0]["role"] == "system" and not messages[0]["content"]:
            messages = messages[1:]  # the template inserts its default, as `system or default_system` does
        rendered = loaded.chat.render(messages)
        seed = int.from_bytes(os.urandom(4), "big") if faults.drop_seed else body.get("seed")
        max_tokens = 64 if faults.ignore_max_tokens else body.get("max_tokens") or 64
        scripted = faults.script(body["messages"]) if faults.script else None
        if scripted is not None:
            ids = loaded.tokenizer(scripted, add_special_tokens=False).input_ids
            text, n, finish = loaded.tokenizer.decode(ids[:max_tokens]), min(len(ids), max_tokens), \
                "length" if len(ids) > max_tokens else "stop"
            prompt_tokens = len(loaded.tokenizer(rendered.text, add_special_tokens=False).input_ids)
        else:
            params = SamplingParams.from_defaults(loaded.generation_defaults, temperature=body.get("temperature"),
                                                  seed=seed, max_new_tokens=max_tokens)
            with gen_lock:
                res = engine.generate([rendered.text], params)[0]
            c = res.completions[0]
            text, n, finish, prompt_tokens = c.text, len(c.token_ids), c.finish_reason, res.prompt_tokens
        return {"id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()),
                "model": faults.served_name or body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}}

    return app


@contextlib.contextmanager
def serve(app):
    """Run an ASGI app with uvicorn on a free local port (selfid's own test server); yield its base URL (…/v1)."""
    from selfid.serve.server import Background

    with Background(app) as bg:
        yield f"{bg.url}/v1"
