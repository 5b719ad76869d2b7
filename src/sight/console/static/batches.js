// The Batches view: list this team's batches, create one from dropped files, follow its progress, download
// its results as JSONL, cancel it.
import { clearError, getJSON, request, showError } from "./api.js";
import { $, dataUrl, dropZone, fmtTime, h } from "./dom.js";

const POLL_MS = 1000;
const CHUNK_BYTES = 8 * 1024 * 1024; // base64 per add-requests call, well under the server's body cap
let picked = [];
let token = null;
let timer = null;
const rows = new Map(); // batch_id -> {tr, batch}

export function initBatches() {
  dropZone($("batch-drop"), $("batch-files"), (files) => {
    picked = files;
    $("batch-picked").textContent = files.length ? files.map((f) => f.name).join(", ") : "or drop images here";
  });
  $("batch-create").addEventListener("click", () => guard(create));
  $("batch-refresh").addEventListener("click", () => guard(refreshBatches));
  $("batch-more").addEventListener("click", () => guard(loadPage));
}

async function guard(work) {
  clearError($("batches-error"));
  try {
    await work();
  } catch (err) {
    showError($("batches-error"), err);
  }
}

export async function refreshBatches() {
  token = null;
  rows.clear();
  $("batch-table").tBodies[0].replaceChildren();
  await loadPage();
}

async function loadPage() {
  const query = new URLSearchParams({ limit: "20" });
  if (token) query.set("pagination_token", token);
  const page = await getJSON(`v1/batches?${query}`);
  for (const batch of page.batches) upsert(batch);
  token = page.pagination_token;
  $("batch-more").hidden = !token;
  schedulePoll();
}

const path = (id) => `v1/batches/${encodeURIComponent(id)}`;
const finished = (s) => s.num_success + s.num_error + s.num_cancelled;
const running = (b) => b.status === "processing" && b.state.num_pending > 0;

function upsert(batch, { first = false } = {}) {
  let row = rows.get(batch.batch_id);
  if (!row) {
    row = { tr: h("tr", { data: { batchId: batch.batch_id } }) };
    rows.set(batch.batch_id, row);
    const body = $("batch-table").tBodies[0];
    if (first) body.prepend(row.tr);
    else body.append(row.tr);
  }
  row.batch = batch;
  const s = batch.state;
  const pct = s.num_requests ? Math.floor((100 * finished(s)) / s.num_requests) : 0;
  // An open batch nothing was added to yet is not "processing 0%": it waits for requests.
  const empty = batch.status === "processing" && !s.num_requests;
  const status = empty ? "open" : batch.status;
  row.tr.dataset.status = batch.status;
  row.tr.dataset.progress = pct;
  // Polling redraws the row: a keyboard user's focus stays on the same button.
  const focused = row.tr.contains(document.activeElement) ? document.activeElement.dataset.action : null;
  row.tr.replaceChildren(
    h("td", {}, h("span", { class: "name" }, batch.name), h("br"), h("small", { class: "muted" }, batch.batch_id)),
    h("td", { data: { label: "Status" } }, h("span", { class: `badge ${batch.status}` }, status)),
    h("td", { class: "progress", data: { label: "Progress" } }, empty ? h("span", { class: "muted" }, "no requests")
      : [h("progress", { max: s.num_requests || 1, value: finished(s), "aria-label": `Progress of ${batch.name}` }),
        h("span", { class: "pct" }, `${pct}%`)]),
    h("td", { data: { label: "Requests" } }, `${s.num_success} ok · ${s.num_error} failed · ${s.num_cancelled} cancelled · ${s.num_pending} pending`),
    h("td", { data: { label: "Created" } }, fmtTime(batch.create_time)),
    h("td", { class: "row-actions" },
      h("button", { type: "button", data: { action: "results" }, onclick: () => guard(() => download(batch)),
                    "aria-label": `Download results of ${batch.name} as JSONL` }, "Results (JSONL)"),
      h("button", { type: "button", data: { action: "cancel" }, disabled: batch.status !== "processing",
                    onclick: () => guard(() => cancel(batch)), "aria-label": `Cancel ${batch.name}` }, "Cancel")));
  if (focused) row.tr.querySelector(`[data-action="${focused}"]`).focus();
}

function schedulePoll() {
  clearTimeout(timer);
  const visible = !$("batches").hidden;
  if (visible && [...rows.values()].some((r) => running(r.batch))) timer = setTimeout(() => guard(poll), POLL_MS);
}

async function poll() {
  const ids = [...rows.values()].filter((r) => running(r.batch)).map((r) => r.batch.batch_id);
  try {
    for (const batch of await Promise.all(ids.map((id) => getJSON(path(id))))) upsert(batch);
  } finally {
    schedulePoll();
  }
}

async function create() {
  if (!picked.length) throw new Error("Pick or drop images for the batch first.");
  const name = $("batch-name").value.trim() || "console batch";
  const stages = { is_yolo: $("batch-yolo").checked, is_ocr: $("batch-ocr").checked, is_llm: $("batch-llm").checked };
  const query = $("batch-query").value.trim();
  const button = $("batch-create");
  button.disabled = true;
  try {
    const batch = await getJSON("v1/batches", { method: "POST", json: { name } });
    upsert(batch, { first: true });
    let chunk = [];
    let size = 0;
    const flush = async () => {
      if (chunk.length) await request(`${path(batch.batch_id)}/requests`, { method: "POST", json: { batch_requests: chunk } });
      chunk = [];
      size = 0;
    };
    for (const [i, file] of picked.entries()) {
      const image = await dataUrl(file);
      if (size + image.length > CHUNK_BYTES) await flush();
      chunk.push({
        batch_request_id: `${i + 1}-${file.name}`.slice(0, 200),
        batch_request: { vision_predict: { image_base64: image, filename: file.name, ...stages, query: query || null } },
      });
      size += image.length;
    }
    await flush();
    upsert(await getJSON(path(batch.batch_id)));
    picked = [];
    $("batch-picked").textContent = "or drop images here";
  } finally {
    button.disabled = false;
    schedulePoll();
  }
}

async function cancel(batch) {
  upsert(await getJSON(`${path(batch.batch_id)}:cancel`, { method: "POST" }));
}

// Every result so far, page by page; while a batch runs its last page carries a token to poll from, so an
// empty page ends the download too.
async function download(batch) {
  const lines = [];
  let next = null;
  do {
    const query = new URLSearchParams({ limit: "1000" });
    if (next) query.set("pagination_token", next);
    const page = await getJSON(`${path(batch.batch_id)}/results?${query}`);
    for (const result of page.results) lines.push(`${JSON.stringify(result)}\n`);
    next = page.results.length ? page.pagination_token : null;
  } while (next);
  const url = URL.createObjectURL(new Blob(lines, { type: "application/x-ndjson" }));
  const link = h("a", { href: url, download: `${batch.batch_id}.jsonl` });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
