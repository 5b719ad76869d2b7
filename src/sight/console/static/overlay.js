// Boxes over an image, drawn on a canvas at the displayed size. API boxes are in the pixels of the (oriented)
// original image; each drawn box's geometry in CSS pixels from the image's top-left corner is also written
// on its list entry (data-x, data-y, data-w, data-h) so that it can be read back and checked. A field's
// evidence boxes are elements of their own over the canvas, placed in percentages of the original image, so
// they follow the frame's size with no redraw.
import { h } from "./dom.js";

const PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#008080", "#f032e6", "#9a6324"];
export const colorFor = (classId) => PALETTE[Math.abs(classId) % PALETTE.length];

export class Overlay {
  // frame: the positioned element holding the image; size: {width, height} of the original image.
  constructor(frame, size) {
    this.frame = frame;
    this.size = size;
    this.boxes = []; // {box, color, label, el}
    this.focus = null; // an OCR line's box, while hovered or focused
    this.canvas = h("canvas", { class: "overlay", "aria-hidden": "true" });
    this.evidence = h("div", { class: "evidence-layer", "aria-hidden": "true" });
    frame.append(this.canvas, this.evidence);
    new ResizeObserver(() => this.draw()).observe(frame);
  }

  setBoxes(boxes) {
    this.boxes = boxes;
    this.draw();
  }

  highlight(box) {
    this.focus = box;
    this.draw();
  }

  // entries: a field's evidence ({box, match, source, ...}); [] removes them.
  showEvidence(entries) {
    const pct = (value, whole) => `${((100 * value) / whole).toFixed(4)}%`;
    const { width, height } = this.size;
    this.evidence.replaceChildren(...entries.filter((e) => e.box).map((e) => {
      const el = h("span", { class: "evidence", data: { match: e.match, source: e.source } });
      // CSSOM, which the CSP allows (no style attribute)
      Object.assign(el.style, { left: pct(e.box.x1, width), top: pct(e.box.y1, height),
                                width: pct(e.box.x2 - e.box.x1, width), height: pct(e.box.y2 - e.box.y1, height) });
      return el;
    }));
  }

  draw() {
    const width = this.frame.clientWidth;
    const height = this.frame.clientHeight;
    if (!width || !height) return; // not laid out yet: the ResizeObserver calls again
    const dpr = window.devicePixelRatio || 1;
    const canvas = this.canvas;
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(height * dpr);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const sx = width / this.size.width;
    const sy = height / this.size.height;
    canvas.dataset.scaleX = sx.toFixed(6);
    canvas.dataset.scaleY = sy.toFixed(6);
    ctx.lineWidth = 2;
    ctx.font = "12px system-ui, sans-serif";
    ctx.textBaseline = "top";
    for (const { box, color, label, el } of this.boxes) {
      const r = scaled(box, sx, sy);
      ctx.strokeStyle = color;
      ctx.strokeRect(r.x, r.y, r.w, r.h);
      drawLabel(ctx, label, r, color, width);
      Object.assign(el.dataset, { x: r.x.toFixed(2), y: r.y.toFixed(2), w: r.w.toFixed(2), h: r.h.toFixed(2) });
    }
    if (this.focus) {
      const r = scaled(this.focus, sx, sy);
      ctx.fillStyle = "rgba(255, 214, 0, 0.35)";
      ctx.fillRect(r.x, r.y, r.w, r.h);
      ctx.strokeStyle = "#ffd600";
      ctx.strokeRect(r.x, r.y, r.w, r.h);
    }
  }
}

function scaled(box, sx, sy) {
  return { x: box.x1 * sx, y: box.y1 * sy, w: (box.x2 - box.x1) * sx, h: (box.y2 - box.y1) * sy };
}

function drawLabel(ctx, text, r, color, width) {
  const pad = 3;
  const w = ctx.measureText(text).width + 2 * pad;
  const h = 16;
  const x = Math.min(Math.max(r.x - 1, 0), Math.max(width - w, 0));
  const y = r.y >= h ? r.y - h : r.y; // above the box when there is room, else inside it
  ctx.fillStyle = color;
  ctx.fillRect(x, y, w, h);
  ctx.fillStyle = "#fff";
  ctx.fillText(text, x + pad, y + 2);
}
