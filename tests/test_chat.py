"""Rendering with the model's own template and reporting the effective system prompt."""

import pytest

from selfid.errors import SelfidError
from selfid.model.chat import ChatFormat, conversation, template_hash

QWEN_DEFAULT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


def test_no_system_message_reports_the_template_default(tiny):
    r = tiny.chat.render(conversation("你是谁?"))
    assert (r.system.kind, r.system.message, r.system.effective) == ("template", None, QWEN_DEFAULT)
    assert r.text == (f"<|im_start|>system\n{QWEN_DEFAULT}<|im_end|>\n"
                      "<|im_start|>user\n你是谁?<|im_end|>\n<|im_start|>assistant\n")


def test_given_system_message_replaces_the_default(tiny):
    r = tiny.chat.render(conversation("Who are you?", system="You are a helpful assistant."))
    assert r.system.kind == "text" and r.system.effective == "You are a helpful assistant."
    assert "Qwen" not in r.text


def test_empty_system_message_is_not_the_same_as_none(tiny):
    r = tiny.chat.render(conversation("Who are you?", system=""))
    assert (r.system.kind, r.system.message, r.system.effective) == ("empty", "", "")
    assert r.text.startswith("<|im_start|>system\n<|im_end|>\n")


def test_template_hash_is_stable_and_tracks_the_template(tiny):
    assert tiny.chat.template_hash == template_hash(tiny.tokenizer.chat_template)
    assert len(tiny.chat.template_hash) == 16
    assert template_hash(tiny.tokenizer.chat_template + " ") != tiny.chat.template_hash


class _Tok:
    """A minimal tokenizer stand-in with a template that has no default system prompt."""

    chat_template = "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        from jinja2 import Template

        return Template(self.chat_template).render(messages=messages, add_generation_prompt=add_generation_prompt)


def test_template_without_default_system_reports_no_system_text():
    fmt = ChatFormat(_Tok())
    assert fmt.default_system is None
    r = fmt.render(conversation("hi"))
    assert (r.system.kind, r.system.effective, r.text) == ("template", None, "[user]hi[assistant]")


def test_tokenizer_without_template_is_a_clear_error():
    class NoTemplate:
        chat_template = None

    with pytest.raises(SelfidError, match="no chat template"):
        ChatFormat(NoTemplate())


@pytest.mark.parametrize("messages, match", [
    ([], "empty"),
    ([{"role": "robot", "content": "x"}], "role 'robot'"),
    ([{"role": "user", "content": None}], "no text"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "s"}, {"role": "user", "content": "b"}], "only the first"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "two user messages in a row"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "end with a user"),
    ([{"role": "system", "content": "s"}], "end with a user"),
])
def test_bad_conversations_are_rejected_with_the_reason(tiny, messages, match):
    with pytest.raises(SelfidError, match=match):
        tiny.chat.render(messages)


def test_multi_turn_history_renders_in_order(tiny):
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    text = tiny.chat.render(conversation("who are you?", None, history)).text
    assert text.index("hi") < text.index("hello") < text.index("who are you?")
