"""`selfid api` / `selfid webchat` as a user runs them: environment defaults, one-line errors, a clean stop."""

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from typer.testing import CliRunner

from selfid.cli import app
from selfid.errors import SelfidError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_api_port_and_key_come_from_the_environment_and_ctrl_c_stops_it(tiny_model_dir):
    port = free_port()
    env = {**os.environ, "API_PORT": str(port), "API_KEY": "k3y"}
    proc = subprocess.Popen([sys.executable, "-m", "selfid.cli", "api", "--model", str(tiny_model_dir), "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:  # wait for the server to come up (loading the model takes a few seconds)
            assert proc.poll() is None, proc.communicate()[1]
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        body = {"model": "anything", "messages": [{"role": "user", "content": "你是谁?"}], "max_tokens": 3}
        assert httpx.post(url + "/v1/chat/completions", json=body).status_code == 401
        r = httpx.post(url + "/v1/chat/completions", json=body, headers={"Authorization": "Bearer k3y"})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"at http://127.0.0.1:{port}/v1" in err and "(API key required)" in err
    assert "system(template)='You are Qwen, created by Alibaba Cloud. You are a helpful assistant.'" in err
    assert "defaults for temperature,top_p,top_k,repetition_penalty from" in err


def cli_error(*args, env=None) -> str:
    """Run a verb in-process; return the SelfidError it stops with (main() prints it on one line, exit 2)."""
    res = CliRunner().invoke(app, list(args), env=env)
    assert isinstance(res.exception, SelfidError), res.output
    return str(res.exception)


def test_busy_port_is_refused_before_the_model_loads():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert cli_error("api", "--port", str(port)) == f"port {port} on 127.0.0.1 is already in use: pass --port or set API_PORT"


@pytest.mark.parametrize("verb", ["api", "webchat"])
def test_bad_api_port_and_adapter_are_refused(verb, tmp_path):
    assert "API_PORT is 'eighty'" in cli_error(verb, env={"API_PORT": "eighty"})
    assert cli_error(verb, "--port", str(free_port()), "--adapter", f"ner={tmp_path}") == (
        f"--adapter 'ner={tmp_path}': {tmp_path} is not a LoRA adapter folder (no adapter_config.json)")
