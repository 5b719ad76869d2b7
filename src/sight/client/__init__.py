"""Python client for Sight's HTTP API: ``Client`` (blocking) and ``AsyncClient``, with typed results (the
server's own schemas) and one exception tree (``sight.errors``).

>>> from sight.client import Client, VisionPredict
>>> with Client(server_url, api_key=api_key) as sight:          # e.g. "http://127.0.0.1:8000", "sk-sight-..."
...     print(sight.predict(image).result.items[0].yolo.detections[0].name)
...     batch = sight.create_batch("labels")
...     ids = sight.add_requests(batch.batch_id, [VisionPredict(image_base64=label_base64, is_ocr=True)])
...     print(len(ids), sight.get_batch(batch.batch_id).state.num_requests)
FACE_FEMALE
1 1

Images are paths, bytes, ``http(s)://`` URLs (the server fetches them) or PIL images. ``add_requests`` takes
requests alone (the server names them) or as ``(batch_request_id, request)`` pairs. With no ``url`` and
``api_key`` a client reads ``SIGHT_CLIENT__URL`` and ``SIGHT_API_KEY`` (or ``SIGHT_CLIENT__API_KEY``).
"""

from sight.client.aio import AsyncClient
from sight.client.base import DeploymentRowsError, ItemFlags, StreamEvent
from sight.client.images import ImageLike
from sight.client.sync import Client
from sight.errors import SightError
from sight.schemas import (
    ItemOptions,
    PredictionSpec,
    StreamComplete,
    StreamDone,
    StreamError,
    StreamProcessing,
    VisionPredict,
)

__all__ = [
    "AsyncClient",
    "Client",
    "DeploymentRowsError",
    "ImageLike",
    "ItemFlags",
    "ItemOptions",
    "PredictionSpec",
    "SightError",
    "StreamComplete",
    "StreamDone",
    "StreamError",
    "StreamEvent",
    "StreamProcessing",
    "VisionPredict",
]
