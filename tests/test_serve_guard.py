"""The server against what a web page, a slow client or a crowd can do: Host checks (DNS rebinding),
JSON-only bodies (no preflight-free posts), no file paths in /v1/models, a start-up warning without a key (and one
for a key on the command line), slow headers and bodies closed, slow bodies timed out with one log line, a cap on open
connections, a bound on requests in flight (429 with Retry-After), a cap on prompt length, /health without the key,
and client-supplied text cut in the log."""

import json
import logging
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from typer.testing import CliRunner

from selfid.serve.api import Limits, allowed_hosts, host_name
from selfid.serve.server import ConnectionLimits
from tests.serve_helpers import ScriptedEngine, adapter_server, serve_log  # noqa: F401  (fixtures)

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


@pytest.fixture
def started(monkeypatch):
    """`selfid api` up to the point where it would serve: (host, port, ConnectionLimits, Service) of each start."""
    from selfid.serve import server

    calls = []
    monkeypatch.setattr(server, "serve", lambda app, host, port, limits: calls.append((host, port, limits,
                                                                                        app.state.service)))
    monkeypatch.setattr(server, "setup_logging", lambda: None)  # no handler on CliRunner's stderr, closed after it
    monkeypatch.delenv("API_KEY", raising=False)
    return calls


def test_starting_without_a_key_says_so(tiny_model_dir, started, monkeypatch, tmp_path):
    from selfid.cli import app

    args = ["api", "--model", str(tiny_model_dir), "--device", "cpu", "--port", "18431"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output and started
    [line] = [x for x in res.stderr.splitlines() if "warning" in x]
    assert "no API key is set" in line and "API_KEY" in line
    # a key on the command line works, and says that every user of the machine can read it
    keyed = CliRunner().invoke(app, args + ["--api-key", "k"])
    assert keyed.exit_code == 0 and started[-1][3].api_key == "k"
    [line] = [x for x in keyed.stderr.splitlines() if "warning" in x]
    assert "visible to every user of this machine (ps)" in line and "API_KEY" in line
    # from the environment or a file: no warning at all
    monkeypatch.setenv("API_KEY", "from-env")
    quiet = CliRunner().invoke(app, args)
    assert quiet.exit_code == 0 and "warning" not in quiet.stderr and started[-1][3].api_key == "from-env"
    (tmp_path / "key").write_text("from-file\n")
    quiet = CliRunner().invoke(app, args + ["--api-key-file", str(tmp_path / "key")])
    assert quiet.exit_code == 0 and "warning" not in quiet.stderr and started[-1][3].api_key == "from-file"


def test_the_connection_and_prompt_limits_are_stated_in_help_and_reach_the_server(tiny_model_dir, started):
    from selfid.cli import app

    shown = CliRunner().invoke(app, ["api", "--help"], env={"COLUMNS": "400"}).output
    for flag, default in (("--header-timeout", "10.0"), ("--body-timeout", "30.0"),
                          ("--max-connections", "512, or --max-pending + 64"), ("--max-prompt-tokens", "context window"),
                          ("--prefill-chunk", "128 on CPU")):
        assert flag in shown and default in shown, flag
    assert "visible to every user of this machine (ps)" in shown
    args = ["api", "--model", str(tiny_model_dir), "--device", "cpu", "--port", "18432", "--header-timeout", "4",
            "--body-timeout", "7", "--max-connections", "9", "--max-prompt-tokens", "100", "--prefill-chunk", "32"]
    assert CliRunner().invoke(app, args).exit_code == 0
    host, port, limits, service = started[-1]
    assert limits == ConnectionLimits(header_timeout_s=4, body_timeout_s=7, max_connections=9)
    assert service.limits.body_timeout_s == 7 and service.limits.max_prompt_tokens == 100
    assert service.engine.prefill_chunk == 32
    assert CliRunner().invoke(app, args[:7]).exit_code == 0
    assert started[-1][2].max_connections == max(512, started[-1][3].scheduler.max_pending + 64)


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


def scripted_server(tiny, limits: Limits | None = None, connections: ConnectionLimits | None = None, **kw):
    from selfid.serve.api import Service, create_app
    from selfid.serve.models import Served
    from selfid.serve.server import Background

    served = [Served("tmp", None, None, tiny.chat, tiny.generation_defaults, "test")]
    service = Service(tiny, served, engine=ScriptedEngine(tiny), limits=limits, **kw)
    return Background(create_app(service), limits=connections)


@pytest.fixture
def slow_server(tiny):
    with scripted_server(tiny, Limits(body_timeout_s=0.5), ConnectionLimits(header_timeout_s=0.5, body_timeout_s=0.5,
                                                                           max_connections=64)) as bg:
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


# --- slow headers, trickling bodies, too many connections -------------------------------------------------------

def closed_within(s: socket.socket, seconds: float) -> bytes:
    """What the server sends until it closes the connection; fails if it is still open after `seconds`. A reset counts
    as closed: bytes a client sends after the server closed (a trickling body) make the kernel answer with one, and
    the client may then lose what it had not read yet."""
    s.settimeout(seconds)
    got = b""
    try:
        while chunk := s.recv(4096):
            got += chunk
    except socket.timeout:
        pytest.fail(f"the connection was still open after {seconds} s; the server sent {got[:200]!r}")
    except ConnectionResetError:
        pass
    return got


def test_a_connection_that_stops_during_its_headers_is_closed(slow_server):
    with socket.create_connection((slow_server.host, slow_server.port)) as quiet, \
            socket.create_connection((slow_server.host, slow_server.port)) as partial:
        partial.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
        assert closed_within(partial, 10) == b""
        assert closed_within(quiet, 10) == b""  # one that never sent a byte too


def trickle(s: socket.socket, stop: threading.Event) -> None:
    """A byte of body every 0.1 s, as a slow client (or an attacker) sends it, until told to stop or cut off."""
    while not stop.wait(0.1):
        try:
            s.sendall(b" ")
        except OSError:
            return


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/no-such-route"])
def test_a_trickling_body_has_its_connection_closed(slow_server, path):
    """The chat endpoint answers a body that stops arriving with 408 and closes; a route that never reads the body
    answers at once, and the connection is closed when the body's time is up."""
    with socket.create_connection((slow_server.host, slow_server.port)) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  f"Content-Length: 100000\r\n\r\n{{".encode())
        stop = threading.Event()
        sender = threading.Thread(target=trickle, args=(s, stop), daemon=True)
        sender.start()
        try:
            reply = closed_within(s, 15)
        finally:
            stop.set()
            sender.join(5)
    assert not reply or reply.startswith(b"HTTP/1.1 408" if path.startswith("/v1/chat") else b"HTTP/1.1 404"), reply


def test_past_the_connection_cap_the_longest_waiting_idle_connection_makes_room(tiny):
    with scripted_server(tiny, connections=ConnectionLimits(header_timeout_s=30, max_connections=2)) as bg:
        first = socket.create_connection((bg.host, bg.port))
        second = socket.create_connection((bg.host, bg.port))
        try:
            assert httpx.get(bg.url + "/health").status_code == 200  # a third connection is answered...
            assert closed_within(first, 10) == b""  # ... and the one that waited longest for its headers is closed
            second.settimeout(0.5)
            with pytest.raises(socket.timeout):
                second.recv(1)  # while the other stays
        finally:
            first.close()
            second.close()


def test_past_the_connection_cap_with_every_connection_busy_a_new_one_gets_503(tiny):
    from selfid.serve.api import Service, create_app
    from selfid.serve.models import Served
    from selfid.serve.server import Background

    engine = Held(tiny)
    served = [Served("tmp", None, None, tiny.chat, tiny.generation_defaults, "test")]
    app = create_app(Service(tiny, served, engine=engine))
    with Background(app, limits=ConnectionLimits(max_connections=1)) as bg, ThreadPoolExecutor(1) as pool:
        first = pool.submit(httpx.post, bg.url + "/v1/chat/completions", json=BODY, timeout=60)
        assert engine.started.wait(30)  # its request is in, being answered: the one connection is busy
        with socket.create_connection((bg.host, bg.port)) as extra:
            reply = closed_within(extra, 10)
        engine.release.set()
        assert first.result().status_code == 200
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in head.lower()
    assert json.loads(body)["error"]["code"] == "too_many_connections"


# --- prompts, /health, the log ------------------------------------------------------------------------------------

def test_a_prompt_over_the_servers_cap_is_refused_naming_the_limit(tiny):
    with scripted_server(tiny, Limits(max_prompt_tokens=40)) as bg:
        short = httpx.post(bg.url + "/v1/chat/completions", json=BODY)
        assert short.status_code == 200
        long = httpx.post(bg.url + "/v1/chat/completions",
                          json={**BODY, "messages": [{"role": "user", "content": "word " * 60}]})
    assert long.status_code == 400
    error = long.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    assert "at most 40 tokens (--max-prompt-tokens)" in error["message"]


def test_health_tells_only_liveness_without_the_key(tiny):
    with scripted_server(tiny, api_key="s3cret") as bg:
        anonymous = httpx.get(bg.url + "/health")
        wrong = httpx.get(bg.url + "/health", headers={"Authorization": "Bearer nope"})
        keyed = httpx.get(bg.url + "/health", headers={"Authorization": "Bearer s3cret"})
    assert anonymous.status_code == wrong.status_code == 200
    assert anonymous.json() == wrong.json() == {"status": "ok"}
    assert keyed.json()["models"] == ["tmp"] and keyed.json()["device"] == "cpu"


def test_client_supplied_text_is_cut_in_the_log(tiny, serve_log):
    with scripted_server(tiny) as bg:  # one model: any name is answered, and the name is logged
        r = httpx.post(bg.url + "/v1/chat/completions", json={**BODY, "model": "m" * 100_000})
    assert r.status_code == 200
    lines = [rec.getMessage() for rec in serve_log.records]
    assert any("mmmm" in line for line in lines)
    assert max(map(len, lines)) < 2000, max(map(len, lines))
