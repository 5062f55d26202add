"""Readers for training conversations: alpaca json/jsonl and `messages` jsonl (OpenAI or sharegpt style).

Every reader returns `TrainingConversation`s: {role, content} messages ending with an assistant reply.
A bad record is an error naming the file and the line it starts on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from selfid.errors import SelfidError
from selfid.io import MAX_FILE_BYTES, read_text_bounded, text_lines
from selfid.model.chat import validate_messages

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant"}


@dataclass(frozen=True)
class TrainingConversation:
    """One checked conversation to train on, and where it came from."""
    messages: tuple[dict, ...]  # [system], user, assistant, (user, assistant)*
    source: str
    fixed_system: bool = False  # True: train exactly these messages, never add the run's system prompt

    @property
    def has_system(self) -> bool:
        return self.messages[0]["role"] == "system"


def check_conversation(messages: list, where: str) -> tuple[dict, ...]:
    """Plain {role, content} dicts; optional leading system; user/assistant alternate; ends with assistant."""
    if not isinstance(messages, list) or not messages:
        raise SelfidError(f"{where}: expected a non-empty list of messages")
    plain = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise SelfidError(f"{where}: message {i} is not an object")
        content = m.get("content")
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
                raise SelfidError(f"{where}: message {i} has non-text content parts; only text can be trained on")
            content = "".join(p["text"] for p in content)
        plain.append({"role": m.get("role"), "content": content})
    try:
        out = validate_messages(plain, last="assistant")
    except SelfidError as e:
        raise SelfidError(f"{where}: {e}") from None
    first = out[1]["role"] if out[0]["role"] == "system" else out[0]["role"]
    if first != "user":
        raise SelfidError(f"{where}: the conversation starts with {first!r}; it must start with a user message")
    return tuple(out)


def records(path: Path) -> Iterator[tuple[int, object]]:
    """(line number, record) from a .jsonl file or a .json array (line = where the record starts): the one reader
    of record files (training data, `selfid scan`). JSON Lines are read a piece at a time and split on line feeds
    only (selfid.io.text_lines), so a record longer than selfid.io.MAX_RECORD_BYTES is refused, naming its line; a
    JSON array is read whole, up to selfid.io.MAX_FILE_BYTES."""
    if path.suffix == ".json" or _first_byte(path) == b"[":
        text = read_text_bounded(path, MAX_FILE_BYTES, "a JSON array of records (use .jsonl, one record per line, "
                                                       "for more)")
        yield from _json_array(path, text)
        return
    for lineno, line in text_lines(path):
        try:
            yield lineno, json.loads(line)
        except ValueError as e:
            raise SelfidError(f"{path}:{lineno}: not valid JSON ({e}): fix or remove that line") from None


def _first_byte(path: Path, within: int = 1 << 20) -> bytes:
    """The first byte of `path` that is not white space (looked for within its first `within` bytes; b"" if none)."""
    with open(path, "rb") as f:
        return f.read(within).lstrip()[:1]


def _json_array(path: Path, text: str) -> Iterator[tuple[int, object]]:
    decoder = json.JSONDecoder()
    i = len(text) - len(text.lstrip())
    if not text.startswith("[", i):
        raise SelfidError(f"{path}:1: expected a JSON array of records (or use .jsonl, one record per line)")
    i += 1

    def skip(i):
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    i = skip(i)
    if text.startswith("]", i):
        return
    while True:
        line = text.count("\n", 0, i) + 1
        try:
            record, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise SelfidError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        yield line, record
        i = skip(i)
        if text.startswith(",", i):
            i = skip(i + 1)
        elif text.startswith("]", i):
            return
        else:
            raise SelfidError(f"{path}:{text.count(chr(10), 0, i) + 1}: expected ',' or ']' between records")


def alpaca_messages(record: dict, where: str) -> tuple[dict, ...]:
    """{instruction, input?, output, system?, history?: [[user, assistant], ...]} as messages."""
    if not isinstance(record, dict):
        raise SelfidError(f"{where}: expected an object with instruction and output")
    for key in ("instruction", "output"):
        if not isinstance(record.get(key), str):
            raise SelfidError(f"{where}: alpaca record needs a text {key!r} field")
    user = record["instruction"]
    extra = record.get("input") or ""
    if not isinstance(extra, str):
        raise SelfidError(f"{where}: 'input' must be text")
    if extra:
        user = f"{user}\n{extra}"
    msgs: list[dict] = []
    if record.get("system"):
        msgs.append({"role": "system", "content": record["system"]})
    history = record.get("history") or []
    if not isinstance(history, list) or not all(isinstance(h, (list, tuple)) and len(h) == 2 for h in history):
        raise SelfidError(f"{where}: 'history' must be a list of [user, assistant] pairs")
    for q, a in history:
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]
    return check_conversation(msgs, where)


def chat_messages(record: dict, where: str) -> tuple[dict, ...]:
    """{"messages": [{role, content}]} (OpenAI) or {"conversations": [{from, value}]} (sharegpt)."""
    if not isinstance(record, dict):
        raise SelfidError(f"{where}: expected an object with 'messages' or 'conversations'")
    if "messages" in record:
        return check_conversation(record["messages"], where)
    if "conversations" in record:
        convo = record["conversations"]
        if not isinstance(convo, list):
            raise SelfidError(f"{where}: 'conversations' must be a list")
        msgs = []
        for i, m in enumerate(convo):
            if not isinstance(m, dict) or m.get("from") not in SHAREGPT_ROLES:
                got = m.get("from") if isinstance(m, dict) else m
                raise SelfidError(f"{where}: conversation turn {i} has from={got!r}; use human, gpt or system")
            msgs.append({"role": SHAREGPT_ROLES[m["from"]], "content": m.get("value")})
        if isinstance(record.get("system"), str) and record["system"] and msgs and msgs[0]["role"] != "system":
            msgs.insert(0, {"role": "system", "content": record["system"]})
        return check_conversation(msgs, where)
    raise SelfidError(f"{where}: expected a 'messages' or 'conversations' list")


def detect_format(record) -> str:
    if isinstance(record, dict) and ("messages" in record or "conversations" in record):
        return "messages"
    if isinstance(record, dict) and "instruction" in record:
        return "alpaca"
    raise SelfidError("cannot tell the data format: records need 'messages', 'conversations' or 'instruction'/'output'")


def read_file(path: str | Path, fmt: str = "auto") -> list[TrainingConversation]:
    """All samples in a data file; `fmt` is auto, alpaca or messages."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SelfidError(f"no such data file: {path}")
    samples = []
    for lineno, record in records(path):
        where = f"{path}:{lineno}"
        kind = fmt
        if kind == "auto":
            try:
                kind = detect_format(record)
            except SelfidError as e:
                raise SelfidError(f"{where}: {e}") from None
        convert = alpaca_messages if kind == "alpaca" else chat_messages
        samples.append(TrainingConversation(convert(record, where), source=str(path)))
    if not samples:
        raise SelfidError(f"{path} holds no records")
    return samples
