// The Predict view: queue images (files or URLs) with per-image stages, run them over the NDJSON stream
// and fill one card per image as its line arrives; fields asked for (a response_schema) show per card and, merged,
// above the cards.
import { clearError, getJSON, ndjson, request, showError } from "./api.js";
import { $, dataUrl, dropZone, fmtMs, fmtPct, h } from "./dom.js";
import { FieldsError, initFields, itemFields, mergedFields, responseSchema } from "./fields.js";
import { Overlay, colorFor } from "./overlay.js";

const STAGES = { yolo: "YOLO", ocr: "OCR", llm: "LLM" };
let queue = []; // {name, file | url, preview, yolo, ocr, llm, llmSet, model}
let controller = null;
let detectors = []; // the server's detector names, for the per-image choice ("" = the default detector)

export function initPredict() {
  dropZone($("predict-drop"), $("predict-files"), addFiles);
  $("predict-add-urls").addEventListener("click", addUrls);
  $("predict-run").addEventListener("click", start);
  $("predict-stop").addEventListener("click", () => controller && controller.abort());
  $("predict-clear").addEventListener("click", clearAll);
  initFields();
  // A query asks the LLM (as `sight predict --query` does), unless an image's LLM box was set by hand.
  $("predict-query").addEventListener("input", () => {
    const asked = Boolean($("predict-query").value.trim());
    for (const item of queue) if (!item.llmSet) item.llm = asked;
    renderQueue();
  });
}

// The detectors an image may pick, from GET /v1/models (shown when the view opens with a key).
export async function refreshDetectors() {
  const { models } = await getJSON("v1/models");
  const shown = detectors.length > 1;
  detectors = [...new Set(models.filter((m) => m.task === "detect" && !m.shadow_of).map((m) => m.name))];
  // The choice shows with two detectors or more: otherwise the queue stays as it is, under the pointer.
  if (shown || detectors.length > 1) renderQueue();
}

function newItem(fields) {
  const llm = Boolean($("predict-query").value.trim());
  return { yolo: true, ocr: false, llm, llmSet: false, model: "", ...fields };
}

function addFiles(files) {
  for (const file of files) queue.push(newItem({ name: file.name, file, preview: URL.createObjectURL(file) }));
  renderQueue();
}

function addUrls() {
  const box = $("predict-urls");
  for (const url of box.value.split(/\s+/).filter(Boolean)) {
    const name = url.split(/[?#]/)[0].split("/").filter(Boolean).pop() || url;
    // No preview: the page's Content-Security-Policy loads images from this server only.
    queue.push(newItem({ name, url, preview: null }));
  }
  box.value = "";
  renderQueue();
}

function remove(item) {
  queue = queue.filter((i) => i !== item);
  renderQueue();
  $("predict-files").focus();
}

function clearAll() {
  if (controller) controller.abort();
  for (const item of queue) if (item.preview) URL.revokeObjectURL(item.preview);
  queue = [];
  renderQueue();
  $("predict-results").replaceChildren();
  $("predict-summary").replaceChildren();
  showMerged(null);
  clearError($("predict-error"));
}

function renderQueue() {
  $("predict-queue").replaceChildren(...queue.map((item) => h("li", { data: { name: item.name } },
    item.preview
      ? h("img", { class: "thumb", src: item.preview, alt: "", onerror: (e) => e.target.replaceWith(placeholder("?")) })
      : placeholder("URL"),
    h("span", { class: "name", title: item.url || item.name }, item.name),
    h("span", { class: "stages", role: "group", "aria-label": `Stages for ${item.name}` },
      Object.entries(STAGES).map(([stage, label]) => h("label", {},
        h("input", { type: "checkbox", checked: item[stage], data: { stage },
                     onchange: (e) => {
                       item[stage] = e.target.checked;
                       if (stage === "llm") item.llmSet = true;
                     } }),
        ` ${label}`))),
    detectors.length > 1 ? h("label", { class: "model" }, "Detector ",
      h("select", { "aria-label": `Detector for ${item.name}`, data: { role: "model" },
                    onchange: (e) => { item.model = e.target.value; } },
        h("option", { value: "", selected: !item.model }, "default"),
        detectors.map((name) => h("option", { value: name, selected: item.model === name }, name)))) : null,
    h("button", { type: "button", "aria-label": `Remove ${item.name}`, onclick: () => remove(item) }, "Remove"))));
}

const placeholder = (text) => h("span", { class: "thumb none", "aria-hidden": "true" }, text);

function options(item) {
  return { is_yolo: item.yolo, is_ocr: item.ocr, is_llm: item.llm, ...(item.model ? { yolo_model: item.model } : {}) };
}

// Files only: the multipart stream. Any URL: the JSON stream (v2), files going as base64. The schema (or null)
// is request-wide in both.
async function send(items, query, schema, signal) {
  if (items.every((i) => i.file)) {
    const form = new FormData();
    for (const item of items) {
      form.append("files", item.file, item.name);
      form.append("metadata", JSON.stringify(options(item)));
    }
    if (query) form.append("query", query);
    if (schema) form.append("response_schema", JSON.stringify(schema));
    return request("api/v1/inference/predict/stream", { method: "POST", body: form, signal });
  }
  const data = await Promise.all(items.map(async (item) => ({
    ...options(item), filename: item.name,
    ...(item.file ? { image_base64: await dataUrl(item.file) } : { image_url: item.url }),
  })));
  const json = { query: query || null, data, ...(schema ? { response_schema: schema } : {}) };
  return request("api/v1/inference/predict/stream/v2", { method: "POST", json, signal });
}

// The merged fields above the cards, or none.
function showMerged(complete, cards = []) {
  const box = $("predict-merged");
  box.replaceChildren(...(complete && complete.fields ? mergedFields(complete, cards) : []));
  box.hidden = !box.childElementCount;
}

async function start() {
  const error = $("predict-error");
  clearError(error);
  if (!queue.length) {
    showError(error, "Add images or image URLs first.");
    return;
  }
  let schema;
  try {
    schema = responseSchema();
  } catch (err) {
    if (!(err instanceof FieldsError)) throw err;
    showError(error, err);
    err.input.focus();
    return;
  }
  const items = queue.slice();
  const cards = items.map((item, index) => new Card(item, index));
  $("predict-results").replaceChildren(...cards.map((c) => c.el));
  showMerged(null);
  const summary = $("predict-summary");
  summary.replaceChildren("Running…");
  controller = new AbortController();
  $("predict-run").disabled = true;
  $("predict-stop").disabled = false;
  let complete = null;
  let started = false;
  let ending = "The stream ended before its last line.";
  try {
    const res = await send(items, $("predict-query").value.trim(), schema, controller.signal);
    for await (const event of ndjson(res)) {
      started = true;
      if (event.status === "complete") complete = event;
      else if (cards[event.index]) cards[event.index].update(event);
    }
  } catch (err) {
    if (err.name === "AbortError") {
      ending = "Stopped.";
    } else {
      showError(error, err);
      ending = "";
    }
  } finally {
    controller = null;
    $("predict-run").disabled = false;
    $("predict-stop").disabled = true;
  }
  if (!started && !complete) $("predict-results").replaceChildren(); // refused as a whole: the alert says why
  for (const card of cards) card.settle();
  summary.replaceChildren(...(complete ? describe(complete) : [ending]));
  showMerged(complete, cards);
}

function describe({ summary, answer, fields, duration_ms: ms }) {
  const parts = [h("p", {}, `${summary.done} done, ${summary.error} failed, of ${summary.total} in ${fmtMs(ms)}.`)];
  // With fields, the answer is their text ("serial_number: SN-… (label.png)"): the merged table says it all.
  if (answer && !fields) parts.push(h("p", { class: "answer" }, h("strong", {}, "Answer: "), answer));
  return parts;
}

class Card {
  constructor(item, index) {
    this.name = item.name;
    this.result = null; // the item's result, once its line came
    this.overlay = null; // its boxes over the image, once the result gave the image's size
    this.badge = h("span", { class: "badge" }, "queued");
    this.frame = h("div", { class: "frame" });
    this.body = h("div", { class: "body" });
    this.el = h("article", { class: "card", data: { index, name: item.name, status: "queued" } },
      h("header", {}, h("h3", {}, item.name), this.badge), this.frame, this.body);
    if (item.preview) {
      const img = h("img", { src: item.preview, alt: item.name });
      img.addEventListener("error", () => this.frame.classList.add("broken")); // undecodable: the API says why
      this.frame.append(img);
      this.hasImage = true;
    }
  }

  status(name) {
    this.el.dataset.status = name;
    this.badge.textContent = name;
  }

  update(event) {
    if (event.status === "processing") this.status("running");
    else if (event.status === "done") this.show(event.result);
    // A failed stage keeps what the others found: the line carries the item's results beside its error.
    else if (event.status === "error") {
      if (event.result) this.show(event.result);
      else this.fail(event.error);
    }
  }

  settle() {
    if (["queued", "running"].includes(this.el.dataset.status)) this.status("stopped");
  }

  fail(error) {
    this.status("error");
    this.body.append(h("p", { class: "item-error", data: { code: error.code } },
      h("code", {}, error.code), " ", error.message));
  }

  show(result) {
    this.status(result.status === "error" ? "error" : "done");
    this.result = result;
    const overlay = result.image ? this.frameOverlay(result.image) : null;
    this.overlay = overlay;
    if (result.fields) this.body.append(itemFields(result, overlay));
    if (result.yolo) this.body.append(this.yolo(result.yolo, overlay));
    if (result.ocr) this.body.append(this.ocr(result.ocr, overlay));
    if (result.llm) {
      this.body.append(h("section", { class: "llm" }, h("h4", {}, `LLM · ${result.llm.model}`),
        h("p", { class: "answer" }, result.llm.answer)));
    }
    const timings = Object.entries(result.timings_ms || {}).filter(([, ms]) => ms > 0); // 0: not asked for
    if (timings.length) {
      this.body.append(h("dl", { class: "timings", "aria-label": "Timings" },
        timings.map(([stage, ms]) => h("div", {}, h("dt", {}, stage), h("dd", {}, fmtMs(ms))))));
    }
    if (result.error) this.fail(result.error);
  }

  frameOverlay(size) {
    if (!this.hasImage) {
      // A URL item: boxes on a blank frame of the image's shape.
      this.frame.classList.add("blank");
      this.frame.style.aspectRatio = `${size.width} / ${size.height}`;
    }
    this.frame.dataset.width = size.width;
    this.frame.dataset.height = size.height;
    return new Overlay(this.frame, size);
  }

  yolo(yolo, overlay) {
    const list = h("ul", { class: "detections" });
    const boxes = yolo.detections.map((d) => {
      const label = `${d.name} ${fmtPct(d.confidence)}`;
      const color = colorFor(d.class);
      const el = h("li", { data: { name: d.name, confidence: d.confidence } },
        h("span", { class: "swatch" }), label);
      el.firstChild.style.backgroundColor = color; // CSSOM, which the CSP allows (no style attribute)
      list.append(el);
      return { box: d.box, color, label, el };
    });
    if (overlay) overlay.setBoxes(boxes);
    return h("section", { class: "yolo" }, h("h4", {}, `YOLO · ${yolo.model} v${yolo.model_version}`),
      boxes.length ? list : h("p", { class: "muted" }, "No detections."));
  }

  ocr(ocr, overlay) {
    const lines = ocr.lines.map((line) => {
      const el = h("li", { tabindex: 0, title: "Shows its box on the image" },
        h("span", { class: "text" }, line.text), h("span", { class: "conf" }, fmtPct(line.confidence)));
      if (overlay) {
        for (const on of ["mouseenter", "focus"]) el.addEventListener(on, () => overlay.highlight(line.box));
        for (const off of ["mouseleave", "blur"]) el.addEventListener(off, () => overlay.highlight(null));
      }
      return el;
    });
    return h("section", { class: "ocr" }, h("h4", {}, "OCR"),
      lines.length ? h("ol", { class: "ocr-lines" }, lines) : h("p", { class: "muted" }, "No text found."));
  }
}
