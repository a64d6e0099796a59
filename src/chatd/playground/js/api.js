// This server's /v1 API: headers (the API key the user typed), the model list, error text.
import { $ } from "./dom.js";

export const API = location.origin + "/v1/";
const KEY_STORAGE = "chatd.playground.apiKey";

export function apiKey() {
  return $("api-key").value.trim();
}

export function restoreApiKey() {
  $("api-key").value = localStorage.getItem(KEY_STORAGE) || "";
}

export function storeApiKey() {
  const key = apiKey();
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
}

// The page always waits for a model that is still loading rather than failing with 503.
export const WAIT_HEADER = { "x-wait-for-model": "true" };

export function headers(extra = {}) {
  const h = { "content-type": "application/json", ...extra };
  const key = apiKey();
  if (key) h.authorization = "Bearer " + key;
  return h;
}

// {ok, models} or {ok: false, message} for the user.
export async function fetchModels() {
  try {
    const r = await fetch(API + "models", { headers: headers() });
    const data = await r.json().catch(() => ({}));
    if (!r.ok) {
      const hint = r.status === 401 ? " — enter an API key" : "";
      return { ok: false, message: errorText(data, r.status) + hint };
    }
    return { ok: true, models: data.data || [] };
  } catch (e) {
    return { ok: false, message: "cannot reach the server: " + e.message };
  }
}

// An error body ({error, error_type} or anything else) as one line.
export function errorText(obj, status) {
  if (obj && typeof obj === "object" && obj.error) {
    const err = typeof obj.error === "string" ? obj.error : obj.error.message || JSON.stringify(obj.error);
    const text = obj.error_type ? `${err} (${obj.error_type})` : err;
    return status ? `${status}: ${text}` : text;
  }
  return `${status || ""} ${typeof obj === "string" ? obj : JSON.stringify(obj)}`.trim();
}
