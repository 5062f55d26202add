"""The `selfid` command: each verb is a thin call into a module."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from selfid.errors import SelfidError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fine-tune chat models, serve them, and audit who they say they are.")



@app.callback()
def _root() -> None:
    """Fine-tune chat models, serve them, and audit who they say they are."""


MODEL_HELP = "'embedded' (Qwen2.5-Coder-0.5B-Instruct, bundled), a transformers folder, a .gguf file or a hub id"


@app.command()
def chat(
    model: str = typer.Option("embedded", "--model", "-m", help=MODEL_HELP),
    adapter: Optional[Path] = typer.Option(None, "--adapter", "-a", help="a LoRA adapter folder"),
    system: Optional[str] = typer.Option(None, "--system", "-s",
                                         help="system prompt; leave out for the template's own, '' for an empty one"),
    temperature: Optional[float] = typer.Option(None, "--temperature", "-t", help="0 = greedy; default: the model's own"),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="default: the model's own"),
    max_tokens: int = typer.Option(512, "--max-tokens", help="most new tokens per reply"),
    seed: Optional[int] = typer.Option(None, "--seed", help="makes sampling repeatable"),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="ask once, print the reply and exit"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N"),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16"),
):
    """Chat with a model in the terminal (streaming), or ask once with --prompt."""
    from selfid.engine import InProcessEngine, SamplingParams
    from selfid.model.load import load_model
    from selfid.terminal import run_chat

    loaded = load_model(model, adapter=adapter, device=device, dtype=dtype)
    params = SamplingParams.from_defaults(loaded.generation_defaults, temperature=temperature, top_p=top_p,
                                          max_new_tokens=max_tokens, seed=seed)
    run_chat(InProcessEngine(loaded), params, system=system, prompt=prompt)


def main() -> None:
    try:
        app()
    except SelfidError as e:
        print(f"selfid: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("selfid: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
