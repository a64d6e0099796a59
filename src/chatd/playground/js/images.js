// The image to attach to the next message: a file (read as a data URL) or a URL.
import { $, el, formError } from "./dom.js";
import { state } from "./state.js";

function setImage(url, label) {
  state.image = url;
  $("image-preview").replaceChildren();
  if (url) {
    $("image-preview").append(el("img", { src: url, alt: "image to send: " + label }), el("span", { text: label }));
  }
  $("clear-image").hidden = !url;
}

export function clearImage() {
  setImage(null, "");
  $("image-file").value = "";
  $("image-url").value = "";
}

export function initImages() {
  $("image-file").addEventListener("change", () => {
    const file = $("image-file").files[0];
    if (!file) return;
    const reader = new FileReader();
    reader.onload = () => { $("image-url").value = ""; setImage(reader.result, file.name); };
    reader.onerror = () => formError("cannot read " + file.name);
    reader.readAsDataURL(file);
  });
  $("image-url").addEventListener("change", () => {
    const url = $("image-url").value.trim();
    $("image-file").value = "";
    setImage(url || null, url);
  });
  $("clear-image").addEventListener("click", clearImage);
}
