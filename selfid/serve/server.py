"""Run the app with uvicorn: in the foreground for `selfid api`/`webchat`, or in a thread for tests and benchmarks."""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys
import threading
import time

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


def serve(app, host: str, port: int) -> None:
    import uvicorn

    check_port_free(host, port)
    setup_logging()
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)


class Background:
    """uvicorn in a daemon thread on a free port: `with Background(app) as srv: srv.url`."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.host = host
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                    timeout_graceful_shutdown=2))
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
