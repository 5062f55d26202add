"""The `selfid` command: each verb is a thin call into a module."""

from __future__ import annotations

import os
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


# --- serve: `selfid api` and `selfid webchat` (one server: the API under /v1, the page at /) ---
def _serve(model, adapter, host, port, api_key, device, dtype, max_batch_size, page: bool) -> None:
    from selfid.serve.api import create_app, service_from_args
    from selfid.serve.server import check_port_free, default_port, serve, setup_logging

    port = port if port is not None else default_port(7860 if page else 8000)
    check_port_free(host, port)  # before the model loads, so a busy port fails in a second
    setup_logging()
    key = api_key if api_key is not None else os.environ.get("API_KEY") or None
    service = service_from_args(model, adapter or [], device=device, dtype=dtype, api_key=key,
                                max_batch_size=max_batch_size)
    names = ", ".join(service.served)
    where = f"http://{host}:{port}"
    keyed = " (API key required)" if key else ""
    if page:
        print(f"selfid: chat page at {where}/ with {names}; OpenAI API at {where}/v1{keyed}", file=sys.stderr)
    else:
        print(f"selfid: serving {names} at {where}/v1 (OpenAI API){keyed}; chat page at {where}/", file=sys.stderr)
    serve(create_app(service), host, port)


def _serve_verb(page: bool):
    """`api` and `webchat` run the same server; they differ in the default port and what they announce."""
    fallback = 7860 if page else 8000

    def verb(
        model: str = typer.Option("embedded", "--model", "-m", help=MODEL_HELP),
        adapter: Optional[list[str]] = typer.Option(
            None, "--adapter", "-a", help="NAME=PATH: serve the LoRA adapter at PATH as model NAME (repeatable)"),
        host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (0.0.0.0 for every interface)"),
        port: Optional[int] = typer.Option(None, "--port", help=f"default: $API_PORT, else {fallback}"),
        api_key: Optional[str] = typer.Option(
            None, "--api-key", help="require 'Authorization: Bearer KEY' (default: $API_KEY; unset: no key)"),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N"),
        dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16"),
        max_batch_size: Optional[int] = typer.Option(
            None, "--max-batch-size", help="most sequences decoded together (default: 256 on GPU, 32 on CPU)"),
    ):
        _serve(model, adapter, host, port, api_key, device, dtype, max_batch_size, page=page)

    return verb


app.command("api", help="Serve a model and its adapters through an OpenAI-compatible API (/v1/chat/completions); "
                        "the chat page is at / too.")(_serve_verb(page=False))
app.command("webchat", help="A chat page in the browser, base model and adapters side by side; the same server "
                            "answers the OpenAI API under /v1.")(_serve_verb(page=True))


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
