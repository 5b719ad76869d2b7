"""The model catalog: which models and deployments exist, in which versions, under which aliases.

Declared in a TOML file (``SIGHT_REGISTRY__PATH``; see ``sight-models.example.toml``) and merged with the
detectors of ``SIGHT_YOLO__MODELS``. Pure data: nothing here loads a model.

A reference is ``name``, ``name:<version>``, ``name:<alias>`` or ``name:latest``; ``name`` alone means
``latest`` (an explicit ``latest`` alias, else the highest version). An alias may split traffic between
versions by weight; the pick is a hash of the request id, so a retry lands on the same version.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sight.errors import InvalidInputError, ModelNotFoundError
from sight.models.official import OFFICIAL
from sight.models.sources import ModelSource

if TYPE_CHECKING:
    from sight.config import Settings

Task = Literal["detect", "ocr", "llm"]


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    version: int = Field(1, ge=1)
    task: Task = "detect"
    source: str | None = Field(None, description="detect: an ONNX path, https://...#sha256=<hex> or "
                               "hf://owner/repo/file.onnx; llm: an OpenAI-compatible base URL.")
    model: str | None = Field(None, description="llm: the backend's model name.")
    aliases: tuple[str, ...] = ()
    conf: float | None = Field(None, ge=0, le=1)
    iou: float | None = Field(None, ge=0, le=1)
    shadow_of: str | None = Field(None, description="Run as a shadow of this model reference.")
    ray: dict[str, float] = Field(default_factory=dict, description="detect: this version's Ray Serve deployment "
                                  "options over SIGHT_RUNTIME__DETECTOR__* (num_cpus, num_gpus, min_replicas, ...).")

    @field_validator("ray")
    @classmethod
    def _known_ray_options(cls, value: dict[str, float]) -> dict[str, float]:
        from sight.config import ReplicaSettings

        if unknown := sorted(set(value) - set(ReplicaSettings.model_fields)):
            raise ValueError(f"unknown Ray options {unknown}; known: {sorted(ReplicaSettings.model_fields)}")
        return value

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


class DeploymentEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    version: int = Field(1, ge=1)
    function: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", description="module:function")
    aliases: tuple[str, ...] = ()


class SplitEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    alias: str
    weights: dict[int, float]


class RegistryFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: list[ModelEntry] = []
    deployment: list[DeploymentEntry] = []
    split: list[SplitEntry] = []


def read_registry_file(path: Path) -> RegistryFile:
    try:
        with path.open("rb") as f:
            return RegistryFile.model_validate(tomllib.load(f))
    except FileNotFoundError as exc:
        raise InvalidInputError(f"registry file {path} does not exist") from exc
    except (tomllib.TOMLDecodeError, ValidationError) as exc:
        raise InvalidInputError(f"registry file {path} is invalid: {exc}") from exc


def bucket(request_id: str, salt: str) -> float:
    """A stable number in [0, 1) for this request id."""
    digest = hashlib.sha256(f"{salt}\0{request_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


E = TypeVar("E", ModelEntry, DeploymentEntry)


class Versioned(Generic[E]):  # noqa: UP046 - Python 3.11 has no PEP 695 syntax
    """All versions of one name with their aliases and splits."""

    def __init__(self, entries: Iterable[E], splits: Iterable[SplitEntry] = ()) -> None:
        self.by_version: dict[int, E] = {}
        for entry in entries:
            if entry.version in self.by_version:
                raise InvalidInputError(f"{entry.name} version {entry.version} is declared twice")
            self.by_version[entry.version] = entry
        self.aliases: dict[str, int] = {}
        for entry in self.by_version.values():
            for alias in entry.aliases:
                if alias in self.aliases:
                    raise InvalidInputError(f"alias {alias!r} of {entry.name} names two versions")
                self.aliases[alias] = entry.version
        self.splits = {s.alias: s for s in splits}
        for split in self.splits.values():
            unknown = set(split.weights) - set(self.by_version)
            if unknown or not split.weights or sum(split.weights.values()) <= 0:
                raise InvalidInputError(f"split {split.name}:{split.alias} has unknown versions or no weight")

    @property
    def latest(self) -> E:
        version, why = self.serving()
        if version is None:
            raise ModelNotFoundError(f"{why}: name a version")
        return self.by_version[version]

    def serving(self) -> tuple[int | None, str]:
        """The version a bare name (or ``latest``) serves, and why. A version that only shadows another never
        takes live traffic by default: the highest version that is no shadow serves, unless an explicit
        ``latest`` alias names one."""
        if "latest" in self.aliases:
            return self.aliases["latest"], "the 'latest' alias names it"
        live = [v for v, e in self.by_version.items() if getattr(e, "shadow_of", None) is None]
        if not live:
            return None, "every version of this name is only a shadow, so its bare name serves none"
        shadows = sorted(v for v in self.by_version if v > max(live))
        why = "the highest version that is not a shadow"
        if shadows:
            why += (f" (version {shadows[0]} is only a shadow)" if len(shadows) == 1
                    else f" (versions {', '.join(map(str, shadows))} are only shadows)")
        return max(live), why

    def resolve(self, ref: str | None, request_id: str | None) -> E:
        if ref is None or ref == "" or ref == "latest":
            return self.latest
        if ref.isdigit():
            entry = self.by_version.get(int(ref))
            if entry is None:
                raise ModelNotFoundError(f"no version {ref} (have {sorted(self.by_version)})")
            return entry
        if ref in self.splits:
            split = self.splits[ref]
            point = bucket(request_id or "", f"{split.name}:{split.alias}") * sum(split.weights.values())
            for version, weight in sorted(split.weights.items()):
                point -= weight
                if point < 0:
                    return self.by_version[version]
            return self.by_version[max(split.weights)]
        if ref in self.aliases:
            return self.by_version[self.aliases[ref]]
        raise ModelNotFoundError(f"no version or alias {ref!r}")


class Catalog:
    """Every declared model and deployment. Immutable: a reload builds a new one."""

    def __init__(self, models: Iterable[ModelEntry], deployments: Iterable[DeploymentEntry] = (),
                 splits: Iterable[SplitEntry] = ()) -> None:
        models, deployments, splits = list(models), list(deployments), list(splits)
        self.models = {name: Versioned([m for m in models if m.name == name], [s for s in splits if s.name == name])
                       for name in dict.fromkeys(m.name for m in models)}
        self.deployments = {name: Versioned([d for d in deployments if d.name == name])
                            for name in dict.fromkeys(d.name for d in deployments)}
        for s in splits:
            if s.name not in self.models:
                raise InvalidInputError(f"split for unknown model {s.name!r}")
        self.shadows: dict[str, list[ModelEntry]] = {}
        for m in models:
            if m.shadow_of:
                primary = self.model(m.shadow_of)
                self.shadows.setdefault(primary.ref, []).append(m)

    @classmethod
    def from_settings(cls, settings: Settings, extra: Mapping[str, str] | None = None) -> Catalog:
        """The catalog settings declare: ``extra`` detectors, then configured ones, and the default detector
        from the official table when it is an official name declared nowhere (it downloads on first use)."""
        detectors = {**(extra or {}), **settings.detector_sources()}
        default = settings.yolo.default_model
        if default not in detectors and default in OFFICIAL:
            detectors[default] = OFFICIAL[default].source
        return cls.build(detectors, settings.registry.path, settings.llm.model)

    @classmethod
    def build(cls, detectors: Mapping[str, str], registry_file: Path | None, llm_model: str | None) -> Catalog:
        """The settings' detectors (version 1 each) plus the registry file, plus OCR and the default LLM."""
        declared = read_registry_file(registry_file) if registry_file else RegistryFile()
        named = {m.name for m in declared.model}
        implicit = [ModelEntry(name=n, version=1, task="detect", source=str(p)) for n, p in detectors.items()
                    if n not in named]
        for m in [*implicit, *declared.model]:
            if m.task == "detect" and m.source and not m.source.startswith("<"):
                ModelSource.parse(m.source)  # a malformed source fails the start or the reload, not an item
        if not any(m.task == "ocr" for m in declared.model) and "rapidocr" not in named:
            implicit.append(ModelEntry(name="rapidocr", task="ocr"))
        safe = re.sub(r"[^A-Za-z0-9_.\-]", "-", llm_model.replace("/", "--")) if llm_model else ""
        if safe and safe not in named and all(m.name != safe for m in implicit):
            implicit.append(ModelEntry(name=safe, version=1, task="llm", model=llm_model))
        return cls([*implicit, *declared.model], declared.deployment, declared.split)

    def model(self, ref: str, request_id: str | None = None, task: Task | None = None) -> ModelEntry:
        name, _, version = ref.partition(":")
        versions = self.models.get(name)
        if versions is None:
            raise ModelNotFoundError(f"no model named {name!r}")
        entry = versions.resolve(version or None, request_id)
        if task is not None and entry.task != task:
            raise ModelNotFoundError(f"model {name!r} is a {entry.task} model, not {task}")
        return entry

    def first(self, task: Task) -> ModelEntry | None:
        for versions in self.models.values():
            version = versions.serving()[0]
            if version is not None and versions.by_version[version].task == task:
                return versions.by_version[version]
        return None

    def all_models(self) -> list[ModelEntry]:
        return [m for v in self.models.values() for m in sorted(v.by_version.values(), key=lambda e: e.version)]

    def aliases_of(self, entry: ModelEntry) -> list[str]:
        versions = self.models[entry.name]
        names = [a for a, v in versions.aliases.items() if v == entry.version]
        if versions.serving()[0] == entry.version and "latest" not in names:
            names.append("latest")
        return names
