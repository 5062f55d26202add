"""The `selfid` command: each verb is a thin call into a module."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Optional

import typer

from selfid.errors import SelfidError

def _no_value_shown(params):
    """Flags (--resume, --help) take no value; typer labels them <bool> in help as if they did."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class _Group(typer.core.TyperGroup):
    def get_params(self, ctx):
        return _no_value_shown(super().get_params(ctx))

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is not None:
            _no_value_shown([*command.params, command.get_help_option(ctx)])
        return command


app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, cls=_Group,
                  help="Fine-tune chat models, serve them, and audit who they say they are.")



@app.callback()
def _root() -> None:
    """Fine-tune chat models, serve them, and audit who they say they are."""
    _one_line_deprecations()


def _one_line_deprecations() -> None:
    """An older spelling gets one line on stderr, "selfid: deprecated: ...", not Python's two-line warning."""
    from selfid.system_prompt import DeprecatedSpelling

    shown = warnings.showwarning
    if getattr(shown, "selfid", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, DeprecatedSpelling):
            print(f"selfid: deprecated: {message}", file=sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    show.selfid = True
    warnings.showwarning = show


MODEL_HELP = ("'embedded' (Qwen2.5-Coder-0.5B-Instruct, bundled), embedded-1.5b or gemma3-270m (optional extras), "
              "a transformers folder, a .gguf file or a hub id")
TEMPLATE_HELP = ("a Jinja chat template file to render chats with, for a model without one (a pretrained model, "
                 "e.g. gemma3-270m with examples/gemma3-chat-template.jinja); default: the adapter's, else the model's own")
SYSTEM_HELP = ("system prompt: template (the chat template's own), none, empty, adapter (the one it was trained "
               "under) or a text; default: adapter when the adapter's selfid.json records one, else template")


@app.command()
def chat(
    model: str = typer.Option("embedded", "--model", "-m", help=MODEL_HELP),
    adapter: Optional[Path] = typer.Option(None, "--adapter", "-a", help="a LoRA adapter folder"),
    chat_template: Optional[Path] = typer.Option(None, "--chat-template", help=TEMPLATE_HELP),
    system: Optional[str] = typer.Option(None, "--system", "-s", help=SYSTEM_HELP),
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

    loaded = load_model(model, adapter=adapter, device=device, dtype=dtype, chat_template=chat_template)
    _warn(loaded.template_warnings)
    params = SamplingParams.from_defaults(loaded.generation_defaults, temperature=temperature, top_p=top_p,
                                          max_new_tokens=max_tokens, seed=seed)
    chosen, training = _system_setting(system, loaded)
    run_chat(InProcessEngine(loaded), params, system=chosen, prompt=prompt, training=training)


def _warn(lines) -> None:
    for line in lines:
        print(f"selfid: warning: {line}", file=sys.stderr)


def _system_setting(setting: str | None, loaded):
    """The system prompt `--system` chooses (left out: the adapter's training one, as `selfid api` serves it,
    else the template's own), and the adapter's training one."""
    from selfid.manifest import default_system, training_system
    from selfid.system_prompt import resolve

    training = training_system(loaded.manifest)
    if setting is None:
        return default_system(loaded.manifest, loaded.chat.default_system), training
    return resolve(setting, loaded.chat.default_system, "--system", training), training


# --- serve: `selfid api` and `selfid webchat` (one server: the API under /v1, the page at /) ---
def _serve(model, adapter, host, port, api_key, device, dtype, max_batch_size, default_model, page: bool,
           allowed_host=(), max_pending=None, chat_template=None) -> None:
    from selfid.serve.api import ANY_HOST, allowed_hosts, create_app, service_from_args
    from selfid.serve.server import check_port_free, default_port, serve, setup_logging

    port = port if port is not None else default_port(7860 if page else 8000)
    check_port_free(host, port)  # before the model loads, so a busy port fails in a second
    setup_logging()
    key = api_key if api_key is not None else os.environ.get("API_KEY") or None
    hosts = allowed_hosts(host, allowed_host or ())
    service = service_from_args(model, adapter or [], device=device, dtype=dtype, api_key=key,
                                max_batch_size=max_batch_size, default_model=default_model, allowed_hosts=hosts,
                                max_pending=max_pending, chat_template=chat_template)
    names = ", ".join(service.served)
    where = f"http://{host}:{port}"
    keyed = " (API key required)" if key else ""
    if page:
        print(f"selfid: chat page at {where}/ with {names}; OpenAI API at {where}/v1{keyed}", file=sys.stderr)
    else:
        print(f"selfid: serving {names} at {where}/v1 (OpenAI API){keyed}; chat page at {where}/", file=sys.stderr)
    if not key:
        print(f"selfid: warning: no API key is set, so any program that can reach {where} can use the model; "
              "pass --api-key KEY (or set API_KEY) to require one", file=sys.stderr)
    if hosts == (ANY_HOST,):
        print("selfid: warning: requests naming any host are answered (DNS rebinding is not blocked); pass "
              "--allowed-host NAME for each name clients use", file=sys.stderr)
    serve(create_app(service), host, port)


def _serve_verb(page: bool):
    """`api` and `webchat` run the same server; they differ in the default port and what they announce."""
    fallback = 7860 if page else 8000

    def verb(
        model: str = typer.Option("embedded", "--model", "-m", help=MODEL_HELP),
        adapter: Optional[list[str]] = typer.Option(
            None, "--adapter", "-a", help="NAME=PATH: serve the LoRA adapter at PATH as model NAME (repeatable)"),
        chat_template: Optional[Path] = typer.Option(None, "--chat-template", help=TEMPLATE_HELP),
        host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (0.0.0.0 for every interface)"),
        port: Optional[int] = typer.Option(None, "--port", help=f"default: $API_PORT, else {fallback}"),
        api_key: Optional[str] = typer.Option(
            None, "--api-key", help="require 'Authorization: Bearer KEY' (default: $API_KEY; unset: no key)"),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N"),
        dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16"),
        max_batch_size: Optional[int] = typer.Option(
            None, "--max-batch-size", help="most sequences decoded together (default: 256 on GPU, 32 on CPU)"),
        default_model: Optional[str] = typer.Option(
            None, "--default-model", help="the served name that answers requests naming no model or an unknown one "
            "(clients that send placeholders such as gpt-3.5-turbo); default: the only model when no adapter is served"),
        allowed_host: Optional[list[str]] = typer.Option(
            None, "--allowed-host", help="a host name clients may address (repeatable; '*' for any); default: "
            "localhost names for a loopback --host, the --host itself otherwise, any name for 0.0.0.0"),
        max_pending: Optional[int] = typer.Option(
            None, "--max-pending", min=1, help="most requests in flight (decoding or waiting); more get HTTP 429 with "
            "Retry-After (default: twice --max-batch-size)"),
    ):
        _serve(model, adapter, host, port, api_key, device, dtype, max_batch_size, default_model, page=page,
               allowed_host=allowed_host, max_pending=max_pending, chat_template=chat_template)

    return verb


app.command("api", help="Serve a model and its adapters through an OpenAI-compatible API (/v1/chat/completions); "
                        "the chat page is at / too.")(_serve_verb(page=False))
app.command("webchat", help="A chat page in the browser, base model and adapters side by side; the same server "
                            "answers the OpenAI API under /v1.")(_serve_verb(page=True))


# --- audit: who the model says it is (selfid.audit) ---------------------------------------------------
def _judge(base_url: Optional[str], model: Optional[str], api_key: Optional[str], seed: int):
    if not base_url and not model:
        return None
    if not (base_url and model):
        raise SelfidError("a judge needs both --judge-base-url and --judge-model")
    from selfid.audit.detect import Judge

    return Judge(base_url, model, api_key, seed=seed)


@app.command()
def audit(
    out: Path = typer.Option(..., "--out", "-o", help="run folder: run.json, generations.jsonl, summary.json, report.html"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP + " (default: embedded)"),
    adapter: Optional[Path] = typer.Option(None, "--adapter", "-a", help="a LoRA adapter folder"),
    chat_template: Optional[Path] = typer.Option(None, "--chat-template", help=TEMPLATE_HELP),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="audit an OpenAI-compatible endpoint instead, e.g. http://localhost:8000/v1"),
    model_name: Optional[str] = typer.Option(None, "--model-name", help="the model name the endpoint serves"),
    api_key: Optional[str] = typer.Option(None, "--api-key", help="the endpoint's key (default: $OPENAI_API_KEY)"),
    suites: str = typer.Option("identity,ner,general", "--suites",
                               help="comma-separated: identity (development set), identity-heldout (questions no "
                                    "training-data generator uses), ner, general"),
    systems: list[str] = typer.Option(["template,helpful,empty"], "--systems",
                                      help="template (none sent: the chat template's own; named 'default' in "
                                           "results), helpful, empty, adapter (the one it was trained under), "
                                           "personas (three persona prompts no training data uses; or one of "
                                           "persona-zh, persona-en, persona-task), text:TEXT (runs to the end of "
                                           "the value; repeat --systems for more)"),
    task_systems: Optional[str] = typer.Option(None, "--task-systems",
                                               help="system prompts of --systems the ner and general suites run "
                                                    "under (default: all of them); use one every compared run shares"),
    temperatures: str = typer.Option("0,0.7,1.0", "--temperatures", help="comma-separated; 0 = greedy (one sample)"),
    samples: int = typer.Option(8, "--samples", "-n", help="samples per prompt at each temperature above 0"),
    seed: int = typer.Option(0, "--seed", help="every generation's seed derives from it"),
    max_tokens: int = typer.Option(128, "--max-tokens", help="most new tokens per identity/general reply"),
    ner_limit: int = typer.Option(100, "--ner-limit", help="MSRA test sentences in the ner suite"),
    own: str = typer.Option("auto", "--own", help="the model's own vendor (qwen, meta, ...); auto infers it (for an "
                            "endpoint: from --own-from, else from its own answers, never from a served name)"),
    own_from: Optional[str] = typer.Option(None, "--own-from", help="(endpoint) the model folder, adapter, selfid.json "
                                           "or .gguf the endpoint serves: says whose model it is and gives the "
                                           "template's expected token counts"),
    probes: Optional[Path] = typer.Option(None, "--probes", help="an identity probe file (JSONL) instead of the shipped one"),
    resume: bool = typer.Option(False, "--resume", help="continue a run in --out, repeating no finished generation"),
    concurrency: int = typer.Option(8, "--concurrency", help="requests in flight (endpoint)"),
    retries: int = typer.Option(6, "--retries", help="retries per request, with exponential backoff (endpoint)"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="rows per decoding batch (in-process)"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N"),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, bfloat16, float16"),
    judge_base_url: Optional[str] = typer.Option(None, "--judge-base-url", help="a judge model's endpoint for replies the rules cannot settle"),
    judge_model: Optional[str] = typer.Option(None, "--judge-model"),
    judge_api_key: Optional[str] = typer.Option(None, "--judge-api-key"),
):
    """Measure who a model says it is (and NER / general quality) over system prompts x temperatures x samples."""
    from selfid.audit.report import print_summary
    from selfid.audit.run import AuditParams, condition_keys, parse_list, parse_systems, run_audit

    if base_url and (model or adapter or chat_template):
        raise SelfidError("give either --model/--adapter/--chat-template (in-process) or --base-url/--model-name "
                          "(endpoint), not both")
    if own_from and not base_url:
        raise SelfidError("--own-from is for auditing an endpoint (--base-url); in-process, --model names the model")
    if base_url and not model_name:
        raise SelfidError("--base-url needs --model-name (the name the endpoint serves)")
    judge = _judge(judge_base_url, judge_model, judge_api_key, seed)
    if base_url:
        from selfid.audit.backends import HttpBackend

        backend = HttpBackend(base_url, model_name, api_key, concurrency=concurrency, retries=retries, reference=own_from)
        manifest = None
    else:
        from selfid.audit.backends import InProcessBackend
        from selfid.engine import InProcessEngine
        from selfid.model.load import load_model

        loaded = load_model(model or "embedded", adapter=adapter, device=device, dtype=dtype,
                            chat_template=chat_template)
        _warn(loaded.template_warnings)
        backend = InProcessBackend(loaded, InProcessEngine(loaded, max_batch_size=batch_size))
        manifest = loaded.manifest
    params = AuditParams(suites=parse_list(suites, "suites"), systems=parse_systems(systems, manifest),
                         temperatures=parse_list(temperatures, "temperatures", float), samples=samples, seed=seed,
                         max_new_tokens=max_tokens, ner_limit=ner_limit, own=own,
                         identity_probes=str(probes) if probes else None,
                         task_systems=condition_keys(parse_list(task_systems, "task-systems")) if task_systems else None)
    summary = run_audit(backend, params, out, resume=resume, judge=judge)
    if base_url:  # what --own-from's adapter folder says about its training template, recorded in run.json
        import json

        endpoint = json.loads((out / "run.json").read_text(encoding="utf-8")).get("endpoint") or {}
        _warn((endpoint.get("reference") or {}).get("template_warnings") or ())
    print_summary(summary)
    print(out / "report.html")


@app.command()
def rescore(
    runs: list[Path] = typer.Argument(..., help="audit run folders (what `selfid audit --out` made)"),
):
    """Re-apply today's scorers to existing audit runs: summary.json and report.html are written again from
    the logged replies, and run.json records the scorer version. Nothing is generated."""
    from selfid.audit.report import print_summary
    from selfid.audit.run import rescore as rescore_run

    for run in runs:
        print_summary(rescore_run(run))
        print(run / "report.html")


@app.command()
def compare(
    run_a: Path = typer.Argument(..., help="the first audit run folder (say, the base model)"),
    run_b: Path = typer.Argument(..., help="the second (say, the fine-tuned model)"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for comparison.json and report.html"),
):
    """Compare two audit runs: per-cell differences with a test, prompts that flipped, NER/general deltas."""
    from selfid.audit.compare import compare as compare_runs
    from selfid.audit.report import print_comparison

    print_comparison(compare_runs(run_a, run_b, out))
    print(out / "report.html")


@app.command()
def classify(
    judge_base_url: Optional[str] = typer.Option(None, "--judge-base-url", help="a judge model for replies the rules cannot settle"),
    judge_model: Optional[str] = typer.Option(None, "--judge-model"),
    judge_api_key: Optional[str] = typer.Option(None, "--judge-api-key"),
    seed: int = typer.Option(0, "--seed", help="the judge's seed"),
):
    """Read JSON lines on stdin, {"text": ...} or {"messages": [..., {"role": "assistant", ...}]} (the conversation,
    so "Yes" to "Are you Claude?" is read as a claim); write each back with the vendors it claims and denies."""
    import json

    from selfid.audit.detect import classify as classify_reply

    judge = _judge(judge_base_url, judge_model, judge_api_key, seed)
    for lineno, line in enumerate(sys.stdin, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            raise SelfidError(f"stdin line {lineno} is not JSON: give one object like {{\"text\": \"...\"}} per line") from None
        text, question, earlier = _reply_and_question(obj, lineno)
        d = classify_reply(text, obj.get("asked"), judge, obj.get("question") or question, earlier=earlier)
        obj.update({"claims": list(d.claims), "denials": list(d.denials), "answer": d.answer,
                    "persona": d.persona is not None, "persona_name": d.persona, "uncertain": d.uncertain,
                    "detector": d.source})
        sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
        sys.stdout.flush()


def _reply_and_question(obj, lineno: int) -> tuple[str, str | None, list[str]]:
    """(the reply to classify, the user's turn it answers, the user's earlier turns) of one `classify` input line."""
    if isinstance(obj, dict) and isinstance(obj.get("text"), str):
        return obj["text"], None, []
    msgs = obj.get("messages") if isinstance(obj, dict) else None
    if (isinstance(msgs, list) and msgs and all(isinstance(m, dict) for m in msgs)
            and msgs[-1].get("role") == "assistant" and isinstance(msgs[-1].get("content"), str)):
        users = [m["content"] for m in msgs[:-1] if m.get("role") == "user" and isinstance(m.get("content"), str)]
        return msgs[-1]["content"], (users[-1] if users else None), users[:-1]
    raise SelfidError(f"stdin line {lineno} has neither a string \"text\" nor \"messages\" ending with an assistant "
                      "turn: give {\"text\": \"...\"} or {\"messages\": [{\"role\": \"user\", ...}, "
                      "{\"role\": \"assistant\", ...}]}")


@app.command()
def scan(
    data: Path = typer.Argument(..., help="a .jsonl/.json file or a folder of them (messages, sharegpt, alpaca)"),
    show: int = typer.Option(5, "--show", help="examples to show per finding"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
):
    """Check training data for other vendors' names, assistant self-descriptions and distillation markers."""
    import json

    from selfid.audit.scan import print_scan, scan as scan_data

    report = scan_data(data, show=show)
    if as_json:
        print(json.dumps(report.as_dict(), ensure_ascii=False, indent=2))
    else:
        print_scan(report)


# --- training: train, export, eval-ner ------------------------------------------------------------

@app.command()
def train(
    config: Path = typer.Argument(..., help="a run config (YAML); see examples/msra.yaml"),
    set_: list[str] = typer.Option([], "--set", help="override a config key, e.g. --set train.lr=1e-4 (repeatable)"),
    resume: bool = typer.Option(False, "--resume", help="continue from the run's last checkpoint"),
):
    """LoRA fine-tune a model on the config's data; writes OUTPUT/adapter with its selfid.json manifest."""
    from selfid.config import load_config
    from selfid.pipeline.train import run

    result = run(load_config(config, set_), resume=resume)  # with the identity replay set and adapter scale
    if result.stopped:
        raise typer.Exit(130 if result.checkpoint else 1)


@app.command()
def export(
    adapter: Path = typer.Argument(..., help="a LoRA adapter folder (e.g. OUTPUT/adapter)"),
    out: Path = typer.Option(..., "--out", "-o", help="a new folder for the merged model"),
    merge: bool = typer.Option(False, "--merge", help="merge the LoRA weights into the base model (required)"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="the base model; default: from the adapter's manifest"),
    chat_template: Optional[Path] = typer.Option(None, "--chat-template", help=TEMPLATE_HELP),
    gguf: bool = typer.Option(False, "--gguf", help="also write OUT/gguf/model-TYPE.gguf for llama.cpp and ollama "
                              "(Qwen2-architecture models), with the chat template and an ollama Modelfile"),
    gguf_types: str = typer.Option("bf16,q8_0", "--gguf-types", help="comma-separated: f32, f16, bf16, q8_0, q5_1, "
                                   "q5_0, q4_1, q4_0"),
    dtype: str = typer.Option("auto", "--dtype", help="auto (the base model's), bfloat16, float16, float32"),
    system: str = typer.Option("adapter", "--system", "-s", help="the exported template's default system prompt: "
                               "adapter (the training prompt), template (the base template's own), empty or a text"),
):
    """Write a merged model whose chat template carries the training system prompt (and, with --gguf, GGUF files)."""
    from selfid.train.export import export as run

    info = run(adapter, out, model=model, merge=merge, gguf=gguf_types if gguf else False, dtype=dtype,
               system=system, warn=lambda text: print(f"warning: {text}"), chat_template=chat_template)
    print(f"exported to {out} ({info['dtype']}); default system prompt {info['default_system']!r}, "
          f"template {info['template_hash']}")
    for g in info.get("gguf", []):
        print(f"  {out / g['path']} ({g['type']}, {g['bytes'] / 2**20:.1f} MiB)")


@app.command("eval-ner")
def eval_ner(
    model: str = typer.Option("embedded", "--model", "-m", help=MODEL_HELP),
    adapter: Optional[Path] = typer.Option(None, "--adapter", "-a", help="a LoRA adapter folder"),
    chat_template: Optional[Path] = typer.Option(None, "--chat-template", help=TEMPLATE_HELP),
    n: int = typer.Option(500, "--n", help="MSRA test sentences to score (the first N)"),
    system: Optional[str] = typer.Option(None, "--system", "-s", help=SYSTEM_HELP),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="most sequences decoded at once"),
    out: Optional[Path] = typer.Option(None, "--out", help="also write the report as JSON here"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N"),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16"),
):
    """Entity-level precision/recall/F1 per type and overall, and the parse rate, on the MSRA test split (greedy)."""
    from selfid.io import atomic_write_json
    from selfid.model.load import load_model
    from selfid.train.eval_ner import evaluate_ner, table

    loaded = load_model(model, adapter=adapter, device=device, dtype=dtype, chat_template=chat_template)
    report = evaluate_ner(loaded, n=n, system=_system_setting(system, loaded)[0], batch_size=batch_size,
                          progress=True)
    print(table(report))
    if out is not None:
        atomic_write_json(out, report)


# --- demo: the whole study, small (selfid.demo) ----------------------------------------------------

@app.command()
def demo(
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="run folder (default: runs/demo-TIMESTAMP); "
                                       "an existing demo folder is continued"),
    full: bool = typer.Option(False, "--full", help="the scale of the study in docs/study.md: 8,000 sentences x 5 "
                              "epochs, every identity probe at T 0/0.7/1.0/1.3 x 8 samples (meant for a GPU)"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
):
    """Audit the embedded model, LoRA-train it on NER, audit it again and say what changed (minutes on a CPU)."""
    from selfid.demo import run_demo

    run_demo(out, full=full, device=device)


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
