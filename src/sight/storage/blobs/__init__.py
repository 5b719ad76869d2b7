"""Where batch images and large batch results live, by content: a folder or an S3-compatible bucket.

``base`` holds the contract both backends keep, ``file`` and ``s3`` the backends, ``factory`` the choice
between them (``SIGHT_BLOBS__URL``).
"""

from sight.storage.blobs.base import BlobInfo, BlobStore
from sight.storage.blobs.factory import open_blob_store
from sight.storage.blobs.file import FileBlobStore

__all__ = ["BlobInfo", "BlobStore", "FileBlobStore", "open_blob_store"]
