// chatd playground: vanilla JS, no build step, talks to this server's own /v1 API.
"use strict";

const $ = (id) => document.getElementById(id);
const API = location.origin + "/v1/";
const KEY_STORAGE = "chatd.playground.apiKey";

const state = {
  models: [],
  // One conversation per column: a list of turns.
  // user: {role, text, image}; assistant: {role, content, tool_calls, tokens, error, readout}
  columns: { a: [], b: [] },
  controller: null,
  busy: false,
  lastRequest: null, // {model, body, wait}
  image: null, // URL (data: or http)
};

// ---------- helpers ----------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v);
  }
  for (const c of children) if (c != null) node.append(c);
  return node;
}

function headers(wait) {
  const h = { "content-type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.authorization = "Bearer " + key;
  if (wait) h["x-wait-for-model"] = "true";
  return h;
}

function num(id, integer = false) {
  const raw = $(id).value.trim();
  if (raw === "") return undefined;
  const v = integer ? parseInt(raw, 10) : parseFloat(raw);
  return Number.isFinite(v) ? v : undefined;
}

function formError(text) {
  $("form-error").textContent = text || "";
}

function errorText(obj, status) {
  if (obj && typeof obj === "object" && obj.error) {
    const err = typeof obj.error === "string" ? obj.error : obj.error.message || JSON.stringify(obj.error);
    let text = err;
    if (obj.error_type) text += ` (${obj.error_type})`;
    if (obj.estimated_time != null) text += ` — about ${Math.ceil(obj.estimated_time)} s to go; tick "Wait for the model" or retry`;
    return status ? `${status}: ${text}` : text;
  }
  return `${status || ""} ${typeof obj === "string" ? obj : JSON.stringify(obj)}`.trim();
}

// ---------- models ----------

function stateLabel(m) {
  if (m.state === "loading" && m.estimated_time != null) return `loading, ~${Math.ceil(m.estimated_time)} s`;
  return m.state;
}

let modelTimer = null;

async function loadModels() {
  let data;
  try {
    const r = await fetch(API + "models", { headers: headers(false) });
    data = await r.json().catch(() => ({}));
    if (!r.ok) {
      $("model-status").textContent = errorText(data, r.status) + (r.status === 401 ? " — enter an API key" : "");
      return;
    }
  } catch (e) {
    $("model-status").textContent = "cannot reach the server: " + e.message;
    return;
  }
  state.models = data.data || [];
  for (const id of ["model", "model-b"]) {
    const select = $(id);
    const prev = select.value;
    select.textContent = "";
    for (const m of state.models) {
      select.append(el("option", { value: m.id, text: `${m.id} — ${stateLabel(m)}` }));
    }
    if (prev && state.models.some((m) => m.id === prev)) select.value = prev;
    else if (id === "model-b" && state.models.length > 1) select.value = state.models[1].id;
  }
  showModelStatus();
}

function modelInfo(id) {
  return state.models.find((m) => m.id === id);
}

function showModelStatus() {
  const ids = [["model", "model-status"]];
  if ($("compare").checked) ids.push(["model-b", "model-b-status"]);
  let notReady = false;
  let loading = false;
  for (const [sel, out] of ids) {
    const m = modelInfo($(sel).value);
    if (!m) { $(out).textContent = ""; continue; }
    let text = "state: " + m.state;
    if (m.state === "loading") {
      loading = true;
      text += m.estimated_time != null ? `, ready in about ${Math.ceil(m.estimated_time)} s` : "";
    } else if (m.state === "available") {
      text += " (loads on first use)";
    } else if (m.state === "failed") {
      text += ": " + (m.error || "load failed");
    }
    if (m.state !== "ready") notReady = true;
    $(out).textContent = text;
    $(out).dataset.state = m.state;
  }
  if ($("compare").checked) {
    $("column-a-title").textContent = $("model").value;
    $("column-b-title").textContent = $("model-b").value;
  }
  $("wait-model-field").hidden = !notReady && !$("wait-model").checked;
  clearTimeout(modelTimer);
  modelTimer = setTimeout(loadModels, loading ? 1500 : 10000);
}

// ---------- request building ----------

function userContent(turn) {
  if (!turn.image) return turn.text;
  return [
    { type: "text", text: turn.text },
    { type: "image_url", image_url: { url: turn.image } },
  ];
}

function apiMessages(turns) {
  const out = [];
  const system = $("system").value.trim();
  if (system) out.push({ role: "system", content: system });
  for (const t of turns) {
    if (t.role === "user") out.push({ role: "user", content: userContent(t) });
    else if (t.role === "assistant") {
      if (!t.content && !(t.tool_calls && t.tool_calls.length)) continue; // errors, empty
      const m = { role: "assistant", content: t.content || "" };
      if (t.tool_calls && t.tool_calls.length) m.tool_calls = t.tool_calls;
      out.push(m);
    }
  }
  return out;
}

// Parameters from the settings panel; throws Error with a message for the user.
function parameters() {
  const p = {};
  const temperature = num("temperature");
  if (temperature !== undefined) p.temperature = temperature;
  const topP = num("top-p");
  if (topP !== undefined) p.top_p = topP;
  const maxTokens = num("max-tokens", true);
  if (maxTokens !== undefined) p.max_tokens = maxTokens;
  const seed = num("seed", true);
  if (seed !== undefined) p.seed = seed;
  const stop = $("stop-seqs").value.split(/[\n,]/).map((s) => s.trim()).filter(Boolean);
  if (stop.length) p.stop = stop;
  const fp = num("frequency-penalty");
  if (fp !== undefined) p.frequency_penalty = fp;
  const pp = num("presence-penalty");
  if (pp !== undefined) p.presence_penalty = pp;
  if ($("logprobs").checked) {
    p.logprobs = true;
    const top = num("top-logprobs", true);
    if (top !== undefined) p.top_logprobs = top;
  }
  const kind = $("format-type").value;
  const value = $("format-value").value;
  if (kind === "json_schema") {
    let schema;
    try { schema = JSON.parse(value); } catch (e) { throw new Error("JSON schema: " + e.message); }
    p.response_format = { type: "json_schema", json_schema: { name: "schema", schema } };
  } else if (kind === "regex") {
    if (!value) throw new Error("regex: enter a pattern");
    p.response_format = { type: "regex", value };
  }
  const toolsText = $("tools").value.trim();
  if (toolsText) {
    let tools;
    try { tools = JSON.parse(toolsText); } catch (e) { throw new Error("tools: " + e.message); }
    if (!Array.isArray(tools)) tools = [tools];
    p.tools = tools;
    p.tool_choice = $("tool-choice").value;
  }
  return p;
}

function buildBody(model, turns) {
  return {
    model,
    messages: apiMessages(turns),
    stream: true,
    stream_options: { include_usage: true },
    ...parameters(),
  };
}

// ---------- rendering ----------

function renderColumn(col) {
  const box = $("conversation-" + col);
  box.textContent = "";
  state.columns[col].forEach((turn, i) => box.append(renderTurn(col, turn, i)));
  updateButtons();
}

function renderAll() {
  renderColumn("a");
  if ($("compare").checked) renderColumn("b");
}

function renderTurn(col, turn, index) {
  if (turn.role === "user") return renderUser(col, turn, index);
  const node = el("div", { class: "msg msg-assistant", "data-testid": "message-assistant" });
  node.append(el("div", { class: "msg-role", text: "assistant" }));
  const content = el("div", { class: "msg-content answer", "data-testid": "answer" });
  node.append(content);
  const calls = el("div", { class: "tool-calls" });
  node.append(calls);
  const err = el("div", { class: "msg-error", "data-testid": "error", role: "alert", hidden: true });
  node.append(err);
  const readout = el("div", { class: "readout", "data-testid": "readout" });
  node.append(readout);
  turn.view = { node, content, calls, err, readout };
  paintAssistant(turn);
  return node;
}

function renderUser(col, turn, index) {
  const node = el("div", { class: "msg msg-user", "data-testid": "message-user" });
  node.append(el("div", { class: "msg-role", text: "user" }));
  const content = el("div", { class: "msg-content", text: turn.text });
  node.append(content);
  if (turn.image) {
    node.append(el("img", { class: "msg-image", src: turn.image, alt: "attached image" }));
  }
  const edit = el("button", { type: "button", class: "link edit", text: "Edit", "aria-label": "Edit and resend this message" });
  edit.addEventListener("click", () => startEdit(col, index, node));
  node.append(edit);
  return node;
}

function paintAssistant(turn) {
  const v = turn.view;
  if (!v) return;
  v.content.textContent = "";
  if (turn.tokens && turn.tokens.length) {
    for (const t of turn.tokens) v.content.append(tokenSpan(t));
  } else {
    v.content.textContent = turn.content || "";
  }
  paintCalls(turn);
  v.err.hidden = !turn.error;
  v.err.textContent = turn.error || "";
  v.readout.textContent = turn.readout || "";
}

function paintCalls(turn) {
  const v = turn.view;
  v.calls.textContent = "";
  for (const call of turn.tool_calls || []) {
    const block = el("div", { class: "tool-call", "data-testid": "tool-call" });
    block.append(el("div", { class: "tool-name", text: "call " + (call.function.name || "") }));
    let args = call.function.arguments || "";
    try { args = JSON.stringify(JSON.parse(args), null, 2); } catch { /* partial */ }
    block.append(el("pre", { class: "tool-args", text: args }));
    v.calls.append(block);
  }
}

function tokenSpan(entry) {
  // entry: {text, logprob?, top?: [{token, logprob}]}
  const span = el("span", { class: "tok", text: entry.text });
  if (entry.logprob != null) {
    const lines = [`${JSON.stringify(entry.token ?? entry.text)}  logprob ${entry.logprob.toFixed(3)}  p=${(Math.exp(entry.logprob) * 100).toFixed(1)}%`];
    for (const alt of entry.top || []) {
      lines.push(`  ${JSON.stringify(alt.token)}  ${alt.logprob.toFixed(3)}`);
    }
    span.title = lines.join("\n");
    span.dataset.logprob = String(entry.logprob);
    const p = Math.exp(entry.logprob);
    if (p < 0.3) span.classList.add(p < 0.05 ? "tok-low" : "tok-mid");
  }
  return span;
}

// ---------- editing ----------

function startEdit(col, index, node) {
  if (state.busy) return;
  const turn = state.columns[col][index];
  const area = el("textarea", { class: "edit-area", rows: 3, "aria-label": "Edit message" });
  area.value = turn.text;
  const save = el("button", { type: "button", class: "primary", text: "Resend" });
  const cancel = el("button", { type: "button", text: "Cancel" });
  const box = el("div", { class: "edit-box" }, area, el("div", { class: "actions" }, save, cancel));
  node.replaceChildren(el("div", { class: "msg-role", text: "user (editing)" }), box);
  area.focus();
  cancel.addEventListener("click", () => renderAll());
  area.addEventListener("keydown", (e) => {
    if (e.key === "Escape") renderAll();
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); save.click(); }
  });
  save.addEventListener("click", () => {
    const text = area.value.trim();
    if (!text) return;
    // The conversation up to this user message, in every column, then resend.
    const position = state.columns[col].slice(0, index).filter((t) => t.role === "user").length;
    for (const c of activeColumns()) {
      const turns = state.columns[c];
      let seen = -1;
      const cut = turns.findIndex((t) => t.role === "user" && ++seen === position);
      if (cut >= 0) {
        const image = turns[cut].image;
        turns.length = cut;
        turns.push({ role: "user", text, image });
      }
    }
    renderAll();
    generate();
  });
}

// ---------- sending ----------

function activeColumns() {
  return $("compare").checked ? ["a", "b"] : ["a"];
}

function modelFor(col) {
  return col === "a" ? $("model").value : $("model-b").value;
}

function updateButtons() {
  $("send").disabled = state.busy;
  $("stop").disabled = !state.busy;
  const last = state.columns.a[state.columns.a.length - 1];
  $("regenerate").disabled = state.busy || !state.columns.a.some((t) => t.role === "user") || !last;
}

async function send() {
  if (state.busy) return;
  const text = $("message").value.trim();
  if (!text && !state.image) return;
  try { parameters(); } catch (e) { formError(e.message); return; }
  formError("");
  for (const col of activeColumns()) state.columns[col].push({ role: "user", text, image: state.image });
  $("message").value = "";
  clearImage();
  renderAll();
  await generate();
}

async function regenerate() {
  if (state.busy) return;
  for (const col of activeColumns()) {
    const turns = state.columns[col];
    while (turns.length && turns[turns.length - 1].role !== "user") turns.pop();
  }
  renderAll();
  await generate();
}

async function generate() {
  let bodies;
  try {
    bodies = activeColumns().map((col) => [col, buildBody(modelFor(col), state.columns[col])]);
  } catch (e) {
    formError(e.message);
    return;
  }
  formError("");
  const wait = $("wait-model").checked;
  state.busy = true;
  state.controller = new AbortController();
  state.lastRequest = { body: bodies[0][1], wait };
  updateButtons();
  renderCode();
  try {
    await Promise.all(bodies.map(([col, body]) => stream(col, body, wait, state.controller.signal)));
  } finally {
    state.busy = false;
    state.controller = null;
    updateButtons();
    loadModels();
  }
}

async function stream(col, body, wait, signal) {
  const turn = { role: "assistant", content: "", tool_calls: [], tokens: [], error: "", readout: "" };
  state.columns[col].push(turn);
  $("conversation-" + col).append(renderTurn(col, turn, state.columns[col].length - 1));
  turn.view.node.classList.add("streaming");
  const started = performance.now();
  let firstAt = null;
  let deltas = 0;
  let usage = null;
  const logprobs = !!body.logprobs;

  const onChunk = (obj) => {
    if (obj.error) {
      turn.error = errorText(obj);
      return;
    }
    if (obj.usage) usage = obj.usage;
    const choice = (obj.choices || [])[0];
    if (!choice) return;
    const delta = choice.delta || {};
    let changed = false;
    if (delta.content) {
      if (firstAt === null) firstAt = performance.now();
      deltas++;
      turn.content += delta.content;
      const entries = (choice.logprobs && choice.logprobs.content) || [];
      if (logprobs && entries.length && entries.map((e) => e.token).join("") === delta.content) {
        for (const e of entries) {
          const t = { text: e.token, token: e.token, logprob: e.logprob, top: e.top_logprobs };
          turn.tokens.push(t);
          turn.view.content.append(tokenSpan(t));
        }
      } else if (logprobs && entries.length) {
        const t = { text: delta.content, token: entries.map((e) => e.token).join(""),
          logprob: entries.reduce((s, e) => s + e.logprob, 0), top: entries[0].top_logprobs };
        turn.tokens.push(t);
        turn.view.content.append(tokenSpan(t));
      } else {
        turn.tokens.push({ text: delta.content });
        turn.view.content.append(document.createTextNode(delta.content));
      }
    }
    for (const tc of delta.tool_calls || []) {
      if (firstAt === null) firstAt = performance.now();
      deltas++;
      const i = tc.index ?? 0;
      const call = (turn.tool_calls[i] ||= { id: "", type: "function", function: { name: "", arguments: "" } });
      if (tc.id) call.id = tc.id;
      if (tc.function && tc.function.name) call.function.name += tc.function.name;
      if (tc.function && tc.function.arguments) call.function.arguments += tc.function.arguments;
      changed = true;
    }
    if (changed) paintCalls(turn);
    if (choice.finish_reason) turn.finish = choice.finish_reason;
  };

  try {
    const resp = await fetch(API + "chat/completions", {
      method: "POST", headers: headers(wait), body: JSON.stringify(body), signal,
    });
    if (!resp.ok) {
      const raw = await resp.text();
      let obj = raw;
      try { obj = JSON.parse(raw); } catch { /* not JSON */ }
      turn.error = errorText(obj, resp.status);
    } else {
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      let done = false;
      while (!done) {
        const { value, done: end } = await reader.read();
        if (end) break;
        buffer += decoder.decode(value, { stream: true });
        let nl;
        while ((nl = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, nl).replace(/\r$/, "");
          buffer = buffer.slice(nl + 1);
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") { done = true; break; }
          try { onChunk(JSON.parse(data)); } catch (e) { turn.error = "bad event: " + data; }
        }
        if (turn.error) {
          turn.view.err.hidden = false;
          turn.view.err.textContent = turn.error;
        }
      }
    }
  } catch (e) {
    if (e.name === "AbortError") turn.stopped = true;
    else turn.error = "request failed: " + e.message;
  }
  const ended = performance.now();
  const parts = [];
  if (turn.stopped) parts.push("stopped");
  if (usage) parts.push(`${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens`);
  if (firstAt !== null) {
    parts.push(`TTFT ${((firstAt - started) / 1000).toFixed(2)} s`);
    const n = usage ? usage.completion_tokens : deltas;
    const secs = (ended - firstAt) / 1000;
    if (secs > 0 && n > 1) parts.push(`${((n - 1) / secs).toFixed(1)} tokens/s`);
  }
  if (turn.finish) parts.push(`finish: ${turn.finish}`);
  turn.readout = parts.join(" · ");
  turn.view.readout.dataset.ttft = firstAt !== null ? ((firstAt - started) / 1000).toFixed(3) : "";
  if (!turn.tool_calls.length) delete turn.tool_calls;
  turn.view.node.classList.remove("streaming");
  paintAssistant(turn);
}

// ---------- images ----------

function setImage(url, label) {
  state.image = url;
  const preview = $("image-preview");
  preview.textContent = "";
  if (url) {
    preview.append(el("img", { src: url, alt: "image to send: " + label }), el("span", { text: label }));
  }
  $("clear-image").hidden = !url;
}

function clearImage() {
  setImage(null, "");
  $("image-file").value = "";
  $("image-url").value = "";
}

// ---------- code snippets ----------

// A Python literal: on one line when it fits, else one item per line.
function pyInline(value) {
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "number") return String(value);
  if (typeof value === "string") return JSON.stringify(value);
  if (Array.isArray(value)) return "[" + value.map(pyInline).join(", ") + "]";
  return "{" + Object.entries(value).map(([k, v]) => `${JSON.stringify(k)}: ${pyInline(v)}`).join(", ") + "}";
}

function py(value, indent = 0) {
  const inline = pyInline(value);
  if (inline.length + 4 * (indent + 1) <= 88 && !inline.includes("\n")) return inline;
  const pad = "    ".repeat(indent + 1);
  const end = "    ".repeat(indent);
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "number") return String(value);
  if (typeof value === "string") return JSON.stringify(value);
  if (Array.isArray(value)) {
    if (!value.length) return "[]";
    return "[\n" + value.map((v) => pad + py(v, indent + 1) + ",\n").join("") + end + "]";
  }
  const keys = Object.keys(value);
  if (!keys.length) return "{}";
  return "{\n" + keys.map((k) => `${pad}${JSON.stringify(k)}: ${py(value[k], indent + 1)},\n`).join("") + end + "}";
}

function kwargs(body) {
  return Object.entries(body).map(([k, v]) => `    ${k}=${py(v, 1)},\n`).join("");
}

function shellQuote(s) {
  return "'" + s.replace(/'/g, "'\\''") + "'";
}

function snippets(body, wait) {
  const keyed = !!$("api-key").value.trim();
  const pyKey = keyed ? 'os.environ["CHATD_API_KEY"]' : '"unused"';
  const imp = keyed ? "import os\n\n" : "";
  const extra = wait ? { "x-wait-for-model": "true" } : null;
  const loop =
    "for chunk in stream:\n" +
    "    if chunk.choices and chunk.choices[0].delta.content:\n" +
    '        print(chunk.choices[0].delta.content, end="", flush=True)\n' +
    "    if chunk.usage:\n" +
    "        print()\n" +
    "        print(chunk.usage)\n";
  const hf =
    imp + "from huggingface_hub import InferenceClient\n\n" +
    `client = InferenceClient(\n    base_url=${py(API)},\n    api_key=${pyKey},\n` +
    (extra ? `    headers=${py(extra, 1)},\n` : "") + ")\n" +
    "stream = client.chat.completions.create(\n" + kwargs(body) + ")\n" + loop;
  const openai =
    imp + "from openai import OpenAI\n\n" +
    `client = OpenAI(base_url=${py(API)}, api_key=${pyKey})\n` +
    "stream = client.chat.completions.create(\n" + kwargs(body) +
    (extra ? `    extra_headers=${py(extra, 1)},\n` : "") + ")\n" + loop;
  let curl = `curl -N ${API}chat/completions \\\n  -H "Content-Type: application/json" \\\n`;
  if (keyed) curl += '  -H "Authorization: Bearer $CHATD_API_KEY" \\\n';
  if (wait) curl += '  -H "x-wait-for-model: true" \\\n';
  curl += "  -d " + shellQuote(JSON.stringify(body, null, 2));
  return { hf, openai, curl };
}

function renderCode() {
  if ($("code-panel").hidden) return;
  let body, wait, note;
  const pending = $("message").value.trim();
  if (state.lastRequest && !pending) {
    ({ body, wait } = state.lastRequest);
    note = "The last request sent (first column).";
  } else {
    try {
      const turns = state.columns.a.slice();
      if (pending || state.image) turns.push({ role: "user", text: pending, image: state.image });
      body = buildBody($("model").value, turns);
    } catch (e) {
      $("code-note").textContent = e.message;
      return;
    }
    wait = $("wait-model").checked;
    note = "The request the next Send makes.";
  }
  if ($("api-key").value.trim()) note += " Set CHATD_API_KEY in your environment to your key.";
  $("code-note").textContent = note;
  const s = snippets(body, wait);
  $("code-hf").textContent = s.hf;
  $("code-openai").textContent = s.openai;
  $("code-curl").textContent = s.curl;
}

// ---------- wiring ----------

function init() {
  $("api-key").value = localStorage.getItem(KEY_STORAGE) || "";
  $("api-key").addEventListener("change", () => {
    const key = $("api-key").value.trim();
    if (key) localStorage.setItem(KEY_STORAGE, key);
    else localStorage.removeItem(KEY_STORAGE);
    loadModels();
  });
  $("model").addEventListener("change", () => { showModelStatus(); renderCode(); });
  $("model-b").addEventListener("change", showModelStatus);
  $("model").addEventListener("focus", loadModels);
  $("compare").addEventListener("change", () => {
    const on = $("compare").checked;
    $("model-b-field").hidden = !on;
    $("column-b").hidden = !on;
    $("column-a-title").hidden = !on;
    $("columns").dataset.compare = String(on);
    if (on) {
      state.columns.b = state.columns.a.map((t) => (t.role === "user" ? { ...t } : { ...t, view: null }));
      renderColumn("b");
    }
    showModelStatus();
  });
  $("composer").addEventListener("submit", (e) => { e.preventDefault(); send(); });
  $("message").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
  });
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("regenerate").addEventListener("click", regenerate);
  $("clear").addEventListener("click", () => {
    if (state.busy) state.controller.abort();
    state.columns = { a: [], b: [] };
    state.lastRequest = null;
    renderAll();
  });
  $("image-file").addEventListener("change", () => {
    const file = $("image-file").files[0];
    if (!file) return;
    const reader = new FileReader();
    reader.onload = () => { $("image-url").value = ""; setImage(reader.result, file.name); };
    reader.onerror = () => formError("cannot read " + file.name);
    reader.readAsDataURL(file);
  });
  $("image-url").addEventListener("change", () => {
    const url = $("image-url").value.trim();
    $("image-file").value = "";
    setImage(url || null, url);
  });
  $("clear-image").addEventListener("click", clearImage);
  $("format-type").addEventListener("change", () => {
    const kind = $("format-type").value;
    $("format-value").placeholder = kind === "regex" ? "[A-Z][a-z]+" :
      '{"type": "object", "properties": {"name": {"type": "string"}}}';
  });
  $("view-code").addEventListener("click", () => {
    const panel = $("code-panel");
    panel.hidden = !panel.hidden;
    $("view-code").setAttribute("aria-expanded", String(!panel.hidden));
    renderCode();
    if (!panel.hidden) $("close-code").focus();
  });
  $("close-code").addEventListener("click", () => {
    $("code-panel").hidden = true;
    $("view-code").setAttribute("aria-expanded", "false");
    $("view-code").focus();
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && !$("code-panel").hidden) $("close-code").click();
  });
  document.querySelector(".settings").addEventListener("change", renderCode);
  if (matchMedia("(max-width: 760px)").matches) {
    for (const d of document.querySelectorAll(".settings details")) d.open = false;
  }
  updateButtons();
  loadModels();
}

init();
