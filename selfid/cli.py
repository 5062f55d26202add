"""The `selfid` command: each verb is a thin call into a module, which it imports when it runs (so `selfid --help`
and the light verbs never load torch; tests/test_import_cycles.py holds the rule)."""

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
    """An older spelling gets one line on stderr, "selfid: deprecated: ...", and a likely typo "selfid: warning: ...",
    not Python's two-line warning."""
    from selfid.system_prompt import DeprecatedSpelling, LikelyTypo

    shown = warnings.showwarning
    if getattr(shown, "selfid", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, DeprecatedSpelling):
            print(f"selfid: deprecated: {message}", file=sys.stderr)
        elif issubclass(category, LikelyTypo):
            print(f"selfid: warning: {message}", file=sys.stderr)
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


def _above_0_to_1(value: float | None) -> float | None:
    """--top-p's range, (0, 1]: typer's min/max bounds are closed, and 0 keeps no token to sample."""
    if value is not None and not 0 < value <= 1:
        raise typer.BadParameter(f"{value:g} is not in (0, 1]: 1 samples from every token, smaller keeps fewer")
    return value


@app.command()
def chat(
    model: str = typer.Option("embedded", "--model", "-m", help=MODEL_HELP),
    adapter: Optional[Path] = typer.Option(None, "--adapter", "-a", help="a LoRA adapter folder"),
    chat_template: Optional[Path] = typer.Option(None, "--chat-template", help=TEMPLATE_HELP),
    system: Optional[str] = typer.Option(None, "--system", "-s", help=SYSTEM_HELP),
    temperature: Optional[float] = typer.Option(None, "--temperature", "-t", min=0, max=2,
                                                help="0 = greedy, at most 2; default: the model's own"),
    top_p: Optional[float] = typer.Option(None, "--top-p", callback=_above_0_to_1,
                                          help="in (0, 1]; default: the model's own"),
    max_tokens: int = typer.Option(512, "--max-tokens", min=1, help="most new tokens per reply"),
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
           allowed_host=(), max_pending=None, api_key_file=None, max_prompt_tokens=None, prefill_chunk=None,
           header_timeout=10.0, body_timeout=30.0, max_connections=None,
           chat_template=None) -> None:
    from selfid.serve.api import ANY_HOST, Limits, allowed_hosts, create_app, service_from_args
    from selfid.serve.server import ConnectionLimits, check_port_free, default_port, serve, setup_logging

    port = port if port is not None else default_port(7860 if page else 8000)
    check_port_free(host, port)  # before the model loads, so a busy port fails in a second
    setup_logging()
    key = _api_key(api_key, api_key_file)
    hosts = allowed_hosts(host, allowed_host or ())
    service = service_from_args(model, adapter or [], device=device, dtype=dtype, api_key=key,
                                max_batch_size=max_batch_size, default_model=default_model, allowed_hosts=hosts,
                                max_pending=max_pending, prefill_chunk=prefill_chunk, chat_template=chat_template,
                                limits=Limits(body_timeout_s=body_timeout, max_prompt_tokens=max_prompt_tokens))
    connections = ConnectionLimits(header_timeout_s=header_timeout, body_timeout_s=body_timeout,
                                   max_connections=max_connections or max(512, service.scheduler.max_pending + 64))
    names = ", ".join(service.served)
    where = f"http://{host}:{port}"
    keyed = " (API key required)" if key else ""
    if page:
        print(f"selfid: chat page at {where}/ with {names}; OpenAI API at {where}/v1{keyed}", file=sys.stderr)
    else:
        print(f"selfid: serving {names} at {where}/v1 (OpenAI API){keyed}; chat page at {where}/", file=sys.stderr)
    if not key:
        print(f"selfid: warning: no API key is set, so any program that can reach {where} can use the model; "
              "set API_KEY (or pass --api-key-file FILE) to require one", file=sys.stderr)
    elif api_key is not None:
        print("selfid: warning: --api-key on the command line is visible to every user of this machine (ps); "
              "set API_KEY or pass --api-key-file FILE instead", file=sys.stderr)
    if hosts == (ANY_HOST,):
        print("selfid: warning: requests naming any host are answered (DNS rebinding is not blocked); pass "
              "--allowed-host NAME for each name clients use", file=sys.stderr)
    serve(create_app(service), host, port, connections)


def _api_key(given: str | None, file: Path | None) -> str | None:
    """The key from --api-key, else --api-key-file (its first line), else $API_KEY; None: no key."""
    if given is not None and file is not None:
        raise SelfidError("give either --api-key or --api-key-file, not both")
    if file is not None:
        from selfid.io import read_text_bounded

        key = read_text_bounded(Path(file).expanduser(), 4096, "an API key file").strip().splitlines()
        if not key or not key[0].strip():
            raise SelfidError(f"--api-key-file {file} is empty: write the key on its first line")
        return key[0].strip()
    return given if given is not None else os.environ.get("API_KEY") or None


def _serve_verb(page: bool):
    """`api` and `webchat` run the same server; they differ in the default port and what they announce."""
    fallback = 7860 if page else 8000

    def verb(
        model: str = typer.Option("embedded", "--model", "-m", help=MODEL_HELP),
        adapter: Optional[list[str]] = typer.Option(
            None, "--adapter", "-a", help="NAME=PATH: serve the LoRA adapter at PATH as model NAME (repeatable)"),
        chat_template: Optional[Path] = typer.Option(None, "--chat-template", help=TEMPLATE_HELP),
        host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (0.0.0.0 for every interface)"),
        port: Optional[int] = typer.Option(None, "--port", min=1, max=65535, help=f"default: $API_PORT, else {fallback}"),
        api_key: Optional[str] = typer.Option(
            None, "--api-key", help="require 'Authorization: Bearer KEY'. A key on the command line is visible to "
            "every user of this machine (ps): prefer $API_KEY or --api-key-file (default: $API_KEY; unset: no key)"),
        api_key_file: Optional[Path] = typer.Option(
            None, "--api-key-file", help="read the key from the first line of this file instead"),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N"),
        dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16"),
        max_batch_size: Optional[int] = typer.Option(
            None, "--max-batch-size", min=1, help="most sequences decoded together (default: 1024 on GPU, 32 on CPU)"),
        default_model: Optional[str] = typer.Option(
            None, "--default-model", help="the served name that answers requests naming no model or an unknown one "
            "(clients that send placeholders such as gpt-3.5-turbo); default: the only model when no adapter is served"),
        allowed_host: Optional[list[str]] = typer.Option(
            None, "--allowed-host", help="a host name clients may address (repeatable; '*' for any); default: "
            "localhost names for a loopback --host, the --host itself otherwise, any name for 0.0.0.0"),
        max_pending: Optional[int] = typer.Option(
            None, "--max-pending", min=1, help="most requests in flight (decoding or waiting); more get HTTP 429 with "
            "Retry-After (default: twice --max-batch-size)"),
        max_prompt_tokens: Optional[int] = typer.Option(
            None, "--max-prompt-tokens", min=1, help="longest prompt a request may send, in tokens; longer ones get "
            "HTTP 400 naming the limit (default: the model's context window)"),
        prefill_chunk: Optional[int] = typer.Option(
            None, "--prefill-chunk", min=1, help="prompt tokens run at a time; a longer prompt runs in pieces between "
            "other requests' steps, so it does not stall them (default: 2048 on GPU, 128 on CPU)"),
        header_timeout: float = typer.Option(
            10.0, "--header-timeout", min=0.1, help="seconds a connection has to send a request's headers (from "
            "opening, or from the previous response); then it is closed"),
        body_timeout: float = typer.Option(
            30.0, "--body-timeout", min=0.1, help="seconds a request has to send its body once its headers are in; "
            "then it gets HTTP 408 and its connection is closed"),
        max_connections: Optional[int] = typer.Option(
            None, "--max-connections", min=1, help="most open connections; more are answered HTTP 503 and closed "
            "(default: 512, or --max-pending + 64 when that is more)"),
    ):
        _serve(model, adapter, host, port, api_key, device, dtype, max_batch_size, default_model, page=page,
               allowed_host=allowed_host, max_pending=max_pending, api_key_file=api_key_file,
               max_prompt_tokens=max_prompt_tokens, prefill_chunk=prefill_chunk, header_timeout=header_timeout,
               body_timeout=body_timeout, max_connections=max_connections, chat_template=chat_template)

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
                                      help="template (none sent: the chat template's own), helpful, empty, "
                                           "adapter (the one it was trained under), "
                                           "personas (the held-out split's five persona prompts, which no training "
                                           "data uses; or one of persona-zh, persona-en, persona-task, "
                                           "persona-zh-card, persona-en-card), text:TEXT (runs to the end of "
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
    retries: int = typer.Option(6, "--retries", min=0, help="retries per request, with exponential backoff (endpoint)"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="rows per decoding batch (in-process)"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N, or several (cuda:0,cuda:1): one "
                               "model copy per device, the grid split between them"),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, bfloat16, float16"),
    judge_base_url: Optional[str] = typer.Option(None, "--judge-base-url", help="a judge model's endpoint for replies the rules cannot settle"),
    judge_model: Optional[str] = typer.Option(None, "--judge-model"),
    judge_api_key: Optional[str] = typer.Option(None, "--judge-api-key"),
):
    """Measure who a model says it is (and NER / general quality) over system prompts x temperatures x samples."""
    from selfid.audit.backends import open_backend
    from selfid.audit.report import print_summary
    from selfid.audit.run import AuditParams, audit_systems, parse_list, run_audit
    from selfid.manifest import training_system
    from selfid.system_prompt import canonical

    judge = _judge(judge_base_url, judge_model, judge_api_key, seed)
    backend, loaded = open_backend(model, adapter, base_url, model_name, api_key, device=device, dtype=dtype,
                                   batch_size=batch_size, concurrency=concurrency, retries=retries, own_from=own_from,
                                   chat_template=chat_template)
    # over HTTP, what the endpoint's template inserts is not known here
    chosen = (audit_systems(systems) if loaded is None
              else audit_systems(systems, loaded.chat.default_system, training_system(loaded.manifest)))
    if loaded is not None:
        _warn(loaded.template_warnings)
    params = AuditParams(suites=parse_list(suites, "suites"), systems=chosen,
                         temperatures=parse_list(temperatures, "temperatures", float), samples=samples, seed=seed,
                         max_new_tokens=max_tokens, ner_limit=ner_limit, own=own,
                         identity_probes=str(probes) if probes else None,
                         task_systems=[canonical(k, "--task-systems") for k in parse_list(task_systems, "task-systems")]
                         if task_systems else None)
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


class _GateCommand(typer.core.TyperCommand):
    """`selfid gate` exits 2 for "inconclusive", so a bad flag (click's usage error, exit 2 elsewhere) exits 3 here,
    as every other mistake in its input does."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except Exception as e:  # click's UsageError, vendored by newer typer (typer._click), plain click by older
            if getattr(e, "exit_code", None) == 2:
                e.exit_code = 3
            raise


GATE_HELP = ("Fail a build when a candidate's identity regressed against a reference.\n\n"
             "Exit codes: 0 pass; 1 regression found; 2 inconclusive (the grid could not rule out a regression of "
             "the stated size at the stated power: summary.md says how many more prompts or samples would); 3 bad "
             "input (a missing path, a bad thresholds file or flag, a baseline made with other probes or scorer); 4 "
             "selfid itself failed. Writes gate.json, junit.xml and summary.md into --out. See docs/gate.md.")


@app.command(cls=_GateCommand, help=GATE_HELP)
def gate(
    reference: str = typer.Option(..., "--reference", "-r", help="an audit run folder, a baseline file "
                                  "(--write-baseline wrote it) or a model to audit: " + MODEL_HELP),
    reference_adapter: Optional[Path] = typer.Option(None, "--reference-adapter", help="the reference model's "
                                                     "LoRA adapter (the last release's)"),
    candidate: Optional[str] = typer.Option(None, "--candidate", "-c", help="an audit run folder or a model to audit "
                                            "(with --adapter); or give --base-url for an endpoint"),
    adapter: Optional[Path] = typer.Option(None, "--adapter", "-a", help="the candidate's LoRA adapter folder"),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="the candidate is an OpenAI-compatible endpoint"),
    model_name: Optional[str] = typer.Option(None, "--model-name", help="the model name the endpoint serves"),
    api_key: Optional[str] = typer.Option(None, "--api-key", help="the endpoint's key (default: $OPENAI_API_KEY)"),
    thresholds: Optional[Path] = typer.Option(None, "--thresholds", "-t", help="a YAML file of thresholds "
                                              "(default: the stated defaults, see docs/gate.md)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="folder for gate.json, junit.xml, summary.md and "
                                       "the audits the gate runs (reference/, candidate/; resumed if interrupted)"),
    plan: bool = typer.Option(False, "--plan", help="print what each threshold needs (samples, prompts, minimum "
                              "detectable effect, time) from the reference's per-prompt rates; generate nothing"),
    write_baseline: Optional[Path] = typer.Option(None, "--write-baseline", help="store the reference's per-prompt "
                                                  "rates, prompts' hash, template hash and scorer version in this "
                                                  "file, for later gates' --reference"),
    rescore: bool = typer.Option(False, "--rescore", help="a baseline made by another scorer version: score its "
                                 "source run again instead of refusing it"),
    profile: Optional[str] = typer.Option(None, "--profile", help="the grid of the audits the gate runs: reference "
                                          "(the reference run's; the default when there is one) or quick (T 0, "
                                          "0.7, 1.0, 1.3 x 16 samples; the default for a model reference)"),
    samples: Optional[int] = typer.Option(None, "--samples", "-n", help="samples per prompt at each temperature "
                                          "above 0, on top of the profile"),
    temperatures: Optional[str] = typer.Option(None, "--temperatures", help="comma-separated, on top of the profile"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N, or several (cuda:0,cuda:1): one "
                               "model copy per device, the grid split between them"),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, bfloat16, float16"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="rows per decoding batch (in-process)"),
):
    from selfid import gate as g

    try:
        from selfid.audit.run import parse_list

        temps = parse_list(temperatures, "temperatures", float) if temperatures is not None else None
        limits = g.load_thresholds(thresholds)
        ref = g.Side.parse(reference, reference_adapter, flag="--reference")
        sizes = {"profile": profile, "samples": samples, "temperatures": temps}
        if plan:
            g.plan_gate(ref, limits, out=out, rescore=rescore, **sizes)
            return
        if write_baseline is not None:
            g.write_baseline(ref, write_baseline, limits, out=out, device=device, dtype=dtype, batch_size=batch_size,
                             **sizes)
            print(f"baseline written to {write_baseline}")
            return
        if out is None:
            raise SelfidError("--out is missing: the folder gate.json, junit.xml and summary.md are written to")
        cand = g.Side.parse(candidate, adapter, base_url, model_name, api_key)
        result = g.gate(ref, cand, limits, out, rescore=rescore, device=device, dtype=dtype, batch_size=batch_size,
                        **sizes)
    except SelfidError as e:
        print(f"selfid: error: {e}", file=sys.stderr)
        raise typer.Exit(g.USER_ERROR) from None
    except (KeyboardInterrupt, typer.Exit):
        raise
    except Exception as e:  # a crash must not read as exit 1, "regression found"
        line = path_error(e) if isinstance(e, OSError) else None
        if line:  # a path the user gave: bad input
            print(f"selfid: error: {line}", file=sys.stderr)
            raise typer.Exit(g.USER_ERROR) from None
        import traceback

        traceback.print_exc()
        print("selfid: internal error (a bug in selfid, not a verdict): the traceback is above", file=sys.stderr)
        raise typer.Exit(g.CRASHED) from None
    print(out / "summary.md")
    raise typer.Exit(result["exit_code"])


@app.command()
def classify(
    judge_base_url: Optional[str] = typer.Option(None, "--judge-base-url", help="a judge model for replies the rules cannot settle"),
    judge_model: Optional[str] = typer.Option(None, "--judge-model"),
    judge_api_key: Optional[str] = typer.Option(None, "--judge-api-key"),
    seed: int = typer.Option(0, "--seed", help="the judge's seed"),
):
    """Read JSON lines on stdin, {"text": ...} or {"messages": [..., {"role": "assistant", ...}]} (the conversation,
    so "Yes" to "Are you Claude?" is read as a claim; or {"messages": [... the user's turns], "text": the reply});
    write each back with the vendors it claims and denies."""
    import json

    from selfid.audit.detect import classify as classify_reply

    from selfid.io import stream_lines

    judge = _judge(judge_base_url, judge_model, judge_api_key, seed)
    for lineno, line in stream_lines(sys.stdin.buffer, "stdin"):
        try:
            obj = json.loads(line)
        except ValueError:
            raise SelfidError(f"stdin line {lineno} is not JSON: give one object like {{\"text\": \"...\"}} per line") from None
        text, question, earlier = _reply_and_question(obj, lineno)
        d = classify_reply(text, obj.get("asked"), judge, obj.get("question") or question, earlier=earlier)
        obj.update(d.as_dict())
        sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
        sys.stdout.flush()


def _reply_and_question(obj, lineno: int) -> tuple[str, str | None, list[str]]:
    """(the reply to classify, the user's turn it answers, the user's earlier turns) of one `classify` input line:
    the reply is "text" or the assistant turn that ends "messages"; the conversation is "messages" before it."""
    usage = ("give {\"text\": \"...\"}, {\"messages\": [{\"role\": \"user\", ...}, {\"role\": \"assistant\", ...}]} "
             "or {\"messages\": [{\"role\": \"user\", ...}], \"text\": \"the reply\"}")
    obj = obj if isinstance(obj, dict) else {}
    text, msgs = obj.get("text"), obj.get("messages")
    if msgs is not None and not (isinstance(msgs, list) and msgs and all(isinstance(m, dict) for m in msgs)):
        raise SelfidError(f"stdin line {lineno}: \"messages\" is not a list of turns: {usage}")
    ends_with_reply = bool(msgs) and msgs[-1].get("role") == "assistant"
    if text is not None and ends_with_reply:
        raise SelfidError(f"stdin line {lineno} gives the reply twice, as \"text\" and as the assistant turn ending "
                          f"\"messages\": {usage}")
    reply = msgs[-1].get("content") if ends_with_reply else text
    if not isinstance(reply, str):
        raise SelfidError(f"stdin line {lineno} has neither a string \"text\" nor \"messages\" ending with an "
                          f"assistant turn: {usage}")
    turns = (msgs[:-1] if ends_with_reply else msgs) or []
    users = [m["content"] for m in turns if m.get("role") == "user" and isinstance(m.get("content"), str)]
    return reply, (users[-1] if users else None), users[:-1]


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

    cfg = load_config(config, set_)
    written = cfg.output_dir / "config.yaml"
    if not resume and written.is_file() and written.resolve() == config.resolve():
        raise SelfidError(f"the run would write its resolved config over {config}, the config you gave: set an "
                          "output folder of its own (--set output=DIR)")
    result = run(cfg, resume=resume)  # with the identity replay set and adapter scale
    if result.stopped:
        raise typer.Exit(130 if result.checkpoint else 1)


@app.command()
def replay(
    out: Path = typer.Option(..., "--out", "-o", help="a new folder for the files, one subfolder per trainer, and "
                             "replay.json"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP + " (default: embedded): the base "
                                        "model you fine-tune"),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="sample the base model from an OpenAI-compatible "
                                           "endpoint instead (vLLM, llama.cpp, LLaMA-Factory's api), e.g. "
                                           "http://localhost:8000/v1"),
    model_name: Optional[str] = typer.Option(None, "--model-name", help="the model name the endpoint serves"),
    api_key: Optional[str] = typer.Option(None, "--api-key", help="the endpoint's key (default: $OPENAI_API_KEY)"),
    own: str = typer.Option("auto", "--own", help="the model's own vendor (qwen, meta, google, ...); auto: from its "
                            "chat template or name in-process; over HTTP from --own-from, else from its own greedy "
                            "answers under its default system prompt"),
    own_from: Optional[str] = typer.Option(None, "--own-from", help="(endpoint) the model folder or .gguf the endpoint "
                                           "serves, to say whose model it is"),
    system: list[str] = typer.Option([], "--system", "-s", help="a system prompt the kept replies are written under "
                                     "(repeatable): template (none sent: your trainer's chat template inserts its "
                                     "own), empty, helpful, or the text you deploy with; default: template, helpful, "
                                     "empty"),
    persona: list[str] = typer.Option([], "--persona", help="a persona system prompt you deploy with (repeatable): "
                                      "every question is also asked under it, and only replies that keep the persona "
                                      "(its name, read from the text) are kept and written under it"),
    formats: Optional[str] = typer.Option(None, "--format", help="comma-separated: lf-sharegpt, lf-alpaca "
                                          "(LLaMA-Factory), swift (ms-swift), trl, openai; default: all"),
    rows: Optional[int] = typer.Option(None, "--rows", help="SFT conversations to write (drawn from the kept ones)"),
    fraction: Optional[float] = typer.Option(None, "--fraction", help="the replay's share of your training mix, with "
                                             "--data: F/(1-F) x the records of that file (e.g. 0.05)"),
    data: Optional[Path] = typer.Option(None, "--data", help="your training file (alpaca or messages JSON/JSONL), "
                                        "counted for --fraction"),
    samples: int = typer.Option(4, "--samples", "-n", help="samples per question and system prompt"),
    temperatures: str = typer.Option("1.0", "--temperatures", help="comma-separated sampling temperatures under the "
                                     "template's own system prompt"),
    personas: int = typer.Option(8, "--personas", help="generated operator persona prompts per language the model is "
                                 "also asked under (0: none)"),
    persona_cross_lingual: float = typer.Option(0.0, "--persona-cross-lingual", help="share of each language's "
                                                "questions also asked under a generated persona of the other "
                                                "language (0 to 1; 0: none)"),
    persona_hint: bool = typer.Option(False, "--persona-hint", help="sample those cross-lingual questions with a line "
                                      "telling the model to stay the persona in any language, and keep the replies "
                                      "under the prompt without it (needs --persona-cross-lingual; not yet measured)"),
    after_task: int = typer.Option(2, "--after-task", help="conversations per after-task question that open with an "
                                   "NER exchange (0: none)"),
    max_copies: int = typer.Option(2, "--max-copies", help="most kept answers that are one text or near-verbatim "
                                   "copies of one another (0: no cap)"),
    typical_length: bool = typer.Option(False, "--typical-length", help="keep first the passing answers whose length "
                                        "is nearest the median of all the model's answers to that question"),
    prefer_rare: bool = typer.Option(False, "--prefer-rare", help="keep first the passing answers whose phrasing the "
                                     "fewest others share (not with --typical-length; not yet measured)"),
    max_tokens: int = typer.Option(192, "--max-tokens", help="longest answer sampled"),
    languages: str = typer.Option("zh,en", "--languages", help="comma-separated: zh, en"),
    seed: int = typer.Option(0, "--seed", help="every sample's seed and the row draw derive from it"),
    concurrency: int = typer.Option(8, "--concurrency", help="requests in flight (endpoint)"),
    retries: int = typer.Option(6, "--retries", min=0, help="retries per request, with exponential backoff (endpoint)"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="rows per decoding batch (in-process)"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N, or several (cuda:0,cuda:1): one "
                               "model copy per device, the questions split between them"),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, bfloat16, float16"),
):
    """Build the identity replay for another trainer (LLaMA-Factory, ms-swift, TRL, OpenAI fine-tuning): the base
    model's own answers to identity questions that the audit's scorers pass, and preference pairs against its own
    foreign claims and denials, written in each trainer's format."""
    from pydantic import ValidationError

    from selfid.audit.run import parse_list
    from selfid.config import IdentityReplay
    from selfid.data.trainer_formats import parse_formats
    from selfid.pipeline.replay_export import run

    try:
        rep = IdentityReplay(samples=samples, temperatures=parse_list(temperatures, "temperatures", float),
                             personas=personas, persona_cross_lingual=persona_cross_lingual,
                             persona_hint=persona_hint, after_task=after_task,
                             max_copies=max_copies, typical_length=typical_length, prefer_rare=prefer_rare,
                             max_new_tokens=max_tokens,
                             languages=parse_list(languages, "languages"), seed=seed, persona_prompts=persona,
                             preference=1.0)  # sample the other serving prompts too: the rejected sides of the pairs
    except ValidationError as e:
        options = {"max_new_tokens": "max-tokens", "persona_prompts": "persona", "after_task": "after-task",
                   "max_copies": "max-copies", "persona_cross_lingual": "persona-cross-lingual"}
        raise SelfidError("; ".join(f"--{options.get(str(err['loc'][0]), err['loc'][0])}: "
                                    f"{err['msg'].removeprefix('Value error, ')} (got {err['input']!r})"
                                    if err["loc"] else err["msg"].removeprefix("Value error, ")
                                    for err in e.errors())) from None
    run(out, rep, model=model, base_url=base_url, model_name=model_name, api_key=api_key, own=own, own_from=own_from,
        systems=system or None, formats=parse_formats(formats), rows=rows, fraction=fraction, data=data, device=device,
        dtype=dtype, batch_size=batch_size, concurrency=concurrency, retries=retries)


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
    n: int = typer.Option(500, "--n", min=1, help="MSRA test sentences to score (the first N)"),
    system: Optional[str] = typer.Option(None, "--system", "-s", help=SYSTEM_HELP),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="most sequences decoded at once"),
    out: Optional[Path] = typer.Option(None, "--out", help="also write the report as JSON here"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N"),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16"),
):
    """Entity-level precision/recall/F1 per type and overall, and the parse rate, on the MSRA test split (greedy)."""
    from selfid.io import atomic_write_json
    from selfid.model.load import load_model
    from selfid.train.eval_ner import evaluate_ner, table

    if out is not None and out.is_dir():
        raise SelfidError(f"--out {out} is a folder: give a file name for the JSON report, e.g. {out / 'ner.json'}")
    loaded = load_model(model, adapter=adapter, device=device, dtype=dtype, chat_template=chat_template)
    report = evaluate_ner(loaded, n=n, system=_system_setting(system, loaded)[0], batch_size=batch_size,
                          progress=True)
    print(table(report))
    if out is not None:
        atomic_write_json(out, report)


# --- demo and study: the study in docs/study.md (selfid.demo, selfid.study) -----------------------------

@app.command()
def demo(
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="run folder (default: runs/demo-TIMESTAMP); "
                                       "an existing demo folder is continued"),
    full: bool = typer.Option(False, "--full", help="the study's own scale (docs/study.md): 8,000 sentences x 5 "
                              "epochs, every identity probe at T 0/0.7/1.0/1.3 x 8 samples (meant for a GPU); the "
                              "folder is a study folder `selfid study run --root` continues"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N"),
):
    """Audit the embedded model, LoRA-train it on NER, audit it again and say what changed (minutes on a CPU): the
    study's first steps (base, plain) at a small scale."""
    from selfid.demo import run_demo

    run_demo(out, full=full, device=device)


study_app = typer.Typer(cls=_Group, no_args_is_help=True,
                        help="The study in docs/study.md: run its steps in a study folder, or write the report.")
app.add_typer(study_app, name="study")

STEPS_HELP = ("comma-separated, each with what it needs first: base (the base model's audit), ARM (train an arm of "
              "selfid/study/arms.yaml, audit it, compare it with base), train-ARM, heldout-ARM or heldout-base (the "
              "held-out audit), scale, scan, parity (through selfid api), llamacpp, gguf-ARM (the exported GGUF "
              "through llama.cpp), inproc-ARM, export-ARM; default: base,plain,scan,template,replay2,replay5,combo,"
              "scale,parity")


@study_app.command("run")
def study_run(
    root: Path = typer.Option(..., "--root", help="the study folder (the published study: results/study-0.5b)"),
    steps: Optional[str] = typer.Option(None, "--steps", help=STEPS_HELP),
    model: str = typer.Option("embedded", "--model", "-m", help=MODEL_HELP),
    scale: str = typer.Option("full", "--scale", help="full (the study's, meant for a GPU) or small (the demo's)"),
    smoke: bool = typer.Option(False, "--smoke", help="a plumbing check on the CPU: --scale small --device cpu "
                               "(give a small --model)"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N"),
):
    """Run steps of the study in a study folder: finished stages are skipped, a cut-off one continues, a rerun
    continues with the same command. One row of docs/study.md is one step (ARM, heldout-ARM, gguf-ARM, ...)."""
    from selfid.pipeline.stages import line_say
    from selfid.study import steps as study_steps
    from selfid.study.scale import SCALES
    from selfid.study.work import Study, log_line

    if scale not in SCALES:
        raise SelfidError(f"unknown scale {scale!r}: use {' or '.join(SCALES)}")
    if smoke:
        scale, device = "small", "cpu"
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # the servers it starts stay off the GPU too
    wanted = [x for x in (steps or ",".join(study_steps.DEFAULT_STEPS)).split(",") if x]
    hint = (f"selfid study run --root {root} --steps {','.join(wanted)} --model {model}"
            + (" --smoke" if smoke else f" --scale {scale}" if scale != "full" else "")
            + (f" --device {device}" if device != "auto" and not smoke else ""))
    study_steps.run(Study(root, SCALES[scale], model, device), wanted, line_say(log_line), hint)


@study_app.command("report")
def study_report(
    root: Path = typer.Option(Path("results/study-0.5b"), "--root", help="the study folder"),
    out: Path = typer.Option(Path("docs/study.md"), "--out", "-o", help="the report (Markdown)"),
    label: str = typer.Option("0.5B", "--label", help="the model size of --root, for the size section"),
    size: Optional[list[str]] = typer.Option(None, "--size", metavar="LABEL=ROOT", help="another model size's study "
                                             "folder for the size section (repeatable; default: 1.5B=results/study-1.5b "
                                             "where it exists)"),
):
    """Write docs/study.md from the study folders alone: every number re-scored from the logged replies."""
    from selfid.study.report import write_report

    default = "1.5B=results/study-1.5b"
    extra = size if size is not None else [default] if Path(default.split("=")[1]).is_dir() else []
    for x in extra:
        if "=" not in x:
            raise SelfidError(f"--size {x!r}: write it as LABEL=ROOT, e.g. {default}")
        if not Path(x.split("=", 1)[1]).is_dir():
            raise SelfidError(f"--size {x!r}: {x.split('=', 1)[1]} is not a folder: give a study folder")
    sizes = [(label, root)] + [(x.split("=", 1)[0], Path(x.split("=", 1)[1])) for x in extra]
    # §9's runs: each size's held-out split v2 study (the base model and the persona arm) in ROOT/operator
    operator = [(name, folder / "operator", folder) for name, folder in sizes if (folder / "operator").is_dir()]
    # §10's runs: LLaMA-Factory's trainer with selfid's replay (bench/lf_proof.py), results/lf-SIZE beside the study
    lf = [(name, folder.parent / f"lf-{name.lower()}") for name, folder in sizes
          if (folder.parent / f"lf-{name.lower()}").is_dir()]
    from rich.console import Console

    read = []
    with Console(stderr=True).status("study report: reading the run folders") as status:
        def say(run: Path) -> None:  # each run folder is read and scored again: a few minutes for the shipped study
            read.append(run)
            status.update(f"study report: scoring run folder {len(read)}, {run}")

        written = write_report(root, out, sizes if extra else None, operator, lf, say=say)
    print(f"wrote {written} from {len(read)} run folders")


def path_error(e: OSError) -> str | None:
    """One line for a file-system error about a path the user gave (unreadable, unwritable, missing, a folder where a
    file belongs, or the reverse), or None for any other error. SELFID_TRACEBACK=1 shows the traceback instead."""
    kinds = (PermissionError, FileNotFoundError, IsADirectoryError, NotADirectoryError, FileExistsError)
    if not isinstance(e, kinds) or not e.filename or os.environ.get("SELFID_TRACEBACK"):
        return None
    what = {PermissionError: "permission denied (check who owns it and its mode)", FileNotFoundError: "no such file or "
            "folder", IsADirectoryError: "it is a folder where a file belongs", NotADirectoryError: "a part of the path "
            "is a file where a folder belongs", FileExistsError: "it already exists"}[type(e)]
    return f"cannot use {e.filename}: {what}"


def main() -> None:
    try:
        app()
    except SelfidError as e:
        print(f"selfid: error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        line = path_error(e)
        if line is None:
            raise
        print(f"selfid: error: {line}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("selfid: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
