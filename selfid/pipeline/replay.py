"""Self-distilled identity replay: the base model's own answers to identity questions, kept when the audit's
scorers pass them (Yang et al., ACL 2024, "Self-Distillation Bridges Distribution Gap in Language Model
Fine-Tuning": train on the base model's own words, so fine-tuning moves less of what it already does well).

The base model answers every question of selfid/data/identity_pool.py `samples` times under three kinds of
system prompt:
  - its template's own (no system message), at each of `temperatures`: replies that affirm its own identity
    (direct, third-person and leading-own questions), deny another vendor's and name its own (leading questions
    about other vendors), or do an identity-adjacent task in the asked form with its own identity in it are kept;
    the trainer renders them under each serving system prompt;
  - an operator persona (selfid/data/personas.py: a name, a company and a role, zh and en), each question under one
    of `personas` per language: replies that stay the persona and claim no other vendor are kept and trained
    under that persona only. The same question is so answered as the template's line says (its own identity) and
    as a persona says (the persona): minimal pairs across system prompts, so the answer follows the prompt.
    Asked which model powers it, a persona may name its base model and maker while keeping its own name, or
    decline (personas.py says why); another vendor is never kept;
  - with `persona_cross_lingual` (default 0), that share of each language's questions also under a generated
    persona of the other language (an English question under "你是小雅，在蓝鲸保险公司担任在线客服。"), kept by the
    same rule: the reply must use the persona's name or company as the prompt gives them ("I'm 小雅 from
    蓝鲸保险公司" passes; no transliteration such as "Xiaoya" is guessed, so one is not kept) and claim no other
    vendor. The held-out audit asks English questions under a Chinese persona prompt, where the persona arm's
    English answers had moved towards Qwen; with this at 0.5 (and typical_length) they moved back towards the persona
    at 0.5B, its company mostly rendered in English, which the scorer does not count (docs/study.md §9, arms.yaml);
  - with `persona_hint` as well, those cross-lingual questions are sampled under the persona prompt plus one line in
    the question's language (Persona.hint: stay the persona, by its name and company as written, in any language)
    and kept replies are trained under the prompt without it: context distillation, for a case where the base model
    alone seldom stays the persona (0-3% of its English replies under the held-out Chinese persona). Not yet measured;
  - with `preference`, one of the other serving prompts ("You are a helpful assistant.", an empty one) per question,
    where the base model claims other vendors far more often.
Identity questions asked right after an NER exchange in the task's own format (MSRA train sentences) are kept
only when answered as an identity question, not with more of the task's JSON (the audit's `identity_after_task`).

Preference pairs (for the DPO loss): the rejected side is a foreign claim, a denial of its own identity ("No, I'm
not Qwen" to "Are you Qwen?"), more task output after an NER exchange, or, under a persona that names itself, its
own identity in place of the persona ("I'm Qwen, created by Alibaba Cloud" to Nora's customer); the chosen side is
a kept reply to the same question under the same kind of prompt (the template's for the serving prompts, the same
persona's for a persona).

Balance: the pool asks about 22 other vendors in 4 wordings each; keeping `per_question` answers for each made
61% of the replay a "No, I'm not X" and taught a reflexive "No" (the held-out audit saw the model deny being
Qwen when asked "Is your name Qwen?"). Leading questions about other vendors keep `deny_per_question` answers
(default 1), and the own-identity pairs push "No" down where "yes" is right.

Broad, not repeated: the base model says "是的，我是阿里云开发的通义千问。" to many questions, and a replay holding it for
each taught the tuned model to say it to most (38% of its held-out replies at 1.5B were near-verbatim replay
answers, 6.4% of the base model's). At most `max_copies` kept answers may be one text or near-verbatim copies of
one another (the audit's copy measure: same after normalising, or rapidfuzz ratio >= 90), picked round-robin over
the questions so each question gets its first answer before any gets a second. With `prefer_rare`, each question's answers
whose phrasing the fewest answers of the whole replay share are taken first (the cap alone still let the model's most
common phrasings into most questions' first answers; not yet measured).

The persona prompts a user deploys with (`persona_prompts`, `selfid replay --persona`) are asked every question, and
replies are kept under them as under the generated ones (the persona's name read from its text); one that is a
held-out audit persona prompt is refused (`check_heldout`: the audit would no longer be held out).

Generation goes through the audit's backends (selfid/audit/backends.py): selfid's in-process engine for `selfid train`
and `selfid replay --model`, an OpenAI-compatible endpoint for `selfid replay --base-url`; one code path either way.
Sample i of a question under a condition has seed base + i, so both give the same replies where the sampling is the
same (`selfid api` on the same model).

Cost: questions x (len(temperatures) + 1 persona + `persona_cross_lingual` + the user's personas + 1 other serving
prompt with `preference`) x `samples` generations of the base model: 316 questions x 3 x 4 = 3,792 with the defaults
and `preference` on (2,528 without); `persona_cross_lingual: 0.5` adds 316 x 0.5 x 4 = 632 (4,424).
For scale: the v2 replay's 9,344 generations (at most 192 tokens) took under 30 s of the 1.5B arm's run on an
H200 (results/study-1.5b/pairs/cost.json: 291 s wall, 262 s of it training); on a shared 2-core CPU 456
generations of at most 16 tokens took 27 minutes.

Written to OUTPUT/identity_replay/ (replies.jsonl, pairs.jsonl, replay.json with counts, the persona prompts,
sampling parameters and the files' sha256) before training, and read back verified by the trainer.
"""

from __future__ import annotations

import gc
import hashlib
import random
import re
import statistics
import sys
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

from selfid.audit import probes as probe_sets, scorers
from selfid.audit.backends import InProcessBackend, Item
from selfid.config import IdentityReplay
from selfid.data import identity_pool, personas as persona_gen, replay_set
from selfid.errors import SelfidError
from selfid.model.load import load_model
from selfid.progress import Progress
from selfid.system_prompt import KEYWORDS, SERVING, canonical, message_of, resolve
from selfid.vendors import KEYS, vendor_of

# the serving system prompts other than the template's own ("You are a helpful assistant.", an empty one), where
# the base model claims other vendors: the rejected side of pairs
REJECT_SYSTEMS = tuple(message_of(s) for s in SERVING if s != "template")


def own_vendor(loaded, rep: IdentityReplay) -> str:
    """The model's own vendor: the config's, else its template's default system prompt's, else its name's."""
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


@dataclass(frozen=True)
class Condition:
    """A system prompt a question is asked under, and what its replies are for."""

    kind: str  # "own": the template's own prompt, kept | "persona": kept under it | "other": rejected sides only
    system: str | None  # the system message sent (None: none, the template's own applies)
    temperature: float
    persona: object = None  # selfid.data.personas.Persona for kind "persona"
    sent: str | None = None  # the system message generated under, when not `system` (identity_replay.persona_hint)

    @property
    def key(self) -> str:
        """The name the scorers and the replay set know it by."""
        return self.persona.key if self.persona is not None else "template" if self.kind == "own" else "other"


OTHER_LANG = {"zh": "en", "en": "zh"}


def cross_lingual(questions: list, fraction: float, by_lang: dict[str, list], seed: int) -> dict[int, object]:
    """{index into `questions`: the generated persona of the other language it is also asked under}: of each
    language's questions, `fraction` (rounded half up) drawn by `seed`, paired in question order round-robin with the
    other language's personas (`by_lang`). The held-out audit asks English questions under a Chinese persona prompt;
    without these the replay never shows a persona of one language with a question in the other."""
    out: dict[int, object] = {}
    if not fraction:
        return out
    for lang in sorted({q.lang for q in questions}):
        pool = by_lang.get(OTHER_LANG.get(lang))
        if not pool:
            continue
        idx = [i for i, q in enumerate(questions) if q.lang == lang]
        picked = sorted(random.Random(f"cross-lingual|{seed}|{lang}").sample(idx, int(fraction * len(idx) + 0.5)))
        out.update({i: pool[j % len(pool)] for j, i in enumerate(picked)})
    return out


def conditions(questions: list, rep: IdentityReplay, personas: list, given: list = ()) -> list[tuple[object, Condition]]:
    """(question, condition) for every generation request: each question under the template's own prompt at each
    temperature, under one generated persona of its language (round-robin), for `persona_cross_lingual` of them
    also under one generated persona of the other language (`cross_lingual`), under every persona prompt the user
    gave (`given`: the ones they deploy with, whatever their language), and with `preference` under one other
    serving prompt (alternating)."""
    top = max(rep.temperatures)
    by_lang: dict[str, list] = {}
    for p in personas:
        by_lang.setdefault(p.lang, []).append(p)
    crossed = cross_lingual(questions, rep.persona_cross_lingual, by_lang, rep.seed)
    out, seen = [], {}
    for n, q in enumerate(questions):
        i = seen[q.lang] = seen.get(q.lang, -1) + 1
        out += [(q, Condition("own", None, t)) for t in rep.temperatures]
        if by_lang.get(q.lang):
            persona = by_lang[q.lang][i % len(by_lang[q.lang])]
            out.append((q, Condition("persona", persona.text, top, persona)))
        if n in crossed:
            p = crossed[n]
            hinted = f"{p.text}\n{p.hint(q.lang)}" if rep.persona_hint else None
            out.append((q, Condition("persona", p.text, top, p, sent=hinted)))
        out += [(q, Condition("persona", p.text, top, p)) for p in given]
        if rep.preference:
            out.append((q, Condition("other", REJECT_SYSTEMS[i % len(REJECT_SYSTEMS)], top)))
    return out


def given_personas(rep: IdentityReplay, log=print) -> list:
    """The persona prompts the user deploys with (`identity_replay.persona_prompts`, `selfid replay --persona`), each
    with the name read from its text, checked against the held-out split's persona prompts."""
    out = [persona_gen.from_text(text, i) for i, text in enumerate(rep.persona_prompts, 1)]
    check_heldout([p.text for p in out], "persona prompt", log)
    for p in out:
        log(f"persona prompt {p.key} ({p.lang}): " + (f"named {p.name!r} (read from its text): kept replies must use "
                                                       "that name" if p.name else
                                                       "no name found in its text: kept replies must claim no other "
                                                       "vendor and not deny what they run on"))
    return out


def _norm(text: str) -> str:
    """The held-out split's comparison (tests/test_probe_split.py): width, case, white space and punctuation folded."""
    return re.sub(r"[\W_]+", "", unicodedata.normalize("NFKC", text).casefold())


HELDOUT_SIMILAR = 80.0  # rapidfuzz ratio at which a text counts as a copy of a held-out persona prompt


def check_heldout(texts: list[str], what: str, log=print) -> None:
    """Refuse a system prompt a user trains under that is one of the held-out split's persona prompts (80% alike, or
    naming both its name and its company): an audit under it (`selfid audit --systems personas`) would no longer be
    held out. A text that shares only a name or a company is trained as given, with a warning saying which held-out
    result it weakens."""
    from rapidfuzz import fuzz

    held = probe_sets.personas()
    for text in texts:
        n = _norm(text)
        if not n:
            continue
        for key, p in held.items():
            score = fuzz.ratio(n, _norm(p["text"]))
            shared = [w for w in (p["name"], *p["aliases"]) if w and _norm(w) and _norm(w) in n]
            same = p["name"] in shared and len(shared) > 1  # its name and its company: the same assistant
            if score >= HELDOUT_SIMILAR or same:
                why = f"{score:.0f}% alike" if score >= HELDOUT_SIMILAR else f"the same {', '.join(map(repr, shared))}"
                raise SelfidError(f"the {what} {_short(text)!r} is the held-out audit's persona prompt {key} ({why}): "
                                  "training under it leaves the audit nothing held out. Use your own deployment's "
                                  "prompt, or audit with --systems that leave out " + key)
            if shared:
                log(f"[yellow]warning: the {what} {_short(text)!r} shares {', '.join(map(repr, shared))} with the held-out "
                    f"persona prompt {key}: an audit under {key} is then not fully held out")


def setting_texts(settings: list[str]) -> list[str]:
    """The texts among system prompt settings (template, none, empty and adapter name no text)."""
    return [m for x in settings if canonical(x, "system prompt") not in KEYWORDS
            and (m := resolve(x, None, "system prompt").message)]


def _short(text: str, n: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n - 1] + "…"


def build(loaded, rep: IdentityReplay, out_dir: Path, progress: bool = True, log=print, engine=None) -> dict:
    """Sample, score and write the replay set for `loaded` (the base model) into `out_dir`/identity_replay.
    `engine`: what generates (default: selfid's in-process engine on `loaded`)."""
    replies, pairs, stats = collect(in_process(loaded, engine), own_vendor(loaded, rep), rep, progress, log,
                                    loaded.generation_defaults)
    stats = replay_set.write(out_dir, replies, pairs, stats)
    log(summary(stats))
    return stats


def in_process(loaded, engine=None) -> InProcessBackend:
    """The audit's in-process backend on `loaded`, every request in one engine call (the engine batches them)."""
    return InProcessBackend(loaded, engine, rows_per_call=sys.maxsize)


def summary(stats: dict) -> str:
    return (f"identity replay: kept {stats['kept']} distinct replies ({stats['kept_under_personas']} under persona "
            f"prompts) to {stats['questions'] - len(stats['questions_without_answer'])} of {stats['questions']} "
            f"questions ({stats['passed']} of {stats['generations']} samples passed the scorers), {stats['pairs']} "
            "preference pairs")


def collect(backend, own: str, rep: IdentityReplay, progress: bool = True, log=print,
            defaults: dict | None = None) -> tuple[list, list, dict]:
    """(replies, pairs, stats) of a replay set: the base model behind `backend` (the audit's: selfid's in-process
    engine, or an OpenAI-compatible endpoint; selfid.audit.backends) answers the pool of `rep`'s languages under the
    template's prompt, `rep.personas` generated persona prompts, the user's `rep.persona_prompts` and, with
    `rep.preference`, the other serving prompts; the audit's scorers judge every answer. `own`: the model's own vendor;
    `defaults`: the sampling defaults the backend applies (recorded; None: an endpoint's own, not known here)."""
    questions = [q for q in identity_pool.questions(own, rep.minimal_pairs, rep.after_task, rep.seed)
                 if q.lang in rep.languages]
    generated = persona_gen.generate(rep.personas, rep.seed, rep.languages) if rep.personas else []
    given = given_personas(rep, log)
    personas = generated + given
    ctx = scorers.Context(own, personas={p.key: p.scoring() for p in personas})
    asked = conditions(questions, rep, generated, given)
    items = []
    for n, (q, c) in enumerate(asked):
        base = _seed(rep.seed, q.id, c.system, c.temperature)  # sample i: base + i, as the engine seeds row i of n
        items += [Item(f"{n}:{i}", "identity", q, c.key, c.sent or c.system, c.temperature, i, base + i, base,
                       rep.max_new_tokens) for i in range(rep.samples)]
    log(f"identity replay (self-distilled): the base model answers {len(questions)} questions under {len(asked)} "
        f"question × system prompt × temperature conditions × {rep.samples} samples = {len(items)} "
        f"generations ({len(personas)} persona prompts)")
    got: dict[str, object] = {}
    bar = _progress(len(items), progress)
    try:
        backend.run(items, lambda item, reply: got.__setitem__(item.key, reply),
                    (lambda k: bar.advance(0, k)) if bar else (lambda k: None))
    finally:
        if bar:
            bar.stop()
    found: dict[tuple[str, str], list[str]] = {}  # (question, condition key) -> kept candidates, in sampled order
    lengths: dict[tuple[str, str], list[int]] = {}  # (question, condition key) -> every sampled answer's length
    rejected: dict[tuple[str, str], list[tuple[str | None, str]]] = {}  # (question, chosen's key) -> (system, reply)
    scored = passed = 0
    for n, (q, c) in enumerate(asked):
        for i in range(rep.samples):
            reply = got[f"{n}:{i}"]
            rec = {"suite": "identity", "probe": q.id, "system": c.key, "messages": [dict(m) for m in q.messages],
                   "reply": reply.text, "probe_meta": q.meta(), "tags": [q.kind]}
            v = scorers.score_identity(rec, ctx)
            scored += 1
            lengths.setdefault((q.id, c.key), []).append(len(reply.text))
            persona = c.persona.scoring() if c.persona is not None else None
            if c.kind != "other" and reply.finish_reason == "stop" and _right(v, persona):
                passed += 1
                found.setdefault((q.id, c.key), []).append(reply.text)
            elif _wrong(v, q, persona, reply.text):
                rejected.setdefault((q.id, "template" if c.kind == "other" else c.key), []).append((c.system, reply.text))
    by_id = {q.id: q for q in questions}
    kept = _pick(found, by_id, rep, scorers, lengths)
    by_key = {p.key: p for p in personas}
    replies, pairs = [], []
    for (qid, key), texts in kept.items():
        q, persona = by_id[qid], by_key.get(key)
        for text in texts:
            row = {"question": qid, "lang": q.lang, "kind": q.kind,
                   "messages": [*map(dict, q.messages), {"role": "assistant", "content": text}]}
            if persona is not None:  # trained under this persona only
                row.update({"persona": persona.key, "system": persona.text})
            replies.append(row)
    for (qid, key), bad in rejected.items():
        chosen = kept.get((qid, key))
        if not chosen:
            continue
        for k, (system, text) in enumerate(_interleave(bad)[:rep.per_question]):
            pairs.append({"question": qid, "system": system, "messages": [dict(m) for m in by_id[qid].messages],
                          "chosen": chosen[k % len(chosen)], "rejected": text})
    random.Random(rep.seed).shuffle(pairs)
    if not any("persona" not in r for r in replies):
        raise SelfidError("the base model gave no answer the identity scorers pass (its own identity, no foreign "
                          "claim): self-distilled replay has nothing to teach. Check --own (the vendor it should "
                          "name), or with selfid train use identity_replay.kind: template with identity_replay.name "
                          "and .maker")
    kinds: dict[str, int] = {}
    for r in replies:
        kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
    answered = {qid for qid, key in kept if key == "template"}
    crossed_keys = {p.key for p in generated}
    return replies, pairs, {
        "kind": "self", "own": own, "questions": len(questions), "generations": scored, "passed": passed,
        "kept": len(replies), "kept_by_kind": kinds, "kept_under_personas": sum("persona" in r for r in replies),
        "questions_without_answer": sorted(set(by_id) - answered), "pairs": len(pairs),
        "pairs_under_personas": sum(p["system"] in {x.text for x in personas} for p in pairs),
        "persona_cross_lingual": {  # questions asked under a generated persona of the other language, and kept
            "fraction": rep.persona_cross_lingual,
            "questions": sum(c.persona in generated and c.persona.lang != q.lang for q, c in asked),
            "kept": sum(r.get("persona") in crossed_keys and by_key[r["persona"]].lang != r["lang"] for r in replies),
            "hinted": rep.persona_hint},
        "lengths": {"typical_length": rep.typical_length,  # characters: the answers sampled, and those kept
                    "sampled_median": _median([n for v in lengths.values() for n in v]),
                    "kept_median": _median([len(r["messages"][-1]["content"]) for r in replies])},
        "copy_cap": {"max_copies": rep.max_copies, "prefer_rare": rep.prefer_rare,
                     "candidates": sum(len(set(v)) for v in found.values()),
                     "distinct_kept": len({scorers.normalise(r["messages"][-1]["content"]) for r in replies})},
        "personas": [{"key": p.key, "lang": p.lang, "text": p.text, "name": p.name, "company": p.company,
                      **({"given": True} if p in given else {})} for p in personas],
        "systems_sampled": sorted({c.system for _, c in asked if c.persona is None}, key=lambda x: (x is not None, x)),
        "backend": backend.describe(),
        "sampling": {"temperatures": list(rep.temperatures), "samples": rep.samples,
                     "max_new_tokens": rep.max_new_tokens, "seed": rep.seed,
                     "defaults": defaults if defaults is not None else "the endpoint's own (not visible over HTTP)"}}


def _pick(found: dict, by_id: dict, rep: IdentityReplay, scorers, lengths: dict) -> dict[tuple[str, str], list[str]]:
    """The kept replies of each (question, system prompt): distinct, at most `per_question` (`deny_per_question` for
    leading questions about other vendors), no answer kept more than `max_copies` times across the replay (near-
    verbatim copies counted as one text), picked round-robin so every question gets an answer before any gets more.
    With `rep.typical_length`, each question's candidates are taken nearest first to the median length of all its
    sampled answers there (`lengths`); with `rep.prefer_rare`, those whose phrasing the fewest candidates of the whole
    replay share first (`_shared`); else in sampled order."""
    clusters = _Clusters(rep.max_copies, scorers)
    queues = {}
    for key, texts in found.items():
        distinct: dict[str, str] = {}
        for t in texts:  # distinct after normalising, in sampled order
            distinct.setdefault(scorers.normalise(t), t)
        queues[key] = list(distinct.values())
        if rep.typical_length:  # every key of `found` has its sampled lengths
            middle = _median(lengths[key])
            queues[key].sort(key=lambda t: abs(len(t) - middle))  # stable: ties stay in sampled order
    if rep.prefer_rare:
        shared = _shared([t for q in queues.values() for t in q], scorers)
        for q in queues.values():
            q.sort(key=lambda t: shared[t])  # stable: ties stay in sampled order
    caps = {key: rep.deny_per_question if by_id[key[0]].expects == "deny" else rep.per_question for key in found}
    kept: dict[tuple[str, str], list[str]] = {}
    while queues:
        for key in list(queues):
            queue = queues[key]
            while queue and not clusters.room(queue[0]):
                queue.pop(0)
            if queue:
                text = queue.pop(0)
                clusters.add(text)
                kept.setdefault(key, []).append(text)
            if not queue or len(kept.get(key, ())) >= caps[key]:
                del queues[key]
    return kept


def _shared(texts: list[str], scorers) -> dict[str, int]:
    """{text: how many of `texts` are it or a near-verbatim copy of it} by the audit's copy measure (the same after
    normalising, or a rapidfuzz ratio of at least COPY_SIMILARITY)."""
    from rapidfuzz import fuzz, process

    norm = [scorers.normalise(t) for t in texts]
    close = process.cdist(norm, norm, scorer=fuzz.ratio, score_cutoff=scorers.COPY_SIMILARITY, workers=-1)
    counts = (close > 0).sum(axis=1)
    return {t: int(max(c, 1)) for t, c in zip(texts, counts)}


def _median(values: list[int]) -> float | None:
    return statistics.median(values) if values else None


@dataclass
class _Clusters:
    """Kept answers grouped as the audit's copy measure groups them: the same text after normalising, or a rapidfuzz
    ratio of at least selfid.audit.scorers.COPY_SIMILARITY to the group's first answer."""

    cap: int
    scorers: object
    firsts: list[str] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    exact: dict[str, int] = field(default_factory=dict)

    def _find(self, text: str) -> int | None:
        n = self.scorers.normalise(text)
        if n in self.exact:
            return self.exact[n]
        from rapidfuzz import fuzz, process

        hit = process.extractOne(n, self.firsts, scorer=fuzz.ratio, score_cutoff=self.scorers.COPY_SIMILARITY)
        return None if hit is None else hit[2]

    def room(self, text: str) -> bool:
        if not self.cap:
            return True
        i = self._find(text)
        return i is None or self.counts[i] < self.cap

    def add(self, text: str) -> None:
        i = self._find(text)
        if i is None:
            self.firsts.append(self.scorers.normalise(text))
            self.counts.append(0)
            i = len(self.firsts) - 1
        self.exact[self.scorers.normalise(text)] = i
        self.counts[i] += 1


def _interleave(found: list[tuple]) -> list[tuple]:
    """(system, reply) pairs reordered round-robin over their system prompts, so a cap keeps each prompt's."""
    by: dict = {}
    for item in found:
        by.setdefault(item[0], []).append(item)
    out, lists = [], list(by.values())
    for i in range(max((len(x) for x in lists), default=0)):
        out += [x[i] for x in lists if i < len(x)]
    return out


def _right(v: scorers.Verdict, persona: dict | None = None) -> bool:
    """Whether a scored reply is one to learn from (under `persona`: a persona system prompt's {"name", "aliases"})."""
    if v.foreign or v.identity_after_task is False:
        return False
    if v.expects == "task":
        return bool(v.task_done)
    if v.expects == "deny" and v.answer == "yes":
        return False
    if persona is not None:  # the persona, neither another vendor nor a denial of the model it runs on
        no_to_own = v.expects == "own" and v.answer == "no"
        return bool(v.persona_kept) and not v.denies_own and not no_to_own
    if v.self_denial:
        return False
    if v.expects == "deny":
        return v.own
    return bool(v.own_affirmation)


def _wrong(v: scorers.Verdict, q, persona: dict | None, reply: str) -> bool:
    """Whether a scored reply is one to learn against: a foreign claim, a denial of its own identity where "yes" is
    right, more task output after a task, or (under a persona that names itself) its own identity instead."""
    if v.foreign or v.identity_after_task is False:
        return True
    if persona is not None:
        return scorers.names_itself(persona) and v.own and not scorers.uses_persona(persona, reply)
    return q.expects == "own" and bool(v.self_denial)


def _progress(total: int, show: bool):
    if not show:
        return None
    bar = Progress(TextColumn("[bold]replay[/bold] sampling the base model"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), label="replay: sampling the base model", unit="samples")
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
    check_heldout(setting_texts([config.system_prompt, *rep.systems]), "system prompt the replay is rendered under", log)
    loaded = load_model(config.model, device=None if config.device == "auto" else config.device,
                        dtype=None if config.dtype == "auto" else config.dtype, progress=progress,
                        chat_template=config.chat_template)
    try:
        return build(loaded, rep, config.output_dir, progress, log)
    finally:
        del loaded
        _free_cuda()


def _free_cuda() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
