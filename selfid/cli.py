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


# --- training: train, export, eval-ner ------------------------------------------------------------

@app.command()
def train(
    config: Path = typer.Argument(..., help="a run config (YAML); see examples/msra.yaml"),
    set_: list[str] = typer.Option([], "--set", help="override a config key, e.g. --set train.lr=1e-4 (repeatable)"),
    resume: bool = typer.Option(False, "--resume", help="continue from the run's last checkpoint"),
):
    """LoRA fine-tune a model on the config's data; writes OUTPUT/adapter with its selfid.json manifest."""
    from selfid.config import load_config
    from selfid.train.sft import train as run

    result = run(load_config(config, set_), resume=resume)
    if result.stopped:
        raise typer.Exit(130 if result.checkpoint else 1)


@app.command()
def export(
    adapter: Path = typer.Argument(..., help="a LoRA adapter folder (e.g. OUTPUT/adapter)"),
    out: Path = typer.Option(..., "--out", "-o", help="a new folder for the merged model"),
    merge: bool = typer.Option(False, "--merge", help="merge the LoRA weights into the base model (required)"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="the base model; default: from the adapter's manifest"),
    gguf: bool = typer.Option(False, "--gguf", help="also write a GGUF file (when a converter is available)"),
    dtype: str = typer.Option("auto", "--dtype", help="auto (the base model's), bfloat16, float16, float32"),
):
    """Write a merged model whose chat template carries the training system prompt."""
    from selfid.train.export import export as run

    info = run(adapter, out, model=model, merge=merge, gguf=gguf, dtype=dtype)
    print(f"exported to {out} ({info['dtype']}); default system prompt {info['default_system']!r}, "
          f"template {info['template_hash']}")


@app.command("eval-ner")
def eval_ner(
    model: str = typer.Option("embedded", "--model", "-m", help=MODEL_HELP),
    adapter: Optional[Path] = typer.Option(None, "--adapter", "-a", help="a LoRA adapter folder"),
    n: int = typer.Option(500, "--n", help="MSRA test sentences to score (the first N)"),
    system: Optional[str] = typer.Option(None, "--system", "-s",
                                         help="system prompt; default: the adapter's training one, else the template's"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="most sequences decoded at once"),
    out: Optional[Path] = typer.Option(None, "--out", help="also write the report as JSON here"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N"),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16"),
):
    """Entity-level precision/recall/F1 per type and overall, and the parse rate, on the MSRA test split (greedy)."""
    from selfid.io import atomic_write_json
    from selfid.model.load import load_model
    from selfid.train.eval_ner import UNSET, evaluate_ner, table

    loaded = load_model(model, adapter=adapter, device=device, dtype=dtype)
    report = evaluate_ner(loaded, n=n, system=UNSET if system is None else system, batch_size=batch_size,
                          progress=True)
    print(table(report))
    if out is not None:
        atomic_write_json(out, report)


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
