"""Self-distilled identity replay: the base model's own answers to identity questions, kept when the audit's
scorers pass them (Yang et al., ACL 2024, "Self-Distillation Bridges Distribution Gap in Language Model
Fine-Tuning": train on the base model's own words, so fine-tuning moves less of what it already does well).

The base model answers every question of selfid/data/identity_pool.py under its template's own system
prompt (no system message), `samples` times at each temperature. A reply is kept when the audit's scorers
say it is right: the model's own identity affirmed and nothing denied (direct, third-person and
leading-own questions), no foreign claim and its own identity named (leading questions about other
vendors), the task done in the asked form with its own identity in it (identity-adjacent tasks).
Distinct kept replies are capped per question. For the preference loss, the base model also answers
under the other serving system prompts ("You are a helpful assistant.", an empty one), where it claims
other vendors far more often: each such foreign claim, and each denial of its own identity ("No, I'm not
Qwen" to "Are you Qwen?"), becomes the rejected side of a pair whose chosen side is a kept reply to the same
question.

Balance: the pool asks about 22 other vendors in 4 wordings each; keeping `per_question` answers for each made
61% of the replay a "No, I'm not X" and taught a reflexive "No" (the held-out audit saw the model deny being
Qwen when asked "Is your name Qwen?"). Leading questions about other vendors keep `deny_per_question` answers
(default 1), and the own-identity pairs push "No" down where "yes" is right.

Written to OUTPUT/identity_replay/ (replies.jsonl, pairs.jsonl, replay.json with counts, sampling
parameters and the files' sha256) before training, and read back verified by the trainer.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from selfid.config import IdentityReplay
from selfid.data import replay_set
from selfid.errors import SelfidError
from selfid.system_prompt import SERVING, message_of

# the serving system prompts other than the template's own ("You are a helpful assistant.", an empty one), where
# the base model claims other vendors: the rejected side of pairs
REJECT_SYSTEMS = tuple(message_of(s) for s in SERVING if s != "template")


def own_vendor(loaded, rep: IdentityReplay) -> str:
    """The model's own vendor: the config's, else its template's default system prompt's, else its name's."""
    from selfid.vendors import KEYS, vendor_of

    if rep.own:
        if rep.own not in KEYS:
            raise SelfidError(f"identity_replay.own {rep.own!r} is not a vendor selfid knows: use one of {', '.join(KEYS)}")
        return rep.own
    own = vendor_of(loaded.chat.default_system or "", str(loaded.name),
                    getattr(getattr(loaded.model, "config", None), "model_type", "") or "")
    if own is None:
        raise SelfidError("could not tell whose model this is from its chat template or name: set "
                          "identity_replay.own (e.g. qwen, meta, mistral)")
    return own


def _seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:4], "big") & 0x7FFFFFFF


def build(loaded, rep: IdentityReplay, out_dir: Path, progress: bool = True, log=print, engine=None) -> dict:
    """Sample, score and write the replay set for `loaded` (the base model) into `out_dir`/identity_replay.
    `engine`: what generates (default: selfid's in-process engine on `loaded`)."""
    from selfid.audit import scorers
    from selfid.data import identity_pool
    from selfid.engine import InProcessEngine, Request, SamplingParams

    own = own_vendor(loaded, rep)
    questions = [q for q in identity_pool.questions(own, rep.minimal_pairs) if q.lang in rep.languages]
    engine = engine or InProcessEngine(loaded)
    ctx = scorers.Context(own)
    conditions = [(None, t) for t in rep.temperatures]
    if rep.preference:
        conditions += [(s, max(rep.temperatures)) for s in REJECT_SYSTEMS]
    requests, where = [], []
    for q in questions:
        for system, t in conditions:
            msgs = ([] if system is None else [{"role": "system", "content": system}]) + [dict(m) for m in q.messages]
            params = SamplingParams.from_defaults(loaded.generation_defaults, temperature=t,
                                                  max_new_tokens=rep.max_new_tokens, n=rep.samples,
                                                  seed=_seed(rep.seed, q.id, system, t))
            requests.append(Request(loaded.chat.render(msgs).text, params))
            where.append((q, system, t))
    log(f"identity replay (self-distilled): the base model answers {len(questions)} questions × "
        f"{len(conditions)} conditions × {rep.samples} samples")
    bar = _progress(len(requests) * rep.samples, progress)
    try:
        results = engine.generate(requests, progress=(lambda n: bar.advance(0, n)) if bar else None)
    finally:
        if bar:
            bar.stop()
    kept: dict[str, list[str]] = {}
    rejected: dict[str, list[tuple[str | None, str]]] = {}
    scored = passed = 0
    for (q, system, t), res in zip(where, results):
        for c in res.completions:
            rec = {"suite": "identity", "probe": q.id, "system": "default" if system is None else "other",
                   "messages": [dict(m) for m in q.messages], "reply": c.text, "probe_meta": q.meta()}
            v = scorers.score_identity(rec, ctx)
            scored += 1
            if system is None and c.finish_reason == "stop" and _right(v):
                passed += 1
                kept.setdefault(q.id, [])
                if scorers.normalise(c.text) not in {scorers.normalise(x) for x in kept[q.id]}:
                    kept[q.id].append(c.text)
            elif v["foreign"] or (q.expects == "own" and v.get("self_denial")):
                rejected.setdefault(q.id, []).append((system, c.text))
    rng = random.Random(rep.seed)
    replies, pairs = [], []
    by_id = {q.id: q for q in questions}
    for qid, texts in kept.items():
        q = by_id[qid]
        for text in texts[:rep.deny_per_question if q.expects == "deny" else rep.per_question]:
            replies.append({"question": qid, "lang": q.lang, "kind": q.kind,
                            "messages": [*map(dict, q.messages), {"role": "assistant", "content": text}]})
        for k, (system, bad) in enumerate(_interleave(rejected.get(qid, []))[:rep.per_question]):
            pairs.append({"question": qid, "system": system, "messages": [dict(m) for m in q.messages],
                          "chosen": texts[k % len(texts)], "rejected": bad})
    rng.shuffle(pairs)
    if not replies:
        raise SelfidError("the base model gave no answer the identity scorers pass (its own identity, no foreign "
                          "claim): self-distilled replay has nothing to teach. Use identity_replay.kind: template "
                          "with identity_replay.name and .maker")
    kinds: dict[str, int] = {}
    for r in replies:
        kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
    missing = sorted({q.id for q in questions} - kept.keys())
    stats = replay_set.write(out_dir, replies, pairs, {
        "kind": "self", "own": own, "questions": len(questions), "generations": scored, "passed": passed,
        "kept": len(replies), "kept_by_kind": kinds, "questions_without_answer": missing, "pairs": len(pairs),
        "systems_sampled": [s for s, _ in conditions],
        "sampling": {"temperatures": list(rep.temperatures), "samples": rep.samples,
                     "max_new_tokens": rep.max_new_tokens, "seed": rep.seed, "defaults": loaded.generation_defaults}})
    log(f"identity replay: kept {len(replies)} distinct own-identity replies to {len(kept)} of {len(questions)} "
        f"questions ({passed} of {scored} samples passed the scorers), {len(pairs)} preference pairs")
    return stats


def _interleave(found: list[tuple]) -> list[tuple]:
    """(system, reply) pairs reordered round-robin over their system prompts, so a cap keeps each prompt's."""
    by: dict = {}
    for item in found:
        by.setdefault(item[0], []).append(item)
    out, lists = [], list(by.values())
    for i in range(max((len(x) for x in lists), default=0)):
        out += [x[i] for x in lists if i < len(x)]
    return out


def _right(v: dict) -> bool:
    """Whether a scored reply is one to learn from."""
    if v["foreign"] or v.get("self_denial"):
        return False
    if v["expects"] == "task":
        return bool(v.get("task_done"))
    if v["expects"] == "deny":
        return v["own"] and v.get("answer") != "yes"
    return bool(v.get("own_affirmed"))


def _progress(total: int, show: bool):
    if not show:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("[bold]replay[/bold] sampling the base model"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn())
    bar.start()
    bar.add_task("", total=total)
    return bar


def ensure(config, progress: bool = True, log=print) -> dict | None:
    """Build the run's self-distilled replay set if its config asks for one and it is not there yet."""
    rep = config.identity_replay
    if rep is None or rep.kind != "self":
        return None
    if replay_set.exists(config.output_dir):
        return replay_set.load(config.output_dir)[0]
    from selfid.model.load import load_model

    loaded = load_model(config.model, device=None if config.device == "auto" else config.device,
                        dtype=None if config.dtype == "auto" else config.dtype, progress=progress,
                        chat_template=config.chat_template)
    try:
        return build(loaded, rep, config.output_dir, progress, log)
    finally:
        del loaded
        _free_cuda()


def _free_cuda() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
