"""The chat page in headless Chromium: streaming, history, adapters side by side, stop, and no HTML from the model."""

import re
import time

import httpx
import pytest

from tests.serve_helpers import NER_SYSTEM, ScriptedEngine, adapter_server  # noqa: F401  (fixture)


def words(text: str) -> str:
    """Letters and digits only: what survives markdown rendering unchanged."""
    return re.sub(r"\W", "", text)


@pytest.fixture
def page(browser, adapter_server):
    bg, _ = adapter_server
    # the page's Content-Security-Policy forbids eval, which playwright's wait_for_function needs; bypassing
    # it also shows that the markdown renderer alone keeps model output inert
    context = browser.new_context(bypass_csp=True)
    page = context.new_page()
    page.requests_seen = []
    page.on("request", lambda r: page.requests_seen.append(r.url))
    page.goto(bg.url + "/")
    page.wait_for_function("document.querySelectorAll('#model-a option').length === 3")
    yield page
    context.close()


def greedy(page, tokens=8):
    page.uncheck("#use-defaults")
    page.eval_on_selector("#temperature", "el => { el.value = '0'; el.dispatchEvent(new Event('input')); }")
    page.fill("#max-tokens", str(tokens))


def send(page, text, count):
    page.fill("#input", text)
    page.click("#send")
    page.wait_for_function(f"document.querySelectorAll('.message.assistant[data-done=\"1\"]').length === {count}")
    return page.query_selector_all(".message.assistant")[-1]


def api_reply(bg, model, messages, tokens=8):
    body = {"model": model, "messages": messages, "temperature": 0, "top_p": 0.8, "max_tokens": tokens}
    return httpx.post(bg.url + "/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]


def test_chat_streams_keeps_history_and_switches_adapter(page, adapter_server):
    bg, service = adapter_server
    base = service.base.name
    assert service.base.chat.default_system in page.inner_text("#effective-system")
    greedy(page)

    first = send(page, "Who are you?", 1)
    assert int(first.get_attribute("data-chunks")) > 1  # the reply arrived in pieces
    want = api_reply(bg, base, [{"role": "user", "content": "Who are you?"}])
    assert words(first.query_selector(".content").inner_text()) == words(want)
    assert first.get_attribute("data-model") == base

    page.select_option("#model-a", "ner")
    assert NER_SYSTEM in page.inner_text("#effective-system")  # the adapter's training system prompt
    second = send(page, "你是谁？", 2)
    assert second.get_attribute("data-model") == "ner" and second.get_attribute("data-system") == NER_SYSTEM
    assert "ner" in second.inner_text() and NER_SYSTEM in second.inner_text()
    history = [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": want},
               {"role": "user", "content": "你是谁？"}]
    assert words(second.query_selector(".content").inner_text()) == words(api_reply(bg, "ner", history))

    page.check("#compare")
    page.select_option("#model-b", "plain")
    page.click("#clear")
    send(page, "hi", 2)  # one reply per pane
    models = page.eval_on_selector_all(".message.assistant", "els => els.map(e => e.dataset.model)")
    assert models == ["ner", "plain"]
    assert all(url.startswith(bg.url) for url in page.requests_seen)  # nothing loaded from elsewhere


def test_custom_system_prompt_is_sent_and_shown(page, adapter_server):
    page.check("input[name=system-mode][value=custom]")
    page.fill("#system", "你是小明。")
    greedy(page, tokens=2)
    reply = send(page, "hi", 1)
    assert reply.get_attribute("data-system") == "你是小明。"
    assert "你是小明。" in page.inner_text("#effective-system") and "(text)" in page.inner_text("#effective-system")


def test_stop_button_ends_the_reply_and_frees_the_server(page, adapter_server):
    _, service = adapter_server
    before = service.scheduler.stats["cancelled"]
    greedy(page, tokens=450)
    page.fill("#input", "tell me a long story")
    page.click("#send")
    page.wait_for_function("Number((document.querySelector('.message.assistant') || {dataset: {}}).dataset.chunks) > 0")
    page.click("#stop")
    page.wait_for_selector(".message.assistant[data-done='1']")
    assert "stopped" in page.inner_text(".message.assistant .meta")
    deadline = time.monotonic() + 20
    while service.scheduler.stats["cancelled"] == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert service.scheduler.stats["cancelled"] == before + 1
    assert not page.is_disabled("#send")


def test_model_output_cannot_run_html_or_script(page, adapter_server, monkeypatch):
    _, service = adapter_server
    evil = ('**bold** <img src=x onerror="window.__pwned=1"> <script>window.__pwned=2</script>\n'
            '```\n<b onmouseover=alert(1)>code</b>\n```\n`<i>x</i>` [link](javascript:alert(3))')
    monkeypatch.setattr(service.engine, "events", ScriptedEngine(service.loaded, evil).events)
    reply = send(page, "hi", 1)
    content = reply.query_selector(".content")
    assert content.query_selector_all("img, script, b, i, a, [onerror], [onmouseover]") == []
    text = content.inner_text()
    for shown in ('<img src=x onerror="window.__pwned=1">', "<script>window.__pwned=2</script>",
                  "<b onmouseover=alert(1)>code</b>", "<i>x</i>", "[link](javascript:alert(3))"):
        assert shown in text
    assert content.inner_html().count("<strong>bold</strong>") == 1  # markdown still renders
    assert page.evaluate("window.__pwned") is None
