"""Render conversations with the model's own chat template, and say which system prompt was in effect.

Identity depends on the system prompt: Qwen2.5's template inserts "You are Qwen, created by Alibaba
Cloud..." when a conversation has none, while an explicit system message (even an empty one)
replaces it. `ChatFormat` finds the template's default by rendering with marker strings, so it
works for any template, not only Qwen's.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal, Sequence

from selfid.errors import SelfidError

ROLES = ("system", "user", "assistant")
Message = dict  # {"role": "system" | "user" | "assistant", "content": str}


@dataclass(frozen=True)
class Rendered:
    text: str  # the prompt, ready to tokenize
    effective_system: str | None  # the system prompt the model sees (None: the template adds none)
    system_source: Literal["given", "template", "none"]
    template_hash: str


def template_hash(template: str) -> str:
    """A stable short hash of a chat template's text."""
    return hashlib.sha256(template.encode("utf-8")).hexdigest()[:16]


def validate_messages(messages: Sequence[Message], last: str = "user") -> list[Message]:
    """Check roles and order; return plain {role, content} dicts. Raises SelfidError naming the fault.

    `last` is the role the conversation must end with: "user" for a prompt, "assistant" for training data.
    """
    if not messages:
        raise SelfidError("the conversation is empty: give at least one user message")
    out = []
    for i, m in enumerate(messages):
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise SelfidError(f"message {i} has role {role!r}: use one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise SelfidError(f"message {i} ({role}) has no text content")
        if role == "system" and i != 0:
            raise SelfidError(f"message {i} is a system message: only the first message may be one")
        out.append({"role": role, "content": content})
    turns = out[1:] if out[0]["role"] == "system" else out
    if not turns or turns[-1]["role"] != last:
        raise SelfidError(f"the conversation must end with {'a user' if last == 'user' else 'an assistant'} message")
    for i, (a, b) in enumerate(zip(turns, turns[1:])):
        if a["role"] == b["role"]:
            raise SelfidError(f"two {a['role']} messages in a row (turns {i} and {i + 1}): user and assistant must alternate")
    return out


class ChatFormat:
    """A tokenizer's chat template, its hash, and the system prompt it inserts by default."""

    def __init__(self, tokenizer):
        template = getattr(tokenizer, "chat_template", None)
        if not template or not isinstance(template, str):
            raise SelfidError(
                "this tokenizer has no chat template: selfid renders chats with the model's own "
                "template, so use an instruct/chat model (or add chat_template.jinja to its folder)"
            )
        self.tokenizer = tokenizer
        self.template = template
        self.template_hash = template_hash(template)
        self.default_system = self._find_default_system()

    def _apply(self, messages, add_generation_prompt=True) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def _find_default_system(self) -> str | None:
        """Render once with two marker system prompts and once without; the difference is the default."""
        user = {"role": "user", "content": "\x1euser-marker\x1e"}
        a, b = "\x1esystem-a\x1e", "\x1esystem-b\x1e"
        try:
            with_a = self._apply([{"role": "system", "content": a}, user])
            with_b = self._apply([{"role": "system", "content": b}, user])
            without = self._apply([user])
        except Exception:  # templates that reject a system role have no system prompt to report
            return None
        start = with_a.find(a)
        if start < 0 or with_b.find(b) != start:
            return None
        head, tail = with_a[:start], with_a[start + len(a):]
        if without.startswith(head) and without.endswith(tail) and len(without) >= len(head) + len(tail):
            return without[len(head): len(without) - len(tail)]
        return None

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> Rendered:
        msgs = validate_messages(messages)
        if msgs[0]["role"] == "system":
            system, source = msgs[0]["content"], "given"
        elif self.default_system is not None:
            system, source = self.default_system, "template"
        else:
            system, source = None, "none"
        return Rendered(self._apply(msgs, add_generation_prompt), system, source, self.template_hash)


def conversation(user: str, system: str | None = None, history: Sequence[Message] = ()) -> list[Message]:
    """Messages for one user turn; `system=None` sends no system message (the template's default applies)."""
    msgs: list[Message] = [] if system is None else [{"role": "system", "content": system}]
    return msgs + list(history) + [{"role": "user", "content": user}]
