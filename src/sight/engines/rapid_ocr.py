"""PP-OCRv6 text reading through rapidocr 3 (in the base install; its wheel ships the small models).

Sight runs rapidocr's parts itself, on its own ONNX Runtime sessions. The text detector sees a reduced copy
of the image; where it found text, it looks again closer up (coarse to fine); the 0/180 degree classifier
and the recogniser read crops cut from the full-resolution original, and Sight decodes the recogniser's
output itself (``sight.engines.spaced_ctc``). A 12-megapixel photo is read at the cost of a small one, and
small print stays legible. Measured in docs/benchmarks.md, "OCR accuracy".
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sight.engines.base import Box, OcrLine, OcrText
from sight.engines.sessions import open_session, pick_providers, provider_name
from sight.engines.spaced_ctc import SpacedCtcDecoder
from sight.errors import EngineUnavailableError, InvalidImageError

if TYPE_CHECKING:
    import onnxruntime as ort
    from PIL import Image

log = logging.getLogger(__name__)

# The detector sees at most this many pixels of the image (a 4000x3000 photo at 1155x866) and a small image
# at its own size; where it found text it looks again, closer up. Chosen in docs/benchmarks.md.
DETECT_PIXELS = 1_000_000
# The first, reduced look keeps what the detector is less sure of (rapidocr: pixels over 0.3, boxes over
# 0.5): small print can look like one faint block from afar. The closer look (each place at FINE_PIXELS at
# most, never enlarged) and the recogniser's confidence decide what stays.
COARSE_THRESH = 0.1
COARSE_BOX_THRESH = 0.1
FINE_PIXELS = 1_000_000
# Shapes OCR refuses: a side under MIN_SIDE pixels holds no line of text, and past MAX_ASPECT the reduced
# image would lose its short side.
MIN_SIDE = 8
MAX_ASPECT = 100
# A small image whose lines come out under SMALL_TEXT pixels high is detected again, enlarged ZOOM times
# (within DETECT_PIXELS): at its own size the detector cuts lines of small print across their neighbours.
SMALL_TEXT = 32
ZOOM = 2.0
MIN_DETECT_HEIGHT = 96  # the detector sees a thin strip padded to this height
TEXT_SCORE = 0.5  # lines read with less confidence are dropped (rapidocr's default)
REC_BATCH = 6  # crops per recogniser run, sorted by width as rapidocr batches them
# The files rapidocr's wheel ships: PP-OCRv6 small detection and recognition, and the line classifier.
SHIPPED = {"Det": "PP-OCRv6_det_small.onnx", "Rec": "PP-OCRv6_rec_small.onnx",
           "Cls": "ch_ppocr_mobile_v2.0_cls_mobile.onnx"}
RAPIDOCR_INSTALL = "OCR needs rapidocr 3, part of Sight's install: pip install 'rapidocr>=3.10,<4'"

Region = tuple[int, int, int, int]  # x0, y0, x1, y1 in the original's pixels


@dataclass(frozen=True, slots=True)
class OcrModels:
    """The PP-OCRv6 files to load: None is the small model in rapidocr's wheel."""

    detector: Path | None = None
    recognizer: Path | None = None


class RapidOcrEngine:
    """Reads text lines with boxes and confidences, in reading order, with their word spaces.

    >>> RapidOcrEngine.load().read(label).text
    'Serial No: SN-4X7Q-2291-B\\nModel: ZX-900 Made in 2024'

    Its parts hold no per-call state (ONNX Runtime sessions are thread-safe, and Sight gives rapidocr no
    per-call settings, which rapidocr keeps on shared objects), so calls may overlap: the runtime's OCR slots
    (``SIGHT_OCR__CONCURRENCY``) decide how many do.
    """

    def __init__(self, parts: dict[str, Any], sizes: tuple[str, str]) -> None:
        self._det, self._coarse, self._cls, self._rec = (parts[k] for k in ("det", "coarse", "cls", "rec"))
        self._rec_session: ort.InferenceSession = parts["rec_session"]
        meta = self._rec_session.get_modelmeta().custom_metadata_map
        self._decode = SpacedCtcDecoder(["blank", *meta["character"].splitlines(), " "])
        self.sizes = sizes

    @classmethod
    def load(cls, models: OcrModels | None = None, *, providers: Sequence[str] | None = None,
             threads: int = 0) -> RapidOcrEngine:
        """Load the detector, classifier and recogniser (blocking: about 0.2 s)."""
        models = models or OcrModels()
        try:
            from omegaconf import OmegaConf
            from rapidocr import RapidOCR
            from rapidocr.ch_ppocr_cls import TextClassifier
            from rapidocr.ch_ppocr_det import TextDetector
            from rapidocr.ch_ppocr_rec import TextRecognizer
        except ImportError as exc:
            raise EngineUnavailableError(RAPIDOCR_INSTALL) from exc
        # rapidocr's own configuration, read and never run: its parts are built from it below.
        cfg = RapidOCR(params={"Global.log_level": "warning"}).cfg
        follow_sight_logging()
        root = Path(cfg.Global.model_root_dir)
        chosen = pick_providers(providers)
        paths = {"Det": models.detector or root / SHIPPED["Det"], "Rec": models.recognizer or root / SHIPPED["Rec"],
                 "Cls": root / SHIPPED["Cls"]}
        sessions = {}
        for section, path in paths.items():
            if not path.is_file():
                raise EngineUnavailableError(f"OCR model file missing: {path} (reinstall rapidocr: "
                                             "pip install --force-reinstall 'rapidocr>=3.10,<4')")
            sessions[section] = open_session(path, f"OCR {section.lower()} model", chosen, threads=threads)

        def part(section: str, maker: Any, **overrides: Any) -> Any:
            options: Any = OmegaConf.create(OmegaConf.to_container(cfg[section]), flags={"allow_objects": True})
            options.update(engine_cfg=cfg.EngineConfig.onnxruntime, model_root_dir=str(root),
                           font_path=cfg.Global.font_path, session=sessions[section], **overrides)
            try:
                return maker(options)
            except Exception as exc:  # rapidocr raises its own untyped errors
                raise EngineUnavailableError(f"OCR {section.lower()} model {paths[section]} failed to load: "
                                             f"{exc}") from exc

        # Sight sizes the image itself: rapidocr's detector only rounds it to multiples of 32.
        whole = {"limit_type": "max", "limit_side_len": 1 << 16}
        parts = {"det": part("Det", TextDetector, **whole),
                 "coarse": part("Det", TextDetector, **whole, thresh=COARSE_THRESH, box_thresh=COARSE_BOX_THRESH),
                 "cls": part("Cls", TextClassifier), "rec": part("Rec", TextRecognizer),
                 "rec_session": sessions["Rec"]}
        sizes = (_size(models.detector, "det"), _size(models.recognizer, "rec"))
        engine = cls(parts, sizes)
        log.info("OCR loaded: PP-OCRv6 detection %s, recognition %s, on %s", *sizes, engine.provider)
        return engine

    @property
    def provider(self) -> str:
        """The execution provider the sessions got (``CPU``, ``CUDA``...): the recogniser's."""
        return provider_name(self._rec_session)

    def read(self, image: Image.Image) -> OcrText:
        width, height = image.size
        check_shape(width, height)
        quads = self._detect(image)
        lines: list[tuple[OcrLine, np.ndarray]] = []
        if quads:
            crops = self._cls([crop_line(image, quad) for quad in quads]).img_list
            for quad, (text, score) in zip(quads, self._recognise(crops), strict=True):
                text = text.strip()
                if not text or score < TEXT_SCORE:
                    continue
                box = Box(*(round(float(v), 2) for v in (*quad.min(axis=0), *quad.max(axis=0))))
                lines.append((OcrLine(text=text, confidence=round(score, 4), box=box), quad))
        ordered = reading_order(lines)
        return OcrText(text="\n".join(ln.text for ln in ordered), lines=ordered)

    def _detect(self, image: Image.Image) -> list[np.ndarray]:
        """Text line quads in the original's pixels. A large image is detected coarse to fine: reduced to
        ``DETECT_PIXELS``, where the detector is asked to keep what it is unsure of; then each place where it
        found something is detected again from the original, closer up (``FINE_PIXELS``), which keeps only
        text: a small plate seen as one faint block from afar comes back as its lines. A small image is
        detected at its own size, and again enlarged if its lines are too small for the detector."""
        whole = (0, 0, *image.size)
        if (coarse := scale_for(whole, DETECT_PIXELS)) < 1:
            quads: list[np.ndarray] = []
            for region, inside in regions_around(self._detect_in(image, whole, self._coarse, coarse), image.size):
                quads.extend(self._detect_in(image, region, self._det, min(1.0, scale_for(region, FINE_PIXELS)))
                             or inside)
            return quads
        quads = self._detect_in(image, whole, self._det, 1.0)
        if quads and float(np.median([line_height(quad) for quad in quads])) < SMALL_TEXT:
            zoom = min(ZOOM, scale_for(whole, DETECT_PIXELS))
            if zoom > 1.2:
                return self._detect_in(image, whole, self._det, zoom) or quads
        return quads

    def _detect_in(self, image: Image.Image, region: Region, detector: Any, scale: float) -> list[np.ndarray]:
        """Detect in ``region`` of the original scaled by ``scale``, a thin strip padded to
        ``MIN_DETECT_HEIGHT``. Returns the quads in the original's pixels."""
        import cv2
        from PIL import Image as PILImage

        x0, y0, x1, y1 = region
        width, height = x1 - x0, y1 - y0
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        part = image if region == (0, 0, *image.size) else image.crop(region)
        if size != part.size:
            part = part.resize(size, PILImage.Resampling.BILINEAR, reducing_gap=2.0 if scale < 1 else None)
        bgr = np.ascontiguousarray(np.asarray(part.convert("RGB"))[:, :, ::-1])
        top = max(0, (MIN_DETECT_HEIGHT - bgr.shape[0] + 1) // 2)
        if top:  # a thin strip: its own edges repeated above and below (rapidocr pads black, which hides text)
            bgr = cv2.copyMakeBorder(bgr, top, top, 0, 0, cv2.BORDER_REPLICATE)
        found = detector(bgr)
        if found.boxes is None or len(found.boxes) == 0:
            return []
        back = np.array([width / size[0], height / size[1]], dtype=np.float32)
        quads = []
        for box in np.asarray(found.boxes, dtype=np.float32):
            quad = (box - np.array([0, top], dtype=np.float32)) * back + np.array([x0, y0], dtype=np.float32)
            quad[:, 0] = quad[:, 0].clip(0, image.width)
            quad[:, 1] = quad[:, 1].clip(0, image.height)
            if np.ptp(quad[:, 0]) >= 2 and np.ptp(quad[:, 1]) >= 2:
                quads.append(quad)
        return quads

    def _recognise(self, crops: Sequence[np.ndarray]) -> list[tuple[str, float]]:
        """(text, confidence) per crop: the recogniser run in batches of similar widths (as rapidocr runs
        it, with its resizing), decoded by Sight."""
        _channels, line_height, min_width = self._rec.rec_image_shape[:3]
        ratios = [crop.shape[1] / crop.shape[0] for crop in crops]
        order = np.argsort(ratios)
        results: list[tuple[str, float]] = [("", 0.0)] * len(crops)
        name = self._rec_session.get_inputs()[0].name
        for start in range(0, len(crops), REC_BATCH):
            batch = order[start:start + REC_BATCH]
            widest = max(min_width / line_height, *(ratios[i] for i in batch))
            tensor = np.concatenate([self._rec.resize_norm_img(crops[i], widest)[None] for i in batch])
            probs = self._rec_session.run(None, {name: tensor.astype(np.float32)})[0]
            for i, result in zip(batch, self._decode(probs), strict=True):
                results[i] = result
        return results


def check_shape(width: int, height: int) -> None:
    """Refuse, as the item's ``invalid_image``, an image OCR cannot read: too thin or too elongated."""
    short, long = min(width, height), max(width, height)
    if short < MIN_SIDE:
        raise InvalidImageError(f"OCR needs an image at least {MIN_SIDE} pixels on each side; this one is "
                                f"{width}x{height}")
    if long > MAX_ASPECT * short:
        raise InvalidImageError(f"OCR reads images up to {MAX_ASPECT}:1; this one is {width}x{height}")


def scale_for(region: Region, pixels: int) -> float:
    """The scale that brings ``region`` to ``pixels``."""
    x0, y0, x1, y1 = region
    return math.sqrt(pixels / ((x1 - x0) * (y1 - y0)))


def line_height(quad: np.ndarray) -> float:
    return float(max(np.linalg.norm(quad[3] - quad[0]), np.linalg.norm(quad[2] - quad[1])))


def regions_around(quads: list[np.ndarray], size: tuple[int, int]) -> list[tuple[Region, list[np.ndarray]]]:
    """Rectangles of the original around the quads (each grown by its line's height on every side,
    overlapping ones merged), with the quads each holds."""
    width, height = size
    groups: list[tuple[list[float], list[np.ndarray]]] = []
    for quad in quads:
        (qx0, qy0), (qx1, qy1) = quad.min(axis=0), quad.max(axis=0)
        grow = float(qy1 - qy0)
        rect = [max(0.0, qx0 - grow), max(0.0, qy0 - grow), min(width, qx1 + grow), min(height, qy1 + grow)]
        members = [quad]
        while touching := [g for g in groups if rect[0] < g[0][2] and g[0][0] < rect[2]
                           and rect[1] < g[0][3] and g[0][1] < rect[3]]:
            for other, held in touching:  # absorb them; the grown rectangle may touch more
                rect = [min(rect[0], other[0]), min(rect[1], other[1]), max(rect[2], other[2]),
                        max(rect[3], other[3])]
                members += held
            absorbed = {id(g) for g in touching}
            groups = [g for g in groups if id(g) not in absorbed]
        groups.append((rect, members))
    return [((math.floor(r[0]), math.floor(r[1]), math.ceil(r[2]), math.ceil(r[3])), members)
            for r, members in groups]


def crop_line(image: Image.Image, quad: np.ndarray) -> np.ndarray:
    """The text line inside ``quad`` (original pixels), straightened, as BGR: only the line's bounding box
    is ever copied out of the picture."""
    from rapidocr.utils.process_img import get_rotate_crop_image

    x0, y0 = (max(0, math.floor(v)) for v in quad.min(axis=0))
    x1, y1 = (math.ceil(v) for v in quad.max(axis=0))
    x1, y1 = min(image.width, max(x1, x0 + 1)), min(image.height, max(y1, y0 + 1))
    region = np.ascontiguousarray(np.asarray(image.crop((x0, y0, x1, y1)).convert("RGB"))[:, :, ::-1])
    return np.asarray(get_rotate_crop_image(region, (quad - np.array([x0, y0], dtype=np.float32)).astype(np.float32)))


def follow_sight_logging() -> None:
    """rapidocr logs through its own colour handler on stderr, at INFO for every model load: send its records
    through Sight's logging instead, warnings and errors only unless Sight logs at DEBUG."""
    logger = logging.getLogger("RapidOCR")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.propagate = True
    sight_level = logging.getLogger("sight").getEffectiveLevel()
    logger.setLevel(logging.DEBUG if sight_level <= logging.DEBUG else max(sight_level, logging.WARNING))


def _size(path: Path | None, part: str) -> str:
    if path is None:
        return "small"
    return next((s for s in ("tiny", "small", "medium") if path.stem.endswith(f"{part}_{s}")), path.name)


def reading_order(found: list[tuple[OcrLine, np.ndarray]]) -> list[OcrLine]:
    """Rows top to bottom, left to right within a row, for lines with their detector quads (top-left,
    top-right, bottom-right, bottom-left). Two lines share a row when the middle of one's left edge lies on
    the other extended along its slope: fields side by side on a tilted label share a row, which sorting boxes
    by their top cannot tell (docs/benchmarks.md, "OCR accuracy")."""
    rows: list[tuple[_Band, list[_Band]]] = []  # (the row's longest line, its lines)
    for band in sorted((_Band(line, quad) for line, quad in found), key=lambda b: b.middle):
        for i, (anchor, members) in enumerate(rows):
            if anchor.holds(band) or band.holds(anchor):
                members.append(band)
                rows[i] = (max(anchor, band, key=lambda b: b.length), members)
                break
        else:
            rows.append((band, [band]))
    left = min((anchor.x for anchor, _ in rows), default=0.0)
    rows.sort(key=lambda row: row[0].y_at(left))
    return [band.line for _, members in rows for band in sorted(members, key=lambda b: b.x)]


class _Band:
    """A detected line as a slanted band: the middle of its left edge, its slope, length and half height."""

    def __init__(self, line: OcrLine, quad: np.ndarray) -> None:
        self.line = line
        self.x, self.y = (float(v) for v in (quad[0] + quad[3]) / 2)
        dx, dy = (float(v) for v in quad[1] - quad[0])
        self.slope = dy / dx if dx > 0 else 0.0
        self.length = float(np.hypot(dx, dy))
        self.half_height = float(np.linalg.norm(quad[3] - quad[0])) / 2
        self.middle = float(quad[:, 1].mean())

    def y_at(self, x: float) -> float:
        return self.y + self.slope * (x - self.x)

    def holds(self, other: _Band) -> bool:
        return abs(other.y - self.y_at(other.x)) < self.half_height
