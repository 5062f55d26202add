"""The training data of a run: the config's sources mixed with the identity replay, rendered under the
training system prompt, tokenized and filtered (`prepare_data`); and the identity losses that train beside
the task's when the replay is the base model's own (`identity_aux`)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable

from selfid.config import RunConfig
from selfid.data import identity as identity_mod, replay_set
from selfid.data.mix import mix
from selfid.data.readers import TrainingConversation
from selfid.data.sources import load_source
from selfid.errors import SelfidError
from selfid.system_prompt import SystemPrompt
from selfid.train.collate import encode_many, with_system


@dataclass
class Prepared:
    encoded: list
    sources: list[dict]
    identity: dict | None
    dropped_long: int
    dropped_unlabelled: int
    samples_with_own_system: int
    fingerprint: str
    conversations: list = field(default_factory=list)  # exactly what was trained on, system messages included


def prepare_data(config: RunConfig, loaded, system: SystemPrompt, log: Callable[[str], None]) -> Prepared:
    parts, infos = [], []
    for src in config.data:
        samples, info = load_source(src)
        parts.append((samples, src.weight, src.fraction))
        infos.append(info)
    identity_info = None
    if config.identity_replay is not None and config.identity_replay.kind == "self":
        pool, identity_info = self_replay_samples(config, loaded, system)
        parts.append((pool, 1.0, config.identity_replay.fraction))
        log(f"identity replay (self-distilled, {identity_info['own']}): {identity_info['replies']} of the base model's "
            f"own replies under {len(set(identity_info['systems']))} system prompts, {len(pool)} conversations, "
            f"{config.identity_replay.fraction:.1%} of the mix")
    elif config.identity_replay is not None:
        rep = config.identity_replay
        engine = None
        if not (rep.name and rep.maker):
            from selfid.engine import InProcessEngine  # torch

            engine = InProcessEngine(loaded)
        ident = identity_mod.resolve_identity(loaded.chat, rep.name, rep.maker, engine)
        systems = identity_mod.system_list(rep.systems, system.message, loaded.chat.default_system)
        pool = identity_mod.samples(ident, systems, rep.languages)
        parts.append((pool, 1.0, rep.fraction))
        identity_info = {"kind": "template", "name": ident.name, "maker": ident.maker, "name_zh": ident.name_zh,
                         "maker_zh": ident.maker_zh, "identity_source": ident.source, "fraction": rep.fraction,
                         "systems": systems, "languages": list(rep.languages), "pool": len(pool)}
        log(f"identity replay: {ident.name} by {ident.maker} ({ident.source}), {len(pool)} conversations "
            f"under {len(set(systems))} system prompts, {rep.fraction:.1%} of the mix")
    mixed, counts = mix(parts, seed=config.train.seed)
    for info, n in zip(infos, counts):
        info["used"] = n
    if identity_info is not None:
        identity_info["used"] = counts[-1]
    own_system = sum(1 for s in mixed if s.has_system and not s.fixed_system)
    convs = [list(s.messages) if s.fixed_system else with_system(s.messages, system.message) for s in mixed]
    encoded = encode_many(loaded.tokenizer, convs, loaded.eos_token_ids)
    limit = config.train.sample_limit
    long = sum(1 for e in encoded if len(e) > limit)
    empty = sum(1 for e in encoded if len(e.label_pos) == 0)
    encoded = [e for e in encoded if len(e) <= limit and len(e.label_pos)]
    if long:
        log(f"[yellow]dropped {long} samples longer than {limit} tokens (raise train.max_length/pack_length to keep them)")
    if empty:
        log(f"[yellow]dropped {empty} samples with no assistant tokens to train on")
    if not encoded:
        raise SelfidError("no training samples left after tokenizing: check the data sources and train.max_length")
    h = hashlib.sha256()
    for e in encoded:
        h.update(e.ids.tobytes())
        h.update(e.label_pos.tobytes())
    return Prepared(encoded, infos, identity_info, long, empty, own_system, h.hexdigest(), convs)


def self_replay_samples(config: RunConfig, loaded, system: SystemPrompt) -> tuple[list, dict]:
    """The self-distilled replay set the pipeline wrote into the run folder (verified), rendered under the
    configured system prompts (a reply given under an operator persona: under that persona only); and what the
    manifest records of it."""
    rep = config.identity_replay
    meta, replies, pairs = replay_set.load(config.output_dir)
    systems = identity_mod.system_list(rep.systems, system.message, loaded.chat.default_system)
    pool = [TrainingConversation(tuple(messages), source="identity", fixed_system=True)
            for messages in replay_set.conversations(replies, systems)]
    info = {"kind": "self", "own": meta["own"], "file": replay_set.FOLDER, "sha256": meta["sha256"], "questions": meta["questions"],
            "replies": len(replies), "under_personas": sum("persona" in r for r in replies), "pairs": len(pairs),
            "kept_by_kind": meta["kept_by_kind"],
            "sampling": meta["sampling"], "fraction": rep.fraction, "systems": systems,
            "languages": list(rep.languages), "pool": len(pool), "preference": rep.preference, "beta": rep.beta,
            "distill": rep.distill}
    return pool, info


def identity_aux(cfg: RunConfig, loaded, model, attention: str, data: Prepared, device, autocast, world: int, log):
    """The preference and distillation losses the config asks for (None when it asks for neither)."""
    rep = cfg.identity_replay
    if rep is None or rep.kind != "self" or not (rep.preference or rep.distill):
        return None
    if world > 1:
        raise SelfidError("identity_replay.preference and .distill run on one process: train on one GPU, or set "
                          "them to 0")
    from selfid.train.identity_losses import IdentityAux  # torch

    _, replies, pairs = replay_set.load(cfg.output_dir)
    if rep.preference and not pairs:
        log("[yellow]identity_replay.preference: the base model made no foreign claim to learn against; no pairs")
    aux = IdentityAux(model, loaded, attention, pairs, replies, data.identity["systems"], rep.preference, rep.beta,
                      rep.distill, rep.aux_batch, cfg.train.seed, device, autocast)
    if aux:
        log(f"identity losses beside the task's: {aux.describe()}")
    return aux if aux else None
