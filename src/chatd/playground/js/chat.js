// Sending: a message, regenerate, edit and resend; each streams one answer per column.
import { applyChunk, finishAnswer, newAnswer } from "./answer.js";
import { API, errorText, headers, WAIT_HEADER } from "./api.js";
import { $, el, formError, pause } from "./dom.js";
import { clearImage } from "./images.js";
import { loadingText, loadModels } from "./models.js";
import { renderAll, appendTurn, paintAssistant, schedulePaint, updateButtons } from "./render.js";
import { buildBody, parameters } from "./request.js";
import { renderCode } from "./snippets.js";
import { ssePayloads } from "./sse.js";
import { activeColumns, modelFor, modelInfo, state } from "./state.js";

export async function send() {
  if (state.busy) return;
  const text = $("message").value.trim();
  if (!text && !state.image) return;
  try { parameters(); } catch (e) { formError(e.message); return; }
  for (const col of activeColumns()) state.columns[col].push({ role: "user", text, image: state.image });
  $("message").value = "";
  clearImage();
  renderAll();
  await generate();
}

// A new answer to the last user message, in place of the answers after it.
export async function regenerate() {
  if (state.busy) return;
  for (const col of activeColumns()) {
    const turns = state.columns[col];
    while (turns.length && turns[turns.length - 1].role !== "user") turns.pop();
  }
  renderAll();
  await generate();
}

export function stop() {
  state.controller?.abort();
}

export function clearChat() {
  stop();
  state.columns = { a: [], b: [] };
  state.lastRequest = null;
  renderAll();
}

// Replaces a user message by an editor; Resend cuts the conversation there in every column.
export function startEdit(col, index, node) {
  if (state.busy) return;
  const turn = state.columns[col][index];
  const area = el("textarea", { class: "edit-area", rows: 3, "aria-label": "Edit message" });
  area.value = turn.text;
  const save = el("button", { type: "button", class: "primary", text: "Resend" });
  const cancel = el("button", { type: "button", text: "Cancel" });
  const box = el("div", { class: "edit-box" }, area, el("div", { class: "actions" }, save, cancel));
  node.replaceChildren(el("div", { class: "msg-role", text: "user (editing)" }), box);
  area.focus();
  cancel.addEventListener("click", renderAll);
  area.addEventListener("keydown", (e) => {
    if (e.key === "Escape") renderAll();
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); save.click(); }
  });
  save.addEventListener("click", () => {
    const text = area.value.trim();
    if (!text) return;
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

async function generate() {
  let bodies;
  try {
    bodies = activeColumns().map((col) => [col, buildBody(modelFor(col), state.columns[col])]);
  } catch (e) {
    formError(e.message);
    return;
  }
  formError("");
  state.busy = true;
  state.controller = new AbortController();
  state.lastRequest = bodies[0][1];
  updateButtons();
  renderCode();
  try {
    await Promise.all(bodies.map(([col, body]) => streamAnswer(col, body, state.controller.signal)));
  } finally {
    state.busy = false;
    state.controller = null;
    updateButtons();
    loadModels();
  }
}

async function streamAnswer(col, body, signal) {
  const turn = newAnswer(!!body.logprobs);
  state.columns[col].push(turn);
  appendTurn(col, turn);
  try {
    const response = await openStream(body, turn, signal);
    if (!response.ok) {
      turn.error = await responseError(response);
    } else {
      for await (const data of ssePayloads(response)) {
        try { applyChunk(turn, JSON.parse(data)); } catch { turn.error = "bad event: " + data; }
        schedulePaint(turn);
      }
    }
  } catch (e) {
    if (e.name === "AbortError") turn.stopped = true;
    else turn.error = "request failed: " + e.message;
  }
  finishAnswer(turn);
  paintAssistant(turn);
}

// The response once the model is loaded. Until then the answer's place shows the load's
// progress: the page asks the server to wait (x-wait-for-model), and should the server's own
// wait run out (503, error_type "loading"), asks again. Stop aborts the wait like a stream.
async function openStream(body, turn, signal) {
  const known = modelInfo(body.model);
  if (known && known.state !== "ready") showLoading(turn, loadingText(body.model, known));
  for (;;) {
    const answered = new AbortController();
    watchLoading(body.model, turn, answered.signal);
    let response;
    try {
      response = await fetch(API + "chat/completions", {
        method: "POST", headers: headers(WAIT_HEADER), body: JSON.stringify(body), signal,
      });
    } finally {
      answered.abort();
    }
    const loading = response.status === 503 && (await response.clone().json().catch(() => null));
    if (loading?.error_type !== "loading") {
      showLoading(turn, "");
      return response;
    }
    showLoading(turn, loadingText(body.model, { state: "loading", estimated_time: loading.estimated_time }));
    await pause(1000, signal);
    signal.throwIfAborted();
  }
}

// Polls the model list while the request waits, for the load's estimated time.
async function watchLoading(model, turn, answered) {
  for (;;) {
    await pause(1000, answered);
    if (answered.aborted) return;
    await loadModels();
    const m = modelInfo(model);
    if (answered.aborted) return;
    if (m && m.state !== "ready") showLoading(turn, loadingText(model, m));
  }
}

function showLoading(turn, text) {
  turn.waiting = text;
  schedulePaint(turn);
}

async function responseError(response) {
  const raw = await response.text();
  let obj = raw;
  try { obj = JSON.parse(raw); } catch { /* not JSON */ }
  return errorText(obj, response.status);
}
