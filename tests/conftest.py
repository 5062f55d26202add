import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from tests.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"))


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    """The tiny model loaded on the CPU in fp32."""
    from selfid.model.load import load_model

    return load_model(str(tiny_model_dir), device="cpu", dtype="float32", progress=False)


@pytest.fixture(scope="session")
def engine(tiny):
    from selfid.engine import InProcessEngine

    return InProcessEngine(tiny)


@pytest.fixture(scope="module")
def http_probes(tmp_path_factory):
    """Two identity probes (a name and a maker question) for the audits over HTTP."""
    from tests.audit_helpers import write_probes

    return write_probes(tmp_path_factory.mktemp("p") / "p.jsonl", ["en-name-01", "zh-maker-01"])


@pytest.fixture(scope="module")
def chat_server(tiny):
    """An OpenAI-compatible server on the tiny model (tests/audit_helpers.chat_app) and its fault switches."""
    from tests.audit_helpers import chat_app, serve

    app = chat_app(tiny)
    with serve(app) as url:
        yield url, app.state.faults


@pytest.fixture
def deprecations(monkeypatch):
    """Deprecation messages given afresh (selfid gives each once per process)."""
    from selfid import system_prompt

    monkeypatch.setattr(system_prompt, "_said", set())


@pytest.fixture
def selfid_home(tmp_path, monkeypatch):
    home = tmp_path / "selfid-home"
    monkeypatch.setenv("SELFID_HOME", str(home))
    return home


def chromium_path() -> str:
    """Debian's chromium (or $CHROMIUM); skips the test, saying why, when it is not installed."""
    path = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    if not os.access(path, os.X_OK):
        pytest.skip(f"Chromium is not installed at {path}: `make test` installs it with apt-get when it runs as root "
                    "(or with sudo without a password); or set CHROMIUM to a chromium binary")
    return path


@pytest.fixture(scope="session")
def browser():
    """Headless Debian chromium driven by playwright, with no background networking."""
    path = chromium_path()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=path,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


@pytest.fixture(scope="session")
def tiny_gemma_dir(tmp_path_factory):
    """A tiny random Gemma 3 (sliding-window and global layers) that, like the pretrained model, has no chat template."""
    from tests.tiny import build_tiny_gemma3

    return build_tiny_gemma3(tmp_path_factory.mktemp("tiny-gemma3"))


@pytest.fixture(scope="session")
def tiny_gemma(tiny_gemma_dir):
    """The tiny Gemma 3 loaded on the CPU in fp32, with Gemma 3's instruction format as its chat template."""
    from selfid.model.load import load_model
    from tests.tiny import GEMMA_TEMPLATE

    return load_model(str(tiny_gemma_dir), device="cpu", dtype="float32", progress=False, chat_template=GEMMA_TEMPLATE)
