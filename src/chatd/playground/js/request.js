// The chat-completion request body, from the settings panel and a conversation.
import { $ } from "./dom.js";

function num(id, integer = false) {
  const raw = $(id).value.trim();
  if (raw === "") return undefined;
  const v = integer ? parseInt(raw, 10) : parseFloat(raw);
  return Number.isFinite(v) ? v : undefined;
}

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

function jsonField(text, what) {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`${what}: ${e.message}`);
  }
}

// Parameters from the settings panel; throws Error with a message for the user.
export function parameters() {
  const p = {};
  const numbers = [
    ["temperature", "temperature"], ["top_p", "top-p"], ["max_tokens", "max-tokens", true],
    ["seed", "seed", true], ["frequency_penalty", "frequency-penalty"],
    ["presence_penalty", "presence-penalty"],
  ];
  for (const [name, id, integer] of numbers) {
    const v = num(id, integer);
    if (v !== undefined) p[name] = v;
  }
  const stop = $("stop-seqs").value.split(/[\n,]/).map((s) => s.trim()).filter(Boolean);
  if (stop.length) p.stop = stop;
  if ($("logprobs").checked) {
    p.logprobs = true;
    const top = num("top-logprobs", true);
    if (top !== undefined) p.top_logprobs = top;
  }
  const kind = $("format-type").value;
  const value = $("format-value").value;
  if (kind === "json_schema") {
    const schema = jsonField(value, "JSON schema");
    p.response_format = { type: "json_schema", json_schema: { name: "schema", schema } };
  } else if (kind === "regex") {
    if (!value) throw new Error("regex: enter a pattern");
    p.response_format = { type: "regex", value };
  }
  const toolsText = $("tools").value.trim();
  if (toolsText) {
    const tools = jsonField(toolsText, "tools");
    p.tools = Array.isArray(tools) ? tools : [tools];
    p.tool_choice = $("tool-choice").value;
  }
  return p;
}

export function buildBody(model, turns) {
  return {
    model,
    messages: apiMessages(turns),
    stream: true,
    stream_options: { include_usage: true },
    ...parameters(),
  };
}
