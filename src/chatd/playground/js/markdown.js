// Model answers as Markdown. Model output is untrusted: raw HTML in it is shown as text (marked
// renders html tokens escaped), and the HTML marked makes is sanitised by DOMPurify anyway.
// Images are shown as links, so that an answer cannot make the browser fetch anything.
import { Marked } from "../vendor/marked/marked.esm.js";
import DOMPurify from "../vendor/dompurify/purify.es.mjs";
import { el } from "./dom.js";

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const escapeHtml = (text) => text.replace(/[&<>"']/g, (c) => ESCAPES[c]);

const marked = new Marked({
  gfm: true,
  breaks: true, // a chat answer's line breaks are meant (poems, addresses)
  renderer: {
    html({ text, block }) {
      return block ? `<p>${escapeHtml(text)}</p>` : escapeHtml(text);
    },
    image({ href, text }) {
      return `<a href="${escapeHtml(href)}">${escapeHtml(text || href)}</a>`;
    },
  },
});

const PURIFY = { FORBID_TAGS: ["img", "style", "form"], FORBID_ATTR: ["style"] };

// Replaces the content of `target` with `text` rendered as Markdown.
export function renderMarkdown(target, text) {
  target.innerHTML = DOMPurify.sanitize(marked.parse(text), PURIFY);
  for (const pre of target.querySelectorAll("pre")) decorateCode(pre);
  for (const a of target.querySelectorAll("a[href]")) {
    a.target = "_blank";
    a.rel = "noopener noreferrer";
  }
}

// A code block gets its language (from the fence) and a copy button. Their labels are CSS
// content, so that the answer's text stays the model's text.
function decorateCode(pre) {
  const code = pre.querySelector("code");
  const lang = /language-(\S+)/.exec(code?.className || "")?.[1] || "";
  const copy = el("button", { type: "button", class: "copy", "data-label": "Copy", "aria-label": "Copy code" });
  copy.addEventListener("click", () => copyText(copy, pre.textContent));
  const bar = el("div", { class: "code-bar" }, el("span", { class: "code-lang", "data-label": lang }), copy);
  const block = el("div", { class: "code-block" });
  pre.replaceWith(block);
  block.append(bar, pre);
}

async function copyText(button, text) {
  try {
    await navigator.clipboard.writeText(text);
    button.dataset.label = "Copied";
  } catch {
    button.dataset.label = "Copy failed";
  }
  setTimeout(() => { button.dataset.label = "Copy"; }, 1500);
}
