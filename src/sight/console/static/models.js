// The Models view: every declared version with its state, the default vision LLM, and one model's detail
// (which version its bare name serves and why, and how its shadows agree with their primaries).
import { clearError, getJSON, showError } from "./api.js";
import { $, fmtBytes, fmtPct, h } from "./dom.js";

const POLL_MS = 2000;
let timer = null;

export function initModels() {
  $("models-refresh").addEventListener("click", () => guard(refreshModels));
}

async function guard(work) {
  clearError($("models-error"));
  try {
    await work();
  } catch (err) {
    showError($("models-error"), err);
  }
}

export async function refreshModels() {
  clearTimeout(timer);
  const { models, llm } = await getJSON("v1/models");
  // Polling redraws the table: a keyboard user's focus stays on the same row's button.
  const focusedRow = document.activeElement.closest("#models-table tbody tr");
  const focused = focusedRow ? [focusedRow.dataset.name, focusedRow.dataset.version] : null;
  $("models-llm").replaceChildren(...(llm ? describeLLM(llm) : []));
  $("models-table").tBodies[0].replaceChildren(...models.map((m) => h("tr", { data: { name: m.name, version: m.version, state: m.state.state } },
    h("th", { scope: "row" }, m.name, m.shadow_of ? h("small", { class: "muted" }, ` shadow of ${m.shadow_of}`) : null),
    h("td", { data: { label: "Version" } }, m.version),
    h("td", { data: { label: "Task" } }, m.task),
    h("td", { data: { label: "Aliases" } }, m.aliases.length ? m.aliases.join(", ") : "—"),
    h("td", { data: { label: "State" } }, stateOf(m.state)),
    h("td", {}, h("button", { type: "button", "aria-label": `Details of ${m.name}`,
                              onclick: () => guard(() => showDetail(m.name)) }, "Details")))));
  if (focused) {
    for (const tr of $("models-table").tBodies[0].rows) {
      if (tr.dataset.name === focused[0] && tr.dataset.version === focused[1]) tr.querySelector("button").focus();
    }
  }
  if (models.some((m) => m.state.state === "downloading") && !$("models").hidden) {
    timer = setTimeout(() => guard(refreshModels), POLL_MS);
  }
}

function describeLLM(llm) {
  return [
    h("h3", {}, "Vision LLM"),
    h("p", {}, stateOf(llm), llm.model ? [" ", h("code", {}, llm.model)] : null,
      llm.backend ? ` (${llm.backend}${llm.base_url ? ` at ${llm.base_url}` : ""})` : ""),
  ];
}

function stateOf(state) {
  const parts = [h("span", { class: `badge ${state.state}` }, state.state.replace("_", " "))];
  if (state.state === "downloading") {
    const total = state.total_bytes;
    parts.push(" ", h("progress", { max: total || 1, value: total ? state.downloaded_bytes : 0, "aria-label": "Downloaded" }),
      ` ${fmtBytes(state.downloaded_bytes)} of ${fmtBytes(total)}`);
  } else if (state.total_bytes) {
    parts.push(` ${fmtBytes(state.total_bytes)}`);
  }
  if (state.reason) parts.push(h("br"), h("small", { class: "reason" }, state.reason));
  return h("span", { class: "state" }, parts);
}

const figure = (x) => (x === null || x === undefined ? "—" : fmtPct(x));

async function showDetail(name) {
  const d = await getJSON(`v1/models/${encodeURIComponent(name)}`);
  const heading = h("h3", { tabindex: -1 }, d.name);
  $("model-detail").replaceChildren(
    heading,
    h("p", {}, "Serves ", d.serves ? h("strong", {}, `version ${d.serves}`) : "nothing", `: ${d.serves_why}`),
    ...Object.entries(d.splits || {}).map(([alias, shares]) => h("p", { class: "split" }, `A/B split "${alias}": `,
      Object.entries(shares).map(([v, share]) => `v${v} ${fmtPct(share)}`).join(", "))),
    h("h4", {}, "Versions"),
    h("ul", {}, d.versions.map((v) => h("li", {}, `v${v.version} `, stateOf(v.state),
      v.aliases.length ? ` aliases: ${v.aliases.join(", ")}` : "", v.source ? h("small", { class: "muted" }, ` ${v.source}`) : ""))),
    h("h4", {}, "Shadows"),
    d.shadows.length
      ? h("div", { class: "scroll" }, h("table", {},
        h("thead", {}, h("tr", {}, ["Primary", "Shadow", "Runs", "Errors", "Compared", "Exact match", "Precision", "Recall"]
          .map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, d.shadows.map((s) => h("tr", {},
          [s.primary, s.shadow, s.runs, s.errors, s.compared, figure(s.exact_match), figure(s.precision), figure(s.recall)]
            .map((v) => h("td", {}, String(v))))))))
      : h("p", { class: "muted" }, "No shadows."));
  heading.focus();
}
