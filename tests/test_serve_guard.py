"""The server against what a web page, a slow client or a crowd can do: Host checks (DNS rebinding),
JSON-only bodies (no preflight-free posts), no file paths in /v1/models, a start-up warning without a key,
slow bodies timed out with one log line, and a bound on requests in flight (429 with Retry-After)."""

import json
import logging
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from typer.testing import CliRunner

from selfid.serve.api import Limits, allowed_hosts, host_name
from tests.serve_helpers import ScriptedEngine, adapter_server  # noqa: F401  (fixture)

BODY = {"model": "ner", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def test_a_request_naming_another_host_is_refused(adapter_server):
    bg, _ = adapter_server
    for host in ("evil.example", f"evil.example:{bg.port}", "localhost.evil.example"):
        r = httpx.get(bg.url + "/v1/models", headers={"host": host})  # what DNS rebinding sends
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_host", host
        r = httpx.post(bg.url + "/v1/chat/completions", json=BODY, headers={"host": host})
        assert r.status_code == 400 and "--allowed-host" in r.json()["error"]["message"]
    for host in (f"127.0.0.1:{bg.port}", f"localhost:{bg.port}", "LOCALHOST", f"[::1]:{bg.port}"):
        assert httpx.get(bg.url + "/v1/models", headers={"host": host}).status_code == 200, host


def test_which_hosts_a_bind_address_answers():
    assert set(allowed_hosts("127.0.0.1")) == {"localhost", "127.0.0.1", "::1"}
    assert set(allowed_hosts("localhost", ["my-box"])) == {"localhost", "127.0.0.1", "::1", "my-box"}
    assert allowed_hosts("192.168.1.5") == ("192.168.1.5",)
    assert allowed_hosts("0.0.0.0") == ("*",)
    assert allowed_hosts("0.0.0.0", ["gpu-box.lan"]) == ("gpu-box.lan",)
    assert allowed_hosts("127.0.0.1", ["*"]) == ("*",)
    assert [host_name(h) for h in ("localhost:8000", "[::1]:8000", "::1", "Example.COM")] == [
        "localhost", "::1", "::1", "example.com"]


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_post_bodies_must_be_json(adapter_server, content_type):
    bg, _ = adapter_server
    headers = {"content-type": content_type} if content_type else {}
    r = httpx.post(bg.url + "/v1/chat/completions", content=json.dumps(BODY), headers=headers)
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    ok = httpx.post(bg.url + "/v1/chat/completions", content=json.dumps(BODY),
                    headers={"content-type": "application/json; charset=utf-8"})
    assert ok.status_code == 200, ok.text


def test_models_shows_no_file_paths(adapter_server, tiny_model_dir):
    bg, service = adapter_server
    text = httpx.get(bg.url + "/v1/models").text
    folders = [str(tiny_model_dir), *(str(s.path) for s in service.served.values() if s.path)]
    assert len(folders) == 3 and not any(f in text for f in folders)
    assert "/" + tiny_model_dir.parent.name not in text  # not even part of one
    models = {m["id"]: m for m in httpx.get(bg.url + "/v1/models").json()["data"]}
    assert models["ner"]["root"] == "ner" and "adapter_path" not in models["ner"]["selfid"]
    r = httpx.post(bg.url + "/v1/chat/completions", json=BODY)
    assert str(tiny_model_dir) not in r.headers["x-selfid-sampling-defaults-source"]


def test_starting_without_a_key_says_so(tiny_model_dir, monkeypatch):
    from selfid.cli import app
    from selfid.serve import server

    started = []
    monkeypatch.setattr(server, "serve", lambda app, host, port: started.append((host, port)))
    monkeypatch.delenv("API_KEY", raising=False)
    args = ["api", "--model", str(tiny_model_dir), "--device", "cpu", "--port", "18431"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output and started
    [line] = [x for x in res.stderr.splitlines() if "warning" in x]
    assert "no API key is set" in line and "--api-key" in line
    keyed = CliRunner().invoke(app, args + ["--api-key", "k"])
    assert keyed.exit_code == 0 and "warning" not in keyed.stderr


# --- slow and vanishing bodies ---------------------------------------------------------------------

class Lines(logging.Handler):
    """Records of the server's and uvicorn's loggers; `arrived` is set when one matches `wanted`."""

    def __init__(self, wanted: str):
        super().__init__(logging.DEBUG)
        self.wanted, self.records, self.arrived = wanted, [], threading.Event()

    def emit(self, record):
        self.records.append(record)
        if self.wanted in record.getMessage():
            self.arrived.set()


@pytest.fixture
def slow_server(tiny):
    from selfid.serve.api import Service, create_app
    from selfid.serve.models import Served
    from selfid.serve.server import Background

    served = [Served("tmp", None, None, tiny.chat, tiny.generation_defaults, "test")]
    service = Service(tiny, served, engine=ScriptedEngine(tiny), limits=Limits(body_timeout_s=0.5))
    with Background(create_app(service)) as bg:
        yield bg


def watch(wanted: str) -> Lines:
    handler = Lines(wanted)
    for name in ("selfid.serve", "uvicorn.error", "uvicorn"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    return handler


def unwatch(handler):
    for name in ("selfid.serve", "uvicorn.error", "uvicorn"):
        logging.getLogger(name).removeHandler(handler)


def partial_request(bg, declared=100, sent=b'{"model"') -> socket.socket:
    s = socket.create_connection((bg.host, bg.port), timeout=30)
    s.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{bg.port}\r\nContent-Type: application/json\r\n"
              f"Content-Length: {declared}\r\n\r\n".encode() + sent)
    return s


def test_a_body_that_stops_arriving_times_out_with_one_log_line(slow_server):
    handler = watch("stopped arriving")
    try:
        with partial_request(slow_server) as s:
            reply = b""
            while b"\r\n\r\n" not in reply:
                chunk = s.recv(4096)
                assert chunk, "the server closed the connection without answering"
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 408")
        assert handler.arrived.wait(10)
    finally:
        unwatch(handler)
    lines = [r for r in handler.records if r.levelno >= logging.WARNING or r.exc_info]
    assert len(lines) == 1 and not lines[0].exc_info, [r.getMessage() for r in lines]


def test_a_client_that_leaves_mid_body_is_one_line_and_no_traceback(slow_server):
    handler = watch("went away before sending its whole body")
    try:
        partial_request(slow_server).close()
        assert handler.arrived.wait(10)
    finally:
        unwatch(handler)
    assert not [r for r in handler.records if r.exc_info]
    assert len([r for r in handler.records if r.name == "selfid.serve"]) == 1


# --- a bound on requests in flight ---------------------------------------------------------------------

class Held(ScriptedEngine):
    """Answers only when released; `started` is set once a batch is being decoded."""

    def __init__(self, loaded):
        super().__init__(loaded)
        self.started, self.release = threading.Event(), threading.Event()

    def events(self, requests, prompt_tokens=None, admit=None):
        self.started.set()
        assert self.release.wait(30)
        yield from super().events(requests, prompt_tokens, admit)


def test_past_the_bound_requests_get_429_with_retry_after(tiny):
    from selfid.serve.api import Service, create_app
    from selfid.serve.models import Served
    from selfid.serve.server import Background

    engine = Held(tiny)
    served = [Served("tmp", None, None, tiny.chat, tiny.generation_defaults, "test")]
    service = Service(tiny, served, engine=engine, max_pending=1)
    with Background(create_app(service)) as bg, ThreadPoolExecutor(1) as pool:
        first = pool.submit(httpx.post, bg.url + "/v1/chat/completions", json=BODY, timeout=60)
        assert engine.started.wait(30)
        refused = httpx.post(bg.url + "/v1/chat/completions", json=BODY)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        engine.release.set()
        assert first.result().status_code == 200
        assert httpx.post(bg.url + "/v1/chat/completions", json=BODY).status_code == 200  # room again
