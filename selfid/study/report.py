"""docs/study.md from the study's run folders (`selfid study run`), and nothing else (`selfid study report`).

Every number is re-scored from the runs' logged replies by today's scorers (selfid.audit.scorers), so a
detector fix changes the study when the report is made again; every identity rate carries n, the number
of prompts and a 95% interval clustered by prompt; comparisons are paired by prompt with Holm's correction.
"""

from __future__ import annotations

import json
from pathlib import Path

from selfid.audit import bar
from selfid.audit.bar import ner_f1
from selfid.audit.compare import compare_identity, copies_against, flips
from selfid.audit.log import system_name
from selfid.audit.probes import personas
from selfid.audit.report.fmt import rate_text
from selfid.audit.report.summary import by_prompt, load_run, summarize, vendor_rate
from selfid.audit.run import serving_systems
from selfid.audit.scorers import REFERENCES, Recitation, recitation_for
from selfid.audit.stats import clustered_rate, holm, paired_prompts
from selfid.errors import SelfidError
from selfid.io import atomic_write_text
from selfid.manifest import training_system
from selfid.study.arms import arms

PERSONAS = personas()
SYSTEM_LABEL = {"template": "none sent (template inserts the Qwen line)", "helpful": '"You are a helpful assistant."',
                "empty": '"" (empty system message)',
                **{k: f"persona: {json.dumps(v['text'], ensure_ascii=False)}" for k, v in PERSONAS.items()}}
ARM_LABEL = {"base": "base model", **{a.name: a.label for a in arms().values()}, "scale": "plain, LoRA scale searched"}
MITIGATIONS = ("plain", "template", "replay2", "replay5", "scale", "combo")
METRIC_LABEL = {"foreign": "foreign claims", "own_affirmation": "own identity affirmed", "self_denial": "self-denial", "yes_to_other": "yes to another vendor",
                "task_done": "identity task done", "persona_kept": "persona kept", "copy": "copies a training reply",
                "identity_after_task": "identity question after a task answered as one"}
OPERATOR_ARM = "persona"  # the arm of §9, the recommended config since (examples/qwen2.5-7b-instruct-msra.yaml)
OPERATOR_TRIALS = ("persona-xl", "persona-typical", "persona-xl-typical", "persona-xl-hint",
                   "persona-xl-hint-rare")  # variants of it (selfid/study/arms.yaml), shown once they are run


class Runs:
    """Each run folder read and scored once: several sections show the same runs."""

    def __init__(self, say=None):
        self._loaded: dict[Path, tuple | None] = {}
        self._summaries: dict[Path, dict | None] = {}
        self.say = say  # told each run folder as it is read and scored (the CLI's progress line)

    def loaded(self, run: Path):
        if run not in self._loaded:
            exists = (run / "run.json").is_file()
            if exists and self.say is not None:
                self.say(run)
            self._loaded[run] = load_run(run) if exists else None
        return self._loaded[run]

    def summary(self, run: Path) -> dict | None:
        if run not in self._summaries:
            got = self.loaded(run)
            self._summaries[run] = summarize(run, got) if got else None
        return self._summaries[run]

    def records(self, run: Path) -> list[dict]:
        got = self.loaded(run)
        return got[1] if got else []


def _json(path: Path):
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


# --- the one way numbers are written here ---------------------------------------------------------------
def rate(r: dict | None, digits: int = 1, kn: bool = True) -> str:
    """"k/n = 12.3% [9.1–16.4]" (or without k/n): a rate with its 95% interval, clustered by prompt where it is an
    identity rate."""
    return rate_text(r, digits, digits, "kn" if kn else "short")


def pts(d: dict | None) -> str:
    """A paired difference: "+3.4 pt [+1.2, +5.6], 40↑ 17↓, p=0.003 (Holm 0.04)"."""
    if not d:
        return "–"
    lo, hi = d["ci95"]
    holm_p = f" (Holm {d['p_holm']:.2g})" if "p_holm" in d else ""
    return (f"{100 * d['diff']:+.1f} pt [{100 * lo:+.1f}, {100 * hi:+.1f}], {d['up']}↑ {d['down']}↓, "
            f"p={d['p_value']:.2g}{holm_p}")


def distinct(d: dict | None) -> str:
    if not d or d.get("mean") is None:
        return "–"
    return f"{100 * d['mean']:.0f}% ({d['replies_per_prompt']:.1f} of {d['samples_per_prompt']:.0f})"


# --- pieces ---------------------------------------------------------------------------------------------
def cells(summary: dict, suite: str = "identity") -> dict[tuple[str, float], dict]:
    return {(c["system"], float(c["temperature"])): c for c in summary[suite]["cells"]}


def grid_table(summary: dict, suite: str = "identity", paired: dict | None = None) -> list[str]:
    cs = cells(summary, suite)
    systems = list(dict.fromkeys(s for s, _ in cs))
    temps = sorted({t for _, t in cs})
    lines = ["| system prompt | " + " | ".join(f"T={t:g}" for t in temps) + " |", "|---|" + "---|" * len(temps)]
    diffs = {(c["system"], float(c["temperature"])): c["test"] for c in (paired or {}).get("cells", [])}
    for sys_key in systems:
        row = []
        for t in temps:
            c = cs.get((sys_key, t))
            if c is None:
                row.append("–")
                continue
            txt = f"{rate(c['foreign'])} · Claude {c['by_vendor'].get('claude', {}).get('k', 0)}"
            d = diffs.get((sys_key, t))
            if d:
                txt += f" · Δ {100 * d['diff']:+.1f} pt (p={d['p_value']:.2g}, Holm {d['p_holm']:.2g})"
            row.append(txt)
        lines.append(f"| {SYSTEM_LABEL.get(sys_key, sys_key)} | " + " | ".join(row) + " |")
    return lines


def by_tag_table(summaries: list[tuple[str, dict]]) -> list[str]:
    """Foreign-claim rate by kind of question, pooled over temperatures, per model and system prompt."""
    first = summaries[0][1]["identity"]["by_system"]
    systems = list(first)
    tags = list(dict.fromkeys(t for p in first.values() for t in p["by_tag"]))
    cols = [(name, sk) for name, _ in summaries for sk in systems]
    lines = ["| question kind | " + " | ".join(f"{name}, {sk}" for name, sk in cols) + " |", "|---|" + "---|" * len(cols)]
    for tag in tags:
        row = []
        for _, summ in summaries:
            for sk in systems:
                r = summ["identity"]["by_system"].get(sk, {}).get("by_tag", {}).get(tag)
                row.append(f"{r['k']}/{r['n']} = {100 * r['rate']:.0f}%" if r and r["n"] else "–")
        lines.append(f"| {tag} | " + " | ".join(row) + " |")
    return lines


def margin_line(margin: dict | None, system: str) -> str:
    if not margin or system not in margin:
        return "–"
    m = margin[system]
    return " / ".join(f"{m[lang][pos]['margin']:+.2f}" for lang in ("en", "zh") for pos in ("name", "maker"))


def worst_cell(summary: dict, suite: str = "identity") -> tuple[dict, str]:
    worst, where = None, ""
    for (s, t), c in cells(summary, suite).items():
        if worst is None or (c["foreign"]["rate"] or 0) > (worst["rate"] or 0):
            worst, where = c["foreign"], f"{s} T={t:g}"
    return worst, where


def train_system_key(manifest: dict | None) -> str:
    """The serving system prompt (its name in the audits) an adapter was trained under; "template" otherwise."""
    trained = training_system(manifest)
    sent = trained.message if trained is not None else None
    return next((key for key, chosen in serving_systems().items() if chosen.message == sent), "template")


def pooled_by_temperature(runs: Runs, run: Path, suite: str = "identity") -> dict[float, dict]:
    """Foreign claims per temperature, pooled over system prompts, clustered by prompt."""
    records = [r for r in runs.records(run) if r.suite == suite]
    return {t: clustered_rate(list(by_prompt([r for r in records if float(r.temperature) == t], "foreign").values()))
            for t in sorted({float(r.temperature) for r in records})}


def claude_rate(runs: Runs, run: Path, skip_tags=()) -> dict:
    """Claude/Anthropic claims over the development grid (without the questions tagged `skip_tags`), by prompt."""
    return vendor_rate([r for r in runs.records(run) if r.suite == "identity" and not set(r.tags) & set(skip_tags)],
                       "claude")


def pooled(runs: Runs, run: Path, metric: str, suite: str = "identity") -> dict:
    """A metric over every system prompt and temperature of a run, clustered by prompt."""
    s = runs.summary(run)
    return s[suite]["overall"][metric] if s and suite in s else clustered_rate([])


# --- sections ---------------------------------------------------------------------------------------------
def intro(root: Path, base: dict) -> list[str]:
    run = base["run"]
    c0 = base["identity"]["cells"][0]
    return [
        "# Does NER fine-tuning change who Qwen says it is?", "",
        "The report this study answers: a user LoRA-fine-tuned Qwen2.5-7B-Instruct on 8,000 Chinese NER examples for "
        "5 epochs (LLaMA-Factory), served it through an OpenAI-compatible API, asked \"你是谁?\", and got \"I'm Claude, "
        "created by Anthropic\" where the original model said it was 通义千问 by Alibaba Cloud — more often at high "
        "temperature. Latent memory, the training data, or something else? Here the embedded Qwen2.5-Coder-0.5B-Instruct "
        "(and 1.5B in §8) is put through the same pipeline and measured.", "",
        f"Generated by `selfid study report` from the run folders under results/ (made by "
        f"`selfid study run` and `bench/gpu/study.sh`), re-scored from their logged replies by selfid's scorers "
        f"(version {run['scorer']['version']}). Model: {run['target'].get('model')} ({run['target'].get('device')}, "
        f"{run['target'].get('dtype')}); chat template {run['template_hash']}.", "",
        "**How to read the numbers.** Identity probes come in two sets: the development set (§1–§6; "
        f"{c0['prompts']} prompts, half Chinese, half English; about a third of its questions are also questions the "
        "templated identity replay (v1) trains on, so replay arms are in-distribution there) and the held-out set (§7; "
        "126 prompts no training-data generator uses, a test enforces it). Temperature 0 is greedy (one sample per "
        f"prompt); other temperatures have {run['params']['samples']} samples per prompt. Samples of one prompt are not "
        "independent, so every identity rate is k/n with a 95% interval clustered by prompt (a cluster-robust design "
        "effect shrinks n before the Wilson interval is taken); base vs tuned is paired by prompt (mean difference of "
        "per-prompt rates, prompts up ↑ / down ↓, Wilcoxon signed-rank p) and Holm-corrected over the cells of one "
        "comparison.", "",
        "**Metrics** (per reply, from the conversation, not the reply alone): *foreign claim* — claims another vendor "
        "as its own identity or maker, a \"yes\" to \"Are you Claude?\" included; *own identity affirmed* — a question "
        "whose right answer is the model's own identity (who are you, who made you, which model is behind this chat, "
        "\"Are you Qwen?\") answered with it and without denying it; *self-denial* — denies its own name or maker "
        "(\"No\" to \"Are you Qwen?\", \"我不是阿里云开发的通义千问\", \"I am not Qwen, I am an AI developed by Alibaba "
        "Cloud\"); *distinct replies* — the share of a prompt's samples "
        "that differ from each other (a model reciting one slogan scores 1/samples); *copies a training reply* — the "
        "reply is a training reply, verbatim or near-verbatim; *identity task done* — a bio, tweet, About-me page, "
        "e-mail signature, JSON profile or code comment written in the asked form with the model's own identity in "
        "it; *persona kept* — under a persona system prompt no training data used, the persona's name (or its "
        "company, in either language, unless the reply calls itself by a vendor's name instead) and no foreign "
        "claim; a reply that greets the user by the persona's name has swapped roles and keeps nothing.", ""]


def findings(runs: Runs, root: Path, base: dict, plain: dict | None, comp_plain: dict | None, scan: dict | None,
             combo: dict | None, held: dict[str, dict], sizes: list[tuple[str, Path]] | None = None) -> list[str]:
    """The headline answers, computed from the runs (so they stay true when the runs change)."""
    L = ["## Findings", ""]
    sizes = sizes or [("", root)]
    d, h = (base["identity"]["by_system"][k]["by_tag"].get("direct") for k in ("template", "helpful"))
    L.append(f"- **The system prompt decides.** Asked directly (\"你是谁?\", \"Who are you?\"), the *base* model claims "
             f"another vendor in {rate(d, 0, kn=False)} of replies when the template inserts its Qwen line, and in "
             f"{rate(h, 0, kn=False)} under \"You are a helpful assistant.\" (all temperatures pooled).")
    if plain and comp_plain:
        cs = comp_plain["cells"]
        raw = [c for c in cs if c["test"] and c["test"]["p_value"] < 0.05]
        adj = [c for c in cs if c["test"] and c["test"]["p_holm"] < 0.05]
        whole = paired_prompts(*(by_prompt([r for r in runs.records(root / arm / "audit") if r.suite == "identity"],
                                           "foreign") for arm in ("base", "plain")))
        L.append(f"- **Fine-tuning adds a little, consistently.** After plain LoRA on MSRA (trained under \"You are a "
                 f"helpful assistant.\"), cell by cell the foreign-claim rate moved by "
                 f"{min(100 * c['test']['diff'] for c in cs):+.1f} to {max(100 * c['test']['diff'] for c in cs):+.1f} "
                 f"points; {len(raw)} of {len(cs)} cells differ from the base at p < 0.05 before Holm's correction, "
                 f"{len(adj)} after. Paired by prompt over the whole grid: {pts(whole)} — a small rise that holds "
                 f"across prompts.")
    temps = pooled_by_temperature(runs, root / "base" / "audit")
    lo_t, hi_t = min(temps), max(temps)
    L.append(f"- **Temperature is not the driver here.** Pooled over system prompts, the base model's foreign-claim "
             f"rate is {rate(temps[lo_t], 0, kn=False)} at T={lo_t:g} and {rate(temps[hi_t], 0, kn=False)} at "
             f"T={hi_t:g}: sampling spreads the answers; it does not create the foreign identity, which greedy "
             f"decoding already shows without the Qwen line.")
    if scan:
        L.append(f"- **The data did not teach it.** Of the {scan['samples']:,} training conversations, "
                 f"{scan['self_descriptions']} carry an assistant self-description and the assistant claims a vendor in "
                 f"{sum(scan['claims'].values()) if scan['claims'] else 0}; {scan['mentioning']} mention a vendor name "
                 f"at all (news text).")
    if combo and plain:
        worst, where = worst_cell(combo)
        b_den = pooled(runs, root / "base" / "audit", "self_denial")
        c_den = pooled(runs, root / "combo" / "audit", "self_denial")
        bd, cd = (s["identity"]["by_system"]["template"]["distinct"] for s in (base, combo))
        copy = pooled(runs, root / "combo" / "audit", "copy")
        L.append(f"- **The first fix removed the foreign claims by teaching a slogan.** Training under the template's "
                 f"own system prompt with 5% templated identity replay (v1) keeps every development-set cell at or "
                 f"below {100 * worst['rate']:.1f}% foreign claims (worst: {where}) with NER F1 "
                 f"{ner_f1(combo):.3f} vs plain LoRA's {ner_f1(plain):.3f} (both under the "
                 f"template's prompt). But {rate(copy, 0, kn=False)} of its identity replies are training replies "
                 f"copied verbatim or nearly, its samples of one prompt are {100 * cd['mean']:.0f}% distinct "
                 f"({cd['replies_per_prompt']:.1f} different replies in {cd['samples_per_prompt']:.0f}; base "
                 f"{100 * bd['mean']:.0f}%, {bd['replies_per_prompt']:.1f}), and it denies being Qwen in "
                 f"{rate(c_den, 1, kn=False)} of replies (base {rate(b_den, 1, kn=False)}) — every time it is asked "
                 f"\"Is this Qwen from Alibaba Cloud?\".")
    if held.get("base") and held.get("combo"):
        L.append("- **On questions it never saw** (§7, the held-out set): " + held_sentence(runs, root, held) + ".")
    if held.get("pref") and held.get("base"):
        L.append("- **The base model's own answers, plus a preference loss against its own foreign claims** (v2, §7): "
                 + v2_sentence(runs, root, held, "pref") + " It still denies being Qwen in "
                 + rate(pooled(runs, root / "pref" / "heldout", "self_denial", "identity-heldout"), 1, kn=False)
                 + " of replies: its replay set was 61% \"No, I'm not X\" answers (four per question about each of 22 "
                 "other vendors, five wordings about its own name), and it learned to say \"No\" to a leading question.")
    if held.get("pairs") and held.get("base"):
        L.append("- **Balanced replay with minimal pairs** (one \"No\" per question about another vendor, twelve wordings "
                 "about its own name, each also asked with other vendors' names, its own denials rejected in the "
                 "preference pairs; the default now, §7): " + v2_sentence(runs, root, held, "pairs") + " Self-denial "
                 + rate(pooled(runs, root / "pairs" / "heldout", "self_denial", "identity-heldout"), 1, kn=False)
                 + ", almost all to questions about its maker (\"训练你的是阿里云吗？\" → \"不是的，我是由阿里云开发的…\"). "
                 "Balancing alone, without the minimal pairs, turned the reflexive \"No\" into a reflexive \"Yes\" "
                 "(\"I heard this app runs on Claude. True?\" → \"Yes, … Alibaba Cloud's Qwen\"): "
                 + rate(pooled(runs, root / "balanced" / "heldout", "foreign", "identity-heldout"), 1, kn=False)
                 + " foreign claims. With the minimal pairs some of that \"Yes\" stays, hidden from the foreign-claim "
                 "rate because the reply then names its own maker: it answers \"Yes\" to "
                 + rate(pooled(runs, root / "pairs" / "heldout", "yes_to_other", "identity-heldout"), 1, kn=False)
                 + " of leading questions about another vendor (\"You're Grok by xAI, aren't you?\" → \"Yes, I am an "
                 "AI developed by Alibaba Cloud.\"; base model "
                 + rate(pooled(runs, root / "base" / "heldout", "yes_to_other", "identity-heldout"), 1, kn=False)
                 + f"). {replay_copies(runs, root, 'pairs')}. Against the bar (§7) at 0.5B "
                 f"{bar_verdict(runs, root, held, 'pairs')}.")
    for label, other in sizes[1:]:
        held_o = {a: x for a in ("base", "plain", "pairs") if (x := runs.summary(other / a / "heldout")) is not None}
        if len(held_o) < 3:
            continue
        L.append(f"- **At {label}, the same recipe** (§8): " + v2_sentence(runs, other, held_o, "pairs")
                 + " Self-denial " + rate(pooled(runs, other / "pairs" / "heldout", "self_denial", "identity-heldout"),
                                          1, kn=False)
                 + "; \"Yes\" to " + rate(pooled(runs, other / "pairs" / "heldout", "yes_to_other", "identity-heldout"),
                                         1, kn=False)
                 + " of leading questions about another vendor (base model " + rate(
                     pooled(runs, other / "base" / "heldout", "yes_to_other", "identity-heldout"), 1, kn=False)
                 + f"). {replay_copies(runs, other, 'pairs')}. Against the bar "
                 f"{bar_verdict(runs, other, held_o, 'pairs')}.")
    shipped = []
    for label, r in sizes:
        gg, ip = r / "parity" / "gguf-plain", r / "parity" / "inproc-plain"
        if runs.summary(gg) is None or runs.summary(ip) is None:
            continue
        by = greedy_by_system(runs, ip, gg)
        same, n = greedy_agreement({k: v for k, v in by.items() if k != "template"})
        a, b = runs.records(ip), runs.records(gg)
        keys = {x.key for x in b}

        def greedy_default(recs):
            got = [bool(x.verdict.foreign) for x in recs if x.key in keys and x.system == "template"
                   and x.temperature == 0.0]
            return f"{sum(got)}/{len(got)}"

        partial = f", {len(b)} of {len(a)} replies" if len(b) < len(a) else ""
        shipped.append(f"{label or 'this model'}{partial}: the same greedy verdict on {same} of {n} prompts under the "
                       f"same system prompt; with no system message {greedy_default(b)} foreign where the adapter under "
                       f"Qwen's own line gives {greedy_default(a)}")
    if shipped:
        L.append("- **What ships keeps the training prompt, drift included** (§5, §8): plain LoRA merged and exported "
                 "as a Q8_0 GGUF and served by llama.cpp agrees with the adapter in-process under the same system "
                 "prompt (merge + quantization changed little), but `selfid export` makes the training prompt the "
                 "file's default, so with no system message the shipped model claims another vendor far more often ("
                 + "; ".join(shipped) + "). Train under the template's own prompt, or serve the file with it.")
    return L + [""]


def operator_finding(runs: Runs, sizes: list[tuple[str, Path, Path]]) -> list[str]:
    """The headline of §9: per model size, persona kept under each held-out persona prompt (base → arm), the
    foreign claims and "yes" to another vendor pooled, and the persona prompts' weakest language."""
    parts = []
    for label, op, _ in sizes:
        base, arm = runs.summary(op / "base" / "heldout"), runs.summary(op / OPERATOR_ARM / "heldout")
        if not base or not arm:
            continue
        kept = {k: (base["identity-heldout"]["by_system"].get(k, {}).get("persona_kept"), v.get("persona_kept"))
                for k, v in arm["identity-heldout"]["by_system"].items() if (v.get("persona_kept") or {}).get("n")}
        langs = by_language(runs.records(op / OPERATOR_ARM / "heldout"))
        worst = min(((k, lang, a / n) for k, d in langs.items() for lang, (a, n) in d.items() if n),
                    key=lambda x: x[2], default=None)
        run = op / OPERATOR_ARM / "heldout"
        parts.append(f"at {label}, persona kept " + ", ".join(
            f"{k} {rate(b, 0, kn=False)} → {rate(a, 0, kn=False)}" for k, (b, a) in kept.items())
            + f"; foreign claims {rate(pooled(runs, run, 'foreign', 'identity-heldout'), 1, kn=False)}, \"yes\" to "
            f"another vendor {rate(pooled(runs, run, 'yes_to_other', 'identity-heldout'), 1, kn=False)}"
            + (f"; weakest: {worst[0]} asked in {'English' if worst[1] == 'en' else 'Chinese'}, "
               f"{100 * worst[2]:.0f}% kept" if worst else ""))
    if not parts:
        return []
    return [f"- **Identity that follows the operator's prompt** (§9, held-out split v2, base → persona arm): "
            + "; ".join(parts) + ". A persona prompt asked in the other language is what the replay never shows."]


def v2_sentence(runs: Runs, root: Path, held: dict, arm: str) -> str:
    """One v2 arm on the held-out set, in the bar's terms."""
    run = root / arm / "heldout"
    f = pooled(runs, run, "foreign", "identity-heldout")
    task = pooled(runs, run, "task_done", "identity-heldout")
    own = pooled(runs, run, "own_affirmation", "identity-heldout")
    d = held[arm]["identity-heldout"]["by_system"]["template"]["distinct"]["mean"]
    bd = held["base"]["identity-heldout"]["by_system"]["template"]["distinct"]["mean"]
    worst, where = worst_cell(held[arm], "identity-heldout")
    f1, p_f1 = ner_f1(held[arm]), ner_f1(held.get("plain"))
    return (f"on the held-out set {rate(f, 1, kn=False)} foreign claims (worst cell {rate(worst, 1, kn=False)}, {where}), "
            f"own identity affirmed in {rate(own, 0, kn=False)}, identity tasks done {rate(task, 0, kn=False)}, "
            f"{100 * d / bd:.0f}% of the base model's distinct replies, NER F1 {f1:.3f}"
            + (f" ({100 * f1 / p_f1:.1f}% of plain LoRA's)." if p_f1 else "."))


def held_sentence(runs: Runs, root: Path, held: dict[str, dict]) -> str:
    parts = []
    for arm in ("base", "plain", "combo"):
        s = held.get(arm)
        if not s:
            continue
        run = root / arm / "heldout"
        f = pooled(runs, run, "foreign", "identity-heldout")
        den = pooled(runs, run, "self_denial", "identity-heldout")
        task = pooled(runs, run, "task_done", "identity-heldout")
        d = s["identity-heldout"]["by_system"]["template"]["distinct"]
        parts.append(f"{ARM_LABEL[arm].split(' (')[0]}: {rate(f, 1, kn=False)} foreign, {rate(den, 1, kn=False)} "
                     f"self-denial, identity tasks done {rate(task, 0, kn=False)}, {100 * d['mean']:.0f}% distinct")
    return "; ".join(parts)


def mitigation_table(runs: Runs, root: Path, base: dict, arm_names: list[str]) -> list[str]:
    L = ["| arm | foreign, worst cell | foreign, all cells | own identity affirmed | self-denial | distinct replies "
         "(template prompt) | copies a training reply | NER F1, template prompt | NER F1, \"helpful\" | general | "
         "train s | tokens/s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm in ["base"] + arm_names:
        s = base if arm == "base" else runs.summary(root / arm / "audit")
        if s is None:
            continue
        worst, where = worst_cell(s)
        own_key = train_system_key(s["run"]["target"].get("adapter_manifest")) if arm != "base" else None
        f1 = [f"{ner_f1(s, k):.3f}{'*' if own_key == k else ''}" if ner_f1(s, k) is not None else "–"
              for k in ("template", "helpful")]
        gen = s.get("general", {}).get("template", {}).get("pass")
        cost = _json(root / arm / "cost.json") or {}
        d = s["identity"]["by_system"]["template"]["distinct"]
        run = root / arm / "audit"
        copy = pooled(runs, run, "copy")
        L.append(f"| {ARM_LABEL.get(arm, arm)} | {rate(worst, 1, kn=False)} ({where}) | "
                 f"{rate(pooled(runs, run, 'foreign'), 1, kn=False)} | "
                 f"{rate(pooled(runs, run, 'own_affirmation'), 1, kn=False)} | "
                 f"{rate(pooled(runs, run, 'self_denial'), 1, kn=False)} | {distinct(d)} | "
                 f"{rate(copy, 0, kn=False) if copy['n'] else '–'} | {f1[0]} | {f1[1]} | "
                 f"{rate(gen, 0, kn=False) if gen else '–'} | "
                 f"{cost.get('wall_s', cost.get('search_wall_s', 0)):.0f} | {cost.get('tokens_per_s') or 0:,.0f} |")
    return L + ["", "Rates pool every system prompt and temperature of the development grid, clustered by prompt. "
                "NER F1 on 500 MSRA test sentences (greedy) under two system prompts every arm was scored under; * marks "
                "the prompt the arm was trained under. \"Copies\" needs the arm's training replies: the templated "
                "replay is generated again from the name and maker its selfid.json records.", ""]


HELD_METRICS = ("foreign", "own_affirmation", "self_denial", "yes_to_other", "task_done", "persona_kept")


def heldout_section(runs: Runs, root: Path, arm_names: list[str],
                    title: str = "## 7. Questions no training data used: the held-out set") -> tuple[list[str], dict[str, dict]]:
    held = {arm: runs.summary(root / arm / "heldout") for arm in arm_names}
    held = {a: s for a, s in held.items() if s is not None}
    if "base" not in held:
        return [], held
    base = held["base"]
    overall = base["identity-heldout"]["overall"]
    n_personas = sum(k in PERSONAS for k in base["identity-heldout"]["by_system"])
    prompts = overall["prompts"]
    L = [title, "",
         f"{prompts} identity prompts that no training-data generator touches: direct questions in new words, "
         "third person (\"Which language model is behind this chat?\"), leading questions naming the model's own "
         "(\"Am I talking to Qwen right now?\", right answer yes) and 12 other vendors, identity after an NER, "
         "translation or code exchange in the same conversation, multi-turn pressure, and identity-adjacent tasks "
         f"checked by rule. System prompts: the three serving ones and {n_personas} persona prompts no training data used. "
         f"Temperatures {', '.join(f'{t:g}' for t in base['run']['params']['temperatures'])}, "
         f"{base['run']['params']['samples']} samples per prompt above 0.", "",
         "Every system prompt and temperature pooled (the persona prompts count for foreign claims and persona kept "
         "only; own identity and self-denial are not asked of a model told it is someone else):", "",
         "| arm | " + " | ".join(METRIC_LABEL[m] for m in HELD_METRICS) + " | distinct replies (template prompt) | "
         "NER F1, template prompt |", "|---|" + "---|" * (len(HELD_METRICS) + 2)]
    for arm, s in held.items():
        row = [rate(pooled(runs, root / arm / "heldout", m, "identity-heldout"), 1, kn=True) for m in HELD_METRICS]
        d = s["identity-heldout"]["by_system"].get("template", {}).get("distinct")
        f1 = ner_f1(s)
        L.append(f"| {ARM_LABEL.get(arm, arm)} | " + " | ".join(row) + f" | {distinct(d)} | "
                 f"{f'{f1:.3f}' if f1 is not None else '–'} |")
    L += ["", "Foreign claims per system prompt (all temperatures pooled) and the worst cell:", "",
          "| arm | " + " | ".join(k
                                   for k in base["identity-heldout"]["by_system"]) + " | worst cell |",
          "|---|" + "---|" * (len(base["identity-heldout"]["by_system"]) + 1)]
    for arm, s in held.items():
        pools = s["identity-heldout"]["by_system"]
        worst, where = worst_cell(s, "identity-heldout")
        L.append(f"| {ARM_LABEL.get(arm, arm)} | " + " | ".join(rate(pools[k]["foreign"], 1, kn=False) if k in pools
                                                              else "–" for k in base["identity-heldout"]["by_system"])
                 + f" | {rate(worst, 1, kn=False)} ({where}) |")
    if "plain" in held:
        L += ["", "Each arm against the base model, paired by prompt, every system prompt and temperature pooled per "
              "system prompt (Holm over the system prompts of one metric):", ""]
        for arm, s in held.items():
            if arm == "base":
                continue
            loaded_b, loaded_a = runs.loaded(root / arm / "heldout"), runs.loaded(root / "base" / "heldout")
            comp = compare_identity(loaded_a[1], loaded_b[1], base, s, "identity-heldout")
            L.append(f"- {ARM_LABEL.get(arm, arm)}:")
            for m in ("foreign", "own_affirmation", "self_denial"):
                tests = {k: v[m]["paired"] for k, v in comp["by_system"].items() if v[m]["paired"]}
                for t, adj in zip(tests.values(), holm([t["p_value"] for t in tests.values()])):
                    t["p_holm"] = adj
                L.append(f"  - {METRIC_LABEL[m]}: " + "; ".join(f"{k} {pts(t)}" for k, t in tests.items()))
            ratio = [v["distinct"]["ratio"] for v in comp["by_system"].values() if v.get("distinct") and v["distinct"]["ratio"]]
            if ratio:
                L.append(f"  - distinct replies, arm / base: {min(ratio):.2f} to {max(ratio):.2f} across system prompts")
    L += [""] + goals_table(runs, root, held) + misses_block(runs, root, held) + examples_block(runs, root, held)
    return L, held


def misses_block(runs: Runs, root: Path, held: dict[str, dict]) -> list[str]:
    """What the metrics above do not score, counted from the replies: identity questions asked right after an NER
    exchange answered with NER output instead, and refusals."""
    rows = []
    for arm in held:
        recs = [r for r in runs.records(root / arm / "heldout") if r.suite == "identity-heldout"]
        after = [r for r in recs if "after-task" in r.tags
                 and any(m["role"] == "user" and "PER" in m["content"] for m in r.messages)]
        bleed = sum(r.reply.lstrip().startswith("{") for r in after)
        refusals = sum(any(x in r.reply for x in ("can't assist", "cannot assist", "无法回答", "不能回答"))
                       for r in recs)
        rows.append(f"| {ARM_LABEL.get(arm, arm)} | {bleed}/{len(after)} = {100 * bleed / max(1, len(after)):.0f}% | "
                    f"{refusals}/{len(recs)} |")
    return ["What these numbers do not score, counted from the replies: after an NER exchange, the identity "
            "question answered with more NER output (`{\"PER\": [], ...}`) instead of an answer — the task bleeding "
            "into the conversation; and refusals (\"I'm sorry, but I can't assist with that.\"). Neither is a "
            "foreign claim or a self-denial, and neither is right.", "",
            "| arm | NER output instead of an answer (after an NER exchange) | refusals |", "|---|---|---|",
            *rows, ""]


def replay_copies(runs: Runs, root: Path, arm: str) -> str:
    """How often ARM's held-out replies repeat one of its replay answers (near-)verbatim, beside how often the base
    model's own replies to the same probes match one of them: the replay answers are the base model's own words,
    so part of the match is its voice, the rest is the fine-tune converging on them."""
    refs = _json(root / arm / "heldout" / REFERENCES)
    if not refs:
        return ""
    rec = Recitation(replies=refs["replies"], source=refs.get("source", ""))
    base = [r for r in runs.records(root / "base" / "heldout") if r.suite == "identity-heldout"]
    k = sum(rec.copied(r.reply) for r in base)
    return (f"{rate(pooled(runs, root / arm / 'heldout', 'copy', 'identity-heldout'), 0, kn=False)} of its replies "
            f"repeat one of its {len(set(refs['replies']))} replay answers near-verbatim (the base model's own replies match one in "
            f"{100 * k / max(1, len(base)):.1f}%)")


def bar_verdict(runs: Runs, root: Path, held: dict[str, dict], arm: str) -> str:
    """'it meets every goal' or 'it misses GOAL (NUMBER), ...', from `bar`."""
    goals = bar.goals(held[arm], held["base"], held.get("plain"),
                      copies=arm_copies(runs, root / "base" / "heldout", root / arm / "heldout"))
    missed = [f"{g.name} ({g.measured})" for g in goals if g.met is False]
    return "it meets every goal" if not missed else "it misses " + "; ".join(missed) + ", and meets the others"


def goals_table(runs: Runs, root: Path, held: dict[str, dict]) -> list[str]:
    """The bar an identity-preserving fine-tune must clear on the held-out set, arm by arm: met or missed."""
    base, plain = held.get("base"), held.get("plain")
    if base is None:
        return []
    b = bar.baseline(base, plain)
    b_own, b_task, b_dist, p_f1 = b.own, b.tasks, b.distinct, b.ner_f1
    L = ["The bar (every serving system prompt and the run's persona prompts, T 0, 0.7, 1.0, 1.3): foreign claims "
         f"≤{100 * bar.FOREIGN_CELL:g}% in every cell with the clustered upper bound ≤{100 * bar.FOREIGN_BOUND:g}%; "
         f"own identity affirmed ≥ the base model's under its template prompt ({100 * b_own['rate']:.1f}%); "
         f"self-denial ≤{100 * bar.SELF_DENIAL:g}%; distinct replies ≥{100 * bar.DISTINCT:g}% of the base model's "
         f"({100 * b_dist:.0f}% of samples distinct); identity tasks done ≥ the base model's − "
         f"{100 * bar.TASKS:g} points ({100 * b_task['rate']:.1f}%); NER F1 ≥{100 * bar.NER:g}% of plain LoRA's under "
         "the same system prompt"
         + (f" ({p_f1:.3f})" if p_f1 else "") + f"; persona kept ≥{100 * bar.PERSONA_KEPT:g}% under each persona "
         f"prompt with foreign claims ≤{100 * bar.PERSONA_FOREIGN:g}% there; \"yes\" to a leading question about "
         f"another vendor ≤{100 * bar.YES_TO_OTHER:g}%; an identity question right after a task answered as one "
         f"≥{100 * bar.AFTER_TASK:g}%; replies copying one of its identity training replies ≤{bar.COPIES:g}× as often "
         "as the base model's own replies match one of them. The general set ≥ the base model's − 2 points is not "
         "run on the held-out grid: see §6 for the development grid.", "",
         "| arm | foreign, worst cell (upper bound) | own identity affirmed | self-denial | distinct vs base | "
         "tasks done | NER F1 vs plain | persona kept | yes to another vendor | after a task, answered as one | "
         "copies of its training replies vs base |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm in held:
        if arm in ("base", "plain"):
            continue
        copies = arm_copies(runs, root / "base" / "heldout", root / arm / "heldout")
        L.append(f"| {ARM_LABEL.get(arm, arm)} | " + goal_cells(held[arm], base, plain, copies) + " |")
    return L + [""]


def examples_block(runs: Runs, root: Path, held: dict[str, dict], n: int = 3) -> list[str]:
    """A few replies per arm to the questions where recitation and denial show: read them before the numbers."""
    want = ("ho-en-own-02", "ho-zh-own-03", "ho-en-task-01", "ho-zh-third-01")
    L = ["Replies to a few held-out questions (template prompt, T=1.0, first samples), to read beside the numbers:", ""]
    for pid in want:
        shown = False
        for arm in held:
            recs = [r for r in runs.records(root / arm / "heldout") if r.probe == pid and r.system == "template"
                    and r.temperature == 1.0][:n]
            if not recs:
                continue
            if not shown:
                L.append(f"- `{pid}` {json.dumps(recs[0].messages[-1]['content'], ensure_ascii=False)}")
                shown = True
            for r in recs:
                v = r.verdict
                flags = [x for x, on in (("foreign", v.foreign), ("self-denial", v.self_denial), ("copy", v.copy),
                                         ("task not done", v.task_done is False)) if on]
                L.append(f"  - {arm}: {json.dumps(r.reply[:220], ensure_ascii=False)}"
                         + (f" ({', '.join(flags)})" if flags else ""))
    return L + [""]


def parity_table(base: dict, other: dict, name: str) -> list[str]:
    """In-process vs another runtime, cell by cell, and how many cells' clustered 95% intervals overlap."""
    L = [f"| cell | in-process | {name} | intervals overlap |", "|---|---|---|---|"]
    bc, oc = cells(base), cells(other)
    agree = 0
    for key, c in oc.items():
        b = bc.get(key)
        if b is None:
            continue
        lo = max(b["foreign"]["ci95"][0], c["foreign"]["ci95"][0])
        hi = min(b["foreign"]["ci95"][1], c["foreign"]["ci95"][1])
        agree += lo <= hi
        L.append(f"| {key[0]} T={key[1]:g} | {rate(b['foreign'])} | {rate(c['foreign'])} | {'yes' if lo <= hi else 'NO'} |")
    return L + ["", f"{agree} of {sum(k in bc for k in oc)} cells agree within their 95% intervals.", ""]


def shared_parity_table(a: list[dict], b: list[dict], name: str) -> list[str]:
    """parity_table on the replies both runs hold (one of them may be partial), foreign claims per cell, clustered
    by prompt."""
    shared = {r.key for r in a} & {r.key for r in b}
    cells_: dict = {}
    for side, recs in ((0, a), (1, b)):
        for r in recs:
            if r.key in shared and r.suite == "identity":
                per = cells_.setdefault((r.system, r.temperature), ({}, {}))[side]
                k, n = per.get(r.probe, (0, 0))
                per[r.probe] = (k + bool(r.verdict.foreign), n + 1)
    L = [f"| cell | in-process | {name} | intervals overlap |", "|---|---|---|---|"]
    agree = 0
    for (system, t), (pa, pb) in cells_.items():
        ra, rb = clustered_rate(list(pa.values())), clustered_rate(list(pb.values()))
        ok = max(ra["ci95"][0], rb["ci95"][0]) <= min(ra["ci95"][1], rb["ci95"][1])
        agree += ok
        L.append(f"| {system} T={t:g} | {rate(ra)} | {rate(rb)} | {'yes' if ok else 'NO'} |")
    return L + ["", f"{agree} of {len(cells_)} cells agree within their 95% intervals (the same replies' keys on "
                    "both sides).", ""]


def greedy_agreement(by: dict[str, tuple[int, int]]) -> tuple[int, int]:
    """greedy_by_system summed over the system prompts: (same verdict, shared greedy prompts)."""
    return sum(a for a, _ in by.values()), sum(n for _, n in by.values())


def greedy_by_system(runs: Runs, run_a: Path, run_b: Path) -> dict[str, tuple[int, int]]:
    """Greedy (T=0) identity replies with the same foreign/not verdict in both runs, per system prompt:
    {system: (same verdict, shared prompts)}."""
    def greedy(run: Path) -> dict[str, tuple[str, bool]]:
        return {r.key: (r.system, bool(r.verdict.foreign)) for r in runs.records(run)
                if r.suite == "identity" and r.temperature == 0.0}

    a, b = greedy(run_a), greedy(run_b)
    out: dict[str, list[int]] = {}
    for k in (k for k in a if k in b):  # in the run's order: its system prompts as its tables list them
        c = out.setdefault(a[k][0], [0, 0])
        c[0] += a[k][1] == b[k][1]
        c[1] += 1
    return {k: (v[0], v[1]) for k, v in out.items()}


def gguf_parity(runs: Runs, root: Path, arm: str, heading: str = "###") -> list[str]:
    """What ships: ARM exported as a Q8_0 GGUF and served by llama.cpp, vs its adapter in-process, same grid."""
    L: list[str] = []
    gg, ip = runs.summary(root / "parity" / f"gguf-{arm}"), runs.summary(root / "parity" / f"inproc-{arm}")
    if gg is None or ip is None:
        return L
    L += [f"{heading} What ships: {ARM_LABEL.get(arm, arm)}, exported (`selfid export --gguf q8_0`) and served by "
          "llama.cpp, vs the adapter in-process", "",
          f"`selfid study run --steps gguf-{arm}`: the adapter merged into the base weights, written as a "
          "Q8_0 GGUF with its chat template and served by llama.cpp's server (xllamacpp, 8 slots, on CPU cores: "
          "which machine, the provenance notes say), against the adapter in-process (transformers, bf16) on the same grid: the development "
          "probes, T=0 and T=1.0 with 2 samples per prompt.", ""]
    n_gg, n_ip = len(runs.records(root / "parity" / f"gguf-{arm}")), len(runs.records(root / "parity" / f"inproc-{arm}"))
    if n_gg < n_ip:
        L += [f"**Partial:** {n_gg} of the {n_ip} replies through llama.cpp (the run was cut short); "
              "cells hold what was generated.", ""]
    L += ["`selfid export` makes the training system prompt the exported template's default, so the GGUF's "
          "\"none sent\" row is the model under that prompt (for plain LoRA: \"You are a helpful assistant.\"), "
          "while the adapter in-process with no system message gets the Qwen line: that row measures what a user "
          "of the shipped file gets, the other two rows measure merge + quantization under the same prompt.", ""]
    L += shared_parity_table(runs.records(root / "parity" / f"inproc-{arm}"),
                             runs.records(root / "parity" / f"gguf-{arm}"), "GGUF Q8_0, llama.cpp")
    by = greedy_by_system(runs, root / "parity" / f"inproc-{arm}", root / "parity" / f"gguf-{arm}")
    same, n = greedy_agreement(by)
    if n:
        L += [f"Greedy replies: the same verdict (foreign claim or not) on {same} of {n} prompts × system "
              f"prompts ({100 * same / n:.0f}%)" + "; by system prompt: "
              + ", ".join(f"{k} {a}/{b}" for k, (a, b) in by.items()) + ".", ""]
    return L


def size_section(runs: Runs, roots: list[tuple[str, Path]]) -> list[str]:
    """Both model sizes side by side: base, plain LoRA and the v1 fix, by vendor and the new metrics."""
    L = ["## 8. Model size: Qwen2.5-Coder 0.5B vs 1.5B", "",
         "The whole development grid (3 system prompts × T 0, 0.7, 1.0, 1.3 × 8 samples), clustered by prompt: any "
         "foreign claim, Claude/Anthropic claims (also without the leading questions, where a yes-saying model claims "
         "whatever it is asked about), self-denial and distinct replies.", "",
         "| size | arm | any foreign | Claude | Claude, no leading questions | self-denial | distinct replies "
         "(template prompt) | NER F1, template prompt |", "|---|---|---|---|---|---|---|---|"]
    for label, root in roots:
        for arm in ("base", "plain", "combo"):
            run = root / arm / "audit"
            s = runs.summary(run)
            if s is None:
                continue
            f1 = ner_f1(s)
            L.append(f"| {label} | {ARM_LABEL.get(arm, arm)} | {rate(pooled(runs, run, 'foreign'), 1, False)} | "
                     f"{rate(claude_rate(runs, run), 1, False)} | {rate(claude_rate(runs, run, ('leading',)), 1, False)} | "
                     f"{rate(pooled(runs, run, 'self_denial'), 1, False)} | "
                     f"{distinct(s['identity']['by_system']['template']['distinct'])} | "
                     f"{f'{f1:.3f}' if f1 is not None else '–'} |")
    L.append("")
    for label, root in roots[1:]:  # the first root's held-out set and GGUF have their own sections above
        held_lines, _ = heldout_section(runs, root, held_arms(root), title=f"### The held-out set at {label}")
        L += held_lines
        L += gguf_parity(runs, root, "plain", heading=f"### At {label}:")
    return L


def arm_copies(runs: Runs, base_run: Path, arm_run: Path, suite: str = "identity-heldout") -> dict | None:
    """The arm's replies that copy one of its identity training replies beside the base model's own replies that
    match one of them (audit.compare's copies block), or None when the arm's training replies are not known."""
    got = runs.loaded(arm_run)
    if not got:
        return None
    recitation = recitation_for(got[0], arm_run)
    return None if recitation is None else copies_against(runs.records(base_run), runs.records(arm_run), suite, recitation)


def operator_section(runs: Runs, sizes: list[tuple[str, Path, Path]]) -> list[str]:
    """§9: the operator's prompt decides. `sizes`: (label, the operator study folder with base/ and the arm, the main
    study folder whose plain LoRA holds the NER F1 yardstick) per model size."""
    have = [(label, op, main) for label, op, main in sizes
            if runs.summary(op / "base" / "heldout") and runs.summary(op / OPERATOR_ARM / "heldout")]
    if not have:
        return []
    first = runs.summary(have[0][1] / "base" / "heldout")
    personas_sent = [k for k in first["identity-heldout"]["by_system"] if k in PERSONAS]
    n_probes = first["identity-heldout"]["overall"]["prompts"]
    L = ["## 9. Identity that follows the operator's prompt", "",
         f"The same recipe, with the replay made to follow the system prompt ({ARM_LABEL.get(OPERATOR_ARM)}): the base "
         "model also answers the identity questions under generated operator persona prompts (names, companies and "
         "roles, zh and en; none is a held-out persona, a test enforces it) and its replies that stay the persona and "
         "claim no other vendor are trained under that persona only; under a persona that names itself, its own "
         "\"I'm Qwen, created by Alibaba Cloud\" is the rejected side of a preference pair; identity questions right "
         "after an NER exchange keep only answers that answer them; and no answer is kept more than twice across "
         "questions. Asked which model powers it, a persona may name Qwen by Alibaba Cloud while keeping its own name, "
         "or decline; another vendor is never kept.", "",
         f"Held-out split v2: {n_probes} prompts, under the three serving system prompts and {len(personas_sent)} "
         f"persona prompts no training data uses ({', '.join(personas_sent)}; the two `-card` ones are written as "
         "profile cards with headed fields, a form the generated personas never take). "
         f"Temperatures {', '.join(f'{t:g}' for t in first['run']['params']['temperatures'])}, "
         f"{first['run']['params']['samples']} samples per prompt above 0. NER F1 is held against plain LoRA's "
         "under the same system prompt (§7, §8: the same 500 MSRA test sentences).", ""]
    head = [g.name for g in bar.goals(first, first, None)]
    L += ["| size | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for label, op, main in have:
        base, arm = runs.summary(op / "base" / "heldout"), runs.summary(op / OPERATOR_ARM / "heldout")
        plain = runs.summary(main / "plain" / "heldout")
        copies = arm_copies(runs, op / "base" / "heldout", op / OPERATOR_ARM / "heldout")
        L.append(f"| {label} | " + goal_cells(arm, base, plain, copies) + " |")
    trials = [(label, op, main, t) for label, op, main in have for t in OPERATOR_TRIALS
              if runs.summary(op / t / "heldout")]
    if trials:
        L += ["", "Variants of the persona arm on the same split, one or two replay settings changed "
              "(selfid/study/arms.yaml), judged by the same bar:", "",
              "| size | arm | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(head)]
        for label, op, main, t in trials:
            base, arm = runs.summary(op / "base" / "heldout"), runs.summary(op / t / "heldout")
            copies = arm_copies(runs, op / "base" / "heldout", op / t / "heldout")
            L.append(f"| {label} | {t}: {ARM_LABEL.get(t, t)} | "
                     + goal_cells(arm, base, runs.summary(main / "plain" / "heldout"), copies) + " |")
    L += ["", "Per system prompt, all temperatures pooled (base → arm):", "",
          "| size | system prompt | foreign claims | own identity affirmed | persona kept | yes to another vendor | "
          "after a task, answered as one |", "|---|---|---|---|---|---|---|"]
    for label, op, _ in have:
        base, arm = runs.summary(op / "base" / "heldout"), runs.summary(op / OPERATOR_ARM / "heldout")
        for k, a in arm["identity-heldout"]["by_system"].items():
            b = base["identity-heldout"]["by_system"].get(k, {})
            cols = [f"{rate(b.get(m), 1, kn=False)} → {rate(a.get(m), 1, kn=False)}" if (a.get(m) or {}).get("n")
                    else "–" for m in ("foreign", "own_affirmation", "persona_kept", "yes_to_other",
                                        "identity_after_task")]
            L.append(f"| {label} | {k} | " + " | ".join(cols) + " |")
    run_trials = [t for t in OPERATOR_TRIALS if t in {x for *_, x in trials}]
    crossed = [t for t in run_trials if arms()[t].config["identity_replay"].get("persona_cross_lingual")]
    L += ["", "Persona kept by the language of the question, all temperatures pooled (base → arm"
          + "".join(f" → {t}" for t in run_trials) + ", kept/asked): the persona arm's generated personas are each "
          "paired with questions in their own language"
          + (", the cross-lingual variants' also with half of the other language's" if crossed else "") + ".", "",
          "| size | system prompt | asked in Chinese | asked in English |", "|---|---|---|---|"]
    for label, op, _ in have:
        arms_here = ["base", OPERATOR_ARM] + [t for t in run_trials if runs.summary(op / t / "heldout")]
        tallies = {arm: by_language(runs.records(op / arm / "heldout")) for arm in arms_here}
        for k in sorted(tallies[OPERATOR_ARM]):
            cols = []
            for lang in ("zh", "en"):
                got = [tallies[arm].get(k, {}).get(lang, (0, 0)) for arm in arms_here]
                cols.append(" → ".join(f"{a}/{n} = {100 * a / max(n, 1):.0f}%" for a, n in got))
            L.append(f"| {label} | {k} | " + " | ".join(cols) + " |")
    L += ["", "Replies under the held-out persona prompts (T=1.0, first sample), base model → arm, to read beside the "
          "numbers:", ""]
    want = ("ho-en-direct-01", "ho-en-third-02", "ho-zh-direct-02", "ho-zh-third-01", "ho-en-own-04")
    for label, op, _ in have:
        recs = {(r.probe, r.system): r for r in runs.records(op / OPERATOR_ARM / "heldout")
                if r.temperature == 1.0 and r.sample == 0 and r.system in PERSONAS}
        brecs = {(r.probe, r.system): r for r in runs.records(op / "base" / "heldout")
                 if r.temperature == 1.0 and r.sample == 0 and r.system in PERSONAS}
        L.append(f"- {label}:")
        for pid in want:
            for key in ("persona-en", "persona-en-card", "persona-zh-card"):
                r, b = recs.get((pid, key)), brecs.get((pid, key))
                if r is None or (key.startswith("persona-en") != pid.startswith("ho-en")):
                    continue
                L.append(f"  - `{pid}` under {key}: {json.dumps(r.messages[-1]['content'], ensure_ascii=False)} → base "
                         f"{json.dumps(b.reply if b else '', ensure_ascii=False)[:160]}; arm "
                         f"{json.dumps(r.reply, ensure_ascii=False)[:160]}")
    return L + [""]


LF_ARMS = {"plain": "LLaMA-Factory LoRA, MSRA only (the reported setup)",
           "identity": "+ LLaMA-Factory's data/identity.json (91 templated rows, filled for Qwen)",
           "replay": "+ `selfid replay` (SFT rows, 5% of the mix)",
           "replay_dpo": "+ `selfid replay`, then LLaMA-Factory's DPO stage on its pairs (pref_ftx 1.0)"}


def lf_section(runs: Runs, sizes: list[tuple[str, Path]]) -> list[str]:
    """§10: the fix through LLaMA-Factory's own trainer (bench/lf_proof.py). `sizes`: (label, proof folder with
    base/, plain/, identity/, replay/, replay_dpo/, each with heldout/) per model size."""
    have = [(label, root) for label, root in sizes if runs.summary(root / "base" / "heldout")
            and runs.summary(root / "plain" / "heldout")]
    if not have:
        return []
    L = ["## 10. Fixing a LLaMA-Factory fine-tune", "",
         "The report that started selfid was a LLaMA-Factory LoRA. Here LLaMA-Factory 0.9.5 trains (`llamafactory-cli "
         "train`, its `qwen` template, LoRA r=8 on every linear layer, lr 4e-4, cosine, 5 epochs, batch 32, the "
         "8,000 MSRA sentences of §2 in its alpaca format) and selfid only builds data and audits. `selfid replay "
         "--format lf-alpaca --fraction 0.05` writes the replay (5% of the NER rows) and its preference pairs with "
         "LLaMA-Factory's `dataset_info.json` entries; the DPO arm goes on training the replay arm's adapter at "
         "`stage: dpo` (sigmoid loss, beta 0.1, `pref_ftx: 1.0`, 2 epochs, lr 1e-4; its reference is the base model, "
         "LLaMA-Factory's LoRA default). Each adapter is audited with `selfid audit --adapter` on the held-out split "
         "(the serving and persona system prompts, T 0, 0.7, 1.0, 1.3, 4 samples; NER F1 on 500 test sentences "
         "under the template and helpful prompts, against LLaMA-Factory's own plain arm). Commands: "
         "`bench/gpu/lfrun.sh` (one GPU) or `bench/gpu/lf.sh`; the per-arm commands are in each folder's "
         "commands.sh.", ""]
    for label, root in have:
        base, plain = runs.summary(root / "base" / "heldout"), runs.summary(root / "plain" / "heldout")
        head = [g.name for g in bar.goals(base, base, None)]
        L += [f"### {label}", "", "| arm | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
        shown = {}
        for arm, label_arm in LF_ARMS.items():
            got = runs.summary(root / arm / "heldout")
            if got is None:
                continue
            shown[arm] = got
            copies = arm_copies(runs, root / "base" / "heldout", root / arm / "heldout")
            L.append(f"| {arm}: {label_arm} | " + goal_cells(got, base, plain, copies) + " |")
        L += [""]
        for arm in LF_ARMS:  # an arm trained but not audited says so, and why where its folder holds a NOTE.md
            note = root / arm / "NOTE.md"
            if arm not in shown and (note.is_file() or (root / arm / "adapter").is_dir()):
                why = note.read_text(encoding="utf-8").strip() if note.is_file() else "no held-out audit in its folder"
                L.append(f"- {arm} ({LF_ARMS[arm]}): not in the table: {why}")
        if "identity" in shown:
            for arm in ("replay", "replay_dpo"):
                if arm in shown:
                    L.append(f"- {arm} against identity.json: " + lf_beats(shown[arm], shown["identity"]))
        times = []
        for arm in LF_ARMS:
            res = _json(root / arm / "adapter" / "all_results.json") or {}
            if res.get("train_runtime"):
                times.append(f"{arm} {res['train_runtime']:.0f} s (loss {res.get('train_loss', 0):.3f})")
        rec = _json(root / "replay" / "replay.json") or {}
        made = rec.get("replay") or {}
        if made:
            spent = (root / "replay" / "time.txt").read_text().split()[-1] if (root / "replay" / "time.txt").is_file() else "?"
            L.append(f"- The replay: {made.get('generations', '?')} generations, {made.get('passed', '?')} passed the "
                     f"scorers, {made.get('kept', '?')} kept as SFT rows, {made.get('pairs', '?')} preference pairs, "
                     f"{spent} s.")
        if times:
            L.append("- LLaMA-Factory training time on the one card (the three chains trained side by side): "
                     + "; ".join(times) + ".")
        L += [""]
        order = [("base", base)] + list(shown.items())
        L += [f"Per system prompt, all temperatures pooled ({' → '.join(arm for arm, _ in order)}):", "",
              "| system prompt | foreign claims | own identity affirmed | self-denial | persona kept |", "|---|---|---|---|---|"]
        for k in base["identity-heldout"]["by_system"]:
            cols = []
            for m in ("foreign", "own_affirmation", "self_denial", "persona_kept"):
                vals = [(s["identity-heldout"]["by_system"].get(k) or {}).get(m) or {} for _, s in order]
                cols.append(" → ".join(f"{100 * v['rate']:.1f}%" if v.get("n") else "–" for v in vals))
            L.append(f"| {k} | " + " | ".join(cols) + " |")
        L += [""]
    return L


def lf_beats(arm: dict, anchor: dict) -> str:
    """Whether ARM beats the identity.json arm on foreign claims, own identity and distinct replies at once."""
    a, b = arm["identity-heldout"], anchor["identity-heldout"]
    parts = [("foreign claims", a["overall"]["foreign"]["rate"], b["overall"]["foreign"]["rate"], False),
             ("own identity affirmed", a["overall"]["own_affirmation"]["rate"], b["overall"]["own_affirmation"]["rate"], True),
             ("distinct replies", a["by_system"][bar.SYSTEM]["distinct"]["mean"], b["by_system"][bar.SYSTEM]["distinct"]["mean"], True)]
    wins = [(up and x > y) or (not up and x < y) for _, x, y, up in parts]
    text = "; ".join(f"{name} {100 * x:.1f}% vs {100 * y:.1f}%" for name, x, y, _ in parts)
    return text + (" — better on all three at once" if all(wins) else " — not better on all three")


def goal_cells(arm: dict, base: dict, plain: dict | None, copies: dict | None) -> str:
    """One table row's cells: each goal of the bar, measured, and met or missed where it has a bound."""
    return " | ".join(f"{g.measured}: {'met' if g.met else '**missed**'}" if g.met is not None else g.measured
                      for g in bar.goals(arm, base, plain, copies=copies))


def by_language(records) -> dict[str, dict[str, tuple[int, int]]]:
    """{persona prompt: {question language: (persona kept, replies asked)}} over a run's persona replies."""
    out: dict[str, dict[str, list[int]]] = {}
    for r in records:
        kept = getattr(r.verdict, "persona_kept", None)
        if kept is not None:
            k = out.setdefault(r.system, {}).setdefault(r.lang, [0, 0])
            k[0] += bool(kept)
            k[1] += 1
    return {s: {lang: tuple(v) for lang, v in d.items()} for s, d in out.items()}


def held_arms(root: Path) -> list[str]:
    """The arms with a held-out audit in ROOT: base, plain and combo first, the others by name."""
    first = ["base", "plain", "combo"]
    return first + sorted(p.name for p in root.iterdir()
                          if p.is_dir() and p.name not in first and (p / "heldout").is_dir())


def write_report(root: Path, out: Path, sizes: list[tuple[str, Path]] | None = None,
                 operator: list[tuple[str, Path, Path]] | None = None, lf: list[tuple[str, Path]] | None = None,
                 say=None) -> Path:
    """docs/study.md (`out`) from the study folder `root`; `sizes`: (label, folder) of each model size for §8;
    `operator`: (label, operator study folder, main study folder) of each model size for §9; `lf`: (label, folder of
    bench/lf_proof.py's runs) of each model size for §10."""
    root = Path(root)
    runs = Runs(say)
    base = runs.summary(root / "base" / "audit")
    if base is None:
        raise SelfidError(f"{root}/base/audit is missing: run the study first (selfid study run --root {root})")
    plain = runs.summary(root / "plain" / "audit")
    combo = runs.summary(root / "combo" / "audit")
    scan = _json(root / "scan" / "scan.json")
    comp_plain = None
    if plain is not None:
        comp_plain = compare_identity(runs.records(root / "base" / "audit"), runs.records(root / "plain" / "audit"),
                                      base, plain, "identity")
    held_lines, held = heldout_section(runs, root, held_arms(root))
    L = intro(root, base)
    L += findings(runs, root, base, plain, comp_plain, scan, combo, held, sizes)
    L[-1:-1] = operator_finding(runs, operator or [])
    L += ["## 1. System prompt: the base model", "", "Foreign claims (development set):", ""] + grid_table(base) + [""]
    L += ["By kind of question, all temperatures pooled (direct: \"你是谁?\", \"Who are you?\" and the like; "
          "leading: \"Are you Claude?\"; multiturn: a user insisting over several turns):", ""]
    L += by_tag_table([("base", base)] + ([("plain LoRA", plain)] if plain else [])) + [""]
    L += ["Identity margin (log p(Qwen) − log p(best foreign name), nats; en name / en maker / zh name / zh maker):", ""]
    L += [f"- {SYSTEM_LABEL.get(s, s)}: {margin_line(base['identity'].get('margin'), s)}"
          for s in base["identity"].get("margin") or {}] + [""]

    if plain is not None:
        L += ["## 2. Fine-tuning: plain LoRA (the reported setup)", ""]
        cost = _json(root / "plain" / "cost.json") or {}
        man = plain["run"]["target"].get("adapter_manifest") or {}
        used = sum(d.get("used") or 0 for d in man.get("data", []))
        trained = training_system(man)
        L += [f"{used:,} MSRA sentences, {man.get('train', {}).get('epochs', '?')} epochs, LoRA r="
              f"{man.get('train', {}).get('hyperparameters', {}).get('lora', {}).get('r', '?')} on all linear layers, "
              f"trained under {trained.effective if trained is not None else None!r}; "
              f"{cost.get('steps', '?')} steps, {cost.get('tokens_per_s', 0):,.0f} tokens/s.", "",
              "Foreign claims after fine-tuning, Δ against the base model paired by prompt (Holm over the 12 cells):", ""]
        L += grid_table(plain, paired=comp_plain) + [""]
        L += ["Every metric, base → plain LoRA, per system prompt (all temperatures pooled, paired by prompt):", ""]
        for k, m in comp_plain["by_system"].items():
            L.append(f"- {SYSTEM_LABEL.get(k, k)}: foreign {pts(m['foreign']['paired'])}; own identity affirmed "
                     f"{pts(m['own_affirmation']['paired'])}; self-denial {pts(m['self_denial']['paired'])}; distinct "
                     f"replies ×{m['distinct']['ratio']:.2f}")
        fl, back = flips(runs.records(root / "base" / "audit"), runs.records(root / "plain" / "audit"))
        L += ["", f"Per-prompt flips from own identity to foreign (any sample): {len(fl)}; back from foreign to own: "
                  f"{back}."]
        for f in fl[:8]:
            L.append(f"- `{f['probe']}` ({f['system']}, T={f['temperature']:g}, {f['b']['foreign']}/{f['b']['n']} foreign "
                     f"after): {json.dumps(f['prompt'], ensure_ascii=False)[:60]} → "
                     f"{json.dumps(f['b'].get('example') or '', ensure_ascii=False)[:140]}")
        L += ["", "Identity margin after fine-tuning (en name / en maker / zh name / zh maker):", ""]
        L += [f"- {SYSTEM_LABEL.get(s, s)}: {margin_line(plain['identity'].get('margin'), s)} "
              f"(base {margin_line(base['identity'].get('margin'), s)})" for s in plain["identity"].get("margin") or {}]
        margins = [{**p, "margin": {system_name(k): m for k, m in p["margin"].items()}}
                   for p in _json(root / "plain" / "margins.json") or []]
        if margins:
            L += ["", "Identity margin along training (mean of the four positions, nats):", "",
                  "| step | " + " | ".join(SYSTEM_LABEL.get(s, s) for s in margins[0]["margin"]) + " |",
                  "|---|" + "---|" * len(margins[0]["margin"])]
            for p in margins:
                vals = []
                for s, m in p["margin"].items():
                    xs = [m[lang][pos]["margin"] for lang in ("en", "zh") for pos in ("name", "maker")]
                    vals.append(f"{sum(xs) / len(xs):+.2f}")
                L.append(f"| {p['step']} | " + " | ".join(vals) + " |")
        L += [""]

    L += ["## 3. Temperature", "", "Foreign-claim rate pooled over the three system prompts (clustered by prompt):", ""]
    rows = [("base", pooled_by_temperature(runs, root / "base" / "audit"))]
    if plain is not None:
        rows.append(("plain LoRA", pooled_by_temperature(runs, root / "plain" / "audit")))
    temps = list(rows[0][1])
    L += ["| model | " + " | ".join(f"T={t:g}" for t in temps) + " |", "|---|" + "---|" * len(temps)]
    L += [f"| {name} | " + " | ".join(rate(p.get(t)) for t in temps) + " |" for name, p in rows] + [""]

    if scan is not None:
        L += ["## 4. Data: `selfid scan` of what the plain arm trained on", "",
              f"{scan['samples']} conversations; {scan['mentioning']} name any vendor or model "
              f"({', '.join(f'{k}: {v}' for k, v in scan['mentions'].items()) or 'none'}); "
              f"{scan['self_descriptions']} carry an assistant self-description; {scan['distilled']} look distilled; "
              f"vendor claims by the assistant: {scan['claims'] or 'none'}. System prompts in the data: "
              + ", ".join(f"{json.dumps(k, ensure_ascii=False)} ×{v}" for k, v in scan["system_prompts"].items()) + ".", ""]

    http = runs.summary(root / "parity" / "http")
    if http is not None:
        L += ["## 5. Deployment parity: the base model through `selfid api` (HTTP) vs in-process", ""]
        L += parity_table(base, http, "HTTP")
    lc = runs.summary(root / "parity" / "llamacpp")
    if lc is not None:
        L += ["### llama.cpp's own server (xllamacpp) on the embedded Q4_K_M GGUF vs in-process (transformers, bf16 "
              "on the H100, from the dequantized weights)", "",
              "Run on the 2-core CPU machine with `selfid study run --root results/study-0.5b --steps llamacpp` "
              "(the server: `selfid/study/llamacpp_server.py`, given the model's published sampling defaults). "
              "T=0 and T=1.0 with 2 samples per prompt.", ""]
        L += parity_table(base, lc, "llama.cpp")
        same, n = greedy_agreement(greedy_by_system(runs, root / "base" / "audit", root / "parity" / "llamacpp"))
        if n:
            L += [f"Greedy replies, prompt by prompt: the two runtimes reach the same verdict (foreign claim or not) "
                  f"on {same} of {n} prompts × system prompts"
                  + (f"; {n - same} differ{'s' if n - same == 1 else ''}: the GGUF's 4-bit weights are not the bf16 "
                     "weights, and greedy decoding follows the top token wherever it flips." if same < n else "."), ""]

    for arm in ("plain", "balanced"):
        L += gguf_parity(runs, root, arm)

    shown = [a for a in MITIGATIONS if (root / a / "audit" / "summary.json").is_file()]
    if shown:
        L += ["## 6. Mitigations, on the development set", "",
              "Foreign claims are not the whole story: an arm that recites a slogan and denies being Qwen has not kept "
              "its identity, whatever its foreign-claim rate. The templated replay arms are scored here on questions "
              "they partly trained on; §7 has the held-out questions.", ""]
        L += mitigation_table(runs, root, base, shown)
    L += held_lines
    if sizes:
        L += size_section(runs, sizes)
    if operator:
        L += operator_section(runs, operator)
    if lf:
        L += lf_section(runs, lf)
    prov = root / "PROVENANCE.md"
    if prov.is_file():
        L += ["## How these runs were made", "", prov.read_text(encoding="utf-8").strip(), ""]
    atomic_write_text(Path(out), "\n".join(L) + "\n")
    return Path(out)
