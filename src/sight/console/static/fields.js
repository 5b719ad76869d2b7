// Structured answers (API.md section 6): the editor for the fields to find, which becomes the request's
// response_schema, and the tables that show what was found. Hovering or focusing a table row draws that field's
// evidence on its image.
import { $, fmtPct, h } from "./dom.js";

const BADGES = { true: ["verified", "verified"], false: ["not-verified", "not verified"], null: ["unchecked", "unchecked"] };
let rowCount = 0; // for unique input ids, never reused

export class FieldsError extends Error {
  constructor(message, input) {
    super(message);
    this.input = input; // the input to fix, focused by the caller
  }
}

export function initFields() {
  $("predict-add-field").addEventListener("click", () => addRow().name.focus());
}

function addRow() {
  const n = ++rowCount;
  const name = h("input", { type: "text", id: `field-name-${n}`, class: "field-name", spellcheck: "false",
                            autocomplete: "off", placeholder: "serial_number" });
  const pattern = h("input", { type: "text", id: `field-pattern-${n}`, class: "field-pattern", spellcheck: "false",
                               autocomplete: "off", placeholder: "SN-[A-Z0-9]{4}-[0-9]{4}" });
  const remove = h("button", { type: "button", "aria-label": `Remove field ${n}` }, "Remove");
  const row = h("li", {},
    h("div", { class: "row" }, h("label", { for: name.id }, "Field name"), name),
    h("div", { class: "row" }, h("label", { for: pattern.id }, "Pattern (RE2 regex, optional)"), pattern),
    remove);
  name.addEventListener("input", () => {
    remove.setAttribute("aria-label", `Remove field ${name.value.trim() || n}`);
  });
  remove.addEventListener("click", () => removeRow(row));
  $("predict-fields").append(row);
  return { name, pattern };
}

// Focus goes to the next row, else the previous one, else the add button: never lost to the page's top.
function removeRow(row) {
  const next = row.nextElementSibling || row.previousElementSibling;
  row.remove();
  (next ? next.querySelector(".field-name") : $("predict-add-field")).focus();
}

// The response_schema the editor's rows stand for ({type: "object", properties: {NAME: {type: "string",
// pattern?}}}), or null when no row names a field. Rows left blank are ignored; a pattern needs a name.
export function responseSchema() {
  const properties = {};
  for (const row of $("predict-fields").children) {
    const name = row.querySelector(".field-name");
    const pattern = row.querySelector(".field-pattern");
    const key = name.value.trim();
    if (!key && !pattern.value) continue;
    if (!key) throw new FieldsError("Give the field with the pattern a name.", name);
    if (key in properties) throw new FieldsError(`Two fields are named ${key}: give each its own name.`, name);
    properties[key] = { type: "string", ...(pattern.value ? { pattern: pattern.value } : {}) };
  }
  return Object.keys(properties).length ? { type: "object", properties } : null;
}

// The value at a dotted property path ("plate.serial"), as the evidence and verified keys name them: an
// object-valued property is one value, not more paths.
function valueAt(fields, path) {
  let value = fields;
  for (const key of path.split(".")) {
    if (!value || typeof value !== "object" || Array.isArray(value)) return null;
    value = value[key] === undefined ? null : value[key];
  }
  return value;
}

// `fields` by the property paths `verified` names (one per schema property), in the schema's order.
export function leaves(fields, verified) {
  return Object.fromEntries(Object.keys(verified || {}).map((path) => [path, valueAt(fields, path)]));
}

const shown = (value) => (typeof value === "string" ? value : JSON.stringify(value));
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

function badge(verified) {
  const state = verified === true || verified === false ? verified : null;
  const [kind, text] = BADGES[state];
  return h("span", { class: `badge verify ${kind}` }, text);
}

// One field's row: path, value (with what `below` it), badge, then the `extra` cell if any; `highlight(on)`
// draws or removes its evidence.
function fieldRow(path, value, verified, { below = null, extra = null }, highlight) {
  const found = value !== null && value !== undefined;
  const row = h("tr", { tabindex: 0, title: "Shows its evidence on the image",
                        data: { path, verified: String(verified ?? null) } },
    h("th", { scope: "row" }, h("code", {}, path)),
    h("td", {}, h("span", { class: found ? "value" : "value muted" }, found ? shown(value) : "not found"), below),
    h("td", {}, badge(verified)),
    extra);
  for (const on of ["mouseenter", "focus"]) row.addEventListener(on, () => highlight(true));
  for (const off of ["mouseleave", "blur"]) row.addEventListener(off, () => highlight(false));
  return row;
}

function table(caption, columns, rows) {
  return h("div", { class: "scroll" }, h("table", { class: "fields-table" },
    h("caption", {}, caption),
    h("thead", {}, h("tr", {}, columns.map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, rows)));
}

// Under a card's value: what it was read in (the first two entries, as the CLI shows them).
function cite(entries) {
  if (!entries.length) return h("div", { class: "evidence muted" }, "no evidence");
  return entries.slice(0, 2).map((e) => h("div", { class: "evidence" },
    h("span", { class: "match" }, e.match), " ", e.text ?? e.name ?? "",
    e.confidence === undefined ? null : h("span", { class: "conf" }, ` ${fmtPct(e.confidence)}`)));
}

// A card's fields: `overlay` (null when the image has no size) draws the hovered row's evidence.
export function itemFields(result, overlay) {
  const evidence = result.evidence || {};
  const verified = result.verified || {};
  const rows = Object.entries(leaves(result.fields, verified)).map(([path, value]) => {
    const entries = evidence[path] || [];
    return fieldRow(path, value, verified[path], { below: cite(entries) },
      (on) => overlay && overlay.showEvidence(on ? entries : []));
  });
  return h("section", { class: "fields" }, h("h4", {}, "Fields"),
    rows.length ? table("Each value with what it was read in", ["Field", "Value", "Verified"], rows)
      : h("p", { class: "muted" }, "No fields."));
}

// The request's answer across its images (the stream's complete line): each value and the images that named it,
// then the images that disagree. `cards[index]` has the item's `result` and `overlay` once it finished.
export function mergedFields(complete, cards) {
  const evidence = complete.evidence || {};
  const verified = complete.verified || {};
  const nameOf = (index) => (cards[index] && cards[index].name) || `image ${index}`;
  const rows = Object.entries(leaves(complete.fields, verified)).map(([path, value]) => {
    const entries = evidence[path] || [];
    const from = value === null ? [] : namedBy(path, value, cards, entries, nameOf);
    const cell = h("td", { class: "from" }, from.length ? from.join(", ") : h("span", { class: "muted" }, "no image"));
    return fieldRow(path, value, verified[path], { extra: cell }, (on) => showAcross(cards, on ? entries : []));
  });
  const conflicts = Object.entries(complete.conflicts || {});
  return [
    h("h3", { id: "predict-merged-title" }, "Fields, all images"),
    table("Each field's value and the images it came from", ["Field", "Value", "Verified", "From"], rows),
    conflicts.length ? h("ul", { class: "conflicts", "aria-label": "Images that disagree" },
      conflicts.map(([path, held]) => h("li", { data: { path } }, "Images disagree on ", h("code", {}, path), ": ",
        held.map((c) => `${shown(c.value)} in ${c.filename || nameOf(c.index)}${state(c.verified)}`).join("; "),
        "."))) : null,
  ].filter(Boolean);
}

const state = (verified) => (verified === true ? " (verified)" : verified === false ? " (not verified)" : "");

// The images whose own value is the merged one; the evidence's image when the items are not at hand.
function namedBy(path, value, cards, entries, nameOf) {
  const names = cards.filter((c) => c.result && same(valueAt(c.result.fields, path), value)).map((c) => c.name);
  return names.length ? names : [...new Set(entries.map((e) => e.filename || nameOf(e.index)))];
}

// Merged evidence names its image: each card's overlay draws its own entries.
function showAcross(cards, entries) {
  cards.forEach((card, index) => {
    if (card.overlay) card.overlay.showEvidence(entries.filter((e) => e.index === index));
  });
}
