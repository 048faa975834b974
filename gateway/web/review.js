// The review page: gallery, rating, editing and approval over the JSON API (gallery.js), and new
// descriptions streamed from /v1/chat/completions (compose.js). No build step: native modules.
import { setLang } from "./cards.js";
import "./compose.js";
import { loadGallery, restoreFilters } from "./gallery.js";
import { $, state } from "./words.js";

$("#lang-toggle").addEventListener("click", () => setLang(state.lang === "zh" ? "en" : "zh", true));
let saved = null;
try {
  saved = localStorage.getItem("huayu_lang");
} catch (e) {
  saved = null;
}
if ((saved === "zh" || saved === "en") && saved !== state.lang) setLang(saved, true);
restoreFilters();
loadGallery(true);
