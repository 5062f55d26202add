"""The OpenAI-compatible HTTP API (FastAPI) and the chat page, over one engine and its scheduler.

Every fault a client can cause is a 4xx with OpenAI's error object; the openai client retries
5xx, so a 5xx here means a fault in the server. Each response says which model answered, which
system prompt was in effect and where the sampling defaults came from (x-selfid-* headers, and the
server log), because self-identity depends on them: `x-selfid-system-source` says how the system prompt
was chosen (text or empty: the request's; adapter: the adapter's training one; template: the chat
template's own) and `x-selfid-system-prompt` the text the model saw, percent-encoded.

A server on this machine is reachable by every web page the user's browser opens, so: requests must
name this server in their Host header (a page using DNS rebinding names its own), POST bodies must be
application/json (which a page cannot send to another origin without a preflight this server never
approves), and /v1/models shows no file paths. A body that stops arriving times out; past a bound on
requests in flight, clients get a 429 with Retry-After.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import re
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote

from fastapi import FastAPI, Request as HTTPRequest
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from selfid.engine import Completion, InProcessEngine, Request, SamplingParams
from selfid.errors import SelfidError
from selfid.serve import protocol as p
from selfid.serve.models import Served, load_served
from selfid.serve.scheduler import DONE, QueueFull, Scheduler
from selfid.system_prompt import SystemPrompt, sent

log = logging.getLogger("selfid.serve")
WEBCHAT = Path(__file__).parent / "webchat"
SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "repetition_penalty")


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers


def error_response(status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None, headers: dict | None = None) -> JSONResponse:
    body = p.ErrorResponse(error=p.ErrorBody(message=message, type=type, param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


@dataclass
class Limits:
    max_n: int = 16
    max_body_bytes: int = 4 * 1024 * 1024
    body_timeout_s: float = 30.0  # for the whole body to arrive once the headers have
    max_prompt_tokens: int | None = None  # the most tokens a request's messages may take (None: the context window)


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
ANY_HOST = "*"


def allowed_hosts(bind: str, extra: Sequence[str] = ()) -> tuple[str, ...]:
    """The Host header names a server bound to `bind` answers: loopback names for a loopback address, the
    address itself otherwise, and any `extra`; ('*',) for every name (a wildcard bind with no names given)."""
    extra = tuple(h.strip().lower() for h in extra if h.strip())
    if ANY_HOST in extra:
        return (ANY_HOST,)
    bind = bind.strip("[]").lower()
    if bind in ("0.0.0.0", "::", ""):
        return extra or (ANY_HOST,)
    if bind in LOOPBACK_NAMES or bind.startswith("127."):
        return tuple(dict.fromkeys((*LOOPBACK_NAMES, bind, *extra)))
    return tuple(dict.fromkeys((bind, *extra)))


def host_name(header: str) -> str:
    """The name in a Host header, without its port: 'localhost:8000' -> 'localhost', '[::1]:8000' -> '::1'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class HostCheck:
    """Refuses requests whose Host header names another server (DNS rebinding), in OpenAI's error format;
    starlette's TrustedHostMiddleware does the same check but answers in plain text."""

    def __init__(self, app, allowed: Sequence[str]):
        self.app, self.allowed = app, {h.rstrip(".") for h in allowed}

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            header = Headers(scope=scope).get("host", "")
            name = host_name(header).rstrip(".")
            if name not in self.allowed:
                log.warning("refused a request for host %r (this server answers %s)", header[:100],
                            ", ".join(sorted(self.allowed)))
                response = error_response(
                    400, f"this server answers requests addressed to {', '.join(sorted(self.allowed))}, not "
                         f"{header[:100]!r}: use one of those names, or start the server with --allowed-host NAME",
                    code="invalid_host")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


@dataclass
class Prepared:
    """A validated request, rendered and tokenized, with everything the response must say about it."""
    body: p.ChatCompletionRequest
    served: Served
    prompt_ids: list[int]
    params: SamplingParams
    system: SystemPrompt
    from_defaults: list[str]
    matches_training: bool | None

    def headers(self) -> dict[str, str]:
        h = {"x-selfid-model": self.served.name, "x-selfid-system-source": self.system.kind,
             "x-selfid-template-hash": self.served.chat.template_hash,
             "x-selfid-sampling": describe_params(self.params),
             "x-selfid-sampling-from-defaults": ",".join(self.from_defaults) or "none",
             "x-selfid-sampling-defaults-source": quote(self.served.public_defaults_source, safe=_SAFE)}
        if self.system.effective is not None:
            h["x-selfid-system-prompt"] = quote(self.system.effective, safe=_SAFE)
        if self.matches_training is not None:
            h["x-selfid-system-prompt-matches-training"] = str(self.matches_training).lower()
        return h


_SAFE = " !#$&'()*+,/:;=?@[]~"  # header values stay readable; anything else (Chinese, %, quotes) is %-encoded


def describe_params(s: SamplingParams) -> str:
    parts = [f"temperature={s.temperature:g}", f"top_p={s.top_p:g}", f"top_k={s.top_k}",
             f"repetition_penalty={s.repetition_penalty:g}", f"presence_penalty={s.presence_penalty:g}",
             f"frequency_penalty={s.frequency_penalty:g}", f"max_tokens={s.max_new_tokens}", f"n={s.n}"]
    if s.seed is not None:
        parts.append(f"seed={s.seed}")
    return " ".join(parts)


def validation_message(e: ValidationError) -> tuple[str, str | None]:
    """The most useful line of a pydantic error, and OpenAI's `param` for it."""
    errors = e.errors(include_url=False)
    err = next((x for x in errors if x["type"] == "value_error"), errors[0])
    if err["type"] == "json_invalid":
        return f"the request body is not valid JSON ({err['msg']}): send a JSON object", None
    loc = [str(x) for x in err["loc"] if isinstance(x, int) or not re.search(r"[\[\](]|^(str|int|float|bool|none)$", str(x))]
    param = ".".join(loc) or None
    msg = re.sub(r"^(Value error|Assertion failed), ", "", err["msg"])
    if err["type"] == "model_type" and not loc:
        return "the request body must be a JSON object", None
    if err["type"] == "missing":
        return f"'{param}' is required", param
    return (f"invalid '{param}': {msg}" if param else msg), param


class Service:
    """The state behind the HTTP routes: served models, the engine and its scheduler."""

    def __init__(self, loaded, served: Sequence[Served], engine: InProcessEngine | None = None,
                 api_key: str | None = None, limits: Limits | None = None, max_batch_size: int | None = None,
                 default_model: str | None = None, allowed_hosts: Sequence[str] = LOOPBACK_NAMES,
                 max_pending: int | None = None, prefill_chunk: int | None = None):
        self.loaded = loaded
        self.engine = engine or InProcessEngine(loaded, max_batch_size=max_batch_size, prefill_chunk=prefill_chunk)
        self.served = {s.name: s for s in served}
        self.base = served[0]
        if default_model is not None and default_model not in self.served:
            raise SelfidError(f"--default-model {default_model!r} is not served here: use one of "
                              f"{', '.join(map(repr, self.served))}")
        # answers requests that name no model or one this server lacks (placeholders such as gpt-3.5-turbo)
        self.fallback = self.served[default_model] if default_model else self.base if len(self.served) == 1 else None
        self.api_key = api_key or None
        self.limits = limits or Limits()
        self.allowed_hosts = tuple(allowed_hosts)  # ('*',): any
        self.scheduler = Scheduler(self.engine, max_batch_size=max_batch_size, max_pending=max_pending)
        self.created = int(time.time())

    # --- requests --------------------------------------------------------------------------------
    def resolve(self, name: str | None) -> Served:
        if name in self.served:
            return self.served[name]
        if name is None:
            return self.fallback or self.base
        if self.fallback is not None:
            log.info("request names model %r, which is not served here; %r answers (the default model)", _short(name),
                     self.fallback.name)
            return self.fallback
        raise APIError(404, f"the model {_short(name)!r} does not exist on this server: use one of "
                            f"{', '.join(map(repr, self.served))} (GET /v1/models lists them), or start the "
                            "server with --default-model NAME to answer every other name with NAME",
                       param="model", code="model_not_found")

    def prepare(self, body: p.ChatCompletionRequest) -> Prepared:
        served = self.resolve(body.model)
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        if messages[0]["role"] == "system":
            system = sent(messages[0]["content"], served.chat.default_system, "the request")
        else:
            system = served.default_system()
            if system.message is not None:
                messages.insert(0, {"role": "system", "content": system.message})
        try:
            rendered = served.chat.render(messages)
        except SelfidError as e:
            raise APIError(400, str(e), param="messages") from None
        matches = None
        if served.training is not None:
            matches = rendered.system.effective == served.default_system().effective
        ids = served.chat.encode(rendered)  # message text stays text: no forged turns
        window = self.engine.context_window
        cap = self.limits.max_prompt_tokens
        if cap is not None and cap < window and len(ids) > cap:
            raise APIError(400, f"this server takes prompts of at most {cap} tokens (--max-prompt-tokens), but the "
                                f"messages take {len(ids)}: shorten the conversation", param="messages",
                           code="context_length_exceeded")
        if len(ids) >= window:
            raise APIError(400, f"this model's context window is {window} tokens, but the messages take "
                                f"{len(ids)}: shorten the conversation", param="messages",
                           code="context_length_exceeded")
        wanted = body.max_new_tokens
        if wanted is not None and len(ids) + wanted > window:
            which = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
            raise APIError(400, f"this model's context window is {window} tokens, but {len(ids)} are in the "
                                f"messages and {which} asks for {wanted} more: lower {which} to at most "
                                f"{window - len(ids)}", param=which, code="context_length_exceeded")
        if body.n > self.limits.max_n:
            raise APIError(400, f"n is {body.n}, but this server allows at most {self.limits.max_n} choices per "
                                f"request", param="n")
        overrides = dict(temperature=body.temperature, top_p=body.top_p, presence_penalty=body.presence_penalty,
                         frequency_penalty=body.frequency_penalty, seed=body.seed, n=body.n,
                         stop=tuple(body.stop) if body.stop else None,
                         max_new_tokens=wanted if wanted is not None else window - len(ids),
                         logprobs=(body.top_logprobs or 0) if body.logprobs else None)
        try:
            params = SamplingParams.from_defaults(served.generation_defaults, **overrides)
        except SelfidError as e:
            raise APIError(400, str(e)) from None
        from_defaults = [k for k in SAMPLING_FIELDS if overrides.get(k) is None and k in served.generation_defaults]
        return Prepared(body, served, ids, params, system, from_defaults, matches)

    def log_request(self, rid: str, pr: Prepared) -> None:
        system = "none" if pr.system.effective is None else repr(_short(pr.system.effective))
        log.info("%s model=%s system(%s)=%s template=%s prompt=%d tokens stream=%s | %s | defaults for %s from %s",
                 rid, pr.served.name, pr.system.kind, system, pr.served.chat.template_hash, len(pr.prompt_ids),
                 pr.body.stream, describe_params(pr.params), ",".join(pr.from_defaults) or "nothing",
                 pr.served.defaults_source)
        if pr.matches_training is False:
            log.warning("%s: the system prompt %s differs from the one adapter %s was trained with (%r): its "
                        "replies, and who it says it is, may differ from what training measured", rid, system,
                        pr.served.name, _short(pr.served.default_system().effective or ""))

    def token_logprobs(self, c: Completion) -> p.ChoiceLogprobs | None:
        if c.logprobs is None:
            return None
        tokenizer = self.engine.tokenizer

        def entry(tok: int, lp: float) -> dict:
            raw = token_bytes(tokenizer, tok)
            return {"token": raw.decode("utf-8", errors="replace"), "logprob": lp, "bytes": list(raw)}

        return p.ChoiceLogprobs(content=[p.TokenLogprobOut(**entry(t.token_id, t.logprob),
                                                           top_logprobs=[p.TopLogprob(**entry(i, v)) for i, v in t.top])
                                         for t in c.logprobs])


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet, reversed (its home module moves between transformers versions)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


BYTE_DECODER = _byte_decoder()


def token_bytes(tokenizer, token_id: int) -> bytes:
    """A token's exact bytes: byte-level BPE tokens map back through GPT-2's table, others decode as text."""
    piece = tokenizer.convert_ids_to_tokens(token_id)
    if isinstance(piece, str) and piece and all(ch in BYTE_DECODER for ch in piece):
        return bytes(BYTE_DECODER[ch] for ch in piece)
    return tokenizer.decode([token_id]).encode("utf-8")


def _short(text: str | None, n: int = 120) -> str | None:
    """A client-supplied text cut for a log line or an error message (a model name may be 100,000 characters)."""
    return text if text is None or len(text) <= n else text[: n - 1] + "…"


class ClientGone(Exception):
    """The client disconnected before its request was read; nobody is left to answer."""


def check_json(request: HTTPRequest) -> None:
    """POST bodies must say they are JSON: a web page can send text/plain anywhere without asking first."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise APIError(415, f"the request body must be sent as 'Content-Type: application/json', not "
                            f"{media or 'no content type'!r}", code="unsupported_media_type")


async def read_body(request: HTTPRequest, limit: int, timeout_s: float) -> bytes:
    # both answers close the connection: the rest of the body is never read, and a client still sending it must not
    # keep the connection open
    too_big = APIError(413, f"the request body is larger than this server's limit of {limit} bytes",
                       code="request_too_large", headers={"connection": "close"})
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0

    async def collect():
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)

    try:
        await asyncio.wait_for(collect(), timeout_s)
    except asyncio.TimeoutError:
        log.warning("a request body stopped arriving (%d of %s bytes after %g s): answered 408", size,
                    declared or "?", timeout_s)
        raise APIError(408, f"the request body did not arrive within {timeout_s:g} s ({size} of {declared or '?'} "
                            "bytes): send the whole body at once", code="request_timeout",
                       headers={"connection": "close"}) from None
    except ClientDisconnect:
        log.info("a client went away before sending its whole body (%d of %s bytes)", size, declared or "?")
        raise ClientGone() from None
    return b"".join(chunks)


def create_app(service: Service) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app):
        service.scheduler.start()
        yield
        service.scheduler.stop()

    app = FastAPI(title="selfid", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.service = service
    if ANY_HOST not in service.allowed_hosts:
        app.add_middleware(HostCheck, allowed=service.allowed_hosts)

    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        return error_response(e.status, e.message, e.type, e.param, e.code, headers=e.headers)

    @app.exception_handler(ClientGone)
    async def _client_gone(request, e: ClientGone):
        return error_response(499, "client closed the request")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, e: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        message = f"{request.method} {request.url.path}: {e.detail}"
        return error_response(e.status_code, message, code=code, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _server_error(request, e: Exception):
        log.exception("internal error on %s %s", request.method, _short(request.url.path))
        return error_response(500, f"internal server error ({type(e).__name__}); see the server log", "server_error")

    def check_key(request: HTTPRequest) -> None:
        if service.api_key is None:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), service.api_key.encode()):
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>' with the key the "
                                "server was started with (--api-key or API_KEY)", code="invalid_api_key")

    @app.get("/health")
    async def health(request: HTTPRequest):
        """Liveness for anyone; what is served and how (models, device, decoding) only with the key, when one is set."""
        try:
            check_key(request)
        except APIError:
            return {"status": "ok"}
        dtype = str(next(service.loaded.model.parameters()).dtype).removeprefix("torch.")
        report = getattr(service.engine, "decode_report", None)  # how decode steps run, and how many ran each way
        return {"status": "ok", "models": list(service.served), "device": str(service.loaded.device), "dtype": dtype,
                "decode": _finite(report()) if report is not None else None}

    @app.get("/v1/models")
    async def models(request: HTTPRequest):
        check_key(request)
        cards = [p.ModelCard(id=s.name, created=service.created, root=s.name, parent=s.parent, selfid=s.card())
                 for s in service.served.values()]  # no file paths: any page the user opens may read this
        return p.ModelList(data=cards).model_dump()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HTTPRequest):
        check_key(request)
        check_json(request)
        raw = await read_body(request, service.limits.max_body_bytes, service.limits.body_timeout_s)
        try:
            body = p.ChatCompletionRequest.model_validate_json(raw)
        except ValidationError as e:
            message, param = validation_message(e)
            raise APIError(400, message, param=param) from None
        pr = await asyncio.to_thread(service.prepare, body)  # rendering and tokenizing stay off the event loop
        rid = p.completion_id()
        service.log_request(rid, pr)
        req = Request(pr.prompt_ids, pr.params, stream=body.stream, adapter=pr.served.adapter)
        try:
            job = service.scheduler.submit(req)
        except QueueFull as e:
            log.warning("%s refused: %d requests in flight, the most this server takes (--max-pending); "
                        "Retry-After %d s", rid, e.pending, e.retry_after)
            raise APIError(429, f"this server is busy: {e.pending} requests are in flight, the most it takes; "
                                f"retry after {e.retry_after} s", code="rate_limit_exceeded", type="requests",
                           headers={"retry-after": str(e.retry_after)}) from None
        if body.stream:
            return StreamingResponse(stream(service, pr, rid, job), media_type="text/event-stream",
                                     headers={**pr.headers(), "cache-control": "no-cache"})
        done: dict[int, Completion] = {}
        t0 = time.monotonic()
        while True:
            try:
                item = await asyncio.wait_for(job.queue.get(), timeout=1.0)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    req.cancel()
                    log.info("%s: the client went away; cancelled", rid)
                    return error_response(499, "client closed the request")
                continue
            if item is DONE:
                break
            if isinstance(item, Exception):
                raise item
            if item.finished is not None:
                done[item.index] = item.finished
        choices = [p.Choice(index=i, message=p.AssistantMessage(content=c.text), finish_reason=_finish(c),
                            logprobs=service.token_logprobs(c)) for i, c in sorted(done.items())]
        used = sum(len(c.token_ids) for c in done.values())
        log.info("%s done: %d tokens in %.2f s (%s)", rid, used, time.monotonic() - t0,
                 ",".join(c.finish_reason for c in done.values()))
        out = p.ChatCompletion(id=rid, model=pr.served.name, system_fingerprint=f"selfid-{pr.served.chat.template_hash}",
                               choices=choices, usage=p.Usage(prompt_tokens=len(pr.prompt_ids), completion_tokens=used,
                                                              total_tokens=len(pr.prompt_ids) + used))
        return JSONResponse(out.model_dump(mode="json"), headers=pr.headers())

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(WEBCHAT / "index.html")

    app.mount("/static", StaticFiles(directory=WEBCHAT), name="webchat")
    return app


def _finite(x):
    """`x` with non-finite floats as text: JSON responses cannot hold NaN (a failed decode check may measure one)."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _finish(c: Completion) -> str:
    return "length" if c.finish_reason == "length" else "stop"


class Chunks:
    """The server-sent events of one streamed reply, in OpenAI's chunk format.

    `event` builds a chunk through the pydantic models. `content` (one a token) writes the bytes `event` would
    for a text delta without building it: `event`'s chunk with an empty text, split around that text once per
    choice index, with the new text's JSON in between."""

    def __init__(self, rid: str, created: int, model: str, fingerprint: str, include_usage: bool):
        self.rid, self.created, self.model, self.fingerprint = rid, created, model, fingerprint
        self.include_usage = include_usage
        self._around: dict[int, tuple[str, str]] = {}  # choice index -> (text before the delta's text, after)

    def event(self, choices: list[dict], usage: dict | None = None) -> str:
        chunk = p.ChatCompletionChunk(id=self.rid, created=self.created, model=self.model,
                                      system_fingerprint=self.fingerprint, choices=choices,
                                      usage=usage).model_dump(mode="json")
        for c in chunk["choices"]:
            c["delta"] = {k: v for k, v in c["delta"].items() if v is not None}
        if not self.include_usage:
            chunk.pop("usage")
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    def content(self, index: int, text: str) -> str:
        around = self._around.get(index)
        if around is None:
            # by hand: no JSON library fills one value into serialized JSON. Quotes inside a JSON string are
            # escaped and only keys are followed by ': ', so '"content": ""' matches the delta's key alone
            head, found, tail = self.event([{"index": index, "delta": {"content": ""}}]).partition('"content": ""')
            if not found:
                raise RuntimeError(f"a content chunk without its content field: {head!r}")
            around = self._around[index] = (head + '"content": ', tail)
        return around[0] + json.dumps(text, ensure_ascii=False) + around[1]


async def stream(service: Service, pr: Prepared, rid: str, job):
    """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`. Events that are already
    waiting when the stream wakes up (the engine got ahead of the client) go out as one write."""
    chunks = Chunks(rid, int(time.time()), pr.served.name, f"selfid-{pr.served.chat.template_hash}",
                    pr.body.include_usage)
    finished = False
    used = 0
    t0 = time.monotonic()
    first: float | None = None
    try:
        for i in range(pr.params.n):
            yield chunks.event([{"index": i, "delta": {"role": "assistant", "content": ""}}])
        ended = False
        while not ended:
            items = [await job.queue.get()]
            while not job.queue.empty():
                items.append(job.queue.get_nowait())
            out: list[str] = []
            for item in items:
                if item is DONE:
                    ended = True
                    break
                if isinstance(item, Exception):
                    log.error("%s: generation failed: %r", rid, item)
                    err = {"error": {"message": f"generation failed ({type(item).__name__}); see the server log",
                                     "type": "server_error", "param": None, "code": None}}
                    out.append(f"data: {json.dumps(err)}\n\n")
                    ended = True
                    break
                if item.delta:
                    if first is None:
                        first = time.monotonic()
                    out.append(chunks.content(item.index, item.delta))
                if item.finished is not None:
                    c = item.finished
                    used += len(c.token_ids)
                    lp = service.token_logprobs(c)
                    out.append(chunks.event([{"index": item.index, "delta": {}, "finish_reason": _finish(c),
                                              "logprobs": lp.model_dump() if lp else None}]))
            if out:
                yield "".join(out)
        if chunks.include_usage:
            n_prompt = len(pr.prompt_ids)
            yield chunks.event([], {"prompt_tokens": n_prompt, "completion_tokens": used,
                                    "total_tokens": n_prompt + used})
        yield "data: [DONE]\n\n"
        finished = True
        log.info("%s done: %d tokens in %.2f s, first text after %s", rid, used, time.monotonic() - t0,
                 f"{first - t0:.2f} s" if first else "-")
    finally:
        if not finished:
            job.request.cancel()
            log.info("%s: the client went away mid-stream; cancelled, its row is freed", rid)


def service_from_args(model: str, adapters: Sequence[str] = (), device: str | None = None, dtype: str | None = None,
                      api_key: str | None = None, chat_template=None, **kw: Any) -> Service:
    loaded, served = load_served(model, adapters, device=device, dtype=dtype, chat_template=chat_template)
    return Service(loaded, served, api_key=api_key, **kw)
