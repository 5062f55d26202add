"""Request and response shapes of OpenAI's chat completions API, as pydantic models.

Only what selfid implements is modelled. Fields that change what a client gets back but that
selfid cannot honour (tools, response formats, logit bias, audio) are rejected with a clear
message rather than ignored; harmless bookkeeping fields (user, metadata, store, ...) are ignored.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

MAX_STOP = 4  # OpenAI's limit on stop sequences
MAX_TOP_LOGPROBS = 20


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: Optional[str] = None

    @model_validator(mode="after")
    def _text_only(self):
        if self.type != "text":
            raise ValueError(f"content parts of type {self.type!r} are not supported: this server takes text parts only")
        if self.text is None:
            raise ValueError("a text content part needs a 'text' string")
        return self


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")  # name, refusal, ...
    role: str
    content: Union[str, list[TextPart], None] = None
    tool_calls: Optional[list[Any]] = None

    @field_validator("role")
    @classmethod
    def _role(cls, v: str) -> str:
        if v in ("tool", "function"):
            raise ValueError(f"role {v!r} is not supported: this server does not run tools")
        if v not in ("system", "user", "assistant"):
            raise ValueError(f"unknown role {v!r}: use system, user or assistant")
        return v

    @model_validator(mode="after")
    def _has_text(self):
        if self.tool_calls:
            raise ValueError("tool_calls are not supported: this server does not run tools")
        if self.content is None:
            raise ValueError(f"a {self.role} message needs text content")
        return self

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text or "" for p in self.content or [])


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


def _no_tools(v, _) -> bool:
    return v not in (None, "none", "auto")


# field: (is this value refused, given the fields before it?, why). Refusing beats ignoring what changes the reply.
REFUSED = {
    "tools": (lambda v, _: bool(v), "'tools' is not supported by this server (text chat only)"),
    "functions": (lambda v, _: bool(v), "'functions' is not supported by this server (text chat only)"),
    "tool_choice": (_no_tools, "'tool_choice' is not supported by this server (no tools)"),
    "function_call": (_no_tools, "'function_call' is not supported by this server (no tools)"),
    "response_format": (lambda v, _: bool(v) and v.get("type", "text") != "text",
                        "response_format other than {'type': 'text'} is not supported by this server"),
    "logit_bias": (lambda v, _: bool(v), "logit_bias is not supported by this server"),
    "modalities": (lambda v, _: bool(v) and set(v) != {"text"}, "only the 'text' modality is supported"),
    "audio": (lambda v, _: bool(v), "'audio' is not supported by this server (text chat only)"),
    "top_logprobs": (lambda v, data: v is not None and not data.get("logprobs"), "top_logprobs needs logprobs: true"),
    "stream_options": (lambda v, data: v is not None and not data.get("stream"),
                       "stream_options is only allowed with stream: true"),
}


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: Optional[str] = None  # None: the base model
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    n: int = Field(1, ge=1, le=128)
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = Field(None, ge=0, lt=2**63)
    presence_penalty: Optional[float] = Field(None, ge=-2, le=2)
    frequency_penalty: Optional[float] = Field(None, ge=-2, le=2)
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    user: Optional[str] = None
    # accepted only in their "do nothing" form
    tools: Optional[list[Any]] = None
    functions: Optional[list[Any]] = None
    tool_choice: Any = None
    function_call: Any = None
    response_format: Optional[dict] = None
    logit_bias: Optional[dict] = None
    modalities: Optional[list[str]] = None
    audio: Any = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        stops = [v] if isinstance(v, str) else v
        if stops is None:
            return None
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences are allowed, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty strings")
        return stops

    @field_validator(*list(REFUSED))
    @classmethod
    def _refuse(cls, v, info: ValidationInfo):
        refused, why = REFUSED[info.field_name]
        if refused(v, info.data):
            raise ValueError(why)
        return v

    @property
    def max_new_tokens(self) -> int | None:
        """max_completion_tokens (what newer clients send) wins over the deprecated max_tokens."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


# --- responses ----------------------------------------------------------------------------------
class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: Optional[list[int]] = None


class TokenLogprobOut(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: Optional[list[TokenLogprobOut]] = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: Optional[ChoiceLogprobs] = None
    finish_reason: Literal["stop", "length"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


class ChatCompletion(BaseModel):
    id: str = Field(default_factory=completion_id)
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    system_fingerprint: Optional[str] = None
    choices: list[Choice]
    usage: Usage


class Delta(BaseModel):
    role: Optional[Literal["assistant"]] = None
    content: Optional[str] = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: Optional[ChoiceLogprobs] = None
    finish_reason: Optional[Literal["stop", "length"]] = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: Optional[str] = None
    choices: list[ChunkChoice]
    usage: Optional[Usage] = None


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "selfid"
    root: str
    parent: Optional[str] = None  # adapters name the base model they apply to


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(BaseModel):
    error: ErrorBody
