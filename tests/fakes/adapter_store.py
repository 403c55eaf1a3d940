"""Builds adapter stores for tests: adapter folders (content only, no real weights) and a manifest."""

from __future__ import annotations

from pathlib import Path

from inference_server.manifest import AdapterEntry, Manifest, adapter_digest, write_manifest


def make_adapter(store: Path, folder: str, content: str, *, bad: bool = False) -> Path:
    """An adapter folder whose files differ by `content`; `bad` adds the echo engine's load-failure marker."""
    path = store / folder
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(f'{{"r": 4, "note": "{content}"}}')
    (path / "adapter_model.safetensors").write_bytes(content.encode() * 8)
    if bad:
        (path / "BAD").write_text("x")
    return path


def publish(store: Path, adapters: dict[str, str], active: str | None, *, versions: dict[str, str] | None = None,
            digests: dict[str, str] | None = None, alias: str = "live") -> Manifest:
    """Write a manifest for existing folders `adapters` (name → folder); digests are computed unless given."""
    versions = versions or {}
    digests = digests or {}
    entries = {
        name: AdapterEntry(folder, digests.get(name) or adapter_digest(store / folder), versions.get(name, f"{folder}-v1"))
        for name, folder in adapters.items()
    }
    manifest = Manifest(adapters=entries, active=active, alias=alias, base_model="tiny")
    write_manifest(store, manifest)
    return manifest
