// "View code": the current request as huggingface_hub, openai and curl snippets.
import { API, apiKey, WAIT_HEADER } from "./api.js";
import { $ } from "./dom.js";
import { buildBody } from "./request.js";
import { state } from "./state.js";

// A Python literal: on one line when it fits in 88 columns, else one item per line.
function py(value, indent = 0) {
  const inline = pyInline(value);
  if (inline.length + 4 * (indent + 1) <= 88 || value === null || typeof value !== "object") return inline;
  const pad = "    ".repeat(indent + 1);
  const end = "    ".repeat(indent);
  if (Array.isArray(value)) {
    if (!value.length) return "[]";
    return "[\n" + value.map((v) => pad + py(v, indent + 1) + ",\n").join("") + end + "]";
  }
  const keys = Object.keys(value);
  if (!keys.length) return "{}";
  return "{\n" + keys.map((k) => `${pad}${JSON.stringify(k)}: ${py(value[k], indent + 1)},\n`).join("") + end + "}";
}

function pyInline(value) {
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "number") return String(value);
  if (typeof value === "string") return JSON.stringify(value);
  if (Array.isArray(value)) return "[" + value.map(pyInline).join(", ") + "]";
  return "{" + Object.entries(value).map(([k, v]) => `${JSON.stringify(k)}: ${pyInline(v)}`).join(", ") + "}";
}

function kwargs(body) {
  return Object.entries(body).map(([k, v]) => `    ${k}=${py(v, 1)},\n`).join("");
}

function shellQuote(s) {
  return "'" + s.replace(/'/g, "'\\''") + "'";
}

// The page sends x-wait-for-model with every request, and so do the snippets.
function snippets(body) {
  const keyed = !!apiKey();
  const pyKey = keyed ? 'os.environ["CHATD_API_KEY"]' : '"unused"';
  const imp = keyed ? "import os\n\n" : "";
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
    `    headers=${py(WAIT_HEADER, 1)},\n)\n` +
    "stream = client.chat.completions.create(\n" + kwargs(body) + ")\n" + loop;
  const openai =
    imp + "from openai import OpenAI\n\n" +
    `client = OpenAI(base_url=${py(API)}, api_key=${pyKey})\n` +
    "stream = client.chat.completions.create(\n" + kwargs(body) +
    `    extra_headers=${py(WAIT_HEADER, 1)},\n)\n` + loop;
  let curl = `curl -N ${API}chat/completions \\\n  -H "Content-Type: application/json" \\\n`;
  if (keyed) curl += '  -H "Authorization: Bearer $CHATD_API_KEY" \\\n';
  for (const [name, value] of Object.entries(WAIT_HEADER)) curl += `  -H "${name}: ${value}" \\\n`;
  curl += "  -d " + shellQuote(JSON.stringify(body, null, 2));
  return { hf, openai, curl };
}

// Fills the panel (when open) with the last request sent, or the one the next Send makes.
export function renderCode() {
  if ($("code-panel").hidden) return;
  let body, note;
  const pending = $("message").value.trim();
  if (state.lastRequest && !pending) {
    body = state.lastRequest;
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
    note = "The request the next Send makes.";
  }
  if (apiKey()) note += " Set CHATD_API_KEY in your environment to your key.";
  $("code-note").textContent = note;
  const s = snippets(body);
  $("code-hf").textContent = s.hf;
  $("code-openai").textContent = s.openai;
  $("code-curl").textContent = s.curl;
}
