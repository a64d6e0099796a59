// The page's state: the conversations, the request in flight, the image to attach.
import { $ } from "./dom.js";

export const state = {
  models: [], // the last /v1/models list
  // One conversation per column: a list of turns.
  // user: {role, text, image}; assistant: {role, content, tool_calls, tokens, error, readout, waiting}
  columns: { a: [], b: [] },
  controller: null, // aborts the requests in flight (Stop)
  busy: false,
  lastRequest: null, // the body of the last request sent (first column)
  image: null, // URL to attach (data: or http)
};

export function comparing() {
  return $("compare").checked;
}

export function activeColumns() {
  return comparing() ? ["a", "b"] : ["a"];
}

export function modelFor(col) {
  return col === "a" ? $("model").value : $("model-b").value;
}

export function modelInfo(id) {
  return state.models.find((m) => m.id === id);
}
