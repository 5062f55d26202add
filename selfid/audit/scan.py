"""`selfid scan DATA`: did the training data teach the model a new identity?

Reads JSONL or JSON files (or a folder of them) in the usual chat-data shapes: OpenAI-style
`messages`, ShareGPT `conversations` (from/value), Alpaca `instruction/input/output`,
`prompt/response`, or plain `text`. Counts and shows samples that mention other vendors or
models, assistant turns that describe themselves (with the vendors they claim), replies that look
distilled from another assistant ("As an AI language model..."), and the system prompts the data
carries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from selfid.audit.detect import clean, detect_prose
from selfid.audit.report.terminal import pct
from selfid.audit.stats import rate
from selfid.data import readers
from selfid.data.readers import SHAREGPT_ROLES
from selfid.errors import SelfidError
from selfid.vendors import find_mentions

DISTILLED = re.compile(
    r"as an ai(?: language)? model|as a (?:large )?language model|as an ai (?:assistant|developed|created|trained)|"
    r"i(?:'m| am) (?:just )?an ai(?: language model)?(?:,| and| so)|i don'?t have (?:personal )?(?:feelings|opinions|emotions)|"
    r"i cannot browse the internet|my (?:knowledge|training) (?:cutoff|cut-off)|as of my (?:last|latest) (?:update|training)|"
    r"i'?m sorry, but (?:as an ai|i can(?:no|')t)|"
    r"作为一个?(?:人工智能|AI)(?:语言)?模型|作为一个?(?:AI|人工智能)助手|作为一个?大型?语言模型|我(?:只是|是)一个(?:人工智能|AI)(?:语言)?模型|"
    r"我没有(?:个人)?(?:感情|情感|观点)|我的知识截止|截至我的训练", re.I)
SELF = re.compile(
    r"\b(?:I am|I'm) (?:an? )?(?:AI|artificial intelligence|language model|large language model|assistant|chatbot|virtual assistant)\b|"
    r"\bmy name is\b|\bI was (?:created|developed|trained|built|made)\b|"
    r"我是(?:一个|一款|一名)?(?:人工智能|AI|智能|语言模型|大模型|大语言模型|助手|聊天机器人)|我叫|我的名字|我(?:是)?由.{0,12}(?:开发|训练|创造)", re.I)
ROLE = {**SHAREGPT_ROLES, "bot": "assistant", "model": "assistant"}  # the trainer's role names, and two more


@dataclass
class ScannedRecord:
    """One record of a scanned file, read leniently from any common chat-data shape: where it is, and its turns."""
    file: str
    line: int
    turns: list[tuple[str, str]]  # (role, text)


@dataclass
class Finding:
    file: str
    line: int
    role: str
    kind: str  # "mention" | "self" | "distilled"
    vendors: list[str]
    snippet: str


@dataclass
class ScanReport:
    files: list[str] = field(default_factory=list)
    samples: int = 0
    skipped: int = 0
    mentioning: int = 0  # samples that name any vendor or model
    mentions: dict = field(default_factory=dict)  # vendor -> samples that name it
    claims: dict = field(default_factory=dict)  # vendor -> samples whose assistant claims it as its own
    self_descriptions: int = 0
    distilled: int = 0
    personas: dict = field(default_factory=dict)
    system_prompts: dict = field(default_factory=dict)  # text -> samples
    examples: dict = field(default_factory=lambda: {"mention": [], "self": [], "distilled": []})

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["examples"] = {k: [f.__dict__ for f in v] for k, v in self.examples.items()}
        d["system_prompts"] = dict(sorted(self.system_prompts.items(), key=lambda kv: -kv[1]))
        return d


def _turns(obj: dict) -> list[tuple[str, str]] | None:
    if isinstance(obj.get("messages"), list):
        return [(ROLE.get(str(m.get("role")), str(m.get("role"))), str(m.get("content") or "")) for m in obj["messages"]
                if isinstance(m, dict)]
    if isinstance(obj.get("conversations"), list):
        turns = [(ROLE.get(str(m.get("from")), str(m.get("from"))), str(m.get("value") or "")) for m in obj["conversations"]
                 if isinstance(m, dict)]
        if isinstance(obj.get("system"), str) and obj["system"]:
            turns.insert(0, ("system", obj["system"]))
        return turns
    if "instruction" in obj or "output" in obj:
        turns = [("system", obj["system"])] if isinstance(obj.get("system"), str) and obj["system"] else []
        for old_q, old_a in obj.get("history") or []:
            turns += [("user", str(old_q)), ("assistant", str(old_a))]
        user = "\n".join(str(obj[k]) for k in ("instruction", "input") if obj.get(k))
        return turns + [("user", user), ("assistant", str(obj.get("output") or ""))]
    for q, a in (("prompt", "response"), ("prompt", "completion"), ("question", "answer"), ("query", "response")):
        if q in obj and a in obj:
            return [("user", str(obj[q])), ("assistant", str(obj[a]))]
    if isinstance(obj.get("text"), str):
        return [("text", obj["text"])]
    return None


def read_samples(path: Path, report: ScanReport) -> Iterator[ScannedRecord]:
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.suffix in (".jsonl", ".json")) if path.is_dir() else [path]
    if not path.exists():
        raise SelfidError(f"no such file or folder: {path}")
    if not files:
        raise SelfidError(f"{path} holds no .json or .jsonl files")
    for f in files:
        report.files.append(str(f))
        entries = readers.records(f)
        for where, obj in entries:
            turns = _turns(obj) if isinstance(obj, dict) else None
            if turns is None:
                report.skipped += 1
                continue
            yield ScannedRecord(str(f), where, turns)


def _snippet(text: str, start: int, end: int, width: int = 80) -> str:
    a, b = max(0, start - width), min(len(text), end + width)
    return ("…" if a else "") + text[a:b].replace("\n", " ") + ("…" if b < len(text) else "")


def scan(path: Path, show: int = 5) -> ScanReport:
    report = ScanReport()
    for s in read_samples(path, report):
        report.samples += 1
        mentioned, claimed = set(), set()
        is_self = is_distilled = False
        for role, text in s.turns:
            if role == "system":
                report.system_prompts[text] = report.system_prompts.get(text, 0) + 1
            prose = clean(text)
            ms = find_mentions(prose)
            if ms:
                new = {m.vendor for m in ms} - mentioned
                mentioned |= new
                if new and len(report.examples["mention"]) < show:
                    report.examples["mention"].append(Finding(s.file, s.line, role, "mention", sorted(new),
                                                              _snippet(prose, ms[0].start, ms[0].end)))
            if role not in ("assistant", "text"):
                continue
            d = detect_prose(prose, mentions=ms)
            m = SELF.search(prose)
            if d.claims or d.persona or m:
                claimed |= set(d.claims)
                if d.persona:
                    report.personas[d.persona] = report.personas.get(d.persona, 0) + 1
                if not is_self and len(report.examples["self"]) < show:
                    at = m.start() if m else 0
                    report.examples["self"].append(Finding(s.file, s.line, role, "self", list(d.claims),
                                                           _snippet(prose, at, at + 40)))
                is_self = True
            dm = DISTILLED.search(prose)
            if dm:
                if not is_distilled and len(report.examples["distilled"]) < show:
                    report.examples["distilled"].append(Finding(s.file, s.line, role, "distilled", [],
                                                                _snippet(prose, dm.start(), dm.end())))
                is_distilled = True
        report.mentioning += bool(mentioned)
        for v in mentioned:
            report.mentions[v] = report.mentions.get(v, 0) + 1
        for v in claimed:
            report.claims[v] = report.claims.get(v, 0) + 1
        report.self_descriptions += is_self
        report.distilled += is_distilled
    if not report.samples:  # a table of 0% over nothing read as "clean data"
        raise SelfidError(f"{path}: " + (f"none of its {report.skipped} records has a shape selfid reads" if
                                         report.skipped else "it holds no records") +
                          " (messages, conversations with from/value, instruction/output, prompt/response, "
                          "question/answer or text): nothing was scanned")
    return report


def print_scan(report: ScanReport, console=None) -> None:
    console = console or Console()
    n = report.samples
    console.print(f"[bold]selfid scan[/bold]: {n} samples in {len(report.files)} file(s)"
                  + (f", {report.skipped} records of unknown shape skipped" if report.skipped else ""))
    t = Table(title="what the data says about who the assistant is", title_justify="left")
    t.add_column("finding")
    t.add_column("samples", justify="right")
    t.add_row("mention a vendor or model", pct(rate(report.mentioning, n)))
    for v, k in sorted(report.mentions.items(), key=lambda kv: -kv[1]):
        t.add_row(f"  names {v}", pct(rate(k, n)))
    t.add_row("assistant describes itself", pct(rate(report.self_descriptions, n)))
    for v, k in sorted(report.claims.items(), key=lambda kv: -kv[1]):
        t.add_row(f"  claims to be {v}", pct(rate(k, n)))
    for name, k in sorted(report.personas.items(), key=lambda kv: -kv[1])[:5]:
        t.add_row(f"  calls itself {name!r}", pct(rate(k, n)))
    t.add_row("looks distilled (\"As an AI language model…\")", pct(rate(report.distilled, n)))
    console.print(t)
    if report.system_prompts:
        st = Table(title="system prompts in the data", title_justify="left")
        st.add_column("system prompt")
        st.add_column("samples", justify="right")
        for text, k in sorted(report.system_prompts.items(), key=lambda kv: -kv[1])[:8]:
            st.add_row(escape(repr(text)), str(k))
        console.print(st)
    for kind, title in (("mention", "mentions"), ("self", "self-descriptions"), ("distilled", "distillation markers")):
        if report.examples[kind]:
            console.print(f"[bold]{title}[/bold]")
            for f in report.examples[kind]:
                tag = f" [{', '.join(f.vendors)}]" if f.vendors else ""
                console.print(f"  [dim]{escape(f.file)}:{f.line} ({f.role}){escape(tag)}[/dim] {escape(f.snippet)}")

