"""Reports and comparison: per-cell tests, flips, task deltas, the terminal table, and report.html rendered offline
in headless Chromium."""

import io
import json

import pytest
from rich.console import Console
from typer.testing import CliRunner

from selfid.audit.compare import compare
from selfid.audit.report import print_comparison, print_summary
from selfid.audit.run import AuditParams, audit_systems, run_audit
from tests.audit_helpers import ScriptedBackend, write_probes

IDS = ["en-direct-01", "zh-direct-01", "en-maker-01", "zh-name-01"]


def base_reply(it):
    if it.suite == "general":
        return "OK"
    return "I am Qwen, created by Alibaba Cloud." if it.probe.lang == "en" else "我是通义千问，由阿里云开发。"


def tuned_reply(it):
    if it.suite == "general":
        return "Sure thing"
    if it.system == "helpful" and it.probe.id != "zh-name-01":
        return "I am ChatGPT, an AI language model created by OpenAI."
    return base_reply(it)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    probes = write_probes(root / "p.jsonl", IDS)
    p = AuditParams(suites=["identity", "general"], systems=audit_systems(["template,helpful"]), temperatures=[0.0, 0.7],
                    samples=8, max_new_tokens=64, ner_limit=1, own="qwen", identity_probes=str(probes))
    run_audit(ScriptedBackend(base_reply, model="base-qwen"), p, root / "base", show_progress=False)
    run_audit(ScriptedBackend(tuned_reply, model="tuned-qwen"), p, root / "tuned", show_progress=False)
    comp = compare(root / "base", root / "tuned", root / "cmp")
    return root, comp


def test_comparison_pairs_each_cell_by_prompt_and_finds_the_flipped_prompts(runs):
    root, comp = runs
    cells = {(c["system"], c["temperature"]): c for c in comp["identity"]["cells"]}
    hot = cells[("helpful", 0.7)]
    assert (hot["a"]["k"], hot["a"]["n"], hot["b"]["k"], hot["b"]["n"]) == (0, 32, 24, 32)
    t = hot["test"]
    assert t["diff"] == pytest.approx(0.75) and (t["up"], t["down"], t["equal"], t["prompts"]) == (3, 0, 1, 4)
    # three prompts up, none down: the exact signed-rank p of 3 of 3 is 0.25; 32 replies of 4 prompts are no more
    assert t["p_value"] == pytest.approx(0.25) and t["p_holm"] >= t["p_value"]
    assert cells[("template", 0.7)]["test"]["diff"] == 0 and cells[("template", 0.7)]["test"]["p_value"] == 1
    # the rate's interval is clustered: 3 prompts all foreign and 1 never is far from 32 independent draws
    assert hot["b"]["deff"] > 4 and hot["b"]["ci95"][1] - hot["b"]["ci95"][0] > 0.4
    own = hot["metrics"]["own_affirmation"]
    assert own["a"]["rate"] == 1 and own["b"]["k"] == 8 and own["paired"]["down"] == 3
    pooled = comp["identity"]["by_system"]["helpful"]["foreign"]["paired"]
    assert pooled["diff"] == pytest.approx(0.75) and pooled["up"] == 3
    flipped = {(f["probe"], f["system"], f["temperature"]) for f in comp["flips"]}
    assert flipped == {(i, "helpful", t) for i in IDS if i != "zh-name-01" for t in (0.0, 0.7)}
    assert all("ChatGPT" in f["b"]["example"] for f in comp["flips"]) and comp["flips_back"] == 0
    g = comp["general"]["template"]
    assert g["a"]["k"] == 1 and g["b"]["k"] == 0 and g["newly_failed"] == ["en-format-01"]
    assert json.loads((root / "cmp" / "comparison.json").read_text())["flips"] == comp["flips"]


def test_terminal_tables_show_rates_with_n_and_intervals(runs):
    from selfid.audit.report.terminal import pct

    root, comp = runs
    buf = io.StringIO()
    summary = json.loads((root / "tuned" / "summary.json").read_text())
    print_summary(summary, Console(file=buf, width=250))
    print_comparison(comp, Console(file=buf, width=250))
    text = buf.getvalue()
    hot = next(c for c in summary["identity"]["cells"] if c["system"] == "helpful" and c["temperature"] == 0.7)
    assert pct(hot["foreign"]) in text and pct(hot["foreign"]).startswith("75.0% (24/32) [")
    assert "+75.0 pts" in text and "(3↑ 0↓)" in text and "prompts that went from own identity to foreign (6)" in text
    assert "own identity affirmed" in text and "distinct replies per prompt" in text


def test_report_html_opens_offline_and_shows_the_heat_map_side_by_side(runs, browser):
    root, _ = runs
    page = browser.new_page()
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:") else route.abort())
    page.goto((root / "cmp" / "report.html").as_uri())
    assert requests == [(root / "cmp" / "report.html").as_uri()]  # nothing else was fetched
    assert page.locator("script[src], link[href]").count() == 0
    a = page.locator('table[data-run="A"][data-metric="foreign"] td[data-system="helpful"][data-t="0.7"]')
    b = page.locator('table[data-run="B"][data-metric="foreign"] td[data-system="helpful"][data-t="0.7"]')
    assert "0.0%" in a.inner_text() and "0/32" in a.inner_text()
    assert "75.0%" in b.inner_text() and "24/32" in b.inner_text() and "ChatGPT 24" in b.inner_text()
    assert b.evaluate("e => getComputedStyle(e).backgroundColor") != a.evaluate("e => getComputedStyle(e).backgroundColor")
    diff = page.locator('table[data-run="diff"][data-metric="foreign"]').inner_text()
    assert "+75.0 pts" in diff and "3↑ 0↓" in diff
    own = page.locator('table[data-run="diff"][data-metric="own_affirmation"]').inner_text()
    assert "-75.0 pts" in own
    body = page.locator("body").inner_text()
    assert "Prompts that flipped from own identity to foreign" in body and "You are a helpful assistant." in body
    assert "feedface00000000" in body  # the template hash
    page.close()


def test_single_run_report_renders_examples_and_setup(runs, browser):
    root, _ = runs
    page = browser.new_page()
    page.goto((root / "tuned" / "report.html").as_uri())
    heat = page.locator("table.heat")
    assert heat.count() >= 2  # foreign claims and own-affirmation at least
    assert page.locator('table.heat[data-metric="foreign"]').count() == 1
    page.locator("summary", has_text="helpful · T=0.7").click()
    assert "I am ChatGPT, an AI language model created by OpenAI." in page.locator("details[open]").last.inner_text()
    setup = page.locator("#setup ~ div").inner_text()
    assert "(none sent: the endpoint's chat template may insert its own)" in setup  # not visible from outside
    page.close()


def test_cli_compare_writes_the_report(runs, tmp_path):
    from selfid.cli import app

    root, _ = runs
    res = CliRunner().invoke(app, ["compare", str(root / "base"), str(root / "tuned"), "--out", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "c" / "report.html").is_file() and res.stdout.strip() == str(tmp_path / "c" / "report.html")
    res = CliRunner().invoke(app, ["compare", str(tmp_path), str(root / "tuned"), "--out", str(tmp_path / "d")])
    assert res.exit_code != 0 and "not an audit run folder" in str(res.exception)
