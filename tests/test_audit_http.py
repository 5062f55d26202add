"""The audit over HTTP against a live OpenAI-compatible server on the tiny model: same replies as in-process,
retries through transient failures, and an outage that stops the run and a resume that finishes it."""

import pytest

from selfid.audit.backends import HttpBackend, InProcessBackend
from selfid.audit.log import LOG, read_log
from selfid.audit.run import AuditParams, audit_systems, run_audit
from selfid.errors import SelfidError
from tests.audit_helpers import serve


def grid(probes):
    return AuditParams(suites=["identity"], systems=audit_systems(["template,empty"]), temperatures=[0.0, 1.0],
                       samples=2, seed=3, max_new_tokens=5, ner_limit=1, own="qwen", identity_probes=str(probes))


@pytest.fixture(autouse=True)
def healthy(chat_server):
    faults = chat_server[1]
    faults.fail_next, faults.down, faults.down_after, faults.completions, faults.failures = 0, False, None, 0, 0
    faults.seen.clear()
    yield


def test_endpoint_run_gives_the_same_replies_as_in_process(chat_server, tiny, engine, http_probes, tmp_path):
    url, faults = chat_server
    http = run_audit(HttpBackend(url, "tiny", concurrency=3), grid(http_probes), tmp_path / "http", show_progress=False)
    local = run_audit(InProcessBackend(tiny, engine), grid(http_probes), tmp_path / "local", show_progress=False)
    a = {r["key"]: r["reply"] for r in read_log(tmp_path / "http" / LOG)}
    b = {r["key"]: r["reply"] for r in read_log(tmp_path / "local" / LOG)}
    assert len(a) == 2 * 2 * (1 + 2) and a == b
    assert faults.completions == len(a)
    assert all(body["model"] == "tiny" and body["max_tokens"] == 5 and "seed" in body for body in faults.seen)
    default_bodies = [body for body in faults.seen if body["messages"][0]["role"] != "system"]
    assert default_bodies  # "template" sends no system message: the server's template inserts its own
    assert http["run"]["target"]["backend"] == "http" and local["run"]["target"]["backend"] == "inprocess"
    assert [c["foreign"]["n"] for c in http["identity"]["cells"]] == [c["foreign"]["n"] for c in local["identity"]["cells"]]


def test_transient_failures_are_retried_with_backoff(chat_server, http_probes, tmp_path):
    url, faults = chat_server
    faults.fail_next = 3
    run_audit(HttpBackend(url, "tiny", concurrency=2, retries=4), grid(http_probes), tmp_path / "r", show_progress=False)
    assert faults.failures == 3
    assert faults.completions == len(read_log(tmp_path / "r" / LOG)) == 12


def test_outage_stops_the_run_and_resume_finishes_it_without_repeating(chat_server, http_probes, tmp_path):
    url, faults = chat_server
    faults.down_after = 5
    out = tmp_path / "r"
    with pytest.raises(SelfidError, match="rerun with --resume"):
        run_audit(HttpBackend(url, "tiny", concurrency=2, retries=1), grid(http_probes), out, show_progress=False)
    assert len(read_log(out / LOG)) == faults.completions == 5  # everything answered was logged
    faults.down, faults.down_after = False, None
    summary = run_audit(HttpBackend(url, "tiny", concurrency=2), grid(http_probes), out, resume=True, show_progress=False)
    recs = read_log(out / LOG)
    assert faults.completions == len(recs) == len({r["key"] for r in recs}) == 12
    assert summary["run"]["complete"]


def test_unreachable_endpoint_is_a_clear_error(http_probes, tmp_path):
    with pytest.raises(SelfidError, match="could not reach http://127.0.0.1:9/v1"):
        run_audit(HttpBackend("http://127.0.0.1:9/v1", "tiny", retries=0), grid(http_probes), tmp_path / "r",
                  show_progress=False)
    assert read_log(tmp_path / "r" / LOG) == []


def test_audit_through_selfid_api_matches_in_process_and_records_the_servers_system_prompt(tiny_model_dir, tiny, engine,
                                                                                            http_probes, tmp_path):
    from selfid.serve.api import create_app, service_from_args

    service = service_from_args(str(tiny_model_dir), device="cpu", dtype="float32")
    with serve(create_app(service)) as url:
        run_audit(HttpBackend(url, "anything", concurrency=4), grid(http_probes), tmp_path / "api", show_progress=False)
    run_audit(InProcessBackend(tiny, engine), grid(http_probes), tmp_path / "local", show_progress=False)
    api = {r["key"]: r for r in read_log(tmp_path / "api" / LOG)}
    local = {r["key"]: r for r in read_log(tmp_path / "local" / LOG)}
    assert api.keys() == local.keys() and len(api) == 12
    assert {k: r["reply"] for k, r in api.items()} == {k: r["reply"] for k, r in local.items()}
    defaults = [r for r in api.values() if r["system"] == "template"]
    assert defaults and all(r["effective_system"] == tiny.chat.default_system for r in defaults)
    assert all(r["system_source"] == "template" for r in defaults)


@pytest.mark.parametrize("body, why", [("<html>a proxy's page</html>", "not JSON"),
                                       ('{"id": "x", "object": "chat.completion", "choices": []}', "no choices")])
def test_an_answer_that_is_no_chat_completion_is_one_line_naming_base_url(http_probes, tmp_path, body, why):
    """A 200 whose body is a web page or has no choices (a --base-url missing its /v1, a proxy) stopped the audit
    with JSONDecodeError or IndexError; the replay's message does not offer a --resume it lacks."""
    from fastapi import FastAPI
    from fastapi.responses import Response

    app = FastAPI()

    @app.post("/v1/chat/completions")
    def completions():
        return Response(body, media_type="application/json")

    with serve(app) as url:
        backend = HttpBackend(url, "tiny", retries=0)
        with pytest.raises(SelfidError, match=r"something other than an OpenAI chat completion.*--base-url"):
            run_audit(backend, grid(http_probes), tmp_path / "r", show_progress=False)
        from types import SimpleNamespace

        from selfid.pipeline.replay_export import _open

        replay_backend, _ = _open(None, url, "tiny", None, None, "auto", "auto", None, 2, 0)
        failure = replay_backend._failure(SimpleNamespace(key="q1"), ValueError("Expecting value"))
        assert "Nothing was written: fix --base-url and run the replay again" in str(failure)
        assert "--resume" not in str(failure)

def test_an_unreachable_judge_is_one_line():
    from selfid.audit.detect import Judge

    with pytest.raises(SelfidError, match="could not reach the judge at http://127.0.0.1:9/v1"):
        Judge("http://127.0.0.1:9/v1", "m", max_retries=0).ask("I am Claude.")


def test_a_base_url_that_is_no_http_address_is_refused_at_once():
    with pytest.raises(SelfidError, match="is not an http\\(s\\) address"):
        HttpBackend("localhost:8000/v1", "tiny")
