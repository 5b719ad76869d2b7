// The console's shell: the API key field and the three views. Each view lives in its own module.
import { apiKey, showError } from "./api.js";
import { initBatches, refreshBatches } from "./batches.js";
import { $ } from "./dom.js";
import { initModels, refreshModels } from "./models.js";
import { initPredict, refreshDetectors } from "./predict.js";

const onShow = { predict: refreshDetectors, batches: refreshBatches, models: refreshModels };

function show(view) {
  if (!(view in onShow)) view = "predict";
  for (const section of document.querySelectorAll(".view")) section.hidden = section.id !== view;
  for (const tab of document.querySelectorAll(".tab")) {
    if (tab.dataset.view === view) tab.setAttribute("aria-current", "page");
    else tab.removeAttribute("aria-current");
  }
  history.replaceState(null, "", `#${view}`);
  refresh(view);
}

function refresh(view) {
  const load = onShow[view];
  if (load && apiKey.get()) load().catch((err) => showError($(`${view}-error`), err));
}

function keyChanged() {
  $("key-state").textContent = apiKey.get() ? "Key set for this tab" : "No key";
  const current = document.querySelector(".tab[aria-current]");
  if (current) refresh(current.dataset.view);
}

function init() {
  const input = $("key");
  const save = () => {
    const value = input.value.trim();
    if (!value) return;
    apiKey.set(value);
    input.value = ""; // kept in sessionStorage only, not in the page
    keyChanged();
  };
  $("key-save").addEventListener("click", save);
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter") save();
  });
  $("key-forget").addEventListener("click", () => {
    apiKey.clear();
    keyChanged();
  });
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => show(tab.dataset.view));
  initPredict();
  initBatches();
  initModels();
  $("key-state").textContent = apiKey.get() ? "Key set for this tab" : "No key";
  show(location.hash.slice(1));
}

init();
