"""The reference the parity test compares Sight with: Ultralytics' own predictor on an ONNX export.

    python tests/ultralytics_reference.py MODEL CONF IMAGE...   # prints {image name: [[class, conf, x1, y1, x2, y2]]}

Each image is predicted alone (a list would be letterboxed as one batch, square when shapes differ), at
imgsz 320 (the test model's size: a dynamic export ignores the size in its metadata), with Ultralytics'
defaults otherwise (rect letterbox, iou 0.7). Run with ``tests/stand_ins`` first on PYTHONPATH (see there).
"""

import json
import sys
from pathlib import Path

from ultralytics import YOLO


def main() -> None:
    model_path, conf, *images = sys.argv[1:]
    model = YOLO(model_path, task="detect")
    found = {}
    for image in images:
        result = model.predict(image, imgsz=320, conf=float(conf), verbose=False)[0]
        found[Path(image).name] = [
            [result.names[int(c)], float(s), *box]
            for box, s, c in zip(
                result.boxes.xyxy.tolist(), result.boxes.conf.tolist(), result.boxes.cls.tolist(), strict=True
            )
        ]
    print(json.dumps(found))


if __name__ == "__main__":
    main()
