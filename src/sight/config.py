"""The one settings object. Nothing else in Sight reads ``os.environ``.

Every field can be set from the environment with the ``SIGHT_`` prefix and ``__`` between groups::

    SIGHT_YOLO__MODELS='{"yolo11n": "/models/yolo11n.onnx"}'
    SIGHT_LLM__BASE_URL=http://localhost:8001/v1  SIGHT_LLM__MODEL=qwen2.5-vl-7b
    SIGHT_DATABASE_URL=postgresql+asyncpg://sight@db/sight
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

MiB = 1024 * 1024


class ServerSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8000
    max_files: int = Field(64, description="Most images in one prediction request.")
    max_body_bytes: int = Field(256 * MiB, description="Largest request body; larger answers 413.")
    item_concurrency: int = Field(4, description="Items of one request processed at once.")
    max_queue: int = Field(256, description="Items admitted per model at once; past it requests get 503.")
    retry_after: int = Field(2, description="Retry-After seconds sent with 503 overloaded.")
    max_json_depth: int = Field(64, description="Deepest nesting of arrays and objects in JSON Sight parses "
                                "(v1 metadata, deployment bodies); deeper answers 400.")
    log_level: str = "info"


class ImageSettings(BaseModel):
    max_bytes: int = Field(25 * MiB, description="Largest encoded image, upload or download.")
    max_pixels: int = Field(50_000_000, description="Largest decoded image (width x height).")
    max_frames: int = Field(100, description="Animations (GIF, WebP, TIFF pages) with more frames are refused.")
    formats: list[str] = ["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"]
    max_pixels_in_flight: int = Field(150_000_000, description="Decoded pixels held at once across all requests; "
                                      "items past it wait their turn; a larger image runs alone. Each costs about 9 "
                                      "bytes of memory at its peak for detection (the decoded picture, the array the "
                                      "letterbox reads, the decoder's buffers) and about 15 with OCR too: the default "
                                      "bounds decoded pictures at roughly 1.4-2.2 GB.")
    pixel_queue: int = Field(64, description="Items that may wait for max_pixels_in_flight; past it items and "
                             "new requests get 503 with Retry-After.")


class FetchSettings(BaseModel):
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    total_timeout: float = 20.0
    max_redirects: int = 3
    allowed_ports: list[int] = [80, 443]
    # Test-only escape hatch: networks (CIDR) that may be fetched although private or loopback.
    # Addresses in them may also use any port. Never set this in production.
    allow_networks: list[str] = []


class YoloSettings(BaseModel):
    models: dict[str, str | Path] = Field(default_factory=dict, description="Detector name -> model source: an "
                                          "ONNX path, https://...#sha256=<hex>, or hf://owner/repo/file.onnx.")
    default_model: str = Field("yolo11n", description="Detector for items that name none. An official name "
                               "(yolo11n, yolo11s, yolo11m) downloads itself on first use if it is not here.")
    models_dir: Path | None = Field(None, description="Folder of *.onnx detectors named by file stem.")
    providers: list[str] | None = Field(None, description="ONNX Runtime providers; default: best present.")
    conf: float = Field(0.25, description="Boxes scoring at most this are dropped (Ultralytics' default).")
    iou: float = Field(0.7, description="Non-maximum suppression's overlap bound (Ultralytics' default).")
    max_det: int = 300
    intra_op_threads: int = Field(1, description="Threads one session run uses on the CPU (0: ONNX Runtime's "
                                  "default, one per core). One per run, one run per core is the fastest here.")
    concurrency: int = Field(0, description="Session runs at once. CPU detectors share these slots (0: usable "
                             "cores / intra_op_threads); each GPU detector has its own (0: 1).")
    wide_when_idle: bool = Field(True, description="On the CPU, a lone image on an idle server runs over every "
                                 "core (a second session per model: one more copy of its weights in memory).")
    timeout: float = Field(60.0, description="Seconds an item may wait for and run detection.")
    batch_max_size: int = Field(1, description="Gather up to this many concurrent images per session call "
                                                "(models with a dynamic batch axis; worth it on GPUs, not CPUs).")
    batch_max_wait_ms: float = Field(5.0, description="How long a gathered batch waits to fill up.")
    batch_on_cpu: bool = Field(False, description="Gather for detectors on the CPU too. It buys nothing there "
                               "(a batch of N costs N runs), so by default they take the direct path.")


class QuantizeSettings(BaseModel):
    """The parity gate of ``sight models quantize``: the INT8 model is written only when it finds what the FP32
    one finds, on the check set."""

    min_matched: float = Field(0.95, description="Least share of FP32 boxes with an INT8 twin, and of INT8 boxes "
                               "with an FP32 twin (same class, IoU >= match_iou).")
    min_mean_iou: float = Field(0.90, description="Least mean IoU of the matched boxes.")
    match_iou: float = Field(0.5, description="IoU at which two boxes of one class are twins.")
    serve_conf: float = Field(0.25, description="Boxes at or above this count (the serving threshold).")
    twin_conf: float = Field(0.1, description="A twin may score down to this: a box sitting on serve_conf does not "
                             "flip the verdict.")
    min_boxes: int = Field(20, description="A check set with fewer FP32 boxes in all is too thin to judge.")
    min_images: int = Field(4, description="Fewer calibration images are refused.")
    warn_images: int = Field(32, description="Fewer calibration images are warned about.")
    max_images: int = Field(64, description="At most this many calibration images, spread over the folder: "
                            "percentile calibration holds every image's activations in memory until it ends.")


class OcrSettings(BaseModel):
    enabled: bool = True
    detector: str = Field("small", description="PP-OCRv6 text detector: small (in rapidocr's wheel), tiny or "
                          "medium (downloaded once, pinned by sha256), or a model source (a path, "
                          "https://...#sha256=<hex>, hf://owner/repo/file.onnx).")
    recognizer: str = Field("small", description="PP-OCRv6 text recogniser, as `detector`: small, tiny, medium "
                            "or a model source.")
    providers: list[str] | None = Field(None, description="ONNX Runtime providers; default: best present.")
    intra_op_threads: int = Field(0, description="Threads one OCR run uses (0: one per core).")
    concurrency: int = 1
    timeout: float = Field(120.0, description="Seconds an item may wait for and run OCR.")


class LLMSettings(BaseModel):
    base_url: str | None = Field(None, description="OpenAI-compatible base URL, e.g. http://host:8000/v1. "
                                 "Unset: a local Ollama is looked for (see discover).")
    model: str | None = Field(None, description="The backend's model name. Unset: the only (or first) model the "
                              "base URL lists, or the first vision model of a discovered Ollama, by name.")
    api_key: SecretStr | None = None
    timeout: float = Field(60.0, description="Seconds one attempt at the backend may take.")
    deadline: float = Field(90.0, gt=0, description="Seconds the LLM stage of an item may take in all, its retries "
                            "and their waits included, in process and on Ray (retries stop at it).")
    connect_timeout: float = 5.0
    retries: int = 2
    backoff: float = 0.5
    max_tokens: int = 512
    temperature: float = 0.0
    max_image_side: int = Field(1536, description="Images are downscaled to this before sending.")
    discover: bool = Field(True, description="Without a base_url, look for a local Ollama with a vision model.")
    ollama_url: str = Field("http://127.0.0.1:11434", description="Where discovery looks for Ollama.")
    discover_interval: float = Field(5.0, description="Seconds between probes while no LLM has been found.")
    probe_timeout: float = Field(2.0, description="Seconds one discovery request may take (connect: at most 1).")


class JobsSettings(BaseModel):
    run_in_server: bool = Field(True, description="Process batch requests inside `sight serve`.")
    concurrency: int = Field(4, description="Batch requests one runner processes at once.")
    claim_batch: int = Field(8, description="Requests claimed per database round trip.")
    lease_seconds: float = 60.0
    heartbeat_seconds: float = 10.0
    poll_seconds: float = 0.5
    max_attempts: int = 3
    request_timeout: float = Field(900.0, description="One attempt at one request ends after this (then retried).")
    backoff_seconds: float = 2.0
    backoff_max_seconds: float = 300.0
    retention_hours: float = Field(24 * 30, description="Results are kept this long after a batch is created.")
    deadline_hours: float = Field(24, description="Work still pending this long after creation is cancelled.")
    sweep_seconds: float = 60.0
    blob_grace_seconds: float = Field(
        3600.0, description="A stored image no request references is removed once untouched this long "
        "(longer than any add of requests takes: an add in flight is never swept).")
    inline_result_bytes: int = Field(
        64 * 1024, ge=0, description="A batch result whose compact JSON is larger goes to the blob store "
        "(SIGHT_BLOBS__URL) and its row keeps only the reference; smaller ones stay in the database.")
    max_requests_per_call: int = 1000


class BlobSettings(BaseModel):
    """Where batch images and large batch results live (``SIGHT_BLOBS__URL``): a folder, or a bucket of any
    S3-compatible store."""

    url: str | None = Field(None, description="file://PATH or s3://BUCKET/PREFIX (AWS S3, MinIO, R2, GCS "
                            "interop; needs pip install 'sight[s3]'). Unset: file://<data_dir>/blobs.")
    endpoint_url: str | None = Field(None, description="The S3 endpoint, e.g. http://127.0.0.1:9000 (MinIO), "
                                     "https://ACCOUNT.r2.cloudflarestorage.com, https://storage.googleapis.com. "
                                     "Unset: AWS.")
    region: str | None = Field(None, description="Unset: AWS_REGION, else us-east-1 (R2: auto).")
    access_key_id: str | None = Field(None, description="Unset: the AWS default chain (AWS_* variables, web "
                                      "identity, ECS and EC2 roles).")
    secret_access_key: SecretStr | None = None
    force_path_style: bool = Field(False, description="Address the bucket as ENDPOINT/BUCKET (MinIO and most "
                                   "self-hosted stores) instead of BUCKET.ENDPOINT (AWS's default).")
    timeout: float = Field(30.0, description="Seconds one S3 request may take.")
    retries: int = Field(5, ge=0, description="Retries of a failed S3 request (5xx, connection errors, timeouts), "
                         "with exponential backoff.")
    retry_timeout: float = Field(60.0, description="No retry starts later than this many seconds after a "
                                 "request's first try.")


class ModelsSettings(BaseModel):
    """Fetching model files that are not here yet (the default detector, URL and Hugging Face sources)."""

    offline: bool = Field(False, description="Never download: a model file that is not here is an error.")
    wait_timeout: float = Field(300.0, description="Seconds an item waits for its model's download.")
    download_timeout: float = Field(1800.0, description="Seconds one download may take in all.")
    connect_timeout: float = 10.0
    read_timeout: float = Field(60.0, description="Seconds without a byte before a download fails.")
    max_redirects: int = 5
    max_download_bytes: int = Field(4 * 1024 * MiB, description="Largest file from a URL of unknown size.")
    retry_seconds: float = Field(30.0, description="A failed download is retried by the next item after this.")
    hf_endpoint: str | None = Field(None, description="Hugging Face endpoint or mirror (default: the Hub).")
    hf_cache_dir: Path | None = Field(None, description="Hugging Face cache folder (default: huggingface_hub's).")


class RegistrySettings(BaseModel):
    path: Path | None = Field(None, description="TOML file declaring models and deployments.")
    eager: bool = Field(False, description="Load every local model at start instead of on first use.")
    shadow_concurrency: int = Field(2, description="Shadow model runs at once (they never delay answers).")


class RateLimitSettings(BaseModel):
    images_per_minute: int | None = Field(None, description="Per-team quota in images; unset: no limit.")
    storage_uri: str = Field("async+memory://", description="limits storage, e.g. async+redis://host:6379")


class ClientSettings(BaseModel):
    """Where the CLI's client commands (``sight batches ...``) send requests."""

    url: str = "http://127.0.0.1:8000"
    api_key: SecretStr | None = None


class ReplicaSettings(BaseModel):
    """How the replicas of one Ray Serve deployment run: their resources and autoscaling."""

    num_cpus: float = Field(1.0, description="CPUs each replica holds (fractional allowed).")
    num_gpus: float = Field(0.0, description="GPUs each replica holds (fractional allowed, e.g. 0.5).")
    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 2.0
    max_ongoing_requests: int = Field(32, description="Requests one replica takes at once. A model replica queues "
                                      "them for its run slots itself: a low value leaves Serve's router to hold "
                                      "them back and probe replicas instead, which leaves cores idle "
                                      "(docs/benchmarks.md, \"Ray runtime\").")
    max_queued_requests: int = Field(-1, description="Requests a caller queues for the Serve deployment before it "
                                     "answers 503 overloaded (-1: no bound).")

    def ray_options(self) -> dict[str, object]:
        """These settings as ``serve.deployment(...)`` options."""
        return {
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
            "autoscaling_config": {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                                   "target_ongoing_requests": self.target_ongoing_requests},
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
        }


class RuntimeSettings(BaseModel):
    """Where models run: ``local`` (in this process) or ``ray`` (Ray Serve deployments; ``pip install
    'sight[ray]'``). ``SIGHT_RUNTIME__KIND=ray``, ``SIGHT_RUNTIME__DETECTOR__NUM_GPUS=0.5``. The names
    ``SIGHT_ENGINE__*`` are still read, with a deprecation line in the log."""

    kind: str = Field("local", pattern="^(local|ray)$", description="`local` or `ray`.")
    address: str = Field("auto", description="Ray cluster to join (`auto`: the local one, started if none runs).")
    app_name: str = Field("sight", description="The Serve application's name.")
    # Model Serve deployments queue a bounded number of calls beyond what their replicas take: then 503.
    detector: ReplicaSettings = ReplicaSettings(max_queued_requests=128)
    ocr: ReplicaSettings = ReplicaSettings(max_queued_requests=64)
    llm: ReplicaSettings = ReplicaSettings(num_cpus=0.25, max_ongoing_requests=64, max_queued_requests=256)
    api: ReplicaSettings = ReplicaSettings(num_cpus=0.5, max_ongoing_requests=64)
    retries: int = Field(2, description="Times a call is retried on another replica when its replica dies.")


class _FormerRuntimeNames(PydanticBaseSettingsSource):
    """``SIGHT_ENGINE__*``, the runtime group's former name, read from the environment and the dotenv file the
    settings read (``SIGHT_ENGINE__DETECTOR__NUM_GPUS`` is ``runtime.detector.num_gpus``), below every other
    source: a ``SIGHT_RUNTIME__*`` value wins field by field. Present, it logs one deprecation line a process."""

    PREFIX = "SIGHT_ENGINE__"

    def __init__(self, settings_cls: type[BaseSettings], dotenv: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self.dotenv = dotenv

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # values come from __call__ as a whole

    def __call__(self) -> dict[str, Any]:
        global _warned_legacy
        found: dict[str, str] = {}
        dotenv_vars: Mapping[str, str | None] = getattr(self.dotenv, "env_vars", {}) or {}
        for source in (dotenv_vars, os.environ):  # the environment wins, as for the current names
            for key, value in source.items():
                if key.upper().startswith(self.PREFIX) and value is not None:
                    found[key.upper()] = value
        if not found:
            return {}
        if not _warned_legacy:
            _warned_legacy = True
            logging.getLogger("sight.config").warning(
                "SIGHT_ENGINE__* settings are deprecated: rename them SIGHT_RUNTIME__* (read now: %s)",
                ", ".join(sorted(found)))
        nested: dict[str, Any] = {}
        for key, value in found.items():
            *path, leaf = key.removeprefix(self.PREFIX).lower().split("__")
            node = nested
            for part in path:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    break
            else:
                node[leaf] = value
        return {"runtime": nested}


_warned_legacy = False


class Settings(BaseSettings):
    """Sight's configuration, built once by the CLI or ``create_app()`` and passed down by group."""

    model_config = SettingsConfigDict(
        env_prefix="SIGHT_", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )

    server: ServerSettings = ServerSettings()
    images: ImageSettings = ImageSettings()
    fetch: FetchSettings = FetchSettings()
    yolo: YoloSettings = YoloSettings()
    quantize: QuantizeSettings = QuantizeSettings()
    ocr: OcrSettings = OcrSettings()
    llm: LLMSettings = LLMSettings()
    jobs: JobsSettings = JobsSettings()
    blobs: BlobSettings = BlobSettings()
    models: ModelsSettings = ModelsSettings()
    registry: RegistrySettings = RegistrySettings()
    rate_limit: RateLimitSettings = RateLimitSettings()
    client: ClientSettings = ClientSettings()
    runtime: RuntimeSettings = RuntimeSettings()
    data_dir: Path = Path("./sight-data")
    database_url: str = "sqlite+aiosqlite:///./sight.db"
    bootstrap_team: str = "default"

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, dotenv_settings, _FormerRuntimeNames(settings_cls, dotenv_settings),
                file_secret_settings)

    @property
    def models_dir(self) -> Path:
        """Where local detectors are found and downloaded ones are written."""
        return self.yolo.models_dir or self.data_dir / "models"

    def detector_sources(self) -> dict[str, str]:
        """Configured detectors (name -> source): the ``*.onnx`` files of ``models_dir``, then the ``models``
        mapping over them."""
        found: dict[str, str] = {}
        if self.models_dir.is_dir():
            found.update({p.stem: str(p) for p in sorted(self.models_dir.glob("*.onnx"))})
        found.update({name: str(source) for name, source in self.yolo.models.items()})
        return found
