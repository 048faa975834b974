// The cards: a description (rating, status, text) and an artwork with its styles side by side.
import { $, $$, LABELS, applyLabels, formatTime, fromTemplate, label, plain, state, styleOrder, styleTitle, t } from "./words.js";

const descriptions = new Map(); // id -> the description as the API last returned it
const artworks = new Map(); // id -> the artwork as the API last returned it

export function described(id) {
  return descriptions.get(id);
}

export function renderDescription(d) {
  const card = fromTemplate("tpl-description");
  card.dataset.id = d.id;
  for (const star of $$(".star", card)) star.dataset.descId = d.id;
  fillDescription(card, d);
  return card;
}

export function fillDescription(card, d) {
  if (!d) return;
  descriptions.set(d.id, d);
  card.dataset.status = d.status;
  label($(".badge.status", card), `status_${d.status}`);
  const language = $(".badge.lang", card);
  if (LABELS.zh[`lang_${d.language}`]) label(language, `lang_${d.language}`);
  else plain(language, d.language);
  $(".badge.edited", card).hidden = d.edited_text === null;
  const action = (d.safety && d.safety.action) || "allow";
  const warn = $(".badge.warn", card);
  warn.hidden = action === "allow";
  if (!warn.hidden) label(warn, action === "mask" ? "masked" : "withheld");
  const time = $(".desc-time", card);
  time.dateTime = d.created_at;
  time.textContent = formatTime(d.created_at);
  $(".desc-text", card).textContent = d.final_text;
  const original = $(".original", card);
  original.hidden = d.edited_text === null;
  $("p", original).textContent = d.text;
  const shown = d.rating_avg === null ? 0 : Math.round(d.rating_avg);
  for (const star of $$(".star", card)) {
    const n = Number(star.dataset.rating);
    star.classList.toggle("on", n <= shown);
    star.setAttribute("aria-label", t("star", { n }));
    star.setAttribute("aria-pressed", String(n === shown));
  }
  const summary = $(".rating-summary", card);
  if (d.rating_avg === null) label(summary, "not_rated");
  else {
    const key = d.rating_count === 1 ? "rating_summary_one" : "rating_summary";
    plain(summary, t(key, { avg: d.rating_avg.toFixed(1), n: d.rating_count }));
  }
  $("[data-action=approve]", card).hidden = d.status === "approved";
  $("[data-action=reject]", card).hidden = d.status === "rejected";
  $("[data-action=draft]", card).hidden = d.status === "draft";
  const model = d.adapter ? `${d.model} + ${d.adapter}` : d.model;
  $(".desc-model", card).textContent = `${model} · ${Math.round(d.latency_ms)} ms`;
}

export function updateEverywhere(d) {
  for (const card of $$(".description[data-id]")) if (card.dataset.id === d.id) fillDescription(card, d);
}

export function fillCaption(node, art) {
  if (!art) return;
  const meta = art.metadata || {};
  const title = $(".art-title", node);
  if (meta.title) plain(title, meta.title);
  else label(title, "untitled");
  const parts = [meta.artist, meta.year, meta.medium, meta.collection].filter(Boolean);
  if (art.source && !parts.length) parts.push(art.source);
  $(".art-meta", node).textContent = parts.join(" · ");
  $(".art-id", node).textContent = art.id;
}

export function styleColumn(style) {
  const column = fromTemplate("tpl-column");
  column.dataset.style = style;
  const heading = $(".style-name", column);
  heading.dataset.styleTitle = style;
  heading.textContent = styleTitle(style);
  return column;
}

export function renderArtwork(art) {
  artworks.set(art.id, art);
  const node = fromTemplate("tpl-artwork");
  node.dataset.artwork = art.id;
  const base = `v1/artworks/${encodeURIComponent(art.id)}`;
  $("img", node).src = `${base}/thumbnail`;
  $(".art-image", node).href = art.has_image ? `${base}/image` : `${base}/thumbnail`;
  fillCaption(node, art);
  const byStyle = new Map();
  for (const d of art.descriptions) {
    if (!byStyle.has(d.style)) byStyle.set(d.style, []);
    byStyle.get(d.style).push(d);
  }
  const rank = (s) => (styleOrder.includes(s) ? styleOrder.indexOf(s) : styleOrder.length);
  const grid = $(".styles-grid", node);
  for (const style of [...byStyle.keys()].sort((a, b) => rank(a) - rank(b) || a.localeCompare(b))) {
    const column = styleColumn(style);
    for (const d of byStyle.get(style)) $(".style-cards", column).append(renderDescription(d));
    grid.append(column);
  }
  return node;
}

export function setLang(next, remember) {
  state.lang = next;
  document.documentElement.lang = state.lang === "zh" ? "zh-CN" : "en";
  document.documentElement.dataset.lang = state.lang;
  document.title = `${t("app_name")} · ${t("app_title")}`;
  if (remember) {
    try {
      localStorage.setItem("huayu_lang", state.lang);
    } catch (e) {
      // private windows may refuse storage; the cookie below still carries the choice
    }
    document.cookie = `huayu_lang=${state.lang}; path=/; max-age=31536000; samesite=lax`;
  }
  applyLabels(document);
  for (const card of $$(".description[data-id]")) fillDescription(card, descriptions.get(card.dataset.id));
  for (const node of $$(".artwork[data-artwork]")) fillCaption(node, artworks.get(node.dataset.artwork));
}
