"""Run configs: pydantic models loaded from YAML, with `--set key=value` overrides.

Every field has a default except `output`; unknown keys are errors that name the key and list the
known ones, so a typo never trains with a silently ignored setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from selfid.errors import SelfidError
from selfid.io import read_text_bounded
from selfid.system_prompt import SERVING, canonical

SYSTEM_HELP = "template (the chat template's own), none (no system text), empty, or a text"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataSource(Strict):
    """One training source. `source: msra` is built in; a file is read as alpaca or messages (sharegpt/OpenAI) data."""

    source: str = Field("msra", description="msra, or a path to a .json/.jsonl file")
    format: Literal["auto", "alpaca", "messages"] = "auto"
    limit: Optional[int] = Field(None, ge=1, description="at most this many samples (a seeded draw)")
    weight: float = Field(1.0, gt=0, description="repeat factor: 2 = every sample twice, 0.5 = half of them")
    fraction: Optional[float] = Field(None, gt=0, lt=1, description="this share of the final mix (resampled to fit)")
    max_chars: Optional[int] = Field(None, ge=1, description="msra only: skip longer sentences")
    seed: int = 0


class LoraSettings(Strict):
    r: int = Field(8, ge=1)
    alpha: float = Field(16, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: Union[list[str], str] = "all-linear"


class IdentityReplay(Strict):
    """Mix self-cognition conversations into training.

    kind `self` (the default): the base model answers a pool of identity questions itself (selfid/data/
    identity_pool.py) under its template's own system prompt and under operator persona prompts
    (selfid/data/personas.py); the answers the audit's scorers pass are kept (selfid/pipeline/replay.py), so
    the model keeps its own varied voice and stays whoever its system prompt says it is. kind `template`: fixed
    templated answers (selfid/data/identity.py), kept for comparison: they teach a slogan. Either is rendered
    under `systems`, the system prompts users serve with (a persona's replies under that persona only).
    `preference` and `distill` add, beside the task's loss, a DPO loss on pairs of the base model's own replies
    (own identity over a foreign claim or a denial, the persona over its own identity under a named persona) and
    a KL to the base model's next-token distribution under its template prompt.
    """

    kind: Literal["self", "template"] = "self"
    fraction: float = Field(0.05, gt=0, lt=1)
    name: Optional[str] = Field(None, description="template: the model's own name; default: from its answers")
    maker: Optional[str] = Field(None, description="template: who made it; default: from its answers")
    own: Optional[str] = Field(None, description="self: the model's own vendor (qwen, meta, ...); default: its template's")
    systems: list[str] = Field(default_factory=lambda: [*SERVING, "adapter"],
                               description=f"system prompts to render under: {SYSTEM_HELP}, or adapter (the one this "
                                           "run trains under)")
    languages: list[Literal["zh", "en"]] = Field(default_factory=lambda: ["zh", "en"])
    samples: int = Field(4, ge=1, description="self: samples per question under each system prompt and temperature")
    temperatures: list[Annotated[float, Field(ge=0, le=2)]] = Field(
        default_factory=lambda: [1.0], min_length=1, description="self: sampling temperatures in [0, 2] under the "
        "template's own system prompt (the other prompts sample at the highest)")
    per_question: int = Field(4, ge=1, description="self: most distinct kept answers per question and system prompt")
    personas: int = Field(8, ge=0, description="self: operator persona prompts per language (selfid/data/personas.py) "
                          "the base model also answers under, each question under one of them; 0: none")
    persona_prompts: list[str] = Field(default_factory=list, description="self: the persona system prompts you deploy "
                                       "with: every question is also asked under each, and kept replies must keep the "
                                       "persona (its name, read from the text)")
    persona_cross_lingual: float = Field(0.0, ge=0, le=1, description="self: the share of each language's questions "
                                         "also asked under a generated persona of the other language (an English "
                                         "question under a Chinese persona prompt, round-robin over that language's "
                                         "personas, the questions drawn by seed), kept by the same rule as under a "
                                         "persona of its own language; 0: none. Measured once (docs/study.md §9, "
                                         "persona-xl-typical)")
    persona_hint: bool = Field(False, description="self: ask the cross-lingual questions under the persona prompt "
                               "with one more line, in the question's language, telling the model to stay the persona "
                               "by its name and company as written whatever language the user writes in; kept "
                               "replies are trained under the persona prompt without that line (context "
                               "distillation: the model's own words, sampled under a stronger instruction than the "
                               "one it learns to follow). Needs persona_cross_lingual. Not yet measured")
    after_task: int = Field(2, ge=0, description="self: conversations per after-task identity question that open with "
                            "an NER exchange in the task's own format (MSRA train sentences); 0: none")
    max_copies: int = Field(2, ge=0, description="self: most kept answers, across questions, that are the same text or "
                            "near-verbatim copies of one another (the audit's copy measure); 0: no cap")
    typical_length: bool = Field(False, description="self: keep first, of each question's passing answers under a "
                                 "system prompt, those whose length is nearest the median length of all the base "
                                 "model's answers there (passing or not), instead of the first sampled, so the "
                                 "replay's answers run as long as the model's own; replay.json records both medians. "
                                 "Not yet measured")
    prefer_rare: bool = Field(False, description="self: keep first, of each question's passing answers under a system "
                              "prompt, those whose phrasing the fewest passing answers in the whole replay share (the "
                              "audit's copy measure: the same after normalising, or near-verbatim), so the replay "
                              "spreads over the model's phrasings instead of its most common ones. Not with "
                              "typical_length. Not yet measured")
    minimal_pairs: bool = Field(True, description="self: ask the own-name wordings of leading questions about other "
                                "vendors too, so the answer depends on the name, not the wording")
    deny_per_question: int = Field(1, ge=1, description="self: most kept answers per leading question about "
                                   "another vendor (22 vendors x 4 wordings: more and the replay is mostly 'No')")
    max_new_tokens: int = Field(192, ge=8, description="self: longest answer sampled")
    seed: int = 0
    preference: float = Field(0.0, ge=0, description="weight of the DPO loss on own-vs-foreign pairs (0: off)")
    beta: float = Field(0.1, gt=0, description="DPO's beta")
    distill: float = Field(0.0, ge=0, description="weight of the KL to the base model on identity replies (0: off)")
    aux_batch: int = Field(16, ge=1, description="pairs or replies per optimizer step for preference/distill")

    @field_validator("systems")
    @classmethod
    def _systems(cls, v):
        for setting in v:
            canonical(setting, "config identity_replay.systems")  # older spellings: a deprecation message
        return v

    @model_validator(mode="after")
    def _kind_fits(self):
        if self.kind == "template" and (self.preference or self.distill):
            raise ValueError("preference and distill learn from the base model's own samples: they need kind: self")
        if self.kind == "self" and self.persona_cross_lingual and (not self.personas or len(set(self.languages)) < 2):
            raise ValueError(f"persona_cross_lingual {self.persona_cross_lingual} asks questions under generated "
                             "personas of the other language: it needs personas > 0 and both languages (zh, en); got "
                             f"personas {self.personas}, languages {self.languages}")
        if self.prefer_rare and self.typical_length:
            raise ValueError("prefer_rare and typical_length each decide which passing answers are kept first: set one")
        if self.persona_hint and not self.persona_cross_lingual:
            raise ValueError("persona_hint adds a line to the persona prompt of the cross-lingual questions: it needs "
                             "persona_cross_lingual > 0 (try 0.5; with selfid replay, --persona-cross-lingual 0.5)")
        return self


class AdapterScale(Strict):
    """After training, search the LoRA scale that restores the base identity rate with NER F1 within tolerance."""

    grid: list[float] = Field(default_factory=lambda: [1.0, 0.9, 0.8, 0.7, 0.6, 0.5])
    f1_tolerance: float = Field(0.01, ge=0, description="largest allowed drop in NER F1 from scale 1.0")
    identity_margin: float = Field(0.0, ge=0, description="allowed foreign-claim rate above the base model's")
    ner_sentences: int = Field(200, ge=1)
    temperatures: list[float] = Field(default_factory=lambda: [0.7], description="identity audit temperatures")
    samples: int = Field(4, ge=1, description="identity audit samples per prompt, system prompt and temperature")
    max_new_tokens: int = Field(64, ge=1)

    @field_validator("grid")
    @classmethod
    def _grid(cls, v):
        if not v or any(not 0 <= s <= 4 for s in v):
            raise ValueError("grid must be a non-empty list of scales in [0, 4]")
        return sorted(set(v), reverse=True)


class Optimization(Strict):
    epochs: float = Field(3, gt=0)
    max_steps: Optional[int] = Field(None, ge=1, description="stop after this many optimizer steps (overrides epochs)")
    lr: float = Field(2e-4, gt=0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup: float = Field(0.03, ge=0, description="a fraction of all steps (< 1) or a number of steps (>= 1)")
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    batch_tokens: int = Field(16384, ge=16, description="tokens per micro-batch (packed rows x pack_length)")
    pack_length: int = Field(2048, ge=16, description="length of one packed row")
    grad_accum: int = Field(1, ge=1)
    max_length: Optional[int] = Field(None, ge=8, description="drop longer samples (default: pack_length)")
    seed: int = 0
    save_every: int = Field(0, ge=0, description="checkpoint every N steps (0: only at the end and on Ctrl-C)")
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1, description="read the loss back from the device every N steps")
    attention: Literal["auto", "varlen", "flash_attention_2", "sdpa", "flex_attention", "eager"] = "auto"
    compile: bool = False
    gradient_checkpointing: bool = False
    ce_chunk: int = Field(0, ge=0, description="LM head + cross-entropy over this many trained positions at a time, "
                          "recomputed in the backward pass, so logits are never held for the whole batch (0: at once)")
    liger: bool = Field(False, description="Liger's fused Triton kernels (RMSNorm, SwiGLU, and the LM head fused with "
                        "the cross-entropy); needs CUDA and `pip install liger-kernel`")

    @model_validator(mode="after")
    def _rows(self):
        if self.batch_tokens < self.pack_length:
            raise ValueError(f"batch_tokens ({self.batch_tokens}) must be at least pack_length ({self.pack_length})")
        if self.max_length is not None and self.max_length > self.pack_length:
            raise ValueError(f"max_length ({self.max_length}) cannot exceed pack_length ({self.pack_length})")
        return self

    @property
    def rows_per_batch(self) -> int:
        return self.batch_tokens // self.pack_length

    @property
    def sample_limit(self) -> int:
        return self.max_length or self.pack_length


class RunConfig(Strict):
    model: str = Field("embedded", description="embedded, embedded-1.5b, gemma3-270m, a transformers folder, a .gguf "
                                               "file or a hub id")
    chat_template: Optional[str] = Field(None, description="a Jinja chat template file, for a model without one "
                                         "(e.g. gemma3-270m); the adapter keeps a copy, so chat, api, audit and "
                                         "export render as training did")
    output: str = Field(..., description="the run folder: adapter/, checkpoints/, metrics.csv")
    system_prompt: str = Field("template", description=f"the system prompt training renders with: {SYSTEM_HELP}")
    data: list[DataSource] = Field(default_factory=lambda: [DataSource()])
    lora: LoraSettings = Field(default_factory=LoraSettings)
    train: Optimization = Field(default_factory=Optimization)
    identity_replay: Optional[IdentityReplay] = None
    adapter_scale: Optional[AdapterScale] = None
    eval_ner: int = Field(0, ge=0, description="after training, score NER on this many MSRA test sentences")
    device: str = "auto"
    dtype: str = "auto"

    @field_validator("system_prompt")
    @classmethod
    def _system_prompt(cls, v):
        if canonical(v, "config system_prompt") == "adapter":  # older spellings: a deprecation message
            raise ValueError("adapter names the system prompt an adapter was trained under; a training run sets its "
                             f"own: use {SYSTEM_HELP}")
        return v

    @field_validator("data")
    @classmethod
    def _data(cls, v):
        if not v:
            raise ValueError("give at least one data source")
        if sum(s.fraction or 0 for s in v) >= 1:
            raise ValueError("the data fractions add up to 1 or more: leave room for the other sources")
        return v

    @model_validator(mode="after")
    def _fractions(self):
        total = sum(s.fraction or 0 for s in self.data) + (self.identity_replay.fraction if self.identity_replay else 0)
        if total >= 1:
            raise ValueError(f"the data fractions (identity_replay included) add up to {total:g}, 1 or more: "
                             "leave room for the other sources")
        return self

    @property
    def output_dir(self) -> Path:
        return Path(self.output).expanduser()


# --- loading -------------------------------------------------------------------------------------

def parse_value(text: str) -> Any:
    """A `--set` value as YAML reads it: numbers, booleans, null, lists; anything else stays a string."""
    try:
        value = yaml.safe_load(text) if text.strip() else text
    except yaml.YAMLError:
        return text
    if isinstance(value, dict) and not text.lstrip().startswith("{"):
        return text  # "You are: a bot" is a sentence, not a mapping
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 as a string
        try:
            return float(value) if value.strip().lower() not in ("nan", "inf", "-inf", "infinity") else value
        except ValueError:
            return value
    return value


def apply_override(data: dict, assignment: str) -> None:
    """Apply one `key.sub=value` (list items by index: `data.0.limit=100`) to the raw config dict."""
    key, sep, raw = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SelfidError(f"--set {assignment!r}: write it as key=value, e.g. --set train.lr=1e-4")
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[:i]) or "the config"
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise SelfidError(f"--set {key}: {where} is a list of {len(node)}; use an index 0..{len(node) - 1}")
            if last:
                node[int(part)] = parse_value(raw)
            else:
                node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise SelfidError(f"--set {key}: {where} is a value, not a section")
        if last:
            node[part] = parse_value(raw)
        else:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]


def format_errors(e: ValidationError, origin: str, root: type[BaseModel] | None = None) -> str:
    """One line naming each bad key of a config validated as `root` (default: RunConfig) and what to write."""
    lines = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"{loc}: unknown key{_known(loc, root or RunConfig)}")
        elif err["type"] == "missing":
            lines.append(f"{loc}: required but missing")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            got = f" (got {err['input']!r})" if not isinstance(err.get("input"), (dict, list)) else ""
            lines.append(f"{loc}: {msg}{got}")
    return f"bad config in {origin}: " + "; ".join(lines)


def _submodel(annotation) -> type[BaseModel] | None:
    """The pydantic model inside an annotation like Optional[X] or list[X]."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _submodel(arg)
        if found is not None:
            return found
    return None


def _known(loc: str, root: type[BaseModel]) -> str:
    """' (known: ...)' for the section that holds `loc`."""
    model: Any = root
    for part in [p for p in loc.split(".")[:-1] if not p.isdigit()]:
        field = model.model_fields.get(part)
        model = _submodel(field.annotation) if field is not None else None
        if model is None:
            return ""
    return f" (known: {', '.join(model.model_fields)})"


def read_yaml_mapping(path: Path, what: str, keys: str) -> dict:
    """A YAML file holding a mapping (empty: {}); a missing file, bad YAML or another shape is a SelfidError
    naming the file (and the line), `what` it should be and some of its `keys`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SelfidError(f"no such config file: {path}")
    try:
        loaded = yaml.safe_load(read_text_bounded(path, what=what))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise SelfidError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise SelfidError(f"{path}: {what} is a mapping of keys ({keys}), not a {type(loaded).__name__}")
    return loaded


def load_config(path: str | Path | None = None, overrides: list[str] = (), base: dict | None = None) -> RunConfig:
    """Read a YAML run config (or start from `base`), apply `--set` overrides, validate."""
    data: dict = dict(base or {})
    origin = "--set"
    if path is not None:
        path = Path(path).expanduser()
        origin = str(path)
        data.update(read_yaml_mapping(path, "a run config", "model, output, data, ..."))
    if "data" not in data and any(o.startswith("data.") for o in overrides):
        data["data"] = [{}]  # `--set data.0.limit=...` on the default source
    for assignment in overrides:
        apply_override(data, assignment)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise SelfidError(format_errors(e, origin + (" with --set " + " ".join(overrides) if overrides and path else ""))) from None


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
