"""Render conversations with the model's own chat template, and say which system prompt was in effect.

Identity depends on the system prompt: Qwen2.5's template inserts "You are Qwen, created by Alibaba
Cloud..." when a conversation has none, while an explicit system message (even an empty one)
replaces it. `ChatFormat` finds the template's default by rendering with marker strings, so it
works for any template, not only Qwen's; each rendering says which system prompt was in effect as a
`SystemPrompt` (selfid/system_prompt.py).

Message text stays text: a user who types "<|im_end|><|im_start|>system" gets those characters, not
the control tokens that would end their turn and forge a system one. `render` notes where message
content holding special-token text sits in the prompt, and `encode`/`tokenize` encode those spans
with special-token matching off and the template's own parts as usual (as the large serving stacks
do). Prompts without such text tokenize exactly as before.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from typing import Sequence

from selfid.errors import SelfidError
from selfid.system_prompt import SystemPrompt, sent

ROLES = ("system", "user", "assistant")
Message = dict  # {"role": "system" | "user" | "assistant", "content": str}


@dataclass(frozen=True)
class Rendered:
    text: str  # the prompt, ready to tokenize
    system: SystemPrompt  # the system message sent (if any) and the system text the model sees
    template_hash: str
    literal: tuple[tuple[int, int], ...] = ()  # character spans of `text` to encode as plain text (see tokenize)


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


# --- keeping message text as text ------------------------------------------------------------------

def special_texts(tokenizer) -> tuple[str, ...]:
    """The strings this tokenizer turns into special (control) tokens when they appear in text."""
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    found = {t.content for t in decoder.values() if getattr(t, "special", False) and t.content}
    found.update(getattr(tokenizer, "all_special_tokens", None) or [])
    return tuple(sorted(found, key=len, reverse=True))


@functools.lru_cache(maxsize=16)
def _special_pattern(specials: tuple[str, ...]) -> re.Pattern | None:
    return re.compile("|".join(map(re.escape, specials))) if specials else None


def render_keeping_text(tokenizer, messages: Sequence[Message], add_generation_prompt: bool) -> tuple[str, tuple]:
    """The chat template's text for `messages`, and the spans of it (message content holding special-token
    text) that `tokenize` must encode as plain text.

    Such content is rendered as a placeholder and put back into the rendered text, so its position is known
    exactly; the text is the template's own rendering whenever the template copies content as it is.
    """
    pattern = _special_pattern(special_texts(tokenizer))
    risky = [i for i, m in enumerate(messages) if pattern is not None and pattern.search(m["content"])]

    def apply(ms):
        return tokenizer.apply_chat_template(list(ms), tokenize=False, add_generation_prompt=add_generation_prompt)

    if not risky:
        return apply(messages), ()
    marks = {i: f"\ue000selfid-{i}\ue001" for i in risky}  # private-use characters no template touches
    text = apply([{**m, "content": marks[i]} if i in marks else m for i, m in enumerate(messages)])
    if any(text.count(mark) != 1 for mark in marks.values()):
        i = risky[0]
        raise SelfidError(
            f"message {i} holds special-token text ({pattern.search(messages[i]['content']).group()!r}) and this "
            "chat template changes message text, so selfid cannot keep that text from acting as a control token: "
            "remove it from the message")
    out, spans, pos, length = [], [], 0, 0
    for at, i in sorted((text.index(mark), i) for i, mark in marks.items()):
        content = messages[i]["content"]
        out += [text[pos:at], content]
        length += at - pos
        spans.append((length, length + len(content)))
        length += len(content)
        pos = at + len(marks[i])
    out.append(text[pos:])
    return "".join(out), tuple(spans)


@functools.lru_cache(maxsize=16)
def _plain_text_encoder(tokenizer):
    """A copy of the tokenizer's backend with special-token matching off: its own object, so no other
    thread's call can flip the setting midway (transformers' split_special_tokens flips a shared one)."""
    from tokenizers import Tokenizer

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a Python tokenizer: it takes split_special_tokens per call, with no shared state
        return None
    plain = Tokenizer.from_str(backend.to_str())
    plain.encode_special_tokens = True
    return plain


def tokenize(tokenizer, text: str, literal: Sequence[tuple[int, int]] = (),
             offsets: bool = False) -> tuple[list[int], list[tuple[int, int]] | None]:
    """Token ids of `text`, the `literal` spans encoded as plain text, and (offsets=True, fast tokenizers
    only) each token's character span."""
    def encode(piece: str, at: int, plain_text: bool) -> tuple[list[int], list]:
        plain = _plain_text_encoder(tokenizer) if plain_text else None
        if plain is not None:
            enc = plain.encode(piece, add_special_tokens=False)
            return enc.ids, [(a + at, b + at) for a, b in enc.offsets]
        kw = {"split_special_tokens": True} if plain_text else {}
        enc = tokenizer(piece, add_special_tokens=False, return_offsets_mapping=offsets, **kw)
        return list(enc["input_ids"]), [(a + at, b + at) for a, b in enc["offset_mapping"]] if offsets else []

    ids: list[int] = []
    spans: list[tuple[int, int]] = []
    pos = 0
    for start, end in [*literal, (len(text), len(text))]:
        for a, b, plain_text in ((pos, start, False), (start, end, True)):
            if b > a:
                got, where = encode(text[a:b], a, plain_text)
                ids += got
                spans += where
        pos = end
    return ids, spans if offsets else None


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
        system = sent(msgs[0]["content"] if msgs[0]["role"] == "system" else None, self.default_system)
        text, literal = render_keeping_text(self.tokenizer, msgs, add_generation_prompt)
        return Rendered(text, system, self.template_hash, literal)

    def encode(self, rendered: Rendered) -> list[int]:
        """The prompt's token ids, message text kept as text (what every engine call should be given)."""
        return tokenize(self.tokenizer, rendered.text, rendered.literal)[0]


def conversation(user: str, system: str | None = None, history: Sequence[Message] = ()) -> list[Message]:
    """Messages for one user turn; `system=None` sends no system message (the template's default applies)."""
    msgs: list[Message] = [] if system is None else [{"role": "system", "content": system}]
    return msgs + list(history) + [{"role": "user", "content": user}]
