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


@pytest.fixture
def selfid_home(tmp_path, monkeypatch):
    home = tmp_path / "selfid-home"
    monkeypatch.setenv("SELFID_HOME", str(home))
    return home
