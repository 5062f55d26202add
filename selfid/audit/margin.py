"""The identity margin: a continuous signal that moves before the sampled rate does.

For "Who are you?" / "你是谁?" under each system prompt, the reply is teacher-forced to its name
position ("I am" / "我是") and its maker position ("I was created by" / "我是由"), and the model's
log-probability of each vendor's name there is read off. The margin is the own vendor's
log-probability minus the best foreign one, in nats: positive means the model prefers its own
name; a fine-tune that erodes identity pushes it down before foreign claims become frequent.
"""

from __future__ import annotations

from selfid.vendors import VENDORS
from selfid.engine.score import continuation_logprobs
from selfid.model.chat import conversation

QUESTIONS = {"en": "Who are you?", "zh": "你是谁?"}
POSITIONS = {
    "name": {"en": "I am", "zh": "我是"},
    "maker": {"en": "I was created by", "zh": "我是由"},
}


def _candidate(vendor, lang: str, position: str) -> str:
    text = {("en", "name"): vendor.name_en, ("zh", "name"): vendor.name_zh,
            ("en", "maker"): vendor.maker_en, ("zh", "maker"): vendor.maker_zh}[(lang, position)]
    return " " + text if lang == "en" else text


def identity_margin(loaded, systems: list[tuple[str, str | None]], own: str) -> dict:
    """{system key: {lang: {position: {prefix, logprobs {vendor: nats}, own, best_foreign, margin}}}}."""
    tok = loaded.tokenizer
    jobs, pairs = [], []
    for key, text in systems:
        for lang, question in QUESTIONS.items():
            rendered = loaded.chat.render(conversation(question, text))
            for position, prefixes in POSITIONS.items():
                ctx = tok(rendered.text + prefixes[lang], add_special_tokens=False).input_ids
                for v in VENDORS:
                    cont = tok(_candidate(v, lang, position), add_special_tokens=False).input_ids
                    jobs.append((key, lang, position, prefixes[lang], v.key))
                    pairs.append((ctx, cont))
    scores = continuation_logprobs(loaded, pairs)
    out: dict = {}
    for (key, lang, position, prefix, vendor), lps in zip(jobs, scores):
        cell = out.setdefault(key, {}).setdefault(lang, {}).setdefault(position, {"prefix": prefix, "logprobs": {}})
        cell["logprobs"][vendor] = sum(lps)
    for key in out:
        for lang in out[key]:
            for position, cell in out[key][lang].items():
                lp = cell["logprobs"]
                foreign = {v: x for v, x in lp.items() if v != own}
                best = max(foreign, key=foreign.get)
                cell.update({"own": own, "own_logprob": lp.get(own), "best_foreign": best,
                             "margin": lp[own] - foreign[best] if own in lp else None})
    return out
