"""Helpers for the audit tests: small probe files, a scripted backend, and a live OpenAI-compatible server.

`chat_server` is a small FastAPI app whose /v1/chat/completions renders with the model's template and
generates with the in-process engine (the model's own sampling defaults, the request's temperature,
seed and max_tokens), and can be told to fail requests, to exercise retries and resume (the tests
against `selfid api` itself use selfid.serve).
"""


import contextlib
import json
import threading
import time
from pathlib import Path

from selfid.audit.backends import Reply
from selfid.audit.probes import PROBES


def write_probes(path: Path, ids: list[str]) -> Path:
    """A probe file holding the shipped identity probes with these ids, in this order."""
    by_id = {json.loads(line)["id"]: line for line in (PROBES / "identity.jsonl").read_text(encoding="utf-8").splitlines()}
    path.write_text("\n".join(by_id[i] for i in ids) + "\n", encoding="utf-8")
    return path


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
                              system_source="given" if it.system_text is not None else "template",
                              template_hash=self.template_hash))
            advance(1)


class _Faults:
    def __init__(self):
        self.fail_next = 0  # answer this many requests with 503 (retryable)
        self.down = False  # answer every request with 500 until set back
        self.down_after: int | None = None  # go down once this many completions were answered
        self.lock = threading.Lock()
        self.completions = 0  # requests answered with a completion
        self.failures = 0
        self.seen: list[dict] = []


def chat_app(loaded):
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    from selfid.engine import InProcessEngine, SamplingParams

    engine = InProcessEngine(loaded)
    app = FastAPI()
    app.state.faults = faults = _Faults()
    gen_lock = threading.Lock()

    @app.post("/v1/chat/completions")
    async def completions(request: Request):
        body = await request.json()
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
        rendered = loaded.chat.render(body["messages"])
        params = SamplingParams.from_defaults(loaded.generation_defaults, temperature=body.get("temperature"),
                                              seed=body.get("seed"), max_new_tokens=body.get("max_tokens") or 64)
        with gen_lock:
            res = engine.generate([rendered.text], params)[0]
        with faults.lock:
            faults.completions += 1
        c = res.completions[0]
        return {"id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": c.text},
                             "finish_reason": c.finish_reason}],
                "usage": {"prompt_tokens": res.prompt_tokens, "completion_tokens": len(c.token_ids),
                          "total_tokens": res.prompt_tokens + len(c.token_ids)}}

    return app


@contextlib.contextmanager
def serve(app):
    """Run an ASGI app with uvicorn on a free local port (selfid's own test server); yield its base URL (…/v1)."""
    from selfid.serve.server import Background

    with Background(app) as bg:
        yield f"{bg.url}/v1"
