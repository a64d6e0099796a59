// DOM helpers shared by every module.

export const $ = (id) => document.getElementById(id);

// An element with attributes ("class", "text", "on<event>" handlers, plain attributes) and children.
export function el(tag, attrs = {}, ...children) {
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

// Resolves after `ms`, or at once when `signal` aborts.
export function pause(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

// The message under the composer (a bad setting, an unreadable file); "" clears it.
export function formError(text) {
  $("form-error").textContent = text || "";
}
