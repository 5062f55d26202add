// A small markdown renderer that cannot run anything from model output: it escapes the whole text
// first, then adds a fixed set of tags (no attributes taken from the text, no links, no images).
// Written here rather than loaded from a CDN because the page must open offline and stay this safe.
"use strict";

function escapeHtml(s) {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
          .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
}

function renderInline(escaped) {
  // code spans first, so that emphasis markers inside them stay literal
  const spans = [];
  let s = escaped.replace(/`([^`\n]+)`/g, (_, code) => {
    spans.push(code);
    return "\u0000" + (spans.length - 1) + "\u0000";
  });
  s = s.replace(/\*\*([^*\n]+)\*\*/g, "<strong>$1</strong>")
       .replace(/(^|[^*\w])\*([^*\n]+)\*(?![*\w])/g, "$1<em>$2</em>");
  return s.replace(/\u0000(\d+)\u0000/g, (_, i) => "<code>" + spans[Number(i)] + "</code>");
}

function renderBlocks(text) {
  const out = [];
  let para = [], list = null;
  const flushPara = () => { if (para.length) { out.push("<p>" + para.map(renderInline).join("<br>") + "</p>"); para = []; } };
  const flushList = () => { if (list) { out.push("<" + list.tag + ">" + list.items.map(i => "<li>" + renderInline(i) + "</li>").join("") + "</" + list.tag + ">"); list = null; } };
  for (const line of escapeHtml(text).split("\n")) {
    let m;
    if (!line.trim()) { flushPara(); flushList(); continue; }
    if ((m = line.match(/^(#{1,6})\s+(.*)$/))) {
      flushPara(); flushList();
      const level = Math.min(m[1].length + 2, 6);  // keep headings small inside a chat bubble
      out.push("<h" + level + ">" + renderInline(m[2]) + "</h" + level + ">");
    } else if ((m = line.match(/^\s*(?:[-*+]|(\d+)[.)])\s+(.*)$/))) {
      flushPara();
      const tag = m[1] ? "ol" : "ul";
      if (!list || list.tag !== tag) { flushList(); list = { tag, items: [] }; }
      list.items.push(m[2]);
    } else {
      flushList();
      para.push(line);
    }
  }
  flushPara(); flushList();
  return out.join("");
}

// Markdown -> HTML string that is safe to assign to innerHTML.
function renderMarkdown(src) {
  const parts = String(src).replace(/\u0000/g, "\uFFFD").split(/^```/m);
  let html = "";
  parts.forEach((part, i) => {
    if (i % 2 === 0) { html += renderBlocks(part); return; }
    const nl = part.indexOf("\n");
    const body = nl < 0 ? "" : part.slice(nl + 1);
    html += "<pre><code>" + escapeHtml(body.replace(/\n$/, "")) + "</code></pre>";
  });
  return html;
}

if (typeof module !== "undefined") module.exports = { renderMarkdown, escapeHtml };
