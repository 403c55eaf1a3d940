"""Uploading an adapter folder with byte progress: the store's own upload (content files, then the marker last),
with the storage SDK's `progress_hook` on each content file summed over the folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from activities.adapter_store import AdapterStore, BlobStoreSettings, UploadedAdapter
from activities.validation import folder_files

Progress = Callable[[int, int], None]  # (bytes uploaded, total bytes of the folder's content files)


class _CountingContainer:
    """A `ContainerClient` whose `upload_blob` reports bytes through `progress`; everything else is passed on."""

    def __init__(self, container: Any, total: int, progress: Progress) -> None:
        self._container = container
        self._total = total
        self._progress = progress
        self._done = 0  # bytes of the files already uploaded

    def __getattr__(self, name: str) -> Any:
        return getattr(self._container, name)

    def upload_blob(self, name: str, data: Any, length: int | None = None, **kwargs: Any) -> Any:
        def hook(current: int, _blob_total: int | None) -> None:
            self._progress(min(self._done + current, self._total), self._total)

        result = self._container.upload_blob(name, data, length=length, progress_hook=hook, **kwargs)
        self._done += length or 0
        self._progress(min(self._done, self._total), self._total)
        return result


class _ProgressStore(AdapterStore):
    """The adapter store with its container wrapped by `_CountingContainer`."""

    def __init__(self, settings: BlobStoreSettings, counting: Callable[[Any], _CountingContainer]) -> None:
        super().__init__(settings)
        self._counting = counting
        self._wrapped: _CountingContainer | None = None

    @property
    def container(self) -> Any:
        if self._wrapped is None:
            self._wrapped = self._counting(AdapterStore.container.fget(self))
        return self._wrapped


def upload_with_progress(settings: BlobStoreSettings, folder: Path, app: str, adapter: str,
                         progress: Progress) -> tuple[UploadedAdapter, int, int]:
    """Upload `folder` as `app/adapter`; `progress(done, total)` as bytes go. Returns the upload, the number of
    files and their total bytes."""
    files = folder_files(folder)
    total = sum(f.size for f in files.values())
    progress(0, total)
    store = _ProgressStore(settings, lambda container: _CountingContainer(container, total, progress))
    try:
        return store.upload_adapter_folder(folder, app, adapter), len(files), total
    finally:
        store.close()
