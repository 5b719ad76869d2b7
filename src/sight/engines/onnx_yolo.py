"""Ultralytics YOLO detection models (v8 / 11 style) on ONNX Runtime.

>>> detector = OnnxYoloDetector.load("faces", model_path)
>>> detector.detect(image, DetectOptions(conf=0.4))
[Detection(name='FACE_FEMALE', class_id=..., confidence=0.8..., box=Box(x1=..., y1=..., x2=..., y2=...))]
"""

from __future__ import annotations

import ast
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sight.engines.base import Box, Detection, DetectOptions
from sight.engines.sessions import CPU, open_session, pick_providers
from sight.errors import EngineUnavailableError, InvalidInputError, ModelUnavailableError

if TYPE_CHECKING:
    import onnxruntime as ort
    from PIL import Image

log = logging.getLogger(__name__)

PAD_VALUE = 114
MAX_WH = 7680  # class offset for class-aware NMS, as in Ultralytics
MAX_NMS_CANDIDATES = 30_000


@dataclass(frozen=True, slots=True)
class Letterbox:
    """How an image was fitted into the model input, to map boxes back: its resized size and the padding on
    the left and top, and the original's size."""

    new_width: int
    new_height: int
    left: int
    top: int
    width: int
    height: int


def letterbox(image: Image.Image, size: tuple[int, int], stride: int = 32, *, rect: bool = False
              ) -> tuple[np.ndarray, Letterbox]:
    """Fit ``image`` into ``size`` (h, w) keeping its aspect ratio, as Ultralytics' predictor does: scale (up or
    down) to fit, resize with OpenCV's bilinear filter, pad with grey 114, centred. ``rect`` (a model with
    dynamic spatial axes): pad only up to the next multiple of ``stride``, not to the full square. Returns an HWC
    uint8 RGB array."""
    import cv2

    if image.mode != "RGB":
        image = image.convert("RGB")
    target_h, target_w = size
    w, h = image.size
    gain = min(target_h / h, target_w / w)
    new_w, new_h = max(1, round(w * gain)), max(1, round(h * gain))
    pad_w, pad_h = target_w - new_w, target_h - new_h
    if rect:
        pad_w, pad_h = pad_w % stride, pad_h % stride
    left, top = round(pad_w / 2 - 0.1), round(pad_h / 2 - 0.1)
    right, bottom = round(pad_w / 2 + 0.1), round(pad_h / 2 + 0.1)
    pixels = np.asarray(image)
    if (new_w, new_h) != (w, h):
        pixels = cv2.resize(pixels, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    canvas = np.full((new_h + top + bottom, new_w + left + right, 3), PAD_VALUE, dtype=np.uint8)
    canvas[top : top + new_h, left : left + new_w] = pixels
    return canvas, Letterbox(new_w, new_h, left, top, w, h)


def to_tensor(canvases: Sequence[np.ndarray]) -> np.ndarray:
    """HWC uint8 images of one shape -> BCHW float32 in 0..1, the layout Ultralytics exports take."""
    batch = np.stack(canvases).transpose(0, 3, 1, 2)
    out = np.empty(batch.shape, dtype=np.float32)
    np.divide(batch, np.float32(255), out=out)
    return out


def takes_pixels(session: ort.InferenceSession) -> bool:
    """Whether ``session``'s model takes the letterboxed pictures themselves (uint8 ``[batch, height, width, 3]``,
    as ``sight models quantize`` writes it) rather than an Ultralytics export's float NCHW in 0..1."""
    return bool(session.get_inputs()[0].type == "tensor(uint8)")


def to_input(canvases: Sequence[np.ndarray], pixels: bool) -> np.ndarray:
    """The model input for letterboxed HWC uint8 ``canvases`` of one shape: themselves, batched (``pixels``; no copy
    for one), else ``to_tensor``."""
    if pixels:
        return canvases[0][None] if len(canvases) == 1 else np.stack(canvases)
    return to_tensor(canvases)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy non-maximum suppression over xyxy ``boxes`` (torchvision's rule: a box is kept when its IoU with
    every kept, better box is at most ``iou``; ties in score keep their order); returns kept indices, best
    first."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1).clip(0) * (y2 - y1).clip(0)
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = (np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest])).clip(0)
        h = (np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest])).clip(0)
        inter = w * h
        overlap = inter / (areas[i] + areas[rest] - inter + 1e-9)
        order = rest[overlap <= iou]
    return np.asarray(keep, dtype=np.int64)


def _parse_literal(value: str | None) -> Any:
    if value is None:
        return None
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        try:
            return json.loads(value)
        except ValueError:
            return None


class OnnxYoloDetector:
    """A detector over one shared ``InferenceSession`` (ONNX Runtime sessions are thread-safe)."""

    def __init__(
        self,
        name: str,
        session: ort.InferenceSession,
        *,
        version: str = "1",
        conf: float = 0.25,
        iou: float = 0.7,
        max_det: int = 300,
        wide_session: ort.InferenceSession | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.session = session
        self.wide_session = wide_session  # the same model over every core, for lone images on an idle CPU
        self.conf, self.iou, self.max_det = conf, iou, max_det
        inp = session.get_inputs()[0]
        out = session.get_outputs()[0]
        self.input_name, self.output_name = inp.name, out.name
        meta = session.get_modelmeta().custom_metadata_map
        names = _parse_literal(meta.get("names"))
        if isinstance(names, list):
            names = dict(enumerate(names))
        self.names: dict[int, str] = {int(k): str(v) for k, v in (names or {}).items()}
        # An Ultralytics export takes pixels / 255 as float NCHW; an INT8 file from `sight models quantize` takes the
        # letterboxed pictures themselves, uint8 NHWC (sight.models.rewrites.take_pixels).
        self.takes_pixels = takes_pixels(session)
        if self.takes_pixels and (len(inp.shape) != 4 or inp.shape[3] != 3):
            raise EngineUnavailableError(f"model {name!r} takes uint8 {inp.shape}; Sight feeds uint8 input as "
                                         "[batch, height, width, 3] pictures (what `sight models quantize` writes)")
        h, w = (inp.shape[1], inp.shape[2]) if self.takes_pixels else (inp.shape[2], inp.shape[3])
        imgsz = _parse_literal(meta.get("imgsz"))
        if isinstance(imgsz, int):
            imgsz = [imgsz, imgsz]
        if not imgsz:
            imgsz = [h if isinstance(h, int) else 640, w if isinstance(w, int) else 640]
        self.imgsz: tuple[int, int] = (int(imgsz[0]), int(imgsz[1]))
        self.stride = int(_parse_literal(meta.get("stride")) or 32)
        self.task = meta.get("task", "detect")
        self.precision = meta.get("sight.precision", "fp32")  # int8: written by `sight models quantize`
        channels = out.shape[1]
        if self.task != "detect" or (isinstance(channels, int) and self.names and channels != 4 + len(self.names)):
            raise EngineUnavailableError(
                f"model {name!r} is not an Ultralytics detection export (task={self.task}, output {out.shape})"
            )
        batch_dim = inp.shape[0]
        self.dynamic_batch = not isinstance(batch_dim, int)
        # Spatial axes the export left open: images are padded only to the stride, as Ultralytics' predictor does.
        self.rect = not (isinstance(h, int) and isinstance(w, int))

    @classmethod
    def load(
        cls,
        name: str,
        path: Path,
        *,
        providers: Sequence[str] | None = None,
        intra_op_threads: int = 0,
        wide_threads: int = 0,
        **kwargs: Any,
    ) -> OnnxYoloDetector:
        """Load ``path``. With ``wide_threads`` > ``intra_op_threads`` on the CPU, a second session over
        that many threads serves ``detect(..., wide=True)`` (one more copy of the weights in memory)."""
        if not path.is_file():
            raise ModelUnavailableError(f"model {name!r}: no ONNX file at {path}")
        chosen = pick_providers(providers)

        def session(threads: int, idle_spin: bool = True) -> ort.InferenceSession:
            return open_session(path, f"model {name!r}", chosen, threads=threads, idle_spin=idle_spin)

        main = session(intra_op_threads)
        wide = main.get_providers()[0] == CPU and 0 < intra_op_threads < wide_threads
        return cls(name, main, wide_session=session(wide_threads, idle_spin=False) if wide else None, **kwargs)

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def class_ids(self, classes: Sequence[str | int] | None) -> np.ndarray | None:
        """Resolve a ``classes`` filter of names or ids; an unknown name is the caller's error."""
        if not classes:
            return None
        by_name = {v: k for k, v in self.names.items()}
        ids: list[int] = []
        for c in classes:
            if isinstance(c, int):
                ids.append(c)
            elif c in by_name:
                ids.append(by_name[c])
            elif c.isdigit():
                ids.append(int(c))
            else:
                raise InvalidInputError(f"class {c!r} is not known to model {self.name!r}")
        return np.asarray(ids, dtype=np.int64)

    @property
    def can_run_wide(self) -> bool:
        return self.wide_session is not None

    def detect(self, image: Image.Image, options: DetectOptions, *, wide: bool = False) -> list[Detection]:
        """``wide``: the caller holds every core (see ``RunSlots``), so run over all of them."""
        return self.detect_many([image], options, wide=wide)[0]

    def detect_many(
        self, images: Sequence[Image.Image], options: DetectOptions, *, wide: bool = False
    ) -> list[list[Detection]]:
        """Detect on several images in one session call (a single call per image if the batch is static)."""
        return self.detect_batch([(image, options) for image in images], wide=wide)

    def detect_batch(
        self, jobs: Sequence[tuple[Image.Image, DetectOptions]], *, wide: bool = False
    ) -> list[list[Detection]]:
        """Each image with its own thresholds and classes, in one session call when the model allows."""
        wanted = [self.class_ids(options.classes) for _, options in jobs]
        prepared = [letterbox(img, self.imgsz, self.stride, rect=self.rect) for img, _ in jobs]
        session = self.wide_session if wide and self.wide_session is not None else self.session
        outputs: list[np.ndarray | None] = [None] * len(jobs)
        if self.dynamic_batch:  # one call per input shape (rect padding gives images of other shapes others)
            by_shape: dict[tuple[int, ...], list[int]] = {}
            for i, (canvas, _) in enumerate(prepared):
                by_shape.setdefault(canvas.shape, []).append(i)
            for indices in by_shape.values():
                for i, out in zip(indices, self._run(session, [prepared[i][0] for i in indices]), strict=True):
                    outputs[i] = out
        else:
            for i, (canvas, _) in enumerate(prepared):
                outputs[i] = self._run(session, [canvas])[0]
        return [
            self.decode(out, lb, options, w)
            for out, (_, lb), (_, options), w in zip(outputs, prepared, jobs, wanted, strict=True)
            if out is not None
        ]

    def _run(self, session: ort.InferenceSession, canvases: Sequence[np.ndarray]) -> np.ndarray:
        batch = to_input(canvases, self.takes_pixels)
        return np.asarray(session.run([self.output_name], {self.input_name: batch})[0])

    def decode(
        self, output: np.ndarray, lb: Letterbox, options: DetectOptions, wanted: np.ndarray | None
    ) -> list[Detection]:
        """One image's raw output [4 + classes, anchors] -> detections in original pixels, as Ultralytics'
        predictor finds them (class-aware NMS, best class per anchor, a strict ``> conf``)."""
        conf_thr = self.conf if options.conf is None else options.conf
        iou_thr = self.iou if options.iou is None else options.iou
        scores = output[4:]  # classes x anchors: reduced along contiguous rows, best class only where it passes
        candidates = np.flatnonzero(scores.max(axis=0) > conf_thr)
        class_id = scores[:, candidates].argmax(axis=0)
        if wanted is not None:
            asked = np.isin(class_id, wanted)
            candidates, class_id = candidates[asked], class_id[asked]
        if not candidates.size:
            return []
        confidence = scores[class_id, candidates]
        xywh = output[:4, candidates].T
        if len(confidence) > MAX_NMS_CANDIDATES:
            top = np.argsort(-confidence, kind="stable")[:MAX_NMS_CANDIDATES]
            xywh, class_id, confidence = xywh[top], class_id[top], confidence[top]
        boxes = np.empty_like(xywh)
        boxes[:, :2] = xywh[:, :2] - xywh[:, 2:] / 2
        boxes[:, 2:] = xywh[:, :2] + xywh[:, 2:] / 2
        kept = nms(boxes + (class_id * MAX_WH)[:, None], confidence, iou_thr)[: self.max_det]
        boxes = boxes[kept].astype(np.float64)
        # Per axis, by the resized size actually used (its sides were rounded to whole pixels).
        boxes[:, [0, 2]] = ((boxes[:, [0, 2]] - lb.left) / (lb.new_width / lb.width)).clip(0, lb.width)
        boxes[:, [1, 3]] = ((boxes[:, [1, 3]] - lb.top) / (lb.new_height / lb.height)).clip(0, lb.height)
        return [
            Detection(
                name=self.names.get(int(c), str(int(c))),
                class_id=int(c),
                confidence=round(float(s), 5),
                box=Box(*(round(float(v), 2) for v in b)),
            )
            for b, c, s in zip(boxes, class_id[kept], confidence[kept], strict=True)
        ]
