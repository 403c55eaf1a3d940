"""The adapter manifest: the desired state that every replica converges on (stdlib only).

The manifest lives at `<store>/<MANIFEST_NAME>` in the adapter store (a local folder, or the Azure Files mount in
ACA). The orchestrator writes it (atomically: temporary name, then rename); the server re-reads it on an interval
and on the admin sync call. Adapter paths are relative to the store root, so the same manifest works on any mount.

Adapter identity is `adapter_digest()`: sha256 over the sorted (relative name, file sha256) pairs of the folder,
so the same content uploaded twice is one deployment wherever it is stored.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1
DEFAULT_ALIAS = "live"
REQUIRED_FILES = ("adapter_config.json", "adapter_model.safetensors")


class ManifestError(ValueError):
    """The manifest is missing, unreadable or does not follow the schema."""


@dataclass(frozen=True)
class AdapterEntry:
    """One desired adapter: where it is (relative to the store root), its content digest and served version."""

    path: str
    sha256: str
    version: str


@dataclass(frozen=True)
class CandidateEntry:
    """The version a gated rollout is trying (docs/rollouts.md "Rollout policies"): loaded beside the adapters,
    reachable by its version string, and given `weight` (0..1) of the alias's callers."""

    adapter: str
    path: str
    sha256: str
    version: str
    weight: float = 0.0

    @classmethod
    def from_dict(cls, data: Any, versions: set[str]) -> CandidateEntry:
        """Parse `data`; `versions` are the manifest's adapter versions, which the candidate's must differ from."""
        if not isinstance(data, dict) or not all(isinstance(data.get(k), str) and data.get(k)
                                                 for k in ("adapter", "path", "sha256", "version")):
            raise ManifestError("candidate needs non-empty string fields adapter, path, sha256 and version")
        check_relative_path(data["path"])
        weight = data.get("weight", 0.0)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0.0 <= weight <= 1.0:
            raise ManifestError(f"candidate weight must be a number in [0, 1], got {weight!r}")
        if data["version"] in versions:
            raise ManifestError(f"candidate version {data['version']!r} is already one of the manifest's adapters")
        return cls(data["adapter"], data["path"], data["sha256"], data["version"], float(weight))


@dataclass(frozen=True)
class Manifest:
    """Desired adapters by name, oldest deployment first; `active` is what the alias routes to (None: base)."""

    adapters: dict[str, AdapterEntry] = field(default_factory=dict)
    active: str | None = None
    alias: str = DEFAULT_ALIAS
    base_model: str | None = None
    updated_at: str | None = None
    schema: int = SCHEMA_VERSION
    candidate: CandidateEntry | None = None

    @property
    def active_version(self) -> str | None:
        """Version string of the active adapter, or None when the alias serves the base model."""
        return self.adapters[self.active].version if self.active else None

    @property
    def candidate_version(self) -> str | None:
        """Version string of the candidate, or None when no gated rollout is trying one."""
        return self.candidate.version if self.candidate else None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)  # key order kept: adapters oldest first

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        if not isinstance(data, dict):
            raise ManifestError("manifest must be a JSON object")
        if data.get("schema", SCHEMA_VERSION) != SCHEMA_VERSION:
            raise ManifestError(f"unsupported manifest schema {data.get('schema')!r}")
        raw = data.get("adapters") or {}
        if not isinstance(raw, dict):
            raise ManifestError("'adapters' must be an object of name -> {path, sha256, version}")
        adapters: dict[str, AdapterEntry] = {}
        for name, entry in raw.items():
            if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("path", "sha256", "version")):
                raise ManifestError(f"adapter {name!r} needs string fields path, sha256 and version")
            check_relative_path(entry["path"])
            adapters[name] = AdapterEntry(entry["path"], entry["sha256"], entry["version"])
        active = data.get("active")
        if active is not None and active not in adapters:
            raise ManifestError(f"active adapter {active!r} is not among the manifest's adapters")
        return cls(
            adapters=adapters,
            active=active,
            alias=str(data.get("alias") or DEFAULT_ALIAS),
            base_model=data.get("base_model"),
            updated_at=data.get("updated_at"),
            candidate=(CandidateEntry.from_dict(data["candidate"], {e.version for e in adapters.values()})
                       if data.get("candidate") is not None else None),
        )

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"manifest is not valid JSON: {exc}") from exc
        return cls.from_dict(data)


def check_relative_path(path: str) -> str:
    """Reject absolute paths and `..` segments (a manifest must not point outside the store)."""
    parts = path.replace("\\", "/").split("/")
    if path.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        raise ManifestError(f"path {path!r} must be relative to the store and must not contain '..'")
    return path


def read_manifest(store: Path) -> Manifest | None:
    """The store's manifest, or None when there is none yet."""
    path = Path(store) / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return Manifest.from_json(text)


def write_manifest(store: Path, manifest: Manifest) -> None:
    """Write atomically: a reader sees the old manifest or the new one, never half of one."""
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    tmp = store / f".{MANIFEST_NAME}.{os.getpid()}.tmp"
    tmp.write_text(manifest.to_json(), encoding="utf-8")
    os.replace(tmp, store / MANIFEST_NAME)


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def digest_of_files(pairs: Iterable[tuple[str, str]]) -> str:
    """Adapter identity from (relative name, file sha256) pairs, in any order."""
    digest = hashlib.sha256()
    for name, file_digest in sorted(pairs):
        digest.update(f"{name}\0{file_digest}\n".encode())
    return digest.hexdigest()


def adapter_digest(folder: Path) -> str:
    """Adapter identity of a folder on disk (hidden files and the completion marker are not content)."""
    folder = Path(folder)
    pairs = [
        (p.relative_to(folder).as_posix(), file_sha256(p))
        for p in folder.rglob("*")
        if p.is_file() and not p.name.startswith((".", "_"))
    ]
    return digest_of_files(pairs)
