"""Python client for Sight's HTTP API.

>>> from sight.client import Client
>>> with Client("http://127.0.0.1:8000", api_key="sk-sight-...") as sight:
...     batch = sight.create_batch("labels")
...     sight.add_requests(batch.batch_id, [VisionPredict(image_url="https://...", is_ocr=True)])
"""

from sight.client.sync import Client

__all__ = ["Client"]
