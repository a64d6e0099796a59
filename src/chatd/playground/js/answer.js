// An assistant turn built from the chunks of a stream, and its readout (usage, TTFT, tokens/s).
import { errorText } from "./api.js";

export function newAnswer(showTokens) {
  return {
    role: "assistant", content: "", tool_calls: [], tokens: [], error: "", readout: "",
    showTokens, streaming: true, waiting: "", started: performance.now(), firstAt: null,
    deltas: 0, usage: null,
  };
}

// Adds one parsed chunk to the turn.
export function applyChunk(turn, obj) {
  if (obj.error) {
    turn.error = errorText(obj);
    return;
  }
  if (obj.usage) turn.usage = obj.usage;
  const choice = (obj.choices || [])[0];
  if (!choice) return;
  const delta = choice.delta || {};
  if (delta.content) {
    turn.firstAt ??= performance.now();
    turn.deltas++;
    turn.content += delta.content;
    turn.tokens.push(...tokens(delta.content, choice.logprobs?.content || []));
  }
  for (const tc of delta.tool_calls || []) {
    turn.firstAt ??= performance.now();
    turn.deltas++;
    const call = (turn.tool_calls[tc.index ?? 0] ||= { id: "", type: "function", function: { name: "", arguments: "" } });
    if (tc.id) call.id = tc.id;
    if (tc.function?.name) call.function.name += tc.function.name;
    if (tc.function?.arguments) call.function.arguments += tc.function.arguments;
  }
  if (choice.finish_reason) turn.finish = choice.finish_reason;
}

// The delta's tokens with their logprobs: one per entry when the entries spell the text,
// else the whole delta as one token with the summed logprob.
function tokens(text, entries) {
  if (!entries.length) return [{ text }];
  const joined = entries.map((e) => e.token).join("");
  if (joined === text) {
    return entries.map((e) => ({ text: e.token, token: e.token, logprob: e.logprob, top: e.top_logprobs }));
  }
  const logprob = entries.reduce((s, e) => s + e.logprob, 0);
  return [{ text, token: joined, logprob, top: entries[0].top_logprobs }];
}

// The turn once its stream has ended (or was stopped).
export function finishAnswer(turn) {
  const ended = performance.now();
  const parts = [];
  if (turn.stopped) parts.push("stopped");
  const usage = turn.usage;
  if (usage) parts.push(`${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens`);
  if (turn.firstAt !== null) {
    parts.push(`TTFT ${((turn.firstAt - turn.started) / 1000).toFixed(2)} s`);
    const n = usage ? usage.completion_tokens : turn.deltas;
    const secs = (ended - turn.firstAt) / 1000;
    if (secs > 0 && n > 1) parts.push(`${((n - 1) / secs).toFixed(1)} tokens/s`);
  }
  if (turn.finish) parts.push(`finish: ${turn.finish}`);
  turn.readout = parts.join(" · ");
  if (!turn.tool_calls.length) delete turn.tool_calls;
  turn.streaming = false;
  turn.waiting = "";
}
