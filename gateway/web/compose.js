// New descriptions: an uploaded image, one streamed chat completion per chosen style.
import { renderDescription, styleColumn } from "./cards.js";
import { galleryMessage, list, loadGallery } from "./gallery.js";
import { $, $$, api, config, fromTemplate, label, plain, showError } from "./words.js";

const form = $("#compose");
const fileInput = $("#file");
const preview = $("#preview");
const drop = $("#drop");
const message = $("#compose-message");
const generate = $("#generate");

function setMessage(key, vars) {
  if (key) label(message, key, vars);
  else plain(message, "");
}

function showPreview() {
  const file = fileInput.files[0];
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.hidden = !file;
  drop.classList.toggle("has-image", Boolean(file));
  if (file) preview.src = URL.createObjectURL(file);
  else preview.removeAttribute("src");
}

fileInput.addEventListener("change", showPreview);
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  if (event.dataTransfer.files.length) {
    fileInput.files = event.dataTransfer.files;
    showPreview();
  }
});

function readDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).replace(/^data:(application\/octet-stream)?;/, "data:image/jpeg;"));
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of block.split("\n")) {
        const payload = line.startsWith("data:") ? line.slice(5).trim() : "";
        if (payload && payload !== "[DONE]") yield JSON.parse(payload);
      }
    }
  }
}

async function waitStored(id) {
  // the gateway writes descriptions off the request path: they appear a moment after the stream
  const deadline = Date.now() + 20000;
  for (;;) {
    try {
      return await api(`v1/descriptions/${encodeURIComponent(id)}`);
    } catch (error) {
      if (error.status !== 404 || Date.now() > deadline) throw error;
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

async function streamInto(card, request) {
  const text = $(".desc-text", card);
  const error = $(".desc-error", card);
  const badge = $(".badge.progress", card);
  try {
    const response = await fetch("v1/chat/completions", {
      method: "POST",
      headers: { "content-type": "application/json", accept: "text/event-stream" },
      body: JSON.stringify(request),
    });
    if (!response.ok) {
      const body = await response.json().catch(() => null);
      throw new Error((body && body.error && body.error.message) || `HTTP ${response.status}`);
    }
    let final = null;
    for await (const chunk of sseEvents(response)) {
      if (chunk.error) throw new Error(chunk.error.message);
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) text.append(delta.content);
      if (chunk.huayu) final = chunk.huayu;
    }
    text.classList.remove("streaming");
    if (!final || !config.store) {
      badge.hidden = true;
      return;
    }
    label(badge, "saving");
    card.replaceWith(renderDescription(await waitStored(final.description_id)));
  } catch (e) {
    text.classList.remove("streaming");
    badge.hidden = true;
    showError(error, e);
  }
}

function pendingArtwork(file, styles, artwork) {
  const node = fromTemplate("tpl-artwork");
  node.classList.add("new");
  $("img", node).src = preview.src;
  $(".art-image", node).removeAttribute("href");
  $(".art-title", node).textContent = artwork.title || file.name;
  $(".art-meta", node).textContent = artwork.artist || "";
  const cards = new Map();
  for (const style of styles) {
    const column = styleColumn(style);
    const card = fromTemplate("tpl-pending");
    $(".style-cards", column).append(card);
    $(".styles-grid", node).append(column);
    cards.set(style, card);
  }
  return { node, cards };
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = fileInput.files[0];
  const styles = $$("input[name=style]:checked", form).map((el) => el.value);
  if (!file) return setMessage("pick_image");
  if (!styles.length) return setMessage("pick_style");
  // base64 makes the body a third larger than the file
  if ((file.size * 4) / 3 + 65536 > config.max_body_bytes) {
    const mb = (n) => (n / 1048576).toFixed(1);
    return setMessage("too_large", { size: mb(file.size), max: mb(config.max_body_bytes) });
  }
  const language = $("#desc-language").value;
  const artwork = {};
  for (const [key, el] of [["title", $("#art-title")], ["artist", $("#art-artist")]]) {
    if (el.value.trim()) artwork[key] = el.value.trim();
  }
  generate.disabled = true;
  setMessage("writing");
  try {
    const url = await readDataUrl(file);
    const { node, cards } = pendingArtwork(file, styles, artwork);
    list.prepend(node);
    plain(galleryMessage, "");
    const runs = styles.map((style) => {
      const request = {
        model: config.model,
        stream: true,
        style,
        language,
        messages: [{ role: "user", content: [{ type: "image_url", image_url: { url } }] }],
      };
      if (Object.keys(artwork).length) request.artwork = artwork;
      return streamInto(cards.get(style), request);
    });
    await Promise.all(runs);
    // the stored artwork (thumbnail, every style) replaces the preview, unless a curator is typing
    if (config.store && !$(".description.editing") && !$(".desc-error:not([hidden])", node)) await loadGallery(true);
    setMessage(null);
  } catch (e) {
    showError(message, e);
  } finally {
    generate.disabled = false;
  }
});
