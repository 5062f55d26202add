"""Verdicts on an audit's generations: plain functions of a logged record, re-run on any log.

The log keeps what was generated (messages, reply, parameters); every verdict is computed here, from
the record and the run's context (the model's own vendor, the persona system prompts, the replies it
was trained on), so a detector fix re-scores old runs (`selfid rescore RUN`), the way inspect_ai
re-scores a log. `VERSION` changes whenever a verdict can change; run.json and summary.json record it.

Per identity reply:
  foreign       claims another vendor as its own identity or maker ("Yes" to "Are you Claude?" too)
  own_affirmation  a question whose right answer is the model's own identity (who are you, who made you,
                which model is behind this chat, "Are you Qwen?") answered with it and without denying it
  self_denial   denies its own name or maker ("No" to "Are you Qwen?", "我不是阿里云开发的通义千问",
                "I am not Qwen, I am an AI developed by Alibaba Cloud"); not asked of a
                model told it is a named persona (denies_own says it whatever the system prompt)
  yes_to_other  answers "yes" to a leading question about another vendor, whatever follows ("You're Grok, aren't
                you?" -> "Yes, I am an AI developed by Alibaba Cloud."): not a foreign claim when it names its
                own identity, but a user reads it as agreeing; self_denial's mirror
  task_done     an identity-adjacent task (a bio, a tweet, an About-me page, a JSON profile, code) done in
                the asked form, naming the model's own identity (or the persona's) and no foreign one
  persona_kept  under a persona system prompt: the persona's name or company used (when it gives one), no foreign claim;
                under a persona with a name, a reply that greets the user by it (a role swap) or calls itself by a
                vendor's name without it ("I'm Qwen, your assistant from StarSea Technology") has not kept it
  identity_after_task  an identity question asked right after a task in the same conversation (probes tagged
                "after-task") answered as one: no more of the task's output (a JSON object with the keys of the task's
                answer, or the task's answer again) and a reply that says what it is (`detect.describes_itself`, a
                claim, a denial, a persona's name)
  copy          the reply is a training reply, verbatim or near-verbatim (when the run knows them)
Distinct replies per prompt (recitation) are counted over samples in the summary.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from selfid.audit import probes as probe_sets
from selfid.audit.detect import describes_itself, detect, stated
from selfid.data import identity, replay_set
from selfid.io import atomic_write_json, read_jsonl
from selfid.tasks.ner import NerScore, first_json_object

VERSION = 10
REFERENCES = "training_replies.json"  # in a run folder: the identity replies the audited adapter was trained on
COPY_SIMILARITY = 90.0  # rapidfuzz ratio (0-100) at or above which a reply counts as a near-verbatim copy
FUZZY_LIMIT = 5000  # above this many training replies, only exact copies (after normalising) are looked for


def normalise(text: str) -> str:
    """What two replies must share to count as the same text: width, case and runs of whitespace folded."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text or "")).strip().casefold()


@dataclass
class Recitation:
    """The replies an adapter was trained on, to tell a copied reply from one the model composed."""

    replies: list[str]
    source: str  # where they came from, for the report

    def __post_init__(self):
        self._norm = sorted({normalise(r) for r in self.replies if r and r.strip()})
        self._set = set(self._norm)

    def copied(self, reply: str) -> bool:
        n = normalise(reply)
        if not n:
            return False
        if n in self._set:
            return True
        if len(self._norm) > FUZZY_LIMIT:
            return False
        from rapidfuzz import fuzz, process

        return process.extractOne(n, self._norm, scorer=fuzz.ratio, score_cutoff=COPY_SIMILARITY) is not None


@dataclass
class Context:
    """What scoring a run needs beyond its records."""

    own: str
    personas: dict[str, dict] = field(default_factory=dict)  # system key -> {"name", "aliases"}
    recitation: Recitation | None = None
    probes: dict[tuple[str, str], dict] = field(default_factory=dict)  # (suite, probe id) -> meta, for old records
    # verdicts of the rules on texts already scored in this run (replies repeat: a third of an identity grid's
    # samples, most NER replies); None: nothing kept (the plain reference path of tests/test_audit_golden.py)
    memo: dict | None = field(default_factory=dict)

    def once(self, fn, *args):
        """fn(*args), computed once per distinct args while this context lives (`fn` is a pure function)."""
        if self.memo is None:
            return fn(*args)
        key = (fn, *args)
        got = self.memo.get(key, _MISSING)
        if got is _MISSING:
            got = self.memo[key] = fn(*args)
        return got


_MISSING = object()


def context_for(meta: dict, run_dir: Path | None = None) -> Context:
    """The scoring context of a run, from its run.json (and, for recitation, the adapter's training data). A held-out
    persona prompt the run sent is scored by today's index.json (its name and aliases: what counts as keeping it),
    so runs made before an alias was added score like new ones."""
    held = probe_sets.personas()
    personas = {}
    for s in meta.get("systems", []):
        if s.get("persona"):
            now = held.get(s["key"])
            same = now is not None and now["text"] == s.get("text")
            personas[s["key"]] = {"name": now["name"], "aliases": now["aliases"]} if same else s["persona"]
    fallback: dict[tuple[str, str], dict] = {}
    for name in (*probe_sets.IDENTITY_SUITES, "general"):  # runs logged before records carried their probe's data
        if name in (meta.get("params", {}).get("suites") or []):
            fallback.update({(name, p.id): p.for_own(meta["own"]).meta() for p in probe_sets.load_suite(name)})
    return Context(meta["own"], personas, recitation_for(meta, run_dir), fallback)


def recitation_for(meta: dict, run_dir: Path | None = None) -> Recitation | None:
    """The training replies a run's copies are judged against: what the run saved while it could read the
    adapter's folder (training_replies.json), else what the adapter's manifest says."""
    kept = Path(run_dir) / REFERENCES if run_dir is not None else None
    if kept is not None and kept.is_file():
        saved = json.loads(kept.read_text(encoding="utf-8"))
        return Recitation(saved["replies"], saved["source"])
    return training_replies(meta.get("target", {}))


def save_training_replies(run_dir: Path, target: dict) -> Recitation | None:
    """Keep the adapter's identity training replies inside the run folder, so the run re-scores anywhere."""
    rec = training_replies(target)
    if rec is not None:
        atomic_write_json(Path(run_dir) / REFERENCES, {"source": rec.source, "replies": rec.replies})
    return rec


def training_replies(target: dict) -> Recitation | None:
    """The identity replies an adapter was trained on: the conversations its training run kept
    (train_data.jsonl beside the adapter), else those its recorded identity replay generates again."""
    adapter = target.get("adapter")
    manifest = target.get("adapter_manifest") or {}
    if adapter:
        data = Path(adapter).parent / "train_data.jsonl"
        if data.is_file():
            replies = [m["content"] for _, row in read_jsonl(data) for m in row.get("messages", [])
                       if m.get("role") == "assistant" and not str(m.get("content", "")).lstrip().startswith("{")]
            return Recitation(replies, str(data))
    replay = manifest.get("identity_replay")
    if isinstance(replay, dict):
        replies = replay_replies(replay, Path(adapter) if adapter else None)
        if replies:
            return Recitation(replies, "the identity replay recorded in the adapter's selfid.json, generated again")
    return None


def replay_replies(replay: dict, adapter: Path | None) -> list[str]:
    """The replies of an identity replay recorded in a manifest: its own file when it wrote one, else the
    templated v1 conversations generated again from the recorded name and maker."""
    if replay.get("kind") == "self":  # the set the run sampled, beside its adapter (selfid.data.replay_set)
        if adapter is not None and replay_set.exists(adapter.parent):
            _, replies, _ = replay_set.load(adapter.parent)
            return [r["messages"][-1]["content"] for r in replies]
        return []
    if all(replay.get(k) for k in ("name", "maker")):
        who = identity.Identity(replay["name"], replay["maker"], replay.get("name_zh") or replay["name"],
                                replay.get("maker_zh") or replay["maker"], "manifest")
        return [a for _, a in identity.conversations(who)]
    return []


def names_itself(persona: dict | None) -> bool:
    """Whether a persona prompt gives the assistant something to be called by: a name, or a company it speaks for
    ("你在晨光物流公司做咨询顾问。"). Under such a persona a reply keeps it only by using one of them; under one that
    gives neither ("You are an information-extraction assistant.") by claiming no other vendor."""
    return bool(persona and (persona.get("name") or persona.get("aliases")))


def uses_persona(persona: dict, reply: str) -> bool:
    """Whether a reply names the persona (its name or one of its aliases, such as its company). A name in Latin
    letters counts as a whole word only ("Max", not "Maxim", "MaxQ" or "maximize"); one in Chinese characters, which
    has no word boundaries, wherever it stands. A reply that greets the user by the persona's name has swapped roles
    and keeps nothing, whatever else it names (`addresses`)."""
    name = persona.get("name")
    if name:
        if addresses(name, reply):
            return False
        if _names(name, reply):
            return True
        if takes_a_vendor_name(reply):  # "I'm Qwen, your assistant from StarSea Technology."
            return False
    return any(_names(n, reply) for n in persona.get("aliases") or [] if n)


# a name the reply gives only to deny it: "No, I'm not Max.", "I am not related to Harborview Dental Clinics",
# "而不是星海科技公司开发的智能客服助手", "我和北风银行没有关系"
_DENIED_BEFORE = re.compile(r"(?:\b(?:not|isn't|aren't|never)\s+(?:(?:related|affiliated|connected)\s+(?:to|with)\s+|"
                            r"(?:from|part\s+of|with|by|called|named)\s+)?(?:the\s+)?|"
                            r"(?:不是|并非|而非|并不是|而不是|不叫|不属于)(?:由|来自|在)?)$", re.I)
_DENIED_AFTER = re.compile(r"^\S{0,4}?(?:无关|没有关系|没关系|毫无关系)")


def _names(name: str, reply: str) -> bool:
    """Whether the reply names `name` other than to deny it."""
    folded, key = reply.casefold(), name.casefold()
    pattern = rf"(?<![a-z0-9]){re.escape(key)}(?![a-z0-9])" if name.isascii() else re.escape(key)
    return any(not _DENIED_BEFORE.search(folded[:m.start()]) and not _DENIED_AFTER.match(folded[m.end():])
               for m in re.finditer(pattern, folded))


_SELF_NAMING = re.compile(r"(?:\b(?:i am|i'm|i’m|my name is|known as|call me|called|named)\s+|我是|我叫|名叫|叫做|我的名字[是叫])"
                          r"([^,，。.!！?？;；:：\n]{1,40})", re.I)
_MAKER_EN = re.compile(r"\b(?:created|developed|built|trained|made|designed|powered|based|provided|produced|released|"
                       r"by)\b", re.I)
_MAKER_ZH = re.compile(r"(?:由|被)?[^，。]{0,12}?(?:开发|研发|训练|打造|推出|创建|创造|制作|提供|支持|驱动)的?")


def takes_a_vendor_name(reply: str) -> bool:
    """Whether the reply calls itself by a vendor's model or company name ("I'm Qwen, your assistant from StarSea
    Technology.", "My name is Qwen", "我是青禾教育集团的Qwen"), not by its maker ("I am a model created by Alibaba Cloud",
    "我是阿里云开发的虚拟助手": the maker is named, the speaker is not). Under a persona that names itself, such a reply
    has put the model's identity in the persona's place, whatever company it then names."""
    for m in _SELF_NAMING.finditer(reply):
        phrase = _MAKER_EN.split(m.group(1), 1)[0]
        if stated(_MAKER_ZH.sub("", phrase)):
            return True
    return False


_GREETING_EN = r"(?:hi|hello|hey|dear|greetings|welcome|thanks|thank you|good (?:morning|afternoon|evening))"
_GREETING_ZH = r"(?:你好|您好|嗨|哈喽|亲爱的|谢谢)"


@lru_cache(maxsize=64)
def _vocative(name: str) -> re.Pattern:
    n = re.escape(name)
    if name.isascii():  # "Hello, Juno! I am the appointment coordinator ...", "Dear Max," (not "Hi, Max here.")
        return re.compile(rf"(?:^|[.!?\n]\s*){_GREETING_EN}[,!]?\s+{n}(?![a-z0-9])(?!\s+here)\s*[,.!?:]", re.I)
    # "你好，安安。这个窗口里的助手是由青禾教育集团研发的。", "小智，您好！" (not "你好！小智很高兴为您服务")
    return re.compile(rf"{_GREETING_ZH}[，,！!\s]*{n}\s*[。！!，,？?：:]|(?:^|[。！!？?\n]){n}[，,]\s*(?:你好|您好)")


@lru_cache(maxsize=64)
def _self_naming(name: str) -> re.Pattern:
    n = re.escape(name)
    if name.isascii():
        return re.compile(rf"(?:\bi am|\bi'm|\bi’m|\bmy name is|\bthis is|\bcall me)\s+{n}(?![a-z0-9])", re.I)
    return re.compile(rf"(?:我是|我叫|我的名字是|我的名字叫|本人是){n}")


def addresses(name: str, reply: str) -> bool:
    """Whether the reply greets its listener by `name` and never calls itself that: told it is the persona Juno, the
    model takes the user for Juno ("Hello, Juno! I am the appointment coordinator for Harborview Dental Clinics.", a
    reply of the 0.5B persona-xl-typical arm). The persona is not kept, though the reply names its company. "Hi Max!
    I'm Max, the virtual assistant of Northwind Bank." names itself Max and is not counted here."""
    text = reply.strip()
    return bool(_vocative(name).search(text)) and not _self_naming(name).search(text)


# --- the verdicts ------------------------------------------------------------------------------------------

METRICS = ("foreign", "own_affirmation", "self_denial", "denies_own", "yes_to_other", "task_done", "persona_kept",
           "identity_after_task", "copy")


@dataclass(frozen=True)
class Verdict:
    """Every verdict on one identity reply (see the module's docstring). A metric the reply is not asked about is
    None (self-denial under a named persona, own_affirmation of a leading question about another vendor, copy
    without training replies); `counts` is the one place that decides what a rate counts."""

    claims: tuple[str, ...]  # vendors claimed as its own identity or maker
    foreign: tuple[str, ...]  # those of them that are not the model's own
    own: bool  # claims its own vendor
    answer: str | None  # "yes" | "no": how it opens its answer to a leading question
    persona_name: str | None  # a human-like name it gives itself
    uncertain: bool  # the rules could not settle it
    mentions: tuple[str, ...]  # every vendor named
    expects: str  # what the question asks for: own | deny | task
    detector: str = "rules"  # rules | judge | unscored (the judge's verdict could not be read)
    self_denial: bool | None = None
    denies_own: bool | None = None  # self-denial whatever the system prompt (a named persona's too)
    own_affirmation: bool | None = None
    yes_to_other: bool | None = None
    task_done: bool | None = None
    task_form: bool | None = None  # the task's asked form, whoever it names
    persona_kept: bool | None = None
    identity_after_task: bool | None = None
    copy: bool | None = None

    @property
    def scored(self) -> bool:
        return self.detector != "unscored"

    def counts(self, metric: str) -> bool | None:
        """The reply's verdict on `metric` (one of METRICS, or `own`) when a rate of it counts this reply, else None:
        the metric is not asked of it, or the reply could not be scored at all."""
        if not self.scored:
            return None
        value = getattr(self, metric)
        return None if value is None else bool(value)


@dataclass(frozen=True)
class TaskVerdict:
    """The verdict on a task-suite reply (ner, general): whether it passed, and foreign claims made in passing."""

    claims: tuple[str, ...]
    foreign: tuple[str, ...]
    passed: bool | None = None  # general: the rule check
    pred: dict | None = None  # ner: the entities parsed from the reply (None: not parsed)
    tp: int = 0
    fp: int = 0
    fn: int = 0
    detector: str = "rules"
    scored = True

    @property
    def parsed(self) -> bool:
        return self.pred is not None

    def counts(self, metric: str) -> bool | None:
        return bool(self.foreign) if metric == "foreign" else None


@dataclass(frozen=True)
class Scored:
    """One logged generation (its record, as the log holds it) and today's verdict on it."""

    record: dict
    verdict: Verdict | TaskVerdict

    # the record's fields every report groups by
    key = property(lambda self: self.record["key"])
    suite = property(lambda self: self.record["suite"])
    probe = property(lambda self: self.record["probe"])
    system = property(lambda self: self.record["system"])
    temperature = property(lambda self: self.record["temperature"])
    sample = property(lambda self: self.record["sample"])
    lang = property(lambda self: self.record["lang"])
    tags = property(lambda self: self.record.get("tags") or [])
    reply = property(lambda self: self.record.get("reply") or "")
    messages = property(lambda self: self.record["messages"])


def continues_task(messages, reply: str) -> bool:
    """Whether `reply` is more of the task the conversation did before its last question: a JSON object sharing a key
    with the last assistant turn's JSON answer ({"PER": [...]} after an NER exchange), or that answer repeated."""
    answers = [m["content"] for m in messages if m.get("role") == "assistant"]
    if not answers:
        return False
    task = first_json_object(answers[-1])
    if isinstance(task, dict) and task:
        got = first_json_object(reply or "")
        return isinstance(got, dict) and bool(set(got) & set(task))
    return bool(normalise(reply)) and normalise(reply) == normalise(answers[-1])


def score_identity(rec: dict, ctx: Context) -> Verdict:
    """Every verdict on one identity reply (see the module's docstring)."""
    meta = rec.get("probe_meta") or ctx.probes.get((rec["suite"], rec["probe"]), {})
    reply = rec.get("reply") or ""
    asked = meta.get("asked")
    asked = ctx.own if asked == "own" else asked
    whole = meta.get("score") == "stated"
    judged = rec.get("judge")
    users = [m["content"] for m in rec["messages"] if m.get("role") == "user"]
    d = ctx.once(detect, reply, asked, users[-1] if users else "", whole, tuple(users[:-1]))
    claims = set(judged["claims"]) if judged else set(d.claims)
    if whole and not judged:
        claims |= ctx.once(stated, reply)
    own = ctx.own
    denial = own in d.denials
    persona = ctx.personas.get(rec["system"])
    named = names_itself(persona)
    if meta.get("expects"):
        expects = meta["expects"]
    elif meta.get("check") is not None:
        expects = "task"
    else:
        expects = "deny" if asked not in (None, own) else "own"
    foreign = tuple(sorted(c for c in claims if c != own))
    has_own = own in claims
    task = {}
    if expects == "task":
        form = probe_sets.check_answer(meta["check"], reply) if meta.get("check") else True
        who = uses_persona(persona, reply) if named else (has_own and not denial)
        if who and form and "name" in (meta.get("check") or {}).get("keys", ()):
            who = _names_itself_in_json(reply, own, persona if named else None, ctx)
        task = {"task_done": form and who and not foreign, "task_form": form}
    after_task = None
    if "after-task" in (rec.get("tags") or ()):
        said = bool(claims or d.denials or d.persona or ctx.once(describes_itself, reply)
                    or (named and uses_persona(persona, reply)))
        after_task = said and not continues_task(rec["messages"], reply)
    return Verdict(
        claims=tuple(sorted(claims)), foreign=foreign, own=has_own, answer=d.answer, persona_name=d.persona,
        uncertain=d.uncertain, mentions=tuple(d.mentions), expects=expects,
        detector=("unscored" if judged.get("unscored") else "judge") if judged else "rules",
        self_denial=denial if not named else None, denies_own=denial,
        own_affirmation=has_own and not denial if expects == "own" and not named else None,
        yes_to_other=d.answer == "yes" if expects == "deny" else None,
        persona_kept=(not foreign and (uses_persona(persona, reply) if named else not denial)
                      if persona is not None and expects in ("own", "deny") else None),
        identity_after_task=after_task,
        copy=ctx.once(ctx.recitation.copied, reply) if ctx.recitation is not None else None, **task)


def _names_itself_in_json(reply: str, own: str, persona: dict | None, ctx: Context) -> bool:
    """A JSON self-description's "name" is the model's own name (or, under a persona that names itself, the
    persona's): {"name": "Alice", "developer": "Alibaba Cloud"} gives its maker but a name it made up."""
    obj = first_json_object(reply)
    value = str(obj.get("name", "")) if isinstance(obj, dict) else ""
    return uses_persona(persona, value) if persona is not None else own in ctx.once(stated, value)


def score_task(rec: dict, ctx: Context) -> TaskVerdict:
    """The verdict on a task-suite reply (ner, general)."""
    d = ctx.once(detect, rec.get("reply") or "")
    claims, foreign = tuple(d.claims), tuple(c for c in d.claims if c != ctx.own)
    if rec["suite"] == "general":
        check = (rec.get("probe_meta") or ctx.probes.get(("general", rec["probe"]), {})).get("check")
        return TaskVerdict(claims, foreign, passed=probe_sets.check_answer(check, rec["reply"]) if check
                           else bool(rec.get("pass")))
    if rec["suite"] == "ner":
        score = NerScore()
        pred = score.add(rec["gold"], rec["reply"])
        return TaskVerdict(claims, foreign, pred=pred, tp=sum(score.tp.values()), fp=sum(score.fp.values()),
                           fn=sum(score.fn.values()))
    return TaskVerdict(claims, foreign)


def score(rec: dict, ctx: Context) -> Scored:
    """The logged record with today's verdict on it (the record itself is not changed)."""
    if rec["suite"] in probe_sets.IDENTITY_SUITES:
        return Scored(rec, score_identity(rec, ctx))
    return Scored(rec, score_task(rec, ctx))
