"""Python client for Sight's HTTP API.

>>> from sight.client import Client, VisionPredict
>>> with Client(server_url, api_key=api_key) as sight:          # e.g. "http://127.0.0.1:8000", "sk-sight-..."
...     batch = sight.create_batch("labels")
...     ids = sight.add_requests(batch.batch_id, [VisionPredict(image_base64=label_base64, is_ocr=True)])
...     print(len(ids), sight.get_batch(batch.batch_id).state.num_requests)
1 1

``add_requests`` takes requests alone (the server names them) or as ``(batch_request_id, request)`` pairs.
"""

from sight.client.sync import Client
from sight.errors import SightError
from sight.schemas import ItemOptions, VisionPredict

__all__ = ["Client", "ItemOptions", "SightError", "VisionPredict"]
