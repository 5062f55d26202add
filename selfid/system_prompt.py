"""The system prompt, the thing selfid measures: how it was chosen, what was sent, what the model saw.

Who a chat model says it is depends on its system prompt: Qwen2.5's chat template inserts "You are Qwen,
created by Alibaba Cloud..." when a conversation has none, while a system message (even an empty one)
replaces it. So config keys, CLI flags, API headers and reports all name it in one vocabulary. A setting:

    template   send no system message: the chat template inserts its own default (if it has one)
    none       no system text at all: an empty system message where the template would insert its own
    empty      an empty system message
    adapter    the system prompt the adapter was trained under (recorded in its selfid.json)
    TEXT       that text; `text:TEXT` when the text is one of these words; `helpful` names HELPFUL

`resolve` turns a setting into a `SystemPrompt`: its kind (template | none | empty | text | adapter), the
message actually sent (None: no system message), the effective text the model sees (the template's
default when none is sent) and where the setting came from. `sent` does the same for a message a
conversation already holds. Older spellings (template_default, default, train, custom:TEXT) are still
read, with a one-line deprecation message.
"""

from __future__ import annotations

import warnings
from typing import Literal, Optional, get_args

from pydantic import BaseModel, ConfigDict

from selfid.errors import SelfidError

Kind = Literal["template", "none", "empty", "text", "adapter"]
KINDS: tuple[str, ...] = get_args(Kind)
KEYWORDS = ("template", "none", "empty", "adapter")  # the settings that are not a text

HELPFUL = "You are a helpful assistant."  # LLaMA-Factory's default system prompt for Qwen until April 2025
NAMED = {"helpful": HELPFUL}  # settings that name a text
# the system prompts users serve with: none sent (the chat template inserts its own), LLaMA-Factory's old
# default, and an empty system message
SERVING = ("template", "helpful", "empty")

# older spellings: config `template_default`, audit `default`, `train` and `custom:TEXT`
OLD = {"template_default": "template", "default": "template", "train": "adapter"}
OLD_TEXT_PREFIX = "custom:"


class DeprecatedSpelling(FutureWarning):
    """An older spelling that selfid still reads; the message names the one to write instead."""


class LikelyTypo(UserWarning):
    """A setting read as a text that is one edit away from a word of the vocabulary (`--system helpfull`)."""


_said: set[str] = set()  # messages given already: each once per process, however often the spelling is read


def deprecated(where: str, old: str, new: str) -> None:
    """The one-line deprecation message for an older spelling (once per process)."""
    message = f"{where}: {_short(old)!r} is an older spelling, read as {_short(new)!r}: the spelling to use"
    if message not in _said:
        _said.add(message)
        warnings.warn(message, DeprecatedSpelling, stacklevel=3)


def canonical(setting: str, where: str) -> str:
    """`setting` in today's vocabulary; an older spelling is mapped, with a deprecation message."""
    new = OLD.get(setting)
    if new is None and setting.startswith(OLD_TEXT_PREFIX):
        new = "text:" + setting[len(OLD_TEXT_PREFIX):]
    if new is None:
        return setting
    deprecated(where, setting, new)
    return new


class SystemPrompt(BaseModel):
    """How a system prompt was chosen and what the model saw. Frozen; torch-free."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Kind
    message: Optional[str]  # the system message sent (None: no system message)
    effective: Optional[str]  # the system text the model sees (None: none at all, or not knowable over HTTP)
    origin: str = ""  # where the setting came from: a config key, a CLI flag, a request, an adapter's selfid.json

    def describe(self) -> str:
        """One line for people, e.g. "system prompt (adapter: its training prompt, from selfid.json): 'You are X.'"."""
        how = {"template": "template: the chat template's own", "none": "none: no system text",
               "adapter": "adapter: its training prompt"}.get(self.kind, self.kind)
        seen = "none" if self.effective is None else repr(self.effective)
        return f"system prompt ({how}{', from ' + self.origin if self.origin else ''}): {seen}"


def sent(message: str | None, template_default: str | None, origin: str = "") -> SystemPrompt:
    """What the model sees when `message` is the system message sent (None: none, so the template's own)."""
    kind = "template" if message is None else "empty" if message == "" else "text"
    return _value(kind, message, template_default, origin)


def resolve(setting: str, template_default: str | None, origin: str = "",
            training: SystemPrompt | None = None) -> SystemPrompt:
    """A setting (see the module's docstring) against a chat template whose default system prompt is
    `template_default` (None: it inserts none). `training` is the adapter's, for the setting `adapter`."""
    if not isinstance(setting, str):
        raise SelfidError(f"{origin or 'system prompt'}: {setting!r} is not a system prompt setting: "
                          f"use {', '.join(KEYWORDS)} or a text")
    setting = canonical(setting, origin or "system prompt")
    if setting == "template":
        return _value("template", None, template_default, origin)
    if setting == "none":  # an empty system message replaces a template's default; without one, send none
        return _value("none", "" if template_default is not None else None, template_default, origin)
    if setting == "empty":
        return _value("empty", "", template_default, origin)
    if setting == "adapter":
        if training is None:
            raise SelfidError(f"{origin or 'system prompt'}: 'adapter' needs an adapter whose selfid.json records "
                              "its training system prompt; give the prompt itself instead")
        return _value("adapter", training.message, template_default, origin)
    if not setting.startswith("text:") and setting not in NAMED:
        _check_typo(setting, origin or "system prompt")
    text = setting[len("text:"):] if setting.startswith("text:") else NAMED.get(setting, setting)
    return sent(text, template_default, origin)


def _check_typo(text: str, where: str) -> None:
    """Warn (once per process) when a text is one edit away from a setting's word: it is sent as that text."""
    from rapidfuzz.distance import OSA  # one edit: a letter added, dropped, changed, or two swapped

    words = (*KEYWORDS, *NAMED)
    near = [w for w in words if OSA.distance(text.strip().lower(), w) <= 1]
    if not near:
        return
    message = (f"{where}: {_short(text)!r} is sent to the model as the system prompt text; did you mean "
               f"{near[0]!r}? (write text:{_short(text)} to send it as text without this warning)")
    if message not in _said:
        _said.add(message)
        warnings.warn(message, LikelyTypo, stacklevel=3)


def message_of(setting: str) -> str | None:
    """The system message a setting sends whatever the template (template, empty, a text; not none or adapter)."""
    chosen = resolve(setting, None, "preset")
    if chosen.kind in ("none", "adapter"):
        raise ValueError(f"{setting!r} sends a message that depends on the template or the adapter")
    return chosen.message


def _value(kind: str, message: str | None, template_default: str | None, origin: str) -> SystemPrompt:
    return SystemPrompt(kind=kind, message=message, effective=template_default if message is None else message,
                        origin=origin)


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"
