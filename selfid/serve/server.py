"""Run the app with uvicorn: in the foreground for `selfid api`/`webchat`, or in a thread for tests and benchmarks;
with deadlines on a request's headers and body and a cap on open connections (`GuardedH11Protocol`)."""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from selfid.errors import SelfidError

log = logging.getLogger("selfid.serve")


def default_port(fallback: int = 8000) -> int:
    """API_PORT when set (LLaMA-Factory's variable, so existing clients keep working), else `fallback`."""
    raw = os.environ.get("API_PORT", "").strip()
    if not raw:
        return fallback
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise SelfidError(f"API_PORT is {raw!r}: set it to a port number (1-65535) or pass --port")
    return int(raw)


def check_port_free(host: str, port: int) -> None:
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise SelfidError(f"port {port} on {host} is already in use: pass --port or set API_PORT") from None
        raise SelfidError(f"cannot listen on {host}:{port} ({e.strerror}): check --host and --port") from None


def setup_logging(level: int = logging.INFO) -> None:
    if not log.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s selfid: %(message)s", "%H:%M:%S"))
        log.addHandler(h)
        log.setLevel(level)
        log.propagate = False


@dataclass(frozen=True)
class ConnectionLimits:
    """What one client connection may take: the time for a request's headers, for its body, and how many are open."""
    header_timeout_s: float = 10.0  # from the connection opening (or the previous response ending) to the last header
    body_timeout_s: float = 30.0  # from the last header to the last byte of the body
    max_connections: int = 512


class GuardedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with deadlines and a cap on open connections.

    By hand because uvicorn has neither: a connection that stops during its headers, or sends its body a byte
    every few seconds, stays open for ever (its keep-alive timer only runs between requests), and
    `limit_concurrency` answers 503 only once a request has arrived, leaving the connection open. Here a request
    whose headers are not in `header_timeout_s` after the connection opened (or its previous response ended), or
    whose body is not in `body_timeout_s` after its headers, has its connection closed (the API answers a stalled
    body with 408 first). A connection past `max_connections` closes the one that has waited longest for request
    headers (idle or stalled), so stalled connections cannot lock others out; when every connection is busy with a
    request, the new one is answered 503 and closed at once.
    """

    limits = ConnectionLimits()
    GRACE_S = 2.0  # a stalled body's connection is closed this long after the API's own 408, which goes out first

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._phase: str | None = None
        self._since = time.monotonic()  # when the current phase began
        self._timer = None
        if len(self.connections) > self.limits.max_connections:
            waiting = [c for c in self.connections if c is not self and getattr(c, "_phase", None) == "headers"]
            if not waiting:
                _closed.count("refused", self.limits.max_connections)
                transport.write(_busy_response(self.limits.max_connections))
                transport.close()
                return
            oldest = min(waiting, key=lambda c: c._since)
            _closed.count("evicted", self.limits.max_connections)
            oldest._arm(None)
            oldest.transport.close()
        self._watch()

    def connection_lost(self, exc) -> None:
        self._arm(None)
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def _watch(self) -> None:
        """Start the clock of the phase the client is in (waiting for its headers or its body), stop it after."""
        state = self.conn.their_state
        phase = "headers" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None
        if phase != self._phase and not self.transport.is_closing():
            self._arm(phase)

    def _arm(self, phase: str | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._phase, self._since = phase, time.monotonic()
        if phase is not None:
            wait = self.limits.header_timeout_s if phase == "headers" else self.limits.body_timeout_s + self.GRACE_S
            self._timer = self.loop.call_later(wait, self._expired, phase)

    def _expired(self, phase: str) -> None:
        self._timer = None
        if self._phase != phase or self.transport.is_closing():
            return
        _closed.count(phase, self.limits.header_timeout_s if phase == "headers" else self.limits.body_timeout_s)
        self.transport.close()  # connection_lost tells the app, if it is still waiting for the body, that the client left


def _busy_response(limit: int) -> bytes:
    """The whole 503 answer to a connection past the limit, in OpenAI's error format (no request has been read, so
    uvicorn's machinery cannot write it)."""
    body = json.dumps({"error": {"message": f"this server has {limit} connections open, the most it takes: retry "
                                            "in a moment", "type": "server_error", "param": None,
                                 "code": "too_many_connections"}}).encode()
    head = (f"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
            f"connection: close\r\ncontent-length: {len(body)}\r\n\r\n")
    return head.encode() + body


class _ClosedConnections:
    """Connections closed by the guard, logged as one line per kind at most every `every_s` seconds (a flood of
    stalled connections would otherwise be a flood of log lines)."""

    WHY = {"headers": "their request headers did not arrive within {} s (--header-timeout)",
           "body": "their request body did not arrive within {} s (--body-timeout)",
           "refused": "{} connections were already open, each with a request (--max-connections)",
           "evicted": "{} connections were open and a new one came: the one waiting longest for request headers "
                      "made room (--max-connections)"}

    def __init__(self, every_s: float = 60.0):
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._since: dict[str, int] = {}

    def count(self, kind: str, limit: float) -> None:
        self._since[kind] = self._since.get(kind, 0) + 1
        now = time.monotonic()
        if now - self._last.get(kind, -self.every_s) >= self.every_s:
            n = self._since.pop(kind)
            self._last[kind] = now
            verb = "refused" if kind == "refused" else "closed"
            log.warning("%s %d connection%s: %s", verb, n, "s" * (n != 1), self.WHY[kind].format(f"{limit:g}"))


_closed = _ClosedConnections()


def guarded(limits: ConnectionLimits) -> type[GuardedH11Protocol]:
    """The protocol class uvicorn is given (it instantiates it per connection), holding `limits`."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"limits": limits})


def uvicorn_options(limits: ConnectionLimits | None = None) -> dict:
    """What uvicorn runs selfid's app with (`uvicorn.run` and `uvicorn.Config` take the same keywords)."""
    return {"log_level": "warning", "http": guarded(limits or ConnectionLimits())}


def serve(app, host: str, port: int, limits: ConnectionLimits | None = None) -> None:
    import uvicorn

    check_port_free(host, port)
    setup_logging()
    uvicorn.run(app, host=host, port=port, timeout_graceful_shutdown=5, **uvicorn_options(limits))


class Background:
    """uvicorn in a daemon thread on a free port: `with Background(app) as srv: srv.url`."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, limits: ConnectionLimits | None = None):
        import uvicorn

        self.host = host
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, timeout_graceful_shutdown=2,
                                                    **uvicorn_options(limits)))
        self.thread = threading.Thread(target=self.server.run, name="selfid-uvicorn", daemon=True)
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> "Background":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
