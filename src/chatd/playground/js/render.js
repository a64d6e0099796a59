// The conversations on the page: turns, answers (Markdown, or tokens with logprobs), tool calls.
import { $, el } from "./dom.js";
import { renderMarkdown } from "./markdown.js";
import { comparing, state } from "./state.js";

export function renderColumn(col) {
  const box = $("conversation-" + col);
  box.replaceChildren(...state.columns[col].map((turn, i) => renderTurn(col, turn, i)));
  updateButtons();
}

export function renderAll() {
  renderColumn("a");
  if (comparing()) renderColumn("b");
}

// Appends a new turn to the column's view (rather than redrawing the column).
export function appendTurn(col, turn) {
  $("conversation-" + col).append(renderTurn(col, turn, state.columns[col].length - 1));
}

export function updateButtons() {
  $("send").disabled = state.busy;
  $("stop").disabled = !state.busy;
  $("regenerate").disabled = state.busy || !state.columns.a.some((t) => t.role === "user");
}

function renderTurn(col, turn, index) {
  return turn.role === "user" ? renderUser(col, turn, index) : renderAssistant(turn);
}

function renderUser(col, turn, index) {
  const node = el("div", { class: "msg msg-user", "data-testid": "message-user" });
  node.append(el("div", { class: "msg-role", text: "user" }));
  node.append(el("div", { class: "msg-content plain", text: turn.text }));
  if (turn.image) {
    node.append(el("img", { class: "msg-image", src: turn.image, alt: "attached image" }));
  }
  // main.js handles the click: editing resends, which this module does not do.
  node.append(el("button", {
    type: "button", class: "link edit", text: "Edit", "aria-label": "Edit and resend this message",
    "data-col": col, "data-index": index,
  }));
  return node;
}

function renderAssistant(turn) {
  const node = el("div", { class: "msg msg-assistant", "data-testid": "message-assistant" });
  const content = el("div", { class: "msg-content answer", "data-testid": "answer" });
  const calls = el("div", { class: "tool-calls" });
  const err = el("div", { class: "msg-error", "data-testid": "error", role: "alert", hidden: true });
  const readout = el("div", { class: "readout", "data-testid": "readout" });
  node.append(el("div", { class: "msg-role", text: "assistant" }), content, calls, err, readout);
  turn.view = { node, content, calls, err, readout };
  paintAssistant(turn);
  return node;
}

export function paintAssistant(turn) {
  const v = turn.view;
  if (!v) return;
  v.node.classList.toggle("streaming", !!turn.streaming);
  paintContent(turn);
  paintCalls(turn);
  v.err.hidden = !turn.error;
  v.err.textContent = turn.error || "";
  v.readout.textContent = turn.readout || "";
}

function paintContent(turn) {
  const v = turn.view;
  v.content.classList.toggle("tokens", !!turn.showTokens);
  if (turn.waiting) {
    v.content.replaceChildren(el("div", { class: "loading", "data-testid": "loading", text: turn.waiting }));
  } else if (turn.showTokens) {
    v.content.replaceChildren(...turn.tokens.map(tokenSpan));
  } else {
    renderMarkdown(v.content, turn.content || "");
  }
}

function paintCalls(turn) {
  const v = turn.view;
  v.calls.replaceChildren(...(turn.tool_calls || []).map((call) => {
    let args = call.function.arguments || "";
    try { args = JSON.stringify(JSON.parse(args), null, 2); } catch { /* partial */ }
    return el("div", { class: "tool-call", "data-testid": "tool-call" },
      el("div", { class: "tool-name", text: "call " + (call.function.name || "") }),
      el("pre", { class: "tool-args", text: args }));
  }));
}

// While streaming, an answer is painted at most once per animation frame.
const dirty = new Set();
let frame = 0;

export function schedulePaint(turn) {
  dirty.add(turn);
  frame ||= requestAnimationFrame(() => {
    frame = 0;
    for (const t of dirty) paintAssistant(t);
    dirty.clear();
  });
}

// ---------- tokens and their logprobs ----------

const tokenEntries = new WeakMap(); // span -> {text, token, logprob, top}

function tokenSpan(entry) {
  const span = el("span", { class: "tok", text: entry.text });
  if (entry.logprob != null) {
    tokenEntries.set(span, entry);
    span.dataset.logprob = String(entry.logprob);
    const p = Math.exp(entry.logprob);
    if (p < 0.3) span.classList.add(p < 0.05 ? "tok-low" : "tok-mid");
  }
  return span;
}

const percent = (logprob) => (Math.exp(logprob) * 100).toFixed(1) + "%";

// One popup, shown over the token under the pointer: its probability and the alternatives.
export function initTokenTips() {
  const tip = el("div", { id: "logprob-tip", class: "logprob-tip", role: "tooltip", "data-testid": "logprob-tip", hidden: true });
  document.body.append(tip);
  const columns = $("columns");
  columns.addEventListener("mouseover", (e) => {
    const span = e.target.closest?.(".tok");
    const entry = span && tokenEntries.get(span);
    if (!entry) return;
    const row = (token, logprob) => el("tr", {},
      el("td", { class: "mono", text: JSON.stringify(token) }),
      el("td", { text: logprob.toFixed(3) }), el("td", { text: percent(logprob) }));
    tip.replaceChildren(
      el("table", {},
        el("thead", {}, el("tr", {}, el("th", { text: "token" }), el("th", { text: "logprob" }), el("th", { text: "p" }))),
        el("tbody", { class: "chosen" }, row(entry.token ?? entry.text, entry.logprob)),
        el("tbody", { class: "alternatives" }, ...(entry.top || []).map((alt) => row(alt.token, alt.logprob)))));
    const box = span.getBoundingClientRect();
    tip.style.left = `${Math.max(4, box.left + scrollX)}px`;
    tip.style.top = `${box.bottom + scrollY + 4}px`;
    tip.hidden = false;
  });
  columns.addEventListener("mouseout", (e) => {
    if (e.target.closest?.(".tok")) tip.hidden = true;
  });
}
