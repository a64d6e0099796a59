// The model pickers and their states, refreshed from /v1/models (more often while one loads).
import { fetchModels } from "./api.js";
import { $, el } from "./dom.js";
import { comparing, modelInfo, state } from "./state.js";

const seconds = (s) => `${Math.ceil(s)} s`;

function stateLabel(m) {
  if (m.state === "loading" && m.estimated_time != null) return `loading, ~${seconds(m.estimated_time)}`;
  return m.state;
}

// What an answer shows in its place while its model loads (`m` may be undefined: not listed).
export function loadingText(id, m) {
  if (m?.state === "loading" && m.estimated_time != null) {
    return `Loading ${id}: about ${seconds(m.estimated_time)} to go…`;
  }
  return `Loading ${id}…`;
}

let timer = null;

export async function loadModels() {
  const result = await fetchModels();
  if (!result.ok) {
    $("model-status").textContent = result.message;
    return;
  }
  state.models = result.models;
  for (const id of ["model", "model-b"]) {
    const select = $(id);
    const prev = select.value;
    select.replaceChildren(...state.models.map((m) => el("option", { value: m.id, text: `${m.id} — ${stateLabel(m)}` })));
    if (prev && modelInfo(prev)) select.value = prev;
    else if (id === "model-b" && state.models.length > 1) select.value = state.models[1].id;
  }
  showModelStatus();
}

export function showModelStatus() {
  const pickers = [["model", "model-status"]];
  if (comparing()) pickers.push(["model-b", "model-b-status"]);
  let loading = false;
  for (const [select, out] of pickers) {
    const m = modelInfo($(select).value);
    $(out).textContent = m ? statusText(m) : "";
    $(out).dataset.state = m?.state || "";
    loading ||= m?.state === "loading";
  }
  if (comparing()) {
    $("column-a-title").textContent = $("model").value;
    $("column-b-title").textContent = $("model-b").value;
  }
  clearTimeout(timer);
  timer = setTimeout(loadModels, loading ? 1500 : 10000);
}

function statusText(m) {
  if (m.state === "loading") {
    return "state: loading" + (m.estimated_time != null ? `, ready in about ${seconds(m.estimated_time)}` : "");
  }
  if (m.state === "available") return "state: available (loads on first use; Send waits for it)";
  if (m.state === "failed") return "state: failed: " + (m.error || "load failed");
  return "state: " + m.state;
}
