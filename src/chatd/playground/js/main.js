// chatd playground: ES modules, no build step; talks to this server's own /v1 API.
import { restoreApiKey, storeApiKey } from "./api.js";
import { clearChat, regenerate, send, startEdit, stop } from "./chat.js";
import { $ } from "./dom.js";
import { initImages } from "./images.js";
import { loadModels, showModelStatus } from "./models.js";
import { initTokenTips, renderColumn, updateButtons } from "./render.js";
import { renderCode } from "./snippets.js";
import { comparing, state } from "./state.js";

function toggleCompare() {
  const on = comparing();
  $("model-b-field").hidden = !on;
  $("column-b").hidden = !on;
  $("column-a-title").hidden = !on;
  $("columns").dataset.compare = String(on);
  if (on) {
    state.columns.b = state.columns.a.map((t) => ({ ...t, view: null }));
    renderColumn("b");
  }
  showModelStatus();
}

function showCode(open) {
  $("code-panel").hidden = !open;
  $("view-code").setAttribute("aria-expanded", String(open));
  renderCode();
  (open ? $("close-code") : $("view-code")).focus();
}

function init() {
  restoreApiKey();
  $("api-key").addEventListener("change", () => { storeApiKey(); loadModels(); });
  $("model").addEventListener("change", () => { showModelStatus(); renderCode(); });
  $("model-b").addEventListener("change", showModelStatus);
  $("model").addEventListener("focus", loadModels);
  $("compare").addEventListener("change", toggleCompare);
  $("composer").addEventListener("submit", (e) => { e.preventDefault(); send(); });
  $("message").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
  });
  $("stop").addEventListener("click", stop);
  $("regenerate").addEventListener("click", regenerate);
  $("clear").addEventListener("click", clearChat);
  $("columns").addEventListener("click", (e) => {
    const edit = e.target.closest("button.edit");
    if (edit) startEdit(edit.dataset.col, Number(edit.dataset.index), edit.closest(".msg"));
  });
  initImages();
  initTokenTips();
  $("format-type").addEventListener("change", () => {
    $("format-value").placeholder = $("format-type").value === "regex" ? "[A-Z][a-z]+" :
      '{"type": "object", "properties": {"name": {"type": "string"}}}';
  });
  $("view-code").addEventListener("click", () => showCode($("code-panel").hidden));
  $("close-code").addEventListener("click", () => showCode(false));
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && !$("code-panel").hidden) showCode(false);
  });
  document.querySelector(".settings").addEventListener("change", renderCode);
  if (matchMedia("(max-width: 760px)").matches) {
    for (const d of document.querySelectorAll(".settings details")) d.open = false;
  }
  updateButtons();
  loadModels();
}

init();
