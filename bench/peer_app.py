"""The peer Sight is measured against: a plain FastAPI endpoint doing the same preprocessing and the same
ONNX Runtime session per request in FastAPI's thread pool (what one writes in an afternoon).

    uvicorn --app-dir bench peer_app:app --port 8100     # SIGHT_BENCH_MODEL=path/to/model.onnx
"""

from __future__ import annotations

import io
import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, File, UploadFile
from PIL import Image

from sight.engines.onnx_yolo import letterbox, takes_pixels, to_input

MODEL = os.environ["SIGHT_BENCH_MODEL"]
session = ort.InferenceSession(MODEL, providers=["CPUExecutionProvider"])
input_name = session.get_inputs()[0].name
pixels = takes_pixels(session)
app = FastAPI()


@app.post("/detect")
def detect(files: list[UploadFile] = File(...)) -> dict[str, list[int]]:  # noqa: B008 - FastAPI's idiom
    counts = []
    for upload in files:
        image = Image.open(io.BytesIO(upload.file.read())).convert("RGB")
        canvas, _ = letterbox(image, (640, 640))
        out = session.run(None, {input_name: to_input([canvas], pixels)})[0]
        counts.append(int((np.asarray(out)[0, 4:].max(axis=0) > 0.25).sum()))
    return {"candidates": counts}
