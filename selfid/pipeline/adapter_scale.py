"""The adapter-scale search as a stage after training: the largest LoRA scale whose identity audit is back
within a margin of the base model's, with NER F1 within a tolerance of the full adapter's (the search
itself and the scaling are selfid.train.scale's; the audit is selfid.audit's, which training never imports).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Callable

from selfid.audit.backends import InProcessBackend
from selfid.audit.run import AuditParams, run_audit, serving_systems
from selfid.errors import SelfidError
from selfid.train.scale import apply_scale, save_scaled, search_scale


def identity_rate_provider(workdir: str | Path, temperatures=(0.7,), samples: int = 4, max_new_tokens: int = 64,
                           seed: int = 0) -> Callable:
    """`identity_rate(loaded) -> foreign-claim rate`: the audit's identity suite under the serving system
    prompts (the template's own, "You are a helpful assistant.", empty), pooled; each run kept in `workdir`."""
    runs = itertools.count()

    def identity_rate(loaded) -> float:
        params = AuditParams(suites=["identity"], systems=serving_systems(loaded.chat.default_system),
                             temperatures=list(temperatures), samples=samples, seed=seed,
                             max_new_tokens=max_new_tokens, ner_limit=1)
        summary = run_audit(InProcessBackend(loaded), params, Path(workdir) / f"audit-{next(runs)}",
                            show_progress=False, margin=False)
        cells = summary["identity"]["by_system"].values()
        k, n = sum(c["foreign"]["k"] for c in cells), sum(c["foreign"]["n"] for c in cells)
        if not n:
            raise SelfidError("the identity audit scored no replies; adapter_scale cannot judge identity")
        return k / n

    return identity_rate


def make_evaluate(loaded, identity_rate: Callable, ner_sentences: int, system: str | None) -> Callable:
    """evaluate(scale) -> (foreign_rate, ner_f1) for the peft model in `loaded`, scaled in place."""
    from selfid.train.eval_ner import evaluate_ner  # torch

    def evaluate(scale: float) -> tuple[float, float]:
        apply_scale(loaded.model, scale)
        try:
            rate = float(identity_rate(loaded))
            f1 = evaluate_ner(loaded, n=ner_sentences, system=system)["overall"]["f1"]
        finally:
            apply_scale(loaded.model, 1.0)
        return rate, f1

    return evaluate


def run(config, result, log=print):
    """After `selfid.train.sft.train` returned `result`: search the adapter's scale as `config.adapter_scale`
    says, write OUTPUT/adapter-scaled, record the search in `result.metrics`; returns the search."""
    from selfid.train.sft import loaded_with, system_message  # torch

    sc = config.adapter_scale
    if sc is None or result.adapter is None:
        return None
    rate = identity_rate_provider(config.output_dir / "adapter-scale-audits", sc.temperatures, sc.samples,
                                  sc.max_new_tokens, config.train.seed)
    result.model.eval()
    evaluate = make_evaluate(loaded_with(result.loaded, result.model), rate, sc.ner_sentences,
                             system_message(config, result.loaded))
    found = search_scale(evaluate, sc.grid, sc.f1_tolerance, sc.identity_margin)
    scaled = save_scaled(result.adapter, found.scale, config.output_dir / "adapter-scaled", found)
    result.metrics["adapter_scale"] = found.to_dict()
    log(f"adapter scale: {found.reason}; written to {scaled}")
    return found
