"""The engine's small interface: what a request asks for and what comes back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

from selfid.errors import SelfidError

FinishReason = Literal["stop", "length", "cancelled"]
BASE_MODEL = "__base__"  # Request.adapter value that runs the base model with every adapter off (PEFT's name)


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means off
    repetition_penalty: float = 1.0  # transformers' meaning: divides logits of tokens already seen
    presence_penalty: float = 0.0  # OpenAI's meaning: subtracted once from tokens already generated
    frequency_penalty: float = 0.0  # OpenAI's meaning: subtracted per occurrence in the generation
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None
    n: int = 1
    logprobs: int | None = None  # None: none; 0: the chosen token's; k: also the top k

    def __post_init__(self):
        checks = [
            (self.temperature >= 0, "temperature must be >= 0 (0 means greedy)"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.top_k >= 0, "top_k must be >= 0 (0 means off)"),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0"),
            (-2 <= self.presence_penalty <= 2, "presence_penalty must be in [-2, 2]"),
            (-2 <= self.frequency_penalty <= 2, "frequency_penalty must be in [-2, 2]"),
            (self.max_new_tokens >= 1, "max_new_tokens must be >= 1"),
            (self.n >= 1, "n must be >= 1"),
            (self.logprobs is None or 0 <= self.logprobs <= 20, "logprobs must be in [0, 20]"),
            (all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty strings"),
        ]
        for ok, message in checks:
            if not ok:
                raise SelfidError(message)

    @classmethod
    def from_defaults(cls, defaults: dict, **overrides) -> "SamplingParams":
        """The model's generation defaults, with the given (non-None) fields overriding them."""
        merged = {k: v for k, v in defaults.items() if k in cls.__dataclass_fields__}
        merged.update({k: v for k, v in overrides.items() if v is not None})
        if isinstance(merged.get("stop"), (list, str)):
            merged["stop"] = tuple([merged["stop"]] if isinstance(merged["stop"], str) else merged["stop"])
        return cls(**merged)


@dataclass
class Request:
    prompt: str | Sequence[int]  # rendered text, or token ids
    params: SamplingParams = field(default_factory=SamplingParams)
    stream: bool = False  # emit text deltas as tokens arrive
    cancelled: bool = False  # set from any thread to stop this request at the next step
    adapter: str | None = None  # a LoRA adapter loaded on the model, BASE_MODEL, or None: the model as loaded

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    logprobs: list[TokenLogprob] | None = None


@dataclass
class Result:
    prompt_tokens: int
    completions: list[Completion]  # params.n of them

    @property
    def text(self) -> str:
        return self.completions[0].text

    @property
    def completion_tokens(self) -> int:
        return sum(len(c.token_ids) for c in self.completions)


@dataclass
class Event:
    """One step of streaming output: new text for sample `index` of request `request`."""

    request: int
    index: int
    delta: str
    finished: Completion | None = None  # set on the sample's last event
