"""How far an INT8 detector's boxes are from its FP32 source's, image by image: the gate ``sight models
quantize`` applies before it writes a file.

>>> from sight.engines.base import Box, Detection
>>> face = Detection("face", 0, 0.81, Box(10, 10, 50, 50))
>>> near = Detection("face", 0, 0.12, Box(11, 10, 50, 51))   # on the far side of 0.25, above the twin margin
>>> one = compare([face], [near], QuantizeSettings())
>>> (one.fp32, one.fp32_matched, one.int8, one.int8_matched, round(one.mean_iou, 3), round(one.max_conf_change, 2))
(1, 1, 0, 0, 0.952, 0.69)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sight.config import QuantizeSettings
from sight.engines.base import Detection


@dataclass
class ImageParity:
    """One image: boxes at or above the serving threshold on each side, and how many have a twin on the other."""

    fp32: int = 0
    fp32_matched: int = 0
    int8: int = 0
    int8_matched: int = 0
    ious: list[float] = field(default_factory=list)
    conf_changes: list[float] = field(default_factory=list)

    @property
    def counts(self) -> bool:
        """Whether the image counts: an image where neither model finds a box counts for nothing."""
        return bool(self.fp32 or self.int8)

    @property
    def mean_iou(self) -> float:
        return sum(self.ious) / len(self.ious) if self.ious else 0.0

    @property
    def max_conf_change(self) -> float:
        return max(self.conf_changes, default=0.0)

    def add(self, other: ImageParity) -> None:
        self.fp32 += other.fp32
        self.fp32_matched += other.fp32_matched
        self.int8 += other.int8
        self.int8_matched += other.int8_matched
        self.ious.extend(other.ious)
        self.conf_changes.extend(other.conf_changes)

    def share(self, side: str) -> float:
        total, matched = (self.fp32, self.fp32_matched) if side == "fp32" else (self.int8, self.int8_matched)
        return matched / total if total else 1.0


def _twins(boxes: Sequence[Detection], others: Sequence[Detection], s: QuantizeSettings
           ) -> list[tuple[Detection, Detection, float] | tuple[Detection, None, float]]:
    """Each of ``boxes`` at or above ``serve_conf``, most confident first, with its twin among ``others`` (same
    class, IoU >= ``match_iou``, scoring ``twin_conf`` or more), one to one: a twin taken is not taken again."""
    taken: set[int] = set()
    out: list[tuple[Detection, Detection, float] | tuple[Detection, None, float]] = []
    for box in sorted((b for b in boxes if b.confidence >= s.serve_conf), key=lambda b: -b.confidence):
        best, overlap = None, 0.0
        for i, other in enumerate(others):
            if i in taken or other.class_id != box.class_id or other.confidence < s.twin_conf:
                continue
            iou = box.box.iou(other.box)
            if iou >= s.match_iou and iou > overlap:
                best, overlap = i, iou
        if best is None:
            out.append((box, None, 0.0))
        else:
            taken.add(best)
            out.append((box, others[best], overlap))
    return out


def compare(fp32: Sequence[Detection], int8: Sequence[Detection], s: QuantizeSettings) -> ImageParity:
    """``fp32`` and ``int8``: one image's detections at ``twin_conf`` or above. A box at or above ``serve_conf``
    is matched when the other side has a twin (same class, IoU >= ``match_iou``) scoring ``twin_conf`` or more,
    one to one."""
    out = ImageParity()
    for box, twin, overlap in _twins(fp32, int8, s):
        out.fp32 += 1
        if twin is not None:
            out.fp32_matched += 1
            out.ious.append(overlap)
            out.conf_changes.append(abs(twin.confidence - box.confidence))
    for _box, twin, _overlap in _twins(int8, fp32, s):
        out.int8 += 1
        out.int8_matched += twin is not None
    return out


def verdict(total: ImageParity, s: QuantizeSettings) -> str | None:
    """Why the INT8 model must not be written (None: it passes the gate)."""
    if total.fp32 < s.min_boxes:
        return (f"the check set is too thin to judge: {total.fp32} FP32 boxes in all (at least {s.min_boxes}); "
                "check on more images with objects the model finds (--check DIR)")
    problems = []
    for side in ("fp32", "int8"):
        if total.share(side) < s.min_matched:
            problems.append(f"{total.share(side):.3f} of the {side.upper()} boxes have a twin (at least "
                            f"{s.min_matched})")
    if total.mean_iou < s.min_mean_iou:
        problems.append(f"mean IoU of the matched boxes {total.mean_iou:.3f} (at least {s.min_mean_iou})")
    return "; ".join(problems) or None
