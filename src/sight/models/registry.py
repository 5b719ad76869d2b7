"""The engines a running server holds, per catalog snapshot, and the hub that swaps snapshots on reload.

A request takes ``hub.current`` once and uses it to the end, so a reload never changes a model under a
request in flight; engines that did not change carry over to the new snapshot without reloading. How the
engines are run (run slots, gathered batches, limiters) is the runtime's business (``sight.runtimes``).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping
from pathlib import Path

from sight.config import Settings
from sight.engines.base import Detector, OcrEngine, VisionLLM
from sight.engines.cpus import cpu_slots, usable_cpus
from sight.engines.llm_discovery import DiscoveringVisionLLM, LLMStatus
from sight.errors import ModelNotFoundError, SightError, StageTimeoutError
from sight.models.catalog import Catalog, ModelEntry
from sight.models.files import FileState, ModelFiles
from sight.models.official import OCR_FILES, OCR_SIZES
from sight.models.sources import ModelSource

log = logging.getLogger(__name__)
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")  # as the catalog names models


def ocr_source(part: str, setting: str) -> ModelSource | None:
    """The file behind ``SIGHT_OCR__DETECTOR`` (``part`` det) or ``__RECOGNIZER`` (rec): None for small, the
    pinned official file for tiny and medium, else the model source it names."""
    if setting == "small":
        return None
    if setting in OCR_SIZES:
        return ModelSource.parse(OCR_FILES[part, setting].source)
    return ModelSource.parse(setting)


class EngineRegistry:
    """One catalog snapshot and the engines loaded for it. Inject ready engines for tests or embedding::

        EngineRegistry(settings, detectors={"toy": my_detector}, llm=my_llm)
    """

    def __init__(
        self,
        settings: Settings,
        catalog: Catalog | None = None,
        *,
        detectors: Mapping[str, Detector] | None = None,
        ocr: OcrEngine | None = None,
        llm: VisionLLM | None = None,
        files: ModelFiles | None = None,
    ) -> None:
        self.settings = settings
        # Injected detectors are declared like configured ones, and stay declared across reloads.
        self.injected = {name.partition(":")[0]: f"<injected {name}>" for name in detectors or {}}
        self.files = files or ModelFiles(settings.models, settings.models_dir)
        self.catalog = catalog or self.build_catalog()
        self._detectors: dict[str, Detector] = {
            (k if ":" in k else f"{k}:1"): d for k, d in (detectors or {}).items()
        }
        self._ocr = ocr
        self._llm = llm
        self.load_errors: dict[str, str] = {}  # ref -> why its file would not load (until a load succeeds)
        self._llms: dict[str, VisionLLM] = {}
        self._load_lock = threading.Lock()
        if settings.ocr.enabled:
            self.ocr_sources()  # an unpinned URL or a bad size fails the start, with the fix

    def build_catalog(self) -> Catalog:
        """The catalog as settings and the registry file declare it now."""
        return Catalog.from_settings(self.settings, self.injected)

    def loaded_detector(self, entry: ModelEntry) -> Detector | None:
        """The detector for ``entry`` if it is already loaded (never loads; safe on the event loop)."""
        return self._detectors.get(entry.ref)

    def loaded_by_ref(self, ref: str) -> Detector | None:
        """The loaded detector of ``ref`` (``name:version``), if this snapshot holds one."""
        return self._detectors.get(ref)

    # -- detectors -------------------------------------------------------------------------------------

    def detector_entry(self, ref: str | None, request_id: str | None = None) -> ModelEntry:
        return self.catalog.model(ref or self.settings.yolo.default_model, request_id, task="detect")

    def detector(self, ref: str | None, request_id: str | None = None) -> Detector:
        """The detector for ``ref``, loading it on first use. Blocking: call it from a worker thread."""
        return self.detector_for(self.detector_entry(ref, request_id))

    def source_of(self, entry: ModelEntry) -> ModelSource:
        if not entry.source or entry.source.startswith("<"):
            raise ModelNotFoundError(f"model {entry.ref} has no ONNX source")
        return ModelSource.parse(entry.source)

    async def provision(self, entry: ModelEntry) -> None:
        """Make sure ``entry``'s file is here, waiting (without a thread) for its one download if it is not."""
        if entry.ref not in self._detectors:
            await self.files.aensure(entry.name, self.source_of(entry), self.settings.models.wait_timeout)

    def file_state(self, entry: ModelEntry) -> FileState | None:
        """Where a detector's file stands, or OCR's files (the least ready of the two it downloads); None for
        injected detectors, OCR from rapidocr's wheel and LLMs."""
        if entry.task == "ocr":
            states = [self.files.state(s) for s in self.ocr_sources().values() if s is not None]
            order = ("failed", "downloading", "missing", "present")
            return min(states, key=lambda f: order.index(f.state), default=None)
        if entry.task != "detect" or not entry.source or entry.source.startswith("<"):
            return None
        return self.files.state(ModelSource.parse(entry.source))

    def warning(self, entry: ModelEntry) -> str | None:
        """What its user should know about ``entry`` (an official name served from a file that is not the
        official export)."""
        if entry.task != "detect" or not entry.source or entry.source.startswith("<"):
            return None
        return self.files.official_mismatch(entry.name, ModelSource.parse(entry.source))

    def detector_for(self, entry: ModelEntry) -> Detector:
        """The detector for ``entry``, downloading its file and loading it on first use. Blocking."""
        if entry.ref in self._detectors:
            return self._detectors[entry.ref]
        # Downloads happen outside the load lock: one model's download never holds up another's load.
        path = self.files.ensure(entry.name, self.source_of(entry), self.settings.models.wait_timeout)
        with self._load_lock:
            detector = self._detectors.get(entry.ref)
            if detector is None:
                try:
                    detector = self._load_detector(entry, path)
                except SightError as exc:
                    self.load_errors[entry.ref] = exc.message
                    raise
                self.load_errors.pop(entry.ref, None)
                self._detectors[entry.ref] = detector
            return detector

    def _load_detector(self, entry: ModelEntry, path: Path) -> Detector:
        from sight.engines.onnx_yolo import OnnxYoloDetector

        y = self.settings.yolo
        detector = OnnxYoloDetector.load(
            entry.name, path, providers=y.providers,
            intra_op_threads=y.intra_op_threads,
            # A second session over every core only where a run can ever hold more than one slot.
            wide_threads=usable_cpus() if y.wide_when_idle and cpu_slots(y) > 1 else 0,
            version=str(entry.version),
            conf=y.conf if entry.conf is None else entry.conf,
            iou=y.iou if entry.iou is None else entry.iou, max_det=y.max_det,
        )
        log.info("detector %s loaded from %s on %s, %s thread(s) per run%s", entry.ref, path,
                 detector.providers[0], y.intra_op_threads or "all",
                 "; lone images on an idle server use every core" if detector.can_run_wide else "")
        return detector

    def provider(self, entry: ModelEntry) -> str | None:
        """The execution provider a loaded detector's or OCR's session got (``CPU``, ``CUDA``...), else None."""
        if entry.task == "ocr":
            return getattr(self._ocr, "provider", None)
        providers = getattr(self._detectors.get(entry.ref), "providers", None)
        return str(providers[0]).removesuffix("ExecutionProvider") if providers else None

    def precision(self, entry: ModelEntry) -> str | None:
        """A loaded detector's precision from its file's metadata (``fp32``, ``int8``), else None."""
        return getattr(self._detectors.get(entry.ref), "precision", None) if entry.task == "detect" else None

    def is_loaded(self, entry: ModelEntry) -> bool:
        if entry.task == "detect":
            return entry.ref in self._detectors
        if entry.task == "ocr":
            return self._ocr is not None
        return True  # LLMs are remote: nothing to load

    # -- OCR and LLM -----------------------------------------------------------------------------------

    def ocr(self) -> OcrEngine:
        """The OCR engine, loaded on first use (a tiny or medium model downloaded first, once). Blocking: call
        it from a worker thread."""
        if self._ocr is not None:
            return self._ocr
        o = self.settings.ocr
        ref = self.ocr_ref()
        try:  # downloads outside the load lock, as for detectors
            paths = {part: None if source is None else self.files.ensure(f"ocr-{part}", source,
                                                                           self.settings.models.wait_timeout)
                     for part, source in self.ocr_sources().items()}
            with self._load_lock:
                if self._ocr is None:
                    from sight.engines.rapid_ocr import OcrModels, RapidOcrEngine

                    self._ocr = RapidOcrEngine.load(OcrModels(paths["detector"], paths["recognizer"]),
                                                    providers=o.providers, threads=o.intra_op_threads)
        except SightError as exc:
            if not isinstance(exc, StageTimeoutError):  # a download still under way is no failure
                self.load_errors[ref] = exc.message
            raise
        self.load_errors.pop(ref, None)
        return self._ocr

    def ocr_sources(self) -> dict[str, ModelSource | None]:
        """Where the OCR detector's and recogniser's files come from (None: rapidocr's wheel ships it)."""
        o = self.settings.ocr
        return {"detector": ocr_source("det", o.detector), "recognizer": ocr_source("rec", o.recognizer)}

    def ocr_ref(self) -> str:
        entry = self.catalog.first("ocr")
        return entry.ref if entry is not None else "rapidocr:1"

    def ocr_name(self) -> str:
        """The catalog's name for the OCR model (``rapidocr`` unless the registry file names it otherwise)."""
        entry = self.catalog.first("ocr")
        return entry.name if entry is not None else "rapidocr"

    @property
    def llm(self) -> VisionLLM:
        """The default vision LLM (``SIGHT_LLM__*``, or a local Ollama found by discovery)."""
        if self._llm is None:
            self._llm = DiscoveringVisionLLM(self.settings.llm)
        return self._llm

    def llm_status(self, entry: ModelEntry | None = None) -> LLMStatus:
        """What the LLM behind a catalog entry (None: the default one) is now, or what to set. No I/O."""
        if entry is not None and entry.source:
            return LLMStatus("openai-compatible", entry.source, entry.model or entry.name, "ready")
        llm = self.llm
        if isinstance(llm, DiscoveringVisionLLM):
            return llm.describe()
        return LLMStatus(None, None, None, "ready", "an LLM given to the server in process")

    async def probe_llm(self) -> LLMStatus:
        """Look for the default LLM now if none is found yet (rate-limited; see ``DiscoveringVisionLLM``)."""
        llm = self.llm
        return await llm.probe() if isinstance(llm, DiscoveringVisionLLM) else self.llm_status()

    def llm_entry(self, ref: str | None, request_id: str | None = None) -> ModelEntry | None:
        """The catalog entry an item's ``llm_model`` names, if it names one."""
        if not ref:
            return None
        try:
            return self.catalog.model(ref, request_id, task="llm")
        except ModelNotFoundError:
            return None

    def llm_client(self, entry: ModelEntry | None, ref: str | None) -> tuple[VisionLLM, str | None]:
        """(client, backend model name) for a catalog ``llm`` entry (which may name its own endpoint), or, with
        none, ``ref`` passed through as a model name to the default backend."""
        if entry is None:
            return self.llm, ref or None
        if not entry.source:
            return self.llm, entry.model or entry.name
        if entry.ref not in self._llms:
            from sight.engines.openai_llm import OpenAIVisionLLM

            self._llms[entry.ref] = OpenAIVisionLLM(self.settings.llm.model_copy(update={"base_url": entry.source}))
        return self._llms[entry.ref], entry.model or entry.name

    # -- lifecycle -------------------------------------------------------------------------------------

    def successor(self, catalog: Catalog) -> EngineRegistry:
        """A registry for ``catalog`` that keeps this one's engines whose declaration did not change."""
        nxt = EngineRegistry(self.settings, catalog, ocr=self._ocr, llm=self._llm, files=self.files)
        nxt.injected = self.injected
        current = {m.ref: m for m in catalog.all_models()}
        old = {m.ref: m for m in self.catalog.all_models()}
        for ref, detector in self._detectors.items():
            if ref in current and (ref not in old or old[ref] == current[ref]):
                nxt._detectors[ref] = detector
        for ref, client in self._llms.items():
            if ref in current and old.get(ref) == current[ref]:
                nxt._llms[ref] = client
        return nxt

    def clients(self) -> list[VisionLLM]:
        return [c for c in [self._llm, *self._llms.values()] if c is not None]

    async def aclose(self) -> None:
        for client in self.clients():
            await client.aclose()


class EngineHub:
    """Holds the current snapshot; ``reload()`` re-reads the registry file and swaps it in. A replaced snapshot
    is dropped once its requests finish (its unchanged engines live on in the new one); only its LLM clients
    are kept, to be closed at shutdown, since a request still in flight may be using them."""

    def __init__(self, current: EngineRegistry) -> None:
        self.current = current
        self._retired_clients: list[VisionLLM] = []
        self._reloading = threading.Lock()

    def discover(self, name: str) -> EngineRegistry | None:
        """On a miss for ``name``: a ``<name>.onnx`` put into the models folder since the catalog was built is
        served at once, without ``POST /v1/models:reload`` (the catalog is built again, as a reload does).
        Returns the snapshot that declares it, or None."""
        if not MODEL_NAME.match(name):
            return None
        if name in self.current.catalog.models:  # found already (by another item, or a reload)
            return self.current
        if not (self.current.settings.models_dir / f"{name}.onnx").is_file():
            return None
        with self._reloading:
            if name not in self.current.catalog.models:
                self.reload()
                log.info("detector %s found in %s and served", name, self.current.settings.models_dir)
        return self.current if name in self.current.catalog.models else None

    def reload(self) -> EngineRegistry:
        old = self.current
        self.current = old.successor(old.build_catalog())
        kept = {id(c) for c in self.current.clients()}
        self._retired_clients += [c for c in old.clients() if id(c) not in kept]
        return self.current

    async def aclose(self) -> None:
        seen: set[int] = set()
        for client in [*self._retired_clients, *self.current.clients()]:
            if id(client) not in seen:
                seen.add(id(client))
                await client.aclose()
