"""Blob trigger by polling (Event Grid's role in Azure): fire a function once per new or changed blob.

:class:`BlobPoller` lists a container through a :class:`BlobLister` (:class:`AzureBlobLister` for a
connection string, e.g. Azurite; any object with the same two methods in tests), matches names
against the trigger's path pattern (``adapters/{app}/{name}``) and calls back with an
``azure.functions.blob.InputStream`` for each blob whose etag it has not processed yet. Processed
etags ("receipts") are kept in a JSON file so a restart does not fire the same blob twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from azure.functions.blob import InputStream

log = logging.getLogger("devhost.triggers")


class BlobPathError(ValueError):
    """A blob-trigger path is not ``container/pattern``."""


class BlobItem(NamedTuple):
    """A listed blob."""

    name: str
    etag: str
    size: int


class BlobLister(Protocol):
    """What the poller needs from a blob store."""

    def list_blobs(self, container: str, prefix: str) -> Iterable[BlobItem]:
        """Blobs of ``container`` whose names start with ``prefix``."""
        ...

    def read_blob(self, container: str, name: str) -> bytes:
        """The content of one blob."""
        ...

    def blob_url(self, container: str, name: str) -> str:
        """The blob's URL."""
        ...


class AzureBlobLister:
    """:class:`BlobLister` over azure-storage-blob, one client per connection string."""

    def __init__(self, connection_string: str) -> None:
        from azure.storage.blob import BlobServiceClient

        # few, short retries: a poll that fails is simply retried on the next tick
        self._client = BlobServiceClient.from_connection_string(connection_string, retry_total=1,
                                                                connection_timeout=5, read_timeout=30)

    def __repr__(self) -> str:
        return f"AzureBlobLister(account={self._client.account_name!r})"

    def list_blobs(self, container: str, prefix: str) -> Iterable[BlobItem]:
        """Blobs of ``container`` under ``prefix`` (none if the container does not exist yet)."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return [BlobItem(b.name, str(b.etag), int(b.size or 0))
                    for b in self._client.get_container_client(container).list_blobs(name_starts_with=prefix)]
        except ResourceNotFoundError:
            return []

    def read_blob(self, container: str, name: str) -> bytes:
        """Download one blob."""
        return self._client.get_blob_client(container, name).download_blob().readall()

    def blob_url(self, container: str, name: str) -> str:
        """The blob's URL."""
        return str(self._client.get_blob_client(container, name).url)


@dataclass(frozen=True)
class BlobPath:
    """A trigger path split into container, listing prefix and a name regex."""

    container: str
    prefix: str
    regex: re.Pattern[str]

    @classmethod
    def parse(cls, path: str) -> BlobPath:
        """Parse ``container/{a}/{b}`` (the last placeholder may span ``/``)."""
        container, sep, pattern = path.strip("/").partition("/")
        if not sep or not container or "{" in container or not pattern:
            raise BlobPathError(f"blob trigger path must be 'container/pattern', got {path!r}")
        names = re.findall(r"\{(\w+)\}", pattern)
        regex, pos = "", 0
        for i, match in enumerate(re.finditer(r"\{(\w+)\}", pattern)):
            regex += re.escape(pattern[pos:match.start()])
            regex += f"(?P<{match.group(1)}>.+)" if i == len(names) - 1 else f"(?P<{match.group(1)}>[^/]+)"
            pos = match.end()
        regex += re.escape(pattern[pos:])
        return cls(container, pattern.split("{", 1)[0], re.compile(regex + r"\Z"))

    def match(self, name: str) -> dict[str, str] | None:
        """Placeholder values when ``name`` matches, else ``None``."""
        found = self.regex.match(name)
        return found.groupdict() if found else None


class BlobPoller:
    """Fires ``on_blob`` once per new or changed blob under a trigger path."""

    def __init__(self, path: str, lister: BlobLister, on_blob: Callable[[InputStream], Awaitable[Any]],
                 *, interval: float = 1.0, receipts_file: Path | None = None) -> None:
        self.path = BlobPath.parse(path)
        self.lister = lister
        self.on_blob = on_blob
        self.interval = interval
        self.receipts_file = receipts_file
        self._seen: dict[str, str] = {}
        if receipts_file is not None and receipts_file.exists():
            self._seen = json.loads(receipts_file.read_text())

    async def poll_once(self) -> list[str]:
        """List once and fire for each new/changed blob; returns the names fired."""
        items = await asyncio.to_thread(lambda: list(self.lister.list_blobs(self.path.container, self.path.prefix)))
        fired = []
        for item in items:
            key = f"{self.path.container}/{item.name}"
            if self.path.match(item.name) is None or self._seen.get(key) == item.etag:
                continue
            data = await asyncio.to_thread(self.lister.read_blob, self.path.container, item.name)
            stream = InputStream(data=data, name=key, length=len(data),
                                 uri=self.lister.blob_url(self.path.container, item.name))
            try:
                await self.on_blob(stream)
            except Exception:  # a failing function must not stop the poller; Azure retries, we log
                log.exception("blob trigger for %s failed", key)
            self._seen[key] = item.etag
            fired.append(item.name)
        if fired and self.receipts_file is not None:
            self.receipts_file.write_text(json.dumps(self._seen))
        return fired

    async def run(self) -> None:
        """Poll forever every ``interval`` seconds."""
        while True:
            try:
                await self.poll_once()
            except Exception:  # storage hiccups (Azurite restarting) must not end the loop
                log.exception("blob poll of %s failed", self.path.container)
            await asyncio.sleep(self.interval)
