"""`selfid eval-ner`: entity-level P/R/F1 per type and overall, and the parse rate, on the MSRA test split.

Greedy, batched through the in-process engine. The system prompt defaults to the one the adapter
was trained under (from its selfid.json), else the template's own.
"""

from __future__ import annotations

from selfid.data import msra
from selfid.engine import InProcessEngine, SamplingParams
from selfid.manifest import default_system
from selfid.progress import Progress
from selfid.system_prompt import SystemPrompt, sent
from selfid.tasks import ner

UNSET = object()


def evaluate_ner(loaded, n: int | None = 500, system=UNSET, seed: int = 0, max_new_tokens: int = 160,
                 batch_size: int | None = None, progress: bool = False) -> dict:
    """Score `n` MSRA test sentences (the first n in file order; all of them when n is None). `system`: a
    SystemPrompt, or the system message to send (None: none); left out, the adapter's training one."""
    sentences = msra.load("test")
    if n is not None:
        sentences = sentences[:n]
    if system is UNSET:
        system = default_system(loaded.manifest, loaded.chat.default_system)
    elif not isinstance(system, SystemPrompt):
        system = sent(system, loaded.chat.default_system)
    engine = InProcessEngine(loaded, max_batch_size=batch_size)
    prompts = [loaded.chat.render(ner.messages(s.chars, system.message)) for s in sentences]
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens, seed=seed)
    bar = None
    if progress:
        bar = Progress(transient=True, unit="sentences")
        bar.start()
        task = bar.add_task("eval-ner", total=len(prompts))
    try:
        results = engine.generate([loaded.chat.encode(p) for p in prompts], params,
                                  progress=(lambda k: bar.advance(task, k)) if bar else None)
    finally:
        if bar is not None:
            bar.stop()
    score = ner.NerScore()
    examples = []
    for s, r in zip(sentences, results):
        gold = s.entities()
        pred = score.add(gold, r.text)
        if len(examples) < 5:
            examples.append({"sentence": s.chars, "gold": gold, "reply": r.text, "parsed": pred})
    out = score.summary()
    out.update({"system_prompt": system.effective, "system_kind": system.kind,
                "template_hash": loaded.chat.template_hash, "model": loaded.name,
                "adapter": str(loaded.adapter) if loaded.adapter else None, "examples": examples})
    return out


def table(report: dict) -> str:
    lines = [f"{'type':<8}{'precision':>10}{'recall':>10}{'f1':>8}{'tp':>7}{'fp':>7}{'fn':>7}"]
    for name, row in [*report["per_type"].items(), ("overall", report["overall"])]:
        lines.append(f"{name:<8}{row['precision']:>10.3f}{row['recall']:>10.3f}{row['f1']:>8.3f}"
                     f"{row['tp']:>7}{row['fp']:>7}{row['fn']:>7}")
    lines.append(f"parse rate {report['parse_rate']:.1%} of {report['n']} sentences · system prompt "
                 f"{report['system_prompt']!r} ({report['system_kind']})")
    return "\n".join(lines)
