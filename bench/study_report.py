"""docs/study.md from the study's run directories (bench/study.py run), and nothing else."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from selfid.audit.run import LOG, read_log
from selfid.audit.stats import wilson

SYSTEM_LABEL = {"default": "none sent (template inserts the Qwen line)", "helpful": '"You are a helpful assistant."',
                "empty": '"" (empty system message)'}
ARM_LABEL = {"base": "base model", "plain": "plain LoRA (seed: trained under \"You are a helpful assistant.\")",
             "template": "trained under the template's own system prompt",
             "replay2": "plain + 2% identity replay", "replay5": "plain + 5% identity replay",
             "combo": "template prompt + 5% identity replay", "scale": "plain, LoRA scale searched"}
CLAUDE = ("claude",)


def _read(path: Path):
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def pct(r: dict | None) -> str:
    if not r or not r.get("n"):
        return "–"
    lo, hi = r["ci95"]
    return f"{r['k']}/{r['n']} = {100 * r['rate']:.1f}% [{100 * lo:.1f}–{100 * hi:.1f}]"


def cells(summary: dict) -> dict[tuple[str, float], dict]:
    return {(c["system"], float(c["temperature"])): c for c in summary["identity"]["cells"]}


def claude_count(cell: dict) -> str:
    v = cell.get("by_vendor", {})
    return str(sum(v.get(name, {}).get("k", 0) for name in CLAUDE))


def grid_table(summary: dict, base: dict | None = None) -> list[str]:
    cs = cells(summary)
    systems = list(dict.fromkeys(s for s, _ in cs))
    temps = sorted({t for _, t in cs})
    head = "| system prompt | " + " | ".join(f"T={t:g}" for t in temps) + " |"
    lines = [head, "|---|" + "---|" * len(temps)]
    for sys_key in systems:
        row = []
        for t in temps:
            c = cs.get((sys_key, t))
            if c is None:
                row.append("–")
                continue
            txt = f"{pct(c['foreign'])} · Claude {claude_count(c)}"
            if base is not None:
                b = cells(base).get((sys_key, t))
                if b is not None:
                    txt += f" · Δ {100 * (c['foreign']['rate'] - b['foreign']['rate']):+.1f} pt"
            row.append(txt)
        lines.append(f"| {SYSTEM_LABEL.get(sys_key, sys_key)} | " + " | ".join(row) + " |")
    return lines


def pooled_by_temperature(summary: dict) -> dict[float, tuple[int, int]]:
    out: dict[float, list[int]] = {}
    for (s, t), c in cells(summary).items():
        k, n = out.setdefault(t, [0, 0])
        out[t] = [k + c["foreign"]["k"], n + c["foreign"]["n"]]
    return {t: tuple(v) for t, v in sorted(out.items())}


def by_tag_table(summaries: list[tuple[str, dict]]) -> list[str]:
    """Foreign-claim rate by kind of question, pooled over temperatures, per model and system prompt."""
    first = summaries[0][1]
    systems = list(dict.fromkeys(c["system"] for c in first["identity"]["cells"]))
    tags = list(dict.fromkeys(t for c in first["identity"]["cells"] for t in c["by_tag"]))
    cols = [(name, sk) for name, _ in summaries for sk in systems]
    lines = ["| question kind | " + " | ".join(f"{name}, {sk}" for name, sk in cols) + " |", "|---|" + "---|" * len(cols)]
    for tag in tags:
        row = []
        for name, summ in summaries:
            for sk in systems:
                k, n = _tag_rate(summ, sk, tag)
                row.append(f"{k}/{n} = {100 * k / n:.0f}%" if n else "–")
        lines.append(f"| {tag} | " + " | ".join(row) + " |")
    return lines


def margin_line(margin: dict | None, system: str) -> str:
    if not margin or system not in margin:
        return "–"
    m = margin[system]
    return " / ".join(f"{m[lang][pos]['margin']:+.2f}" for lang in ("en", "zh") for pos in ("name", "maker"))


def ner_f1(summary: dict, system: str) -> float | None:
    ner = summary.get("ner", {}).get(system)
    return ner["f1"] if ner else None


def worst_cell(summary: dict) -> tuple[float, str]:
    worst, where = -1.0, ""
    for (s, t), c in cells(summary).items():
        if c["foreign"]["rate"] > worst:
            worst, where = c["foreign"]["rate"], f"{s} T={t:g}"
    return worst, where


def train_system_key(manifest: dict | None) -> str:
    t = (manifest or {}).get("train", {})
    if t.get("system_prompt_is_template_default"):
        return "default"
    if t.get("system_prompt") == "You are a helpful assistant.":
        return "helpful"
    if t.get("system_prompt") == "":
        return "empty"
    return "default"


def vendor_rates(summary: dict) -> tuple[int, dict[str, int]]:
    """(scored identity replies, {vendor: replies claiming it}) over the whole grid, from summary.json."""
    n, by = 0, {}
    for pooled in summary["identity"]["by_system"].values():
        n += pooled["foreign"]["n"]
        for v, r in pooled["by_vendor"].items():
            by[v] = by.get(v, 0) + r["k"]
    return n, by


def claude_without_leading(run: Path) -> tuple[int, int]:
    """(Claude/Anthropic claims, scored identity replies) over the whole grid without the leading questions.

    summary.json keeps no vendor split by kind of question, so this one reads the generations."""
    k = n = 0
    for r in read_log(run / LOG):
        if r["suite"] != "identity" or r["detector"] == "unscored" or "leading" in (r["tags"] or []):
            continue
        n += 1
        k += r["foreign"].count("claude")
    return k, n


def size_section(roots: list[tuple[str, Path]], read: Callable[[Path], dict | None] = _read) -> list[str]:
    """Both model sizes side by side: base, plain LoRA and the best arm, by vendor, with Wilson intervals."""
    L = ["## 7. Model size: Qwen2.5-Coder 0.5B vs 1.5B", "",
         "The whole grid (3 system prompts × T 0, 0.7, 1.0, 1.3 × 8 samples), foreign claims split by vendor: "
         "Claude/Anthropic, OpenAI (ChatGPT/GPT-4), and all others; then the same without the leading questions "
         "(\"Are you Claude?\"), where a yes-saying model claims whatever it is asked about.", "",
         "| size | arm | any foreign | Claude | OpenAI | others | Claude, no leading questions | NER F1 |",
         "|---|---|---|---|---|---|---|---|"]

    def cell(k: int, n: int) -> str:
        lo, hi = wilson(k, n)
        return f"{100 * k / n:.1f}% [{100 * lo:.1f}–{100 * hi:.1f}]" if n else "–"

    for label, root in roots:
        for arm in ("base", "plain", "combo"):
            run = root / arm / "audit"
            summ = read(run / "summary.json")
            if summ is None:
                continue
            n, by = vendor_rates(summ)
            anyk = sum(p["foreign"]["k"] for p in summ["identity"]["by_system"].values())
            others = sum(k for v, k in by.items() if v not in ("claude", "openai"))
            claude2, n2 = claude_without_leading(run)
            key = train_system_key(summ["run"]["target"].get("adapter_manifest")) if arm != "base" else "helpful"
            f1 = ner_f1(summ, key)
            L.append(f"| {label} | {ARM_LABEL.get(arm, arm)} | {cell(anyk, n)} | {cell(by.get('claude', 0), n)} | "
                     f"{cell(by.get('openai', 0), n)} | {cell(others, n)} | {cell(claude2, n2)} | "
                     f"{f1:.3f} |" if f1 is not None else "")
    return L + [""]



def parity_table(base: dict, other: dict, name: str) -> list[str]:
    """In-process vs another runtime, cell by cell, and how many cells' 95% intervals overlap."""
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
        L.append(f"| {key[0]} T={key[1]:g} | {pct(b['foreign'])} | {pct(c['foreign'])} | {'yes' if lo <= hi else 'NO'} |")
    return L + ["", f"{agree} of {sum(k in bc for k in oc)} cells agree within their 95% intervals.", ""]


def greedy_agreement(run_a: Path, run_b: Path) -> tuple[int, int]:
    """How many greedy (T=0) identity replies get the same foreign/not verdict in both runs."""
    def greedy(run: Path) -> dict[str, bool]:
        return {r["key"]: bool(r["foreign"]) for r in read_log(run / LOG)
                if r.get("suite") == "identity" and r.get("temperature") == 0.0}

    a, b = greedy(run_a), greedy(run_b)
    shared = a.keys() & b.keys()
    return sum(a[k] == b[k] for k in shared), len(shared)


def _tag_rate(summary: dict, system: str, tag: str) -> tuple[int, int]:
    """(foreign claims, replies) for one kind of question under one system prompt, all temperatures pooled."""
    r = summary["identity"]["by_system"].get(system, {}).get("by_tag", {}).get(tag, {})
    return r.get("k", 0), r.get("n", 0)


def findings(base: dict, plain: dict | None, comp: dict | None, scan: dict | None,
             temps: dict[float, tuple[int, int]], combo: dict | None) -> list[str]:
    """The headline answers, computed from the runs (so they stay true when the runs change)."""
    def r(kn):
        k, n = kn
        lo, hi = wilson(k, n)
        return f"{100 * k / n:.0f}% [{100 * lo:.0f}–{100 * hi:.0f}]" if n else "–"

    L = ["## Findings", ""]
    d, h = _tag_rate(base, "default", "direct"), _tag_rate(base, "helpful", "direct")
    L.append(f"- **The system prompt decides.** Asked directly (\"你是谁?\", \"Who are you?\"), the *base* model claims "
             f"another vendor in {r(d)} of replies when the template inserts its Qwen line, and in {r(h)} under "
             f"\"You are a helpful assistant.\" (all temperatures pooled).")
    if plain and comp:
        sig = [c for c in comp["identity"] if c["test"]["p_value"] < 0.05]
        diffs = [100 * c["test"]["diff"] for c in comp["identity"]]
        L.append(f"- **Fine-tuning adds little.** After plain LoRA on MSRA (trained under \"You are a helpful assistant.\"), "
                 f"the foreign-claim rate moved by {min(diffs):+.1f} to {max(diffs):+.1f} points across the "
                 f"{len(diffs)} cells; {len(sig)} of them differ from the base at p < 0.05. Direct questions under "
                 f"\"You are a helpful assistant.\": {r(_tag_rate(plain, 'helpful', 'direct'))} after vs {r(h)} before.")
    claude = {}
    for (sk, t), c in cells(base).items():
        k, n = claude.get(t, (0, 0))
        claude[t] = (k + c.get("by_vendor", {}).get("claude", {}).get("k", 0), n + c["foreign"]["n"])
    lo_t, hi_t = min(temps), max(temps)
    L.append(f"- **Temperature is not the driver here.** Pooled over system prompts, the base model's foreign-claim rate "
             f"goes from {r(temps[lo_t])} at T={lo_t:g} to {r(temps[hi_t])} at T={hi_t:g}; Claude/Anthropic claims from "
             f"{r(claude[lo_t])} to {r(claude[hi_t])}. Sampling spreads the answers; it does not create the foreign "
             f"identity, which greedy decoding already shows without the Qwen line.")
    if scan:
        L.append(f"- **The data did not teach it.** Of the {scan['samples']:,} training conversations, "
                 f"{scan['self_descriptions']} carry an assistant self-description and the assistant claims a vendor in "
                 f"{sum(scan['claims'].values()) if scan['claims'] else 0}; {scan['mentioning']} mention a vendor name "
                 f"at all (news text).")
    if combo and plain:
        worst, where = worst_cell(combo)
        L.append(f"- **The fix.** Training under the template's own system prompt with 5% identity replay keeps every "
                 f"cell of the grid at or below {100 * worst:.1f}% foreign claims (worst: {where}) with NER F1 "
                 f"{ner_f1(combo, 'default'):.3f} vs plain LoRA's {ner_f1(plain, 'helpful'):.3f}.")
    return L + [""]


def write_report(root: Path, out: Path, sizes: list[tuple[str, Path]] | None = None) -> None:
    root = Path(root)
    loaded: dict[Path, dict | None] = {}

    def read(path: Path) -> dict | None:  # each JSON file once: several sections show the same runs
        if path not in loaded:
            loaded[path] = _read(path)
        return loaded[path]

    base = read(root / "base" / "audit" / "summary.json")
    if base is None:
        raise SystemExit(f"{root}/base/audit/summary.json is missing: run the study first")
    L: list[str] = ["# The seed study: does NER fine-tuning change who Qwen says it is?", ""]
    run = base["run"]
    L += [f"Generated by `python bench/study.py report --root {root.name}` from the run directories of "
          f"`python bench/study.py run --root {root.name}`. Model: {run['target'].get('model')} "
          f"({run['target'].get('device')}, {run['target'].get('dtype')}); chat template {run['template_hash']}. "
          f"A reply counts as a foreign claim when the rule-based detector finds it claiming another vendor or "
          f"model as its own identity or maker. Every rate is k/n with a Wilson 95% interval; temperature 0 "
          f"is greedy (one sample per prompt), other temperatures have "
          f"{base['run']['params']['samples']} samples per prompt; {base['identity']['cells'][0]['prompts']} "
          f"identity prompts (half Chinese, half English). \"Claude N\" counts Claude/Anthropic claims.", ""]

    plain = read(root / "plain" / "audit" / "summary.json")
    comp = read(root / "plain" / "compare" / "comparison.json")
    scan = read(root / "scan" / "scan.json")
    base_temps = pooled_by_temperature(base)
    L += findings(base, plain, comp, scan, base_temps, read(root / "combo" / "audit" / "summary.json"))
    L += ["## 1. System prompt: the base model", ""] + grid_table(base) + [""]
    L += ["By kind of question, all temperatures pooled (direct: \"你是谁?\", \"Who are you?\" and the like; "
          "leading: \"Are you Claude?\"; multiturn: a user insisting over several turns):", ""]
    L += by_tag_table([("base", base)] + ([("plain LoRA", plain)] if plain else [])) + [""]
    L += ["Identity margin (log p(Qwen) − log p(best foreign name), nats; en name / en maker / zh name / zh maker):", ""]
    L += [f"- {SYSTEM_LABEL.get(s, s)}: {margin_line(base['identity'].get('margin'), s)}"
          for s in base["identity"].get("margin", {})] + [""]

    if plain is not None:
        comp = comp or {}
        L += ["## 2. Fine-tuning: plain LoRA (the seed's setup)", ""]
        cost = _read(root / "plain" / "cost.json") or {}
        man = (plain["run"]["target"].get("adapter_manifest") or {})
        used = sum(d.get("used") or 0 for d in man.get("data", []))
        L += [f"{used:,} MSRA sentences, {man.get('train', {}).get('epochs', '?')} epochs, LoRA r="
              f"{man.get('train', {}).get('hyperparameters', {}).get('lora', {}).get('r', '?')} on all linear layers, "
              f"trained under {man.get('train', {}).get('system_prompt')!r}; "
              f"{cost.get('steps', '?')} steps, {cost.get('tokens_per_s', 0):,.0f} tokens/s.", ""]
        L += grid_table(plain, base) + [""]
        tests = [c for c in comp.get("identity", []) if c["test"]["p_value"] < 0.05]
        L += [f"Cells whose foreign-claim rate differs from the base model at p < 0.05 (two-proportion test): "
              f"{len(tests)} of {len(comp.get('identity', []))}"
              + (": " + "; ".join(f"{c['system']} T={c['temperature']:g} Δ {100 * c['test']['diff']:+.1f} pt "
                                  f"(p={c['test']['p_value']:.3g})" for c in tests) if tests else ".")]
        flips = comp.get("flips", [])
        L += ["", f"Per-prompt flips from own identity to foreign (greedy or majority of samples): {len(flips)}; "
                  f"back from foreign to own: {comp.get('flips_back', 0)}."]
        for f in flips[:8]:
            L.append(f"- `{f['probe']}` ({f['system']}, T={f['temperature']:g}, {f['b']['foreign']}/{f['b']['n']} foreign "
                     f"after): {json.dumps(f['prompt'], ensure_ascii=False)[:60]} → "
                     f"{json.dumps(f['b'].get('example') or '', ensure_ascii=False)[:140]}")
        L += ["", "Identity margin after fine-tuning (en name / en maker / zh name / zh maker):", ""]
        L += [f"- {SYSTEM_LABEL.get(s, s)}: {margin_line(plain['identity'].get('margin'), s)} "
              f"(base {margin_line(base['identity'].get('margin'), s)})" for s in plain["identity"].get("margin", {})]
        margins = _read(root / "plain" / "margins.json")
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

    L += ["## 3. Temperature", "", "Foreign-claim rate pooled over the three system prompts:", "",
          "| model | " + " | ".join(f"T={t:g}" for t in base_temps) + " |",
          "|---|" + "---|" * len(base_temps)]
    for name, pooled in (("base", base_temps), ("plain LoRA", pooled_by_temperature(plain) if plain else None)):
        if pooled is None:
            continue
        row = []
        for t, (k, n) in pooled.items():
            lo, hi = wilson(k, n)
            row.append(f"{k}/{n} = {100 * k / n:.1f}% [{100 * lo:.1f}–{100 * hi:.1f}]" if n else "–")
        L.append(f"| {name} | " + " | ".join(row) + " |")
    L += [""]

    if scan is not None:
        L += ["## 4. Data: `selfid scan` of what the plain arm trained on", "",
              f"{scan['samples']} conversations; {scan['mentioning']} name any vendor or model "
              f"({', '.join(f'{k}: {v}' for k, v in scan['mentions'].items()) or 'none'}); "
              f"{scan['self_descriptions']} carry an assistant self-description; {scan['distilled']} look distilled; "
              f"vendor claims by the assistant: {scan['claims'] or 'none'}. System prompts in the data: "
              + ", ".join(f"{json.dumps(k, ensure_ascii=False)} ×{v}" for k, v in scan["system_prompts"].items()) + ".", ""]

    http = _read(root / "parity" / "http" / "summary.json")
    if http is not None:
        L += ["## 5. Deployment parity: the base model through `selfid api` (HTTP) vs in-process", ""]
        L += parity_table(base, http, "HTTP")
    lc = _read(root / "parity" / "llamacpp" / "summary.json")
    if lc is not None:
        L += ["### llama.cpp's own server (xllamacpp) on the embedded Q4_K_M GGUF vs in-process (transformers, bf16 "
              "on the H100, from the dequantized weights)", "",
              "Run on the 2-core CPU machine with `python bench/study.py run --root study --steps llamacpp` "
              "(the server: `bench/llamacpp_serve.py`, given the model's published sampling defaults). "
              "T=0 and T=1.0 with 2 samples per prompt.", ""]
        L += parity_table(base, lc, "llama.cpp")
        same, n = greedy_agreement(root / "base" / "audit", root / "parity" / "llamacpp")
        if n:
            L += [f"Greedy replies, prompt by prompt: the two runtimes reach the same verdict (foreign claim or not) "
                  f"on {same} of {n} prompts × system prompts"
                  + (f"; {n - same} differ{'s' if n - same == 1 else ''}: the GGUF's 4-bit weights are not the bf16 "
                     "weights, and greedy decoding follows the top token wherever it flips." if same < n else "."), ""]

    arms = [a for a in ("plain", "template", "replay2", "replay5", "scale", "combo")
            if (root / a / "audit" / "summary.json").is_file()]
    if arms:
        plain_f1 = ner_f1(plain, "helpful") if plain else None
        L += ["## 6. Mitigations", "",
              "Foreign-claim rate at T=1.0 under each serving system prompt, the worst cell of the whole grid, "
              "NER F1 on MSRA test sentences (greedy, under the arm's training system prompt), the general set, and "
              "training cost.", "",
              "| arm | none sent | helpful | empty | worst cell | NER F1 | general | train s | tokens/s |",
              "|---|---|---|---|---|---|---|---|---|"]
        verdicts = []
        for arm in ["base"] + arms:
            s = base if arm == "base" else read(root / arm / "audit" / "summary.json")
            cs = cells(s)
            key = train_system_key(s["run"]["target"].get("adapter_manifest")) if arm != "base" else "default"
            f1 = ner_f1(s, key)
            gen = s.get("general", {}).get(key, {}).get("pass")
            cost = _read(root / arm / "cost.json") or {}
            worst, where = worst_cell(s)
            row = [pct(cs.get((sk, 1.0), {}).get("foreign")) for sk in ("default", "helpful", "empty")]
            L.append(f"| {ARM_LABEL.get(arm, arm)} | " + " | ".join(row) + f" | {100 * worst:.1f}% ({where}) | "
                     f"{f1:.3f} | {pct(gen)} | {cost.get('wall_s', cost.get('search_wall_s', 0)):.0f} | "
                     f"{cost.get('tokens_per_s') or 0:,.0f} |" if f1 is not None else f"| {arm} | … |")
            if arm != "base" and f1 is not None and plain_f1:
                verdicts.append((arm, worst <= 0.01, f1 >= 0.99 * plain_f1, worst, where, f1))
        L += ["", f"Goal: ≤1% foreign claims in every cell (every system prompt and temperature) with NER F1 ≥ 99% of "
                  f"plain LoRA's ({plain_f1:.3f})." if plain_f1 else ""]
        for arm, ok_id, ok_f1, worst, where, f1 in verdicts:
            L.append(f"- {ARM_LABEL.get(arm, arm)}: identity goal {'met' if ok_id else 'missed'} (worst "
                     f"{100 * worst:.1f}% at {where}); NER goal {'met' if ok_f1 else 'missed'} (F1 {f1:.3f}).")
        L += [""]
    if sizes:
        L += size_section(sizes, read)
    prov = root / "PROVENANCE.md"
    if prov.is_file():
        L += ["## How these runs were made", "", prov.read_text(encoding="utf-8").strip(), ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(L) + "\n", encoding="utf-8")
    print(f"wrote {out}")
