"""Generation behind one small interface, used by `selfid chat`, the server and the audit."""

from selfid.engine.inprocess import InProcessEngine
from selfid.engine.types import BASE_MODEL, Completion, Event, Request, Result, SamplingParams, TokenLogprob

__all__ = ["InProcessEngine", "BASE_MODEL", "Completion", "Event", "Request", "Result", "SamplingParams", "TokenLogprob"]
