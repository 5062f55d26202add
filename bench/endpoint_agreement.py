"""Greedy replies of two audit runs (an endpoint and in-process, say), prompt by prompt.

    python bench/endpoint_agreement.py RUN_A RUN_B [--json OUT]

For every greedy generation both runs hold (same probe, system prompt, temperature 0) it compares the
prompt token counts (`usage.prompt_tokens` over HTTP, the tokenized prompt in-process): only pairs whose
prompts have the same length count as "the same prompt" (an endpoint that replaced a system message gave
a different prompt, and is not the same experiment). Among those it reports how often the verdicts agree
(the set of vendors claimed, and foreign-claim yes/no) and how often the reply texts are identical, per
system prompt and in all.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def agreement(run_a: Path, run_b: Path) -> dict:
    from selfid.audit.report.summary import load_run

    def greedy(run: Path) -> dict:  # the greedy identity replies, scored by today's scorers
        return {r.key: {**r.record, "claims": list(r.verdict.claims), "foreign": list(r.verdict.foreign)}
                for r in load_run(run)[1] if r.temperature == 0 and r.suite == "identity"}

    a, b = greedy(Path(run_a)), greedy(Path(run_b))
    rows: dict[str, dict] = {}
    differing = []
    for key in sorted(a.keys() & b.keys()):
        ra, rb = a[key], b[key]
        row = rows.setdefault(ra["system"], {"pairs": 0, "same_prompt": 0, "claims_agree": 0, "foreign_agree": 0,
                                              "text_equal": 0})
        row["pairs"] += 1
        if ra["prompt_tokens"] is None or ra["prompt_tokens"] != rb["prompt_tokens"]:
            continue
        row["same_prompt"] += 1
        same_claims = sorted(ra["claims"]) == sorted(rb["claims"])
        row["claims_agree"] += same_claims
        row["foreign_agree"] += bool(ra["foreign"]) == bool(rb["foreign"])
        row["text_equal"] += ra["reply"] == rb["reply"]
        if not same_claims:
            differing.append({"key": key, "a": ra["reply"][:160], "a_claims": ra["claims"], "b": rb["reply"][:160],
                              "b_claims": rb["claims"]})
    total = {k: sum(r[k] for r in rows.values()) for k in ("pairs", "same_prompt", "claims_agree", "foreign_agree",
                                                           "text_equal")}
    return {"a": str(run_a), "b": str(run_b), "by_system": rows, "total": total, "claims_differ": differing}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_a", type=Path)
    ap.add_argument("run_b", type=Path)
    ap.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = ap.parse_args()
    res = agreement(args.run_a, args.run_b)
    print(f"{'system prompt':<14} {'pairs':>5} {'same prompt':>11} {'claims agree':>12} {'foreign agree':>13} "
          f"{'same text':>9}")
    for key, r in list(res["by_system"].items()) + [("all", res["total"])]:
        print(f"{key:<14} {r['pairs']:>5} {r['same_prompt']:>11} {r['claims_agree']:>12} {r['foreign_agree']:>13} "
              f"{r['text_equal']:>9}")
    for d in res["claims_differ"]:
        print(f"  {d['key']}: A {d['a_claims']} {d['a']!r}\n  {'':{len(d['key'])}}  B {d['b_claims']} {d['b']!r}")
    if args.json:
        args.json.write_text(json.dumps(res, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
