// Words, the API and small DOM helpers shared by the review page's modules.
// Model and user text only ever goes into the page through textContent.

export const config = JSON.parse(document.getElementById("huayu-config").textContent);
export const LABELS = config.labels;
export const styleInfo = new Map(config.styles.map((s) => [s.name, s]));
export const styleOrder = config.styles.map((s) => s.name);
export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

export const state = { lang: document.documentElement.dataset.lang === "en" ? "en" : "zh" };

export function t(key, vars) {
  let text = (LABELS[state.lang] || LABELS.zh)[key];
  if (text === undefined) return key;
  for (const [k, v] of Object.entries(vars || {})) text = text.replaceAll(`{${k}}`, String(v));
  return text;
}

export function styleTitle(name) {
  const s = styleInfo.get(name);
  return s ? s.title[state.lang] : name;
}

export function applyLabels(root) {
  for (const el of $$("[data-i18n]", root)) {
    el.textContent = t(el.dataset.i18n, el.dataset.n === undefined ? undefined : { n: el.dataset.n });
  }
  for (const el of $$("[data-style-title]", root)) el.textContent = styleTitle(el.dataset.styleTitle);
}
export function label(el, key, vars) {
  // remembered on the element so a change of language can re-label it
  el.dataset.i18n = key;
  if (vars && vars.n !== undefined) el.dataset.n = vars.n;
  else delete el.dataset.n;
  el.textContent = t(key, vars);
}

export function plain(el, text) {
  delete el.dataset.i18n;
  el.textContent = text;
}

export function formatTime(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  return date.toLocaleString(state.lang === "zh" ? "zh-CN" : "en-GB", { dateStyle: "medium", timeStyle: "short" });
}

// ---- API ---------------------------------------------------------------------------------

export async function api(path, options = {}) {
  const init = { method: options.method || "GET", headers: { accept: "application/json" } };
  if (options.body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(options.body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (e) {
    data = null;
  }
  if (!response.ok) {
    const error = new Error((data && data.error && data.error.message) || `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return data;
}

export function showError(el, error) {
  el.hidden = false;
  plain(el, t("error", { message: error.message || String(error) }));
}

export function fromTemplate(id) {
  const node = document.getElementById(id).content.firstElementChild.cloneNode(true);
  applyLabels(node);
  return node;
}
