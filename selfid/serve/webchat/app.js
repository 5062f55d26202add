// The chat page: talks to this server's own /v1 API (streaming), one or two panes side by side.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: [], panes: [], controllers: [] };

function apiHeaders() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function modelInfo(name) {
  return (state.models.find((m) => m.id === name) || {}).selfid || {};
}

function describeSystem(text, source) {
  if (text === null || text === undefined) return "none (" + source + ")";
  return "\u201c" + text + "\u201d (" + source + ")";
}

function systemMode() {
  return document.querySelector('input[name="system-mode"]:checked').value;
}

function showDefaults() {
  const info = modelInfo($("model-a").value);
  const custom = systemMode() === "custom";
  $("system").disabled = !custom;
  $("effective-system").textContent = custom
    ? describeSystem($("system").value, $("system").value === "" ? "empty" : "text")
    : describeSystem(info.system_prompt, info.system_prompt_kind || "?");
  const d = info.generation_defaults || {};
  const useDefaults = $("use-defaults").checked;
  for (const id of ["temperature", "top-p"]) $(id).disabled = useDefaults;
  if (useDefaults) {
    if (d.temperature !== undefined) $("temperature").value = d.temperature;
    if (d.top_p !== undefined) $("top-p").value = d.top_p;
  }
  $("temperature-out").textContent = $("temperature").value;
  $("top-p-out").textContent = $("top-p").value;
  $("defaults-source").textContent = useDefaults
    ? "defaults: " + Object.entries(d).map(([k, v]) => k + " " + v).join(", ") + " from " + (info.generation_defaults_source || "?")
    : "";
}

function buildPanes() {
  const names = [$("model-a").value];
  if ($("compare").checked && $("model-b").value) names.push($("model-b").value);
  const old = state.panes;
  $("panes").textContent = "";
  state.panes = names.map((name, i) => {
    const keep = old[i] || null;  // a pane keeps its conversation when its model changes (meta says who answered)
    const node = $("pane-template").content.firstElementChild.cloneNode(true);
    node.dataset.model = name;
    node.querySelector(".pane-model").textContent = name;
    const pane = { model: name, node, list: node.querySelector(".messages"), history: keep ? keep.history : [] };
    for (const m of pane.history) addMessage(pane, m.role, m.content, m);
    $("panes").appendChild(node);
    return pane;
  });
}

function addMessage(pane, role, content, saved) {
  const div = document.createElement("div");
  div.className = "message " + role;
  if (saved && role === "assistant") {  // a finished reply, redrawn from the history
    div.dataset.done = "1";
    div.dataset.model = saved.model || "";
    div.dataset.system = saved.system || "";
  }
  const body = document.createElement("div");
  body.className = "content";
  div.appendChild(body);
  const foot = document.createElement("div");
  foot.className = "meta";
  div.appendChild(foot);
  setContent(div, role, content);
  if (saved && saved.meta) foot.textContent = saved.meta;
  pane.list.appendChild(div);
  pane.list.scrollTop = pane.list.scrollHeight;
  return div;
}

function setContent(div, role, text) {
  const body = div.querySelector(".content");
  if (role === "assistant") body.innerHTML = renderMarkdown(text);  // escaped first: see markdown.js
  else body.textContent = text;
}

function requestBody(pane) {
  const messages = [];
  if (systemMode() === "custom") messages.push({ role: "system", content: $("system").value });
  for (const m of pane.history) messages.push({ role: m.role, content: m.content });
  const body = { model: pane.model, messages, stream: true, stream_options: { include_usage: true } };
  const maxTokens = parseInt($("max-tokens").value, 10);
  if (maxTokens > 0) body.max_tokens = maxTokens;
  if (!$("use-defaults").checked) {
    body.temperature = parseFloat($("temperature").value);
    body.top_p = parseFloat($("top-p").value);
  }
  return body;
}

async function errorText(resp) {
  try { return (await resp.json()).error.message; } catch (e) { return resp.status + " " + resp.statusText; }
}

async function ask(pane, controller) {
  const div = addMessage(pane, "assistant", "");
  div.dataset.done = "0";
  div.dataset.chunks = "0";
  let text = "", meta = "", usage = null, finish = null;
  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST", headers: apiHeaders(), body: JSON.stringify(requestBody(pane)), signal: controller.signal,
    });
    if (!resp.ok) throw new Error(await errorText(resp));
    const system = resp.headers.get("x-selfid-system-prompt");
    const source = resp.headers.get("x-selfid-system-source") || "?";
    const effective = describeSystem(system === null ? null : decodeURIComponent(system), source);
    div.dataset.system = system === null ? "" : decodeURIComponent(system);
    div.dataset.model = resp.headers.get("x-selfid-model") || pane.model;
    if (pane === state.panes[0]) $("effective-system").textContent = effective;
    meta = div.dataset.model + " \u00b7 system prompt " + effective;
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          if (chunk.usage) usage = chunk.usage;
          for (const c of chunk.choices || []) {
            if (c.delta && c.delta.content) {
              text += c.delta.content;
              div.dataset.chunks = String(Number(div.dataset.chunks) + 1);
              setContent(div, "assistant", text);
            }
            if (c.finish_reason) finish = c.finish_reason;
          }
        }
      }
    }
    if (usage) meta += " \u00b7 " + usage.prompt_tokens + " + " + usage.completion_tokens + " tokens";
    if (finish === "length") meta += " \u00b7 cut at max tokens";
  } catch (e) {
    if (e.name === "AbortError") meta += (meta ? " \u00b7 " : "") + "stopped";
    else { meta = "error: " + e.message; div.classList.add("error"); }
  }
  setContent(div, "assistant", text);
  div.querySelector(".meta").textContent = meta;
  div.dataset.done = "1";
  if (text) pane.history.push({ role: "assistant", content: text, meta, model: div.dataset.model, system: div.dataset.system });
  else pane.history.pop();  // nothing came back: drop the unanswered user turn so roles keep alternating
}

async function send(ev) {
  if (ev) ev.preventDefault();
  const text = $("input").value;
  if (!text.trim() || state.controllers.length) return;
  $("input").value = "";
  $("send").disabled = true;
  $("stop").disabled = false;
  state.controllers = state.panes.map(() => new AbortController());
  for (const pane of state.panes) {
    pane.history.push({ role: "user", content: text });
    addMessage(pane, "user", text);
  }
  await Promise.all(state.panes.map((pane, i) => ask(pane, state.controllers[i])));
  state.controllers = [];
  $("send").disabled = false;
  $("stop").disabled = true;
}

async function loadModels() {
  const resp = await fetch("/v1/models", { headers: apiHeaders() });
  if (!resp.ok) {
    setStatus(resp.status === 401 ? "this server needs an API key: enter it on the left" : await errorText(resp), true);
    return;
  }
  state.models = (await resp.json()).data;
  for (const id of ["model-a", "model-b"]) {
    const sel = $(id);
    const current = sel.value;
    sel.textContent = "";
    for (const m of state.models) {
      const opt = document.createElement("option");
      opt.value = m.id;
      opt.textContent = m.parent ? m.id + " (adapter on " + m.parent + ")" : m.id;
      sel.appendChild(opt);
    }
    if (current) sel.value = current;
  }
  if (state.models.length > 1 && !$("model-b").dataset.touched) $("model-b").value = state.models[1].id;
  setStatus(state.models.length + " model" + (state.models.length > 1 ? "s" : ""), false);
  showDefaults();
  buildPanes();
}

function init() {
  $("api-key").value = localStorage.getItem("selfid-api-key") || "";
  $("api-key").addEventListener("change", () => { localStorage.setItem("selfid-api-key", $("api-key").value); loadModels(); });
  $("composer").addEventListener("submit", send);
  $("input").addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey) send(e); });
  $("stop").addEventListener("click", () => state.controllers.forEach((c) => c.abort()));
  $("clear").addEventListener("click", () => { state.panes.forEach((p) => { p.history = []; }); buildPanes(); });
  $("model-a").addEventListener("change", () => { showDefaults(); buildPanes(); });
  $("model-b").addEventListener("change", () => { $("model-b").dataset.touched = "1"; buildPanes(); });
  $("compare").addEventListener("change", () => { $("model-b").disabled = !$("compare").checked; buildPanes(); });
  for (const el of document.querySelectorAll('input[name="system-mode"]')) el.addEventListener("change", showDefaults);
  $("system").addEventListener("input", showDefaults);
  $("use-defaults").addEventListener("change", showDefaults);
  for (const id of ["temperature", "top-p"]) $(id).addEventListener("input", showDefaults);
  loadModels();
}

init();
