"""The real embedded model (marked `embedded`): converted once into $SELFID_HOME, then asked who it is."""

import pytest

from selfid.engine import InProcessEngine, SamplingParams
from selfid.model.chat import conversation
from selfid.model.load import load_model

pytestmark = pytest.mark.embedded


def test_embedded_model_says_it_is_qwen_with_the_template_system_prompt(monkeypatch):
    from selfid.model import embedded

    load_model("embedded", device="cpu")  # builds the cache on a fresh machine (about a minute)

    def no_second_conversion(*a, **k):
        raise AssertionError("the cached model was converted again")

    monkeypatch.setattr(embedded, "assemble", no_second_conversion)  # a conversion starts by assembling the GGUF
    loaded = load_model("embedded", device="cpu")  # from the checked cache: neither assembled nor converted
    rendered = loaded.chat.render(conversation("Who are you?"))
    assert rendered.system.kind == "template" and "Qwen" in rendered.system.effective
    reply = InProcessEngine(loaded).generate([rendered.text], SamplingParams(max_new_tokens=40))[0].text
    assert "Qwen" in reply or "Alibaba" in reply, reply
    assert loaded.generation_defaults == {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05}
