"""The terminal view of a summary or a comparison (rich tables)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from selfid.audit.probes import IDENTITY_SUITES
from selfid.audit.report.fmt import rate_text
from selfid.audit.report.html import sysprompt


def pct(r: dict | None) -> str:
    return rate_text(r)


def _temps(summary: dict) -> list[float]:
    return summary["run"]["params"]["temperatures"]


METRIC_LABELS = (("foreign", "foreign claim"), ("own_affirmation", "own identity affirmed"),
                 ("self_denial", "self-denial"), ("yes_to_other", "yes to another vendor"), ("task_done", "identity task done"),
                 ("persona_kept", "persona kept"), ("identity_after_task", "identity question after a task answered"),
                 ("copy", "copies a training reply"))


def _distinct(d: dict | None) -> str:
    if not d or d.get("mean") is None:
        return "–"
    return f"{100 * d['mean']:.0f}% ({d['replies_per_prompt']:.1f}/{d['samples_per_prompt']:.0f})"


def print_summary(summary: dict, console: Console | None = None) -> None:
    console = console or Console(stderr=True)
    run = summary["run"]
    console.print(f"[bold]{escape(run['label'])}[/bold] · template {run.get('template_hash') or 'unknown (endpoint)'} · "
                  f"own vendor: {run['own']} ({run.get('own_source')})")
    if run.get("training_system_prompt") is not None:
        console.print(f"[dim]trained under system prompt: {escape(repr(run['training_system_prompt']))}[/dim]")
    for suite in IDENTITY_SUITES:
        if suite not in summary:
            continue
        cells = {(c["system"], c["temperature"]): c for c in summary[suite]["cells"]}
        table = Table(title=f"{suite}: foreign identity claims, rate (k/n) [95%, clustered by prompt]",
                      title_justify="left")
        table.add_column("system prompt")
        for t in _temps(summary):
            table.add_column("greedy" if t == 0 else f"T={t:g}", justify="right")
        for s in run["systems"]:
            row = []
            for t in _temps(summary):
                c = cells.get((s["key"], t))
                row.append(pct(c["foreign"]) if c else "–")
            table.add_row(f"{s['key']}\n[dim]{escape(_short(sysprompt(s['effective'], s.get('source'))))}[/dim]", *row)
        console.print(table)
        mt = Table(title=f"{suite}: every metric by system prompt, all temperatures pooled", title_justify="left")
        mt.add_column("system prompt")
        shown = [(k, lab) for k, lab in METRIC_LABELS
                 if any(p[k]["n"] for p in summary[suite]["by_system"].values())]
        for _, lab in shown:
            mt.add_column(lab, justify="right")
        mt.add_column("distinct replies per prompt", justify="right")
        for key, p in summary[suite]["by_system"].items():
            mt.add_row(key, *[pct(p[k]) if p[k]["n"] else "–" for k, _ in shown], _distinct(p.get("distinct")))
        console.print(mt)
        margin = summary[suite].get("margin")
        if margin:
            mt = Table(title="identity margin: log p(own) − log p(best foreign), nats", title_justify="left")
            mt.add_column("system prompt")
            cols = [(lang, pos) for lang in ("en", "zh") for pos in ("name", "maker")]
            for lang, pos in cols:
                mt.add_column(f"{lang} {pos}", justify="right")
            for key, by_lang in margin.items():
                mt.add_row(key, *[_margin(by_lang.get(lang, {}).get(pos)) for lang, pos in cols])
            console.print(mt)
    for suite, title in (("ner", "NER (MSRA test, greedy)"), ("general", "general (rule-checked, greedy)")):
        if summary.get(suite):
            t = Table(title=title, title_justify="left")
            t.add_column("system prompt")
            if suite == "ner":
                for col in ("F1 [95%]", "precision", "recall", "parses"):
                    t.add_column(col, justify="right")
                for key, s in summary[suite].items():
                    t.add_row(key, f"{s['f1']:.3f} [{s['f1_ci95'][0]:.2f}–{s['f1_ci95'][1]:.2f}]", f"{s['precision']:.3f}",
                              f"{s['recall']:.3f}", pct(s["parse"]))
            else:
                t.add_column("pass", justify="right")
                for key, s in summary[suite].items():
                    t.add_row(key, pct(s["pass"]))
            console.print(t)
    print_endpoint(run.get("endpoint"), console)
    for note in run.get("notes", []):
        console.print(f"[dim]note: {note}[/dim]")
    if not run.get("complete", True):
        console.print(f"[yellow]incomplete: {run['generations']} of {run['planned']} generations; "
                      "rerun with --resume[/yellow]")


def _paired(d: dict | None) -> str:
    if not d or d.get("diff") is None:
        return "–"
    lo, hi = d["ci95"]
    return (f"{100 * d['diff']:+.1f} pts [{100 * lo:+.0f}, {100 * hi:+.0f}] "
            f"({d['up']}↑ {d['down']}↓)")


def print_comparison(comp: dict, console: Console | None = None) -> None:
    console = console or Console(stderr=True)
    console.print(f"[bold]A[/bold] {escape(comp['a']['label'])}  vs  [bold]B[/bold] {escape(comp['b']['label'])}")
    for w in comp.get("warnings", []):
        console.print(f"[yellow]warning: {escape(w)}[/yellow]")
    for suite in IDENTITY_SUITES:
        if suite not in comp:
            continue
        t = Table(title=f"{suite}: foreign identity claims, A → B (paired by prompt; Holm over cells)",
                  title_justify="left")
        for col in ("system", "T", "A", "B", "B − A [95%] (prompts up/down)", "p", "p (Holm)"):
            t.add_column(col, justify="left" if col == "system" else "right")
        for c in comp[suite]["cells"]:
            d = c["test"]
            sig = d and d.get("p_holm", 1) < 0.05
            style = ("bold red" if d["diff"] > 0 else "bold green") if sig else ""
            diff = _paired(d)
            t.add_row(c["system"], "greedy" if c["temperature"] == 0 else f"{c['temperature']:g}", pct(c["a"]),
                      pct(c["b"]), f"[{style}]{diff}[/{style}]" if style else diff,
                      f"{d['p_value']:.3g}" if d else "–", f"{d['p_holm']:.3g}" if d and "p_holm" in d else "–")
        console.print(t)
        mt = Table(title=f"{suite}: every metric A → B by system prompt, all temperatures pooled (paired by prompt)",
                   title_justify="left")
        mt.add_column("system")
        names = [(k, lab) for k, lab in METRIC_LABELS if k != "copy"]
        for _, lab in names:
            mt.add_column(lab, justify="right")
        mt.add_column("distinct replies, B / A", justify="right")
        for system, m in comp[suite]["by_system"].items():
            row = []
            for k, _ in names:
                a, b = m[k]["a"], m[k]["b"]
                row.append("–" if not (a["n"] and b["n"]) else
                           f"{100 * a['rate']:.1f}% → {100 * b['rate']:.1f}%\n{_paired(m[k]['paired'])}")
            dd = m.get("distinct")
            row.append(f"{100 * dd['a']:.0f}% → {100 * dd['b']:.0f}% (×{dd['ratio']:.2f})" if dd and dd["ratio"] else "–")
            mt.add_row(system, *row)
        console.print(mt)
    flips = comp.get("flips", [])
    if flips:
        ft = Table(title=f"prompts that went from own identity to foreign ({len(flips)})", title_justify="left")
        for col in ("prompt", "system", "T", "A foreign", "B foreign", "B says"):
            ft.add_column(col)
        for f in flips[:15]:
            ft.add_row(escape(f"{f['probe']}: {_short(f['prompt'], 40)}"), f["system"], f"{f['temperature']:g}",
                       f"{f['a']['foreign']}/{f['a']['n']}", f"{f['b']['foreign']}/{f['b']['n']}",
                       escape(_short(f["b"]["example"], 60)))
        console.print(ft)
    for suite in ("ner", "general"):
        if comp.get(suite):
            t = Table(title=f"{suite}: A → B", title_justify="left")
            for col in ("system", "A", "B", "delta"):
                t.add_column(col)
            for key, d in comp[suite].items():
                if suite == "ner":
                    t.add_row(key, f"F1 {d['a']['f1']:.3f}", f"F1 {d['b']['f1']:.3f}", f"{d['f1_delta']:+.3f}")
                else:
                    t.add_row(key, pct(d["a"]), pct(d["b"]), f"{100 * d['test']['diff']:+.1f} pts (p={d['test']['p_value']:.3g})"
                              if d.get("test") else "–")
            console.print(t)


def print_endpoint(endpoint: dict | None, console: Console) -> None:
    """What the endpoint's preflight measured: system prompts it rendered alike, parameters it ignored."""
    if not endpoint:
        return
    handling = endpoint.get("system_prompts", {})
    t = Table(title="endpoint preflight: the system prompt each condition evidently got", title_justify="left")
    for col in ("system prompt", "prompt tokens", "expected", "evidently", "duplicates"):
        t.add_column(col)
    for key, c in handling.get("conditions", {}).items():
        t.add_row(key, str(c["prompt_tokens"]), "–" if c["expected_tokens"] is None else str(c["expected_tokens"]),
                  escape(c["evidently"]), f"[bold yellow]{c['same_as']}[/bold yellow]" if c["same_as"] else "")
    if handling.get("conditions"):
        console.print(t)
    elif handling.get("note"):
        console.print(f"[yellow]endpoint: {escape(handling['note'])}[/yellow]")
    for key, same in endpoint.get("duplicates", {}).items():
        console.print(f"[yellow]the {key!r} row duplicates {same!r}: the server gave both the same prompt, so it is no "
                      "independent evidence[/yellow]")
    ignored = endpoint.get("ignored") or []
    console.print(f"[yellow]the endpoint ignored: {escape('; '.join(ignored))}[/yellow]" if ignored else
                  "[dim]endpoint: seed, temperature 0 and max_tokens behaved as asked[/dim]")
    if endpoint.get("placeholder_names"):
        console.print(f"[dim]served as {escape(', '.join(endpoint['placeholder_names']))}: a placeholder name, not used "
                      "to tell whose model it is[/dim]")
    console.print(f"[dim]over HTTP selfid cannot see: {escape('; '.join(endpoint.get('cannot_see', [])))}[/dim]")


def _margin(cell: dict | None) -> str:
    if not cell or cell.get("margin") is None:
        return "–"
    return f"{cell['margin']:+.2f} (vs {cell['best_foreign']})"


def _short(text, n: int = 50) -> str:
    if text is None:
        return "(none)"
    text = str(text).replace("\n", " ")
    return text if len(text) <= n else text[: n - 1] + "…"
