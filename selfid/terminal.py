"""`selfid chat`: a terminal chat with streaming output, and a one-shot `--prompt` form."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape

from selfid.engine import InProcessEngine, SamplingParams
from selfid.errors import SelfidError
from selfid.model.chat import conversation
from selfid.system_prompt import SystemPrompt, resolve

err = Console(stderr=True, highlight=False, soft_wrap=True)

HELP = ("/reset clears the conversation, /system SETTING sets the system prompt (template, none, empty, adapter or "
        "a text; /system alone: the template's), /exit quits")


def reply(engine: InProcessEngine, messages: list[dict], params: SamplingParams, out=None) -> str:
    """Stream one assistant reply to `out` (stdout by default); return its text."""
    out = out or sys.stdout
    chat = engine.loaded.chat
    parts = []
    for delta in engine.stream(chat.encode(chat.render(messages)), params):
        parts.append(delta)
        out.write(delta)
        out.flush()
    out.write("\n")
    out.flush()
    return "".join(parts)


def run_chat(engine: InProcessEngine, params: SamplingParams, system: SystemPrompt | None = None,
             prompt: str | None = None, training: SystemPrompt | None = None) -> None:
    """`system`: the system prompt to start with (default: the template's own); `training`: the adapter's."""
    loaded = engine.loaded
    system = system or resolve("template", loaded.chat.default_system)
    sampling = (f"[dim]sampling: temperature {params.temperature}, top_p {params.top_p}, top_k {params.top_k}, "
                f"repetition_penalty {params.repetition_penalty} (defaults from "
                f"{escape(loaded.generation_defaults_source)})[/dim]")
    if prompt is not None:
        messages = conversation(prompt, system.message)
        err.print(f"[dim]{loaded.name} · {escape(system.describe())} · "
                  f"template {loaded.chat.template_hash}[/dim]")
        err.print(sampling)
        reply(engine, messages, params)
        return
    err.print(f"[bold]selfid chat[/bold] with {loaded.name}"
              f"{' + ' + str(loaded.adapter) if loaded.adapter else ''} · template {loaded.chat.template_hash}")
    err.print(sampling)
    err.print(f"[dim]{HELP}[/dim]")
    history: list[dict] = []
    while True:
        try:
            line = input("you> ")
        except EOFError:
            err.print()
            return
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return
        if text == "/reset":
            history = []
            err.print("[dim]conversation cleared[/dim]")
            continue
        if text.startswith("/system"):
            arg = line.strip()[len("/system"):].strip()
            try:
                system = resolve(arg or "template", loaded.chat.default_system, "/system", training)
            except SelfidError as e:
                err.print(f"[red]{e}[/red]")
                continue
            history = []
            err.print(f"[dim]{system.describe()}; conversation cleared[/dim]")
            continue
        messages = conversation(line, system.message, history)
        if not history:
            err.print(f"[dim]{system.describe()}[/dim]")
        sys.stdout.write("assistant> ")
        try:
            answer = reply(engine, messages, params)
        except KeyboardInterrupt:
            err.print("\n[dim](interrupted)[/dim]")
            continue
        history += [{"role": "user", "content": line}, {"role": "assistant", "content": answer}]
