"""`selfid gate --plan`: how big a gate must be to catch each threshold, before anything is generated.

From the reference's per-prompt rates (its per-prompt variance) and the grid the user chose, per threshold and
system prompt: the minimum detectable effect (MDE) at the thresholds' power, against the reference as recorded
and with both runs at the chosen grid; the samples per prompt, or the prompts, that detect the threshold; and
the generations one audit at the grid takes, with its time on this machine from a recorded throughput.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from selfid.audit.stats import clustered_rate
from selfid.errors import SelfidError
from selfid.gate import power as pw
from selfid.gate.tallies import Tallies
from selfid.gate.thresholds import IDENTITY, Thresholds

PROMPTS_LIMIT = 100_000
SAMPLES_LIMIT = 1_000


@dataclass(frozen=True)
class Grid:
    """The part of an audit's grid a gate sizes: temperatures, samples at each one above 0, NER sentences."""

    temperatures: tuple[float, ...]
    samples: int
    ner_limit: int | None = None

    @classmethod
    def of(cls, params: dict) -> "Grid":
        return cls(tuple(float(t) for t in params["temperatures"]), int(params["samples"]), params.get("ner_limit"))

    @property
    def sampled(self) -> int:
        """Replies per prompt and system prompt at temperatures above 0 (what distinct replies are counted over)."""
        return sum(t > 0 for t in self.temperatures) * self.samples

    @property
    def replies(self) -> int:
        """Replies per prompt and system prompt: one greedy reply at temperature 0, `samples` at each other."""
        return sum(t == 0 for t in self.temperatures) + self.sampled

    def with_samples(self, samples: int) -> "Grid":
        return Grid(self.temperatures, samples, self.ner_limit)

    def describe(self) -> str:
        temps = " + ".join("greedy" if t == 0 else f"{self.samples} at T={t:g}" for t in self.temperatures)
        ner = f", {self.ner_limit} NER sentences" if self.ner_limit else ""
        return f"({temps}) per prompt and system prompt{ner}"


# Presets for the grid of the audits a gate runs (the reference's probes and system prompts, these sizes).
# `quick`: what one GPU runs in about 10 minutes at 1.5B, reference and candidate both audited, model loading
# included (docs/gate.md has its MDE, computed by this plan on the committed 1.5B base run).
PROFILES = {"quick": {"temperatures": (0.0, 0.7, 1.0, 1.3), "samples": 16, "ner_limit": 2000}}


def profile_grid(recorded: Grid | None, profile: str | None = None, samples: int | None = None,
                 temperatures: list[float] | None = None) -> Grid:
    """The grid a gate runs: the reference run's (`recorded`), or a profile's, with --samples / --temperatures on top."""
    if profile in (None, "reference"):
        if recorded is None:
            raise SelfidError("there is no reference run to take the grid from: choose --profile "
                              f"({', '.join(PROFILES)})")
        grid = recorded
    elif profile in PROFILES:
        p = PROFILES[profile]
        grid = Grid(tuple(p["temperatures"]), p["samples"], p["ner_limit"])
    else:
        raise SelfidError(f"unknown --profile {profile!r}: use reference (the reference run's grid) or "
                          f"{', '.join(PROFILES)}")
    if samples is not None:
        if samples < 1:
            raise SelfidError("--samples must be at least 1")
        grid = grid.with_samples(samples)
    if temperatures is not None:
        if not temperatures or any(t < 0 or t > 2 for t in temperatures):
            raise SelfidError("--temperatures must be values in [0, 2] (0 is greedy)")
        grid = Grid(tuple(temperatures), grid.samples, grid.ner_limit)
    return grid


@dataclass(frozen=True)
class Throughput:
    size: str  # model size, as "0.5B"
    device: str  # "gpu" or "cpu"
    tokens_per_s: float
    source: str


# Recorded audit throughput (new tokens per second, whole audits: generation, scoring, log, report).
THROUGHPUT = (
    Throughput("1.5B", "gpu", 260_129 / 59, "the 1.5B held-out audit of `pairs` alone on one H200, CUDA-graph decoding: "
               "10,828 replies, 260,129 new tokens in 59 s (docs/benchmarks.md, held-out study, 2026-11-29)"),
    Throughput("0.5B", "gpu", 212_510 / 29, "the 0.5B held-out audit of `combo` alone on one H200, eager decoding: "
               "10,828 replies, 212,510 new tokens in 29 s (docs/benchmarks.md, held-out study, 2026-11-28)"),
    Throughput("0.5B", "cpu", 3_600 / 138, "the demo's tuned audit on the 2-core CPU, fp32: about 3,600 new tokens in "
               "138 s with its model load (docs/benchmarks.md, the demo, 2026-11-28)"),
)


def model_size(target: dict) -> str | None:
    """The model's size as "0.5B" from an audit's target (the embedded models, or a size in the model's name)."""
    model = str(target.get("model") or "")
    if model == "embedded":
        return "0.5B"
    if model == "embedded-1.5b":
        return "1.5B"
    found = re.search(r"(?<![\d.])(\d+(?:\.\d+)?)[bB](?![a-zA-Z])", f"{model} {target.get('path') or ''}")
    return f"{float(found.group(1)):g}B" if found else None


def this_device() -> str:
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def estimate_seconds(generations: int, reply_tokens: float | None, size: str | None, device: str) -> dict:
    rate = next((r for r in THROUGHPUT if r.size == size and r.device == device), None)
    if rate is None or not reply_tokens:
        why = ("the reference's replies record no token counts" if not reply_tokens else
               f"no throughput is recorded for a {size or 'model of unknown size'} on a {device.upper()}")
        return {"seconds": None, "why": why}
    return {"seconds": generations * reply_tokens / rate.tokens_per_s, "tokens_per_s": rate.tokens_per_s,
            "source": rate.source, "device": device, "size": size}


def _cells(reference: Tallies, thresholds: Thresholds) -> list[tuple]:
    systems = [s for s in reference.systems if thresholds.systems is None or s in thresholds.systems]
    out = []
    for metric in IDENTITY:
        limit = thresholds.limit(metric.name)
        for system in systems:
            tallies = reference.rates.get(metric.name, {}).get(system)
            if limit is not None and tallies:
                out.append((metric, system, limit, tallies))
    return out


def _rate_cell(metric, tallies: dict, limit: float, grid: Grid, alpha: float, target: float) -> dict:
    kappa = pw.interaction(metric.name)
    per_prompt = (lambda g: g.sampled) if metric.name == "distinct_replies" else (lambda g: g.replies)
    n = per_prompt(grid)
    summary = clustered_rate([tuple(kn) for kn in tallies.values()])
    m = summary["prompts"]
    out = {"metric": metric.name, "label": metric.label, "system": None, "limit": limit, "prompts": m,
           "rate": summary["rate"], "deff": summary["deff"], "interaction": kappa,
           "replies_recorded": max(b for _, b in tallies.values()), "replies": n}
    if n < 1:
        return {**out, "mde_recorded": None, "mde_both": None, "samples_needed": None, "prompts_needed": None,
                "why": "no sampled replies at this grid"}
    if pw.spread([k / b for k, b in tallies.values() if b], limit, metric.worse) is None:
        return {**out, "mde_recorded": None, "mde_both": None, "samples_needed": 1, "prompts_needed": None,
                "why": "the reference's rates leave no room for a change this size: the check passes"}
    out["mde_recorded"] = pw.mde(tallies, metric.worse, alpha, target, n, kappa)
    out["mde_both"] = pw.mde(tallies, metric.worse, alpha, target, n, kappa, replies_ref=n)

    def detects(g: Grid) -> bool:
        k = per_prompt(g)
        return k >= 1 and pw.rate_power(tallies, metric.worse, limit, alpha, k, kappa, replies_ref=k) >= target

    out["samples_needed"] = pw.smallest(lambda s: detects(grid.with_samples(s)), 1, SAMPLES_LIMIT)
    out["prompts_needed"] = pw.smallest(
        lambda mm: pw.rate_power(tallies, metric.worse, limit, alpha, n, kappa, replies_ref=n, prompts=mm) >= target,
        2, PROMPTS_LIMIT)
    return out


def _ner_cell(sentences: dict, limit: float, grid: Grid, alpha: float, target: float) -> dict:
    """NER F1 has one greedy reply per sentence: only more sentences help. The paired difference's standard error is
    taken as the reference's own (jackknife): on the committed runs, plain LoRA vs the recommended arm at 0.5B and
    1.5B, the paired one was 0.82 to 1.24 times one run's own (sentences disagree with each other more than two
    fine-tunes disagree on one sentence, so pairing helps little)."""
    n = len(sentences)
    se_one = pw.jackknife_f1_se([tuple(c) for c in sentences.values()])
    wanted = grid.ner_limit or n

    def mde(k: int) -> float:
        return (pw.critical(alpha, k - 1) + pw.quantile(target, k - 1)) * se_one * math.sqrt(n / k)

    needed = pw.smallest(lambda k: mde(k) <= limit, 2, PROMPTS_LIMIT)
    return {"metric": "ner_f1", "label": "NER F1", "limit": limit, "prompts": n, "rate": None, "deff": None,
            "replies": 1, "mde_recorded": mde(min(n, wanted)), "mde_both": mde(wanted), "samples_needed": None,
            "prompts_needed": needed}


def plan(reference: Tallies, thresholds: Thresholds, grid: Grid, device: str | None = None,
         size: str | None = None) -> dict:
    """Every threshold's MDE and needed size at `grid`, the grid that detects them all, and its time."""
    device = device or this_device()
    rate_cells = _cells(reference, thresholds)
    ner_systems = [s for s in reference.ner if thresholds.systems is None or s in thresholds.systems]
    ner_limit = thresholds.limit("ner_f1")
    count = len(rate_cells) + (len(ner_systems) if ner_limit is not None else 0)
    count += thresholds.task_command is not None
    alpha = thresholds.alpha / max(1, count)  # Holm's first step: what one regressed cell must clear
    cells = []
    for metric, system, limit, tallies in rate_cells:
        cells.append({**_rate_cell(metric, tallies, limit, grid, alpha, thresholds.power), "system": system})
    if ner_limit is not None:
        for system in ner_systems:
            cells.append({**_ner_cell(reference.ner[system], ner_limit, grid, alpha, thresholds.power),
                          "system": system})
    needs = [c["samples_needed"] for c in cells if c["metric"] != "ner_f1"]
    enough = max((s for s in needs if s is not None), default=None)
    short = [c for c in cells if c["metric"] != "ner_f1" and c["samples_needed"] is None and not c.get("why")]
    prompts_by_system = {s: max((len(t) for by in reference.rates.values() for sy, t in by.items() if sy == s),
                                default=0) for s in reference.systems}
    identity_prompts = sum(prompts_by_system.values())
    ner_sentences = sum(grid.ner_limit or len(v) for v in reference.ner.values())

    def generations(g: Grid) -> int:
        return identity_prompts * g.replies + ner_sentences

    size = size or model_size(reference.target)
    chosen = {"grid": grid.describe(), "generations": generations(grid),
              "time": estimate_seconds(generations(grid), reference.reply_tokens, size, device)}
    settle = None
    if enough is not None:
        g = grid.with_samples(max(enough, 1))
        settle = {"samples": g.samples, "grid": g.describe(), "generations": generations(g),
                  "time": estimate_seconds(generations(g), reference.reply_tokens, size, device)}
    return {"reference": reference.source, "label": reference.label, "alpha": thresholds.alpha,
            "power": thresholds.power, "cells_tested": count, "alpha_per_cell": alpha, "grid": chosen,
            "recorded_grid": Grid.of(reference.grid).describe(), "cells": cells, "detects_all": settle,
            "samples_cannot": [f"{c['label']} ({c['system']})" for c in short]}


def print_plan(result: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()

    def pts(x):
        return "–" if x is None else f"{100 * x:.1f}"

    table = Table(title=f"gate plan: {result['label']} ({result['reference']}); one-sided alpha "
                        f"{result['alpha']:g} over {result['cells_tested']} cells (Holm), power {result['power']:.0%}")
    for col in ("metric", "system prompt", "threshold", "reference", "prompts", "deff", "MDE: this grid, "
                "reference as recorded", "MDE: both runs at this grid", "samples/temperature to detect it",
                "prompts to detect it"):
        table.add_column(col)
    for c in result["cells"]:
        rate = "–" if c["rate"] is None else f"{100 * c['rate']:.1f}%"
        deff = "–" if c["deff"] is None else f"{c['deff']:.1f}"
        prompts = c["prompts_needed"]
        more = "–" if prompts is None else (f"{prompts}" + (" (more than the set has)" if prompts > c["prompts"] else ""))
        table.add_row(c["label"], c["system"], pts(c["limit"]), rate, str(c["prompts"]), deff, pts(c["mde_recorded"]),
                      pts(c["mde_both"]), "–" if c["samples_needed"] is None else str(c["samples_needed"]), more)
    console.print(table)
    for c in result["cells"]:
        if c.get("why"):
            console.print(f"{c['label']} ({c['system']}): {c['why']}", markup=False, highlight=False)
    console.print("Effects in percentage points (F1 points for NER). deff: the reference's design effect (how much "
                  "one prompt's samples agree); pairing by prompt removes it, leaving each reply's own noise and how "
                  "far a fine-tuned model's prompts move apart (selfid.gate.power).")
    grid = result["grid"]
    console.print(f"This grid: {grid['grid']}: {grid['generations']:,} generations per audit; {_time(grid['time'])}")
    if result["detects_all"]:
        d = result["detects_all"]
        console.print(f"Detects every threshold that samples can: {d['grid']}, {d['generations']:,} generations per "
                      f"audit; {_time(d['time'])}")
    if result["samples_cannot"]:
        console.print("More samples alone cannot detect: " + "; ".join(result["samples_cannot"])
                      + " (more prompts, a larger threshold, or fewer cells would)")


def _time(t: dict) -> str:
    if t.get("seconds") is None:
        return f"no time estimate: {t['why']}"
    minutes = t["seconds"] / 60
    span = f"{minutes:.1f} minutes" if minutes < 120 else f"{minutes / 60:.1f} hours"
    return (f"about {span} of generation per audit on this machine's {t['device'].upper()}, model loading aside, at "
            f"{t['tokens_per_s']:,.0f} new tokens/s: {t['source']}")
