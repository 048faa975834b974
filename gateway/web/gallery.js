// The gallery (filtered, paged) and the review actions: rate, edit, approve, reject.
import { described, renderArtwork, updateEverywhere } from "./cards.js";
import { $, api, config, label, plain, showError } from "./words.js";

const PAGE = 12;
const PER_STYLE = 3;
const gallery = { offset: 0, total: 0, seq: 0 };

export const list = $("#artworks");
const filters = $("#filters");
const loadMore = $("#load-more");
export const galleryMessage = $("#gallery-message");

function filterParams() {
  const params = new URLSearchParams();
  for (const [k, v] of new FormData(filters)) if (v) params.set(k, v);
  return params;
}

export async function loadGallery(reset) {
  if (!config.store) return;
  const seq = ++gallery.seq; // a newer load wins over a slower older one
  if (reset) gallery.offset = 0;
  const params = filterParams();
  params.set("limit", PAGE);
  params.set("offset", gallery.offset);
  params.set("per_style", PER_STYLE);
  if (reset && !list.children.length) label(galleryMessage, "loading");
  try {
    const page = await api(`v1/artworks?${params}`);
    if (seq !== gallery.seq) return;
    if (reset) list.replaceChildren();
    for (const art of page.data) list.append(renderArtwork(art));
    gallery.offset += page.data.length;
    gallery.total = page.total;
    label($("#artwork-count"), "artwork_count", { n: page.total });
    loadMore.hidden = gallery.offset >= page.total;
    if (page.total) plain(galleryMessage, "");
    else label(galleryMessage, "empty");
  } catch (error) {
    if (seq === gallery.seq) showError(galleryMessage, error);
  }
}

export function restoreFilters() {
  const params = new URLSearchParams(location.search);
  for (const el of filters.elements) if (params.has(el.name)) el.value = params.get(el.name);
}

filters.addEventListener("change", () => {
  const params = filterParams();
  history.replaceState(null, "", params.size ? `?${params}` : location.pathname);
  loadGallery(true);
});
loadMore.addEventListener("click", () => loadGallery(false));

// ---- review actions ----------------------------------------------------------------------

async function act(card, request) {
  const error = $(".desc-error", card);
  error.hidden = true;
  card.classList.add("busy");
  try {
    const d = await request();
    updateEverywhere(d);
    return true;
  } catch (e) {
    showError(error, e);
    return false;
  } finally {
    card.classList.remove("busy");
  }
}

function openEditor(card, open) {
  const editor = $(".desc-editor", card);
  editor.hidden = !open;
  $(".desc-text", card).hidden = open;
  card.classList.toggle("editing", open);
  if (open) {
    const area = $("textarea", editor);
    area.value = described(card.dataset.id).final_text;
    area.focus();
  }
}

document.addEventListener("click", async (event) => {
  const star = event.target.closest(".description .star");
  const button = event.target.closest(".description [data-action]");
  const card = event.target.closest(".description[data-id]");
  if (!card || card.classList.contains("busy")) return;
  const path = `v1/descriptions/${encodeURIComponent(card.dataset.id)}`;
  if (star) {
    const rating = Number(star.dataset.rating);
    await act(card, async () => (await api(`${path}/feedback`, { method: "POST", body: { rating } })).description);
    return;
  }
  if (!button) return;
  const action = button.dataset.action;
  if (action === "edit") openEditor(card, true);
  else if (action === "cancel") openEditor(card, false);
  else if (action === "save") {
    const text = $("textarea", card).value;
    if (await act(card, () => api(path, { method: "PATCH", body: { text } }))) openEditor(card, false);
  } else {
    const status = { approve: "approved", reject: "rejected", draft: "draft" }[action];
    if (status) await act(card, () => api(path, { method: "PATCH", body: { status } }));
  }
});
