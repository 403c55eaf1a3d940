"""The adapter store: uploaded adapters in Blob storage, staged copies on a local folder or Azure Files share.

Blob layout: container `adapters` (configurable), blob names `<app>/<adapter>/<file>` (so the blob trigger path
is `adapters/{app}/{adapter}/...`), with an optional name prefix.

Completion rule: an upload is complete only when its `_COMPLETE` marker exists. Our uploader writes every
content file first and the marker last; the marker is JSON
`{"files": {name: {"size": int, "sha256": hex}}, "sha256": <adapter digest>}` where the digest is
`manifest.digest_of_files` over the listed (name, sha256) pairs. An adapter is complete when the marker parses,
its digest matches its file list, and every listed blob exists with the listed size. Blobs not listed (hidden or
stray files) are ignored. Each marker becomes a deployment record (`activities.records`), ordered by the
marker's last-modified time (the storage service's clock, never the uploader's).

The bytes that go live are the bytes that were validated: staging hashes every file while copying it (refusing
any difference from the marker) and validates the staged copy before it is renamed into place.

Staging layout (a `StagingTarget`): `<root>/<app>/adapters/<adapter>/<sha256>/<file>`, written under a temporary
`.tmp-*` directory then renamed, so a version directory that exists is whole. Staging is idempotent (an existing
version is not copied again) and keeps the newest `keep_versions` versions plus every version the app's manifest
references, for rollback. The app's manifest is `<root>/<app>/manifest.json` (`inference_server.manifest`);
manifest paths are relative to `<root>/<app>`, the store root that the app's replicas mount. Deleting an app
(`remove_app`) removes its whole store root.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from activities.validation import (
    AdapterFile,
    AdapterReport,
    AdapterValidationError,
    LocalFile,
    ValidationRules,
    check_file_name,
    check_name,
    folder_files,
    validate_adapter_files,
)
from inference_image.inference_server.manifest import (
    MANIFEST_NAME,
    Manifest,
    digest_of_files,
    read_manifest,
    write_manifest,
)

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient
    from azure.storage.fileshare import ShareClient

MARKER_NAME = "_COMPLETE"
DEFAULT_CONTAINER = "adapters"
CHUNK_BYTES = 4 << 20  # also Azure Files' largest range per upload_range call
DEFAULT_MAX_FILE_BYTES = 2 << 30
MAX_MARKER_FILES = 256
MAX_MARKER_FILE_BYTES = 1 << 40
_SHA256 = re.compile(r"[0-9a-f]{64}")


class AdapterStoreError(RuntimeError):
    """Base of the store's errors; `code` is machine-readable."""

    code = "store_error"


class AdapterNotFoundError(AdapterStoreError, LookupError):
    """No completion marker for this adapter (not uploaded, or upload still in progress)."""

    code = "not_found"


class IncompleteAdapterError(AdapterStoreError, LookupError):
    """The marker lists a blob that is missing or has another size."""

    code = "incomplete"


class InvalidMarkerError(AdapterStoreError, ValueError):
    """The completion marker is not valid JSON of the documented shape, or its digest disagrees."""

    code = "invalid_marker"


class DigestMismatchError(AdapterStoreError, ValueError):
    """Content read back does not match the recorded sha256 / size, or the adapter changed since acceptance."""

    code = "sha_mismatch"


class AdapterReplacedError(DigestMismatchError):
    """A newer upload replaced the adapter after this version was accepted (its record is superseded)."""

    code = "replaced"


class FileTooLargeError(AdapterStoreError, ValueError):
    """A blob is larger than the caller's cap."""

    code = "too_large"


# -- the completion marker ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MarkerFile:
    size: int
    sha256: str


@dataclass(frozen=True)
class CompletionMarker:
    """Content of `_COMPLETE`: the adapter's files and digest."""

    files: dict[str, MarkerFile]
    sha256: str

    def to_json(self) -> str:
        data = {"files": {n: asdict(f) for n, f in sorted(self.files.items())}, "sha256": self.sha256}
        return json.dumps(data, indent=1)

    @classmethod
    def for_files(cls, files: Mapping[str, MarkerFile]) -> CompletionMarker:
        return cls(dict(files), digest_of_files((n, f.sha256) for n, f in files.items()))

    @classmethod
    def from_json(cls, text: str | bytes) -> CompletionMarker:
        """Parse and check the marker: names safe, sizes whole numbers within `MAX_MARKER_FILE_BYTES`, sha256s hex,
        at most `MAX_MARKER_FILES` files, digest consistent with the file list. Other keys are ignored (older
        uploaders wrote `uploaded_at`: nothing orders uploads by the uploader's clock)."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
                raise ValueError("expected an object with a 'files' object")
            if len(data["files"]) > MAX_MARKER_FILES:
                raise ValueError(f"{len(data['files'])} files listed, at most {MAX_MARKER_FILES}")
            files = {check_file_name(name): _marker_file(name, entry) for name, entry in data["files"].items()}
            digest = data.get("sha256")
            if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
                raise ValueError("'sha256' must be 64 lowercase hex digits")
        except (ValueError, RecursionError, AdapterValidationError) as exc:
            raise InvalidMarkerError(f"{MARKER_NAME} is not a valid marker: {exc}") from exc
        marker = cls(files, digest)
        if not files or marker.sha256 != cls.for_files(files).sha256:
            raise InvalidMarkerError(f"{MARKER_NAME} digest {digest} does not match its file list")
        return marker


def _marker_file(name: str, entry: Any) -> MarkerFile:
    if not isinstance(entry, dict):
        raise ValueError(f"entry of {name!r} must be an object")
    size, sha256 = entry.get("size"), entry.get("sha256")
    if type(size) is not int or not 0 <= size <= MAX_MARKER_FILE_BYTES:
        raise ValueError(f"size of {name!r} must be a whole number of bytes up to {MAX_MARKER_FILE_BYTES}")
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise ValueError(f"sha256 of {name!r} must be 64 lowercase hex digits")
    return MarkerFile(size, sha256)


@dataclass(frozen=True)
class CompleteAdapter:
    """A complete upload; `completed_at` is the marker's last-modified time (ISO 8601, UTC, the service's clock)."""

    app: str
    adapter: str
    sha256: str
    completed_at: str
    files: dict[str, MarkerFile] = field(default_factory=dict)

    @classmethod
    def of(cls, app: str, adapter: str, marker: CompletionMarker, modified: datetime) -> CompleteAdapter:
        return cls(app, adapter, marker.sha256, modified.isoformat(), marker.files)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompleteAdapter:
        files = {n: MarkerFile(**f) for n, f in (data.get("files") or {}).items()}
        return cls(
            data["app"],
            data["adapter"],
            data["sha256"],
            data["completed_at"],
            files,
        )


@dataclass(frozen=True)
class ValidateInput:
    """Validate the complete upload `<app>/<adapter>` against the app's rules."""

    app: str
    adapter: str
    rules: ValidationRules

    def to_dict(self) -> dict[str, Any]:
        return {"app": self.app, "adapter": self.adapter, "rules": self.rules.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ValidateInput:
        return cls(data["app"], data["adapter"], ValidationRules.from_dict(data["rules"]))


# -- blob side --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlobStoreSettings:
    """Where uploads live. Give `connection_string`, or `account_url` (+ `credential`, default
    DefaultAzureCredential). `api_version` pins the service version (e.g. for an older emulator)."""

    connection_string: str | None = field(default=None, repr=False)
    account_url: str | None = None
    credential: Any = field(default=None, repr=False)
    container: str = DEFAULT_CONTAINER
    prefix: str = ""
    api_version: str | None = None

    def __post_init__(self) -> None:
        if not (self.connection_string or self.account_url):
            raise ValueError("BlobStoreSettings needs connection_string or account_url")
        if self.prefix and not self.prefix.endswith("/"):
            raise ValueError("BlobStoreSettings.prefix must be empty or end with '/'")

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> BlobStoreSettings:
        """The upload account, as the blob trigger's `AdaptersStorage` connection names it: a connection string
        (`AdaptersStorage`, or `ADAPTER_STORAGE_CONNECTION_STRING`), else managed identity on `ADAPTERS_ACCOUNT_URL`
        (or `AdaptersStorage__blobServiceUri`); container `ADAPTERS_CONTAINER`; `STORAGE_API_VERSION` optional."""
        conn = env.get("ADAPTER_STORAGE_CONNECTION_STRING") or env.get("AdaptersStorage")
        account_url = env.get("ADAPTERS_ACCOUNT_URL") or env.get("AdaptersStorage__blobServiceUri")
        return cls(
            connection_string=conn or None,
            account_url=None if conn else (account_url or None),
            container=env.get("ADAPTERS_CONTAINER") or DEFAULT_CONTAINER,
            api_version=env.get("STORAGE_API_VERSION") or None,
        )


class _RangedFile:
    """A remote file of known size read by ranges (`validation.AdapterFile`); subclasses fetch one range."""

    def __init__(self, size: int) -> None:
        self._size = size

    @property
    def size(self) -> int:
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        length = max(0, min(length, self._size - offset))
        return self._fetch(offset, length) if length else b""

    def _fetch(self, offset: int, length: int) -> bytes:
        raise NotImplementedError


class BlobFile(_RangedFile):
    """An adapter file in Blob storage: ranged reads, sha256 as the marker claims."""

    def __init__(self, container: ContainerClient, blob_name: str, size: int, sha256: str) -> None:
        super().__init__(size)
        self._container = container
        self.blob_name = blob_name
        self._sha256 = sha256

    def _fetch(self, offset: int, length: int) -> bytes:
        return self._container.download_blob(self.blob_name, offset=offset, length=length).readall()

    def sha256(self) -> str:
        return self._sha256


class AdapterStore:
    """Uploaded adapters in one blob container. Holds one `ContainerClient`, built on first use."""

    def __init__(self, settings: BlobStoreSettings) -> None:
        self.settings = settings
        self._client: ContainerClient | None = None

    @property
    def container(self) -> ContainerClient:
        if self._client is None:
            from azure.storage.blob import ContainerClient

            kwargs: dict[str, Any] = (
                {"api_version": self.settings.api_version} if self.settings.api_version else {}
            )
            if self.settings.connection_string:
                self._client = ContainerClient.from_connection_string(
                    self.settings.connection_string, self.settings.container, **kwargs
                )
            else:
                credential = self.settings.credential
                if credential is None:
                    from azure.identity import DefaultAzureCredential

                    credential = DefaultAzureCredential()
                self._client = ContainerClient(
                    self.settings.account_url, self.settings.container, credential=credential, **kwargs
                )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def ensure_container(self) -> None:
        from azure.core.exceptions import ResourceExistsError

        try:
            self.container.create_container()
        except ResourceExistsError:
            pass

    def blob_name(self, app: str, adapter: str, name: str = "") -> str:
        return f"{self.settings.prefix}{check_name('app', app)}/{check_name('adapter', adapter)}/{name}"

    # -- reading -------------------------------------------------------------------------------------------
    def list_adapter_blobs(self, app: str, adapter: str) -> dict[str, int]:
        """Every blob under the adapter's folder (marker included): relative name -> size."""
        prefix = self.blob_name(app, adapter)
        return {b.name[len(prefix) :]: b.size for b in self.container.list_blobs(name_starts_with=prefix)}

    def uploads_in_flight(self, app: str, quiet_s: float) -> list[str]:
        """The app's adapters whose folder got a file after its `_COMPLETE` marker (or has none) within the last
        `quiet_s` seconds (by the storage service's clock): an upload under way. Folders starting with `_` (the
        deployment records) are not adapters."""
        prefix = f"{self.settings.prefix}{check_name('app', app)}/"
        newest: dict[str, datetime] = {}
        markers: dict[str, datetime] = {}
        for blob in self.container.list_blobs(name_starts_with=prefix):
            adapter, _, rest = blob.name[len(prefix):].partition("/")
            if not rest or adapter.startswith("_"):
                continue
            seen = markers if rest == MARKER_NAME else newest
            seen[adapter] = max(seen.get(adapter, blob.last_modified), blob.last_modified)
        since = datetime.now(UTC) - timedelta(seconds=quiet_s)
        return sorted(a for a, at in newest.items() if at > since and (a not in markers or at > markers[a]))

    def read_blob(
        self, app: str, adapter: str, name: str, max_bytes: int = DEFAULT_MAX_FILE_BYTES
    ) -> Iterator[bytes]:
        """Stream one blob in chunks; `FileTooLargeError` before reading when it is over `max_bytes`."""
        downloader = self.container.download_blob(self.blob_name(app, adapter, check_file_name(name)))
        if downloader.size > max_bytes:
            raise FileTooLargeError(
                f"blob {name!r} is {downloader.size} bytes, over the {max_bytes}-byte cap"
            )
        return downloader.chunks()

    def read_marker(self, app: str, adapter: str) -> tuple[CompletionMarker, datetime]:
        """The adapter's marker and its last-modified time; `AdapterNotFoundError` when there is none."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            downloader = self.container.download_blob(self.blob_name(app, adapter, MARKER_NAME))
        except ResourceNotFoundError as exc:
            raise AdapterNotFoundError(f"adapter {app}/{adapter} has no {MARKER_NAME} marker") from exc
        if downloader.size > 1 << 20:
            raise InvalidMarkerError(f"{MARKER_NAME} of {app}/{adapter} is {downloader.size} bytes")
        return CompletionMarker.from_json(downloader.readall()), downloader.properties.last_modified

    def get_complete(self, app: str, adapter: str) -> CompleteAdapter:
        """The adapter when complete; `AdapterNotFoundError` / `IncompleteAdapterError` otherwise."""
        marker, modified = self.read_marker(app, adapter)
        check_sizes(app, adapter, marker, self.list_adapter_blobs(app, adapter))
        return CompleteAdapter.of(app, adapter, marker, modified)

    def adapter_files(self, app: str, adapter: str) -> dict[str, BlobFile]:
        """The complete adapter's files as `validation.AdapterFile` readers."""
        done = self.get_complete(app, adapter)
        return {
            name: BlobFile(self.container, self.blob_name(app, adapter, name), f.size, f.sha256)
            for name, f in done.files.items()
        }

    def validate(self, request: ValidateInput) -> AdapterReport:
        """Run `validation` on a complete upload, reading only sizes, file heads and the safetensors header.
        The report's sha256 values are the marker's; staging re-checks them against the bytes."""
        check_name("app", request.app)
        check_name("adapter", request.adapter)
        return validate_adapter_files(self.adapter_files(request.app, request.adapter), request.rules)

    # -- writing (CLI and devhost) ----------------------------------------------------------------------------
    def upload_adapter_folder(self, folder: Path, app: str, adapter: str) -> UploadedAdapter:
        """Upload a folder's content files, then the marker last. Returns the marker as the service stored it."""
        check_name("app", app)
        check_name("adapter", adapter)
        files = folder_files(Path(folder))
        for name in files:
            check_file_name(name)
        entries: dict[str, MarkerFile] = {}
        for name, f in sorted(files.items()):
            with open(f.path, "rb") as fh:
                self.container.upload_blob(
                    self.blob_name(app, adapter, name), fh, length=f.size, overwrite=True
                )
            entries[name] = MarkerFile(f.size, f.sha256())
        marker = CompletionMarker.for_files(entries)
        written = self.container.get_blob_client(self.blob_name(app, adapter, MARKER_NAME)).upload_blob(
            marker.to_json(), overwrite=True
        )
        return UploadedAdapter(app, adapter, marker, str(written["etag"]), written["last_modified"])


@dataclass(frozen=True)
class UploadedAdapter:
    """An upload as the storage service recorded its marker: `deployment_id` names its deployment record."""

    app: str
    adapter: str
    marker: CompletionMarker
    etag: str
    modified: datetime

    @property
    def sha256(self) -> str:
        return self.marker.sha256

    @property
    def deployment_id(self) -> str:
        from activities.records import upload_record_id

        return upload_record_id(self.app, self.adapter, self.etag, self.modified)


def check_sizes(app: str, adapter: str, marker: CompletionMarker, blobs: Mapping[str, int]) -> None:
    for name, f in sorted(marker.files.items()):
        if name not in blobs:
            raise IncompleteAdapterError(f"{app}/{adapter}: {name!r} is listed in {MARKER_NAME} but missing")
        if blobs[name] != f.size:
            raise IncompleteAdapterError(
                f"{app}/{adapter}: {name!r} is {blobs[name]} bytes, {MARKER_NAME} says {f.size}"
            )


# -- staging targets --------------------------------------------------------------------------------------------


@dataclass
class StagedFile:
    """One file to stage: its name, expected size and sha256, and its content as chunks."""

    name: str
    size: int
    sha256: str
    chunks: Iterable[bytes]

    def verified_chunks(self) -> Iterator[bytes]:
        """The chunks, raising `DigestMismatchError` on a size or sha256 difference (after the last chunk)."""
        digest, seen = hashlib.sha256(), 0
        for chunk in self.chunks:
            seen += len(chunk)
            if seen > self.size:
                raise DigestMismatchError(f"{self.name!r} is longer than the recorded {self.size} bytes")
            digest.update(chunk)
            yield chunk
        if seen != self.size or digest.hexdigest() != self.sha256:
            raise DigestMismatchError(
                f"{self.name!r} read back {seen} bytes with sha256 {digest.hexdigest()}, "
                f"expected {self.size} bytes with sha256 {self.sha256}"
            )


@dataclass(frozen=True)
class VersionInfo:
    sha256: str
    modified: float  # POSIX seconds


def version_path(adapter: str, sha256: str) -> str:
    """A version's directory relative to the app's store root (what the manifest records)."""
    return f"adapters/{adapter}/{sha256}"


class StagingTarget(Protocol):
    """Where replicas read adapters: per app, versioned adapter folders plus the manifest."""

    def has_version(self, app: str, adapter: str, sha256: str) -> bool: ...

    def write_version(self, app: str, adapter: str, sha256: str, files: Sequence[StagedFile],
                      check: StagedCheck) -> bool:
        """Write under a temporary name, run `check` on the written copy, then rename into place. False when
        another writer got there first. On any error (a `DigestMismatchError` from the chunks, or `check`
        raising) nothing is left in place."""
        ...

    def version_files(self, app: str, adapter: str, sha256: str) -> dict[str, AdapterFile]:
        """Readers of a staged version's files (their sha256 as the version's name vouches)."""
        ...

    def touch_version(self, app: str, adapter: str, sha256: str) -> None:
        """Mark a version as recently used (it is newest for pruning)."""
        ...

    def list_versions(self, app: str, adapter: str) -> list[VersionInfo]: ...

    def remove_version(self, app: str, adapter: str, sha256: str) -> None: ...

    def read_manifest(self, app: str) -> Manifest | None: ...

    def write_manifest(self, app: str, manifest: Manifest | None) -> None:
        """Replace the app's manifest atomically; None removes it."""
        ...

    def remove_app(self, app: str) -> bool:
        """Remove the app's whole store root (manifest and every staged version); False when there was none."""
        ...


class LocalFolderTarget:
    """A staging root on the local disk (the devhost, or a mounted share)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def app_root(self, app: str) -> Path:
        return self.root / check_name("app", app)

    def _version_dir(self, app: str, adapter: str, sha256: str) -> Path:
        return self.app_root(app) / version_path(check_name("adapter", adapter), _check_sha(sha256))

    def has_version(self, app: str, adapter: str, sha256: str) -> bool:
        return self._version_dir(app, adapter, sha256).is_dir()

    def write_version(self, app: str, adapter: str, sha256: str, files: Sequence[StagedFile],
                      check: StagedCheck) -> bool:
        final = self._version_dir(app, adapter, sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".tmp-{sha256[:12]}-{uuid.uuid4().hex[:8]}"
        try:
            for f in files:
                path = tmp / check_file_name(f.name)
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "wb") as fh:
                    for chunk in f.verified_chunks():
                        fh.write(chunk)
                    fh.flush()
                    os.fsync(fh.fileno())
            check({f.name: _Staged(LocalFile(tmp / f.name), f.sha256) for f in files})
            try:
                os.rename(tmp, final)
            except OSError:
                if final.is_dir():  # a concurrent stage of the same version won
                    return False
                raise
            return True
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def version_files(self, app: str, adapter: str, sha256: str) -> dict[str, AdapterFile]:
        return dict(folder_files(self._version_dir(app, adapter, sha256)))

    def touch_version(self, app: str, adapter: str, sha256: str) -> None:
        os.utime(self._version_dir(app, adapter, sha256))

    def list_versions(self, app: str, adapter: str) -> list[VersionInfo]:
        folder = self.app_root(app) / "adapters" / check_name("adapter", adapter)
        if not folder.is_dir():
            return []
        return [
            VersionInfo(p.name, p.stat().st_mtime)
            for p in folder.iterdir()
            if p.is_dir() and not p.name.startswith(".")
        ]

    def remove_version(self, app: str, adapter: str, sha256: str) -> None:
        shutil.rmtree(self._version_dir(app, adapter, sha256), ignore_errors=True)

    def remove_app(self, app: str) -> bool:
        """Remove `<root>/<app>` (renamed aside first, so a half-removed folder is never taken for the app's)."""
        folder = self.app_root(app)
        if not folder.exists():
            return False
        aside = self.root / f".deleted-{folder.name}-{uuid.uuid4().hex[:8]}"
        os.rename(folder, aside)
        shutil.rmtree(aside)
        return True

    def read_manifest(self, app: str) -> Manifest | None:
        return read_manifest(self.app_root(app))

    def write_manifest(self, app: str, manifest: Manifest | None) -> None:
        if manifest is None:
            (self.app_root(app) / MANIFEST_NAME).unlink(missing_ok=True)
        else:
            write_manifest(self.app_root(app), manifest)


@dataclass(frozen=True)
class ShareSettings:
    """The Azure Files share that ACA mounts. `connection_string`, or `account_url` + `credential` (default
    DefaultAzureCredential, sent with the `backup` token intent that Files requires for OAuth). `root` is a
    directory inside the share ("" for the share root)."""

    share_name: str
    connection_string: str | None = field(default=None, repr=False)
    account_url: str | None = None
    credential: Any = field(default=None, repr=False)
    root: str = ""
    api_version: str | None = None

    def __post_init__(self) -> None:
        if not self.share_name:
            raise ValueError("ShareSettings.share_name must not be empty")
        if not (self.connection_string or self.account_url):
            raise ValueError("ShareSettings needs connection_string or account_url")

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ShareSettings:
        """`FILE_SHARE_NAME` and `STORAGE_ACCOUNT_NAME` (AI Toolkit keys); `ADAPTER_STORAGE_CONNECTION_STRING`
        when set instead of managed identity."""
        account = env.get("STORAGE_ACCOUNT_NAME")
        conn = env.get("ADAPTER_STORAGE_CONNECTION_STRING")
        return cls(
            share_name=env.get("FILE_SHARE_NAME", ""),
            connection_string=conn or None,
            account_url=None if conn else (f"https://{account}.file.core.windows.net" if account else None),
            api_version=env.get("STORAGE_API_VERSION") or None,
        )


class AzureFileShareTarget:
    """A staging root on an Azure Files share (what ACA replicas mount). One `ShareClient`, built on first use.

    Not exercised against a server in tests (Azurite has no Files service)."""

    def __init__(self, settings: ShareSettings) -> None:
        self.settings = settings
        self._client: ShareClient | None = None

    @property
    def share(self) -> ShareClient:
        if self._client is None:
            from azure.storage.fileshare import ShareClient

            kwargs: dict[str, Any] = (
                {"api_version": self.settings.api_version} if self.settings.api_version else {}
            )
            if self.settings.connection_string:
                self._client = ShareClient.from_connection_string(
                    self.settings.connection_string, self.settings.share_name, **kwargs
                )
            else:
                credential = self.settings.credential
                if credential is None:
                    from azure.identity import DefaultAzureCredential

                    credential = DefaultAzureCredential()
                self._client = ShareClient(
                    self.settings.account_url,
                    self.settings.share_name,
                    credential=credential,
                    token_intent="backup",
                    **kwargs,
                )
        return self._client

    def _path(self, *parts: str) -> str:
        return "/".join(p.strip("/") for p in (self.settings.root, *parts) if p.strip("/"))

    def _adapter_dir(self, app: str, adapter: str) -> str:
        return self._path(check_name("app", app), "adapters", check_name("adapter", adapter))

    def _makedirs(self, path: str) -> None:
        from azure.core.exceptions import ResourceExistsError

        current = ""
        for part in path.split("/"):
            current = f"{current}/{part}" if current else part
            try:
                self.share.get_directory_client(current).create_directory()
            except ResourceExistsError:
                pass

    def _remove_tree(self, path: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        directory = self.share.get_directory_client(path)
        try:
            for item in list(directory.list_directories_and_files()):
                if item["is_directory"]:
                    self._remove_tree(f"{path}/{item['name']}")
                else:
                    directory.delete_file(item["name"])
            directory.delete_directory()
        except ResourceNotFoundError:
            pass

    def has_version(self, app: str, adapter: str, sha256: str) -> bool:
        path = f"{self._adapter_dir(app, adapter)}/{_check_sha(sha256)}"
        return bool(self.share.get_directory_client(path).exists())

    def write_version(self, app: str, adapter: str, sha256: str, files: Sequence[StagedFile],
                      check: StagedCheck) -> bool:
        from azure.core.exceptions import ResourceExistsError

        parent = self._adapter_dir(app, adapter)
        final = f"{parent}/{_check_sha(sha256)}"
        tmp = f"{parent}/.tmp-{sha256[:12]}-{uuid.uuid4().hex[:8]}"
        self._makedirs(tmp)
        try:
            for f in files:
                name = check_file_name(f.name)
                if "/" in name:
                    self._makedirs(f"{tmp}/{name.rsplit('/', 1)[0]}")
                client = self.share.get_file_client(f"{tmp}/{name}")
                client.create_file(size=f.size)
                offset = 0
                for chunk in _rechunk(f.verified_chunks(), CHUNK_BYTES):
                    client.upload_range(chunk, offset=offset, length=len(chunk))
                    offset += len(chunk)
            check({f.name: _Staged(_ShareFile(self.share, f"{tmp}/{f.name}", f.size), f.sha256) for f in files})
            try:
                self.share.get_directory_client(tmp).rename_directory(final)
            except ResourceExistsError:
                return False
            return True
        finally:
            self._remove_tree(tmp)  # a no-op after a successful rename

    def version_files(self, app: str, adapter: str, sha256: str) -> dict[str, AdapterFile]:
        root = f"{self._adapter_dir(app, adapter)}/{_check_sha(sha256)}"
        found: dict[str, AdapterFile] = {}
        pending = [""]
        while pending:
            rel = pending.pop()
            for item in self.share.get_directory_client(f"{root}/{rel}".rstrip("/")).list_directories_and_files():
                name = f"{rel}/{item['name']}".lstrip("/")
                if item["is_directory"]:
                    pending.append(name)
                else:
                    found[name] = _ShareFile(self.share, f"{root}/{name}", int(item["size"]))
        return found

    def touch_version(self, app: str, adapter: str, sha256: str) -> None:
        path = f"{self._adapter_dir(app, adapter)}/{_check_sha(sha256)}"
        self.share.get_directory_client(path).set_http_headers(file_last_write_time=datetime.now(UTC))

    def list_versions(self, app: str, adapter: str) -> list[VersionInfo]:
        from azure.core.exceptions import ResourceNotFoundError

        directory = self.share.get_directory_client(self._adapter_dir(app, adapter))
        try:
            items = list(directory.list_directories_and_files(include=["timestamps"]))
        except ResourceNotFoundError:
            return []
        return [
            VersionInfo(item["name"], _timestamp(item))
            for item in items
            if item["is_directory"] and not item["name"].startswith(".")
        ]

    def remove_version(self, app: str, adapter: str, sha256: str) -> None:
        self._remove_tree(f"{self._adapter_dir(app, adapter)}/{_check_sha(sha256)}")

    def remove_app(self, app: str) -> bool:
        path = self._path(check_name("app", app))
        if not self.share.get_directory_client(path).exists():
            return False
        self._remove_tree(path)
        return True

    def read_manifest(self, app: str) -> Manifest | None:
        from azure.core.exceptions import ResourceNotFoundError

        client = self.share.get_file_client(self._path(check_name("app", app), MANIFEST_NAME))
        try:
            text = client.download_file().readall()
        except ResourceNotFoundError:
            return None
        return Manifest.from_json(text.decode("utf-8"))

    def write_manifest(self, app: str, manifest: Manifest | None) -> None:
        """Upload under a temporary name, then rename over the manifest (readers see old or new, never half)."""
        from azure.core.exceptions import ResourceNotFoundError

        app_dir = self._path(check_name("app", app))
        if manifest is None:
            try:
                self.share.get_file_client(f"{app_dir}/{MANIFEST_NAME}").delete_file()
            except ResourceNotFoundError:
                pass
            return
        self._makedirs(app_dir)
        tmp = self.share.get_file_client(f"{app_dir}/.{MANIFEST_NAME}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.upload_file(manifest.to_json().encode("utf-8"))
        tmp.rename_file(f"{app_dir}/{MANIFEST_NAME}", overwrite=True)


StagedCheck = Callable[[Mapping[str, "AdapterFile"]], None]


class _Staged:
    """A staged file whose sha256 was computed while it was written (no second read to hash it)."""

    def __init__(self, inner: AdapterFile, sha256: str) -> None:
        self._inner, self._sha256 = inner, sha256

    @property
    def size(self) -> int:
        return self._inner.size

    def read(self, offset: int, length: int) -> bytes:
        return self._inner.read(offset, length)

    def sha256(self) -> str:
        return self._sha256


class _ShareFile(_RangedFile):
    """A file on the Azure Files share, read by ranges; sha256 by reading it all."""

    def __init__(self, share: ShareClient, path: str, size: int) -> None:
        super().__init__(size)
        self._client = share.get_file_client(path)

    def _fetch(self, offset: int, length: int) -> bytes:
        return self._client.download_file(offset=offset, length=length).readall()

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for chunk in self._client.download_file().chunks():
            digest.update(chunk)
        return digest.hexdigest()


def _check_sha(sha256: str) -> str:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"{sha256!r} is not a lowercase hex sha256")
    return sha256


def _rechunk(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    buffer = bytearray()
    for chunk in chunks:
        buffer += chunk
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)


def _timestamp(item: Any) -> float:
    for key in ("last_write_time", "last_modified", "creation_time"):
        value = item.get(key) if hasattr(item, "get") else None
        if isinstance(value, datetime):
            return value.timestamp()
    return 0.0


# -- the staging activity -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageInput:
    """Copy an accepted adapter version from the blob store to the staging target."""

    app: str
    adapter: str
    sha256: str  # the digest validation accepted; staging refuses anything else
    keep_versions: int = 3

    def __post_init__(self) -> None:
        if self.keep_versions < 1:
            raise ValueError(f"StageInput.keep_versions must be >= 1, got {self.keep_versions}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StageInput:
        return cls(**data)


@dataclass(frozen=True)
class StageResult:
    """Where the version is (`path`, relative to the app's store root, for the manifest)."""

    app: str
    adapter: str
    sha256: str
    path: str
    copied: bool
    pruned: tuple[str, ...] = ()
    report: dict[str, Any] = field(default_factory=dict)  # validation of the staged copy

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StageResult:
        return cls(**{**data, "pruned": tuple(data.get("pruned") or ())})


def stage_adapter(
    store: AdapterStore, target: StagingTarget, request: StageInput, rules: ValidationRules
) -> StageResult:
    """Stage one version (idempotent): copy it while hashing every file against the marker, validate the staged
    copy with `rules` before it is put in place (an existing version is validated again), then prune old versions.
    The result's `report` describes the staged bytes: the ones that will be served."""
    app, adapter, sha = check_name("app", request.app), check_name("adapter", request.adapter), request.sha256
    _check_sha(sha)
    reports: list[AdapterReport] = []

    def check(files: Mapping[str, AdapterFile]) -> None:
        reports.append(validate_adapter_files(files, rules))

    copied = False
    if not target.has_version(app, adapter, sha):
        done = store.get_complete(app, adapter)
        if done.sha256 != sha:
            raise AdapterReplacedError(
                f"{app}/{adapter} is now {done.sha256}, not the accepted {sha} (a newer upload replaced it)"
            )
        files = [
            StagedFile(name, f.size, f.sha256, _lazy_chunks(store, app, adapter, name, f.size))
            for name, f in sorted(done.files.items())
        ]
        copied = target.write_version(app, adapter, sha, files, check)
    if not copied:  # staged before (or by a concurrent writer): the copy in place is what will be served
        target.touch_version(app, adapter, sha)
        check(target.version_files(app, adapter, sha))
    report = reports[-1]
    if report.sha256 != sha:
        raise DigestMismatchError(f"{app}/{adapter}: the staged copy is {report.sha256}, not the accepted {sha}")
    pruned = prune_versions(target, app, adapter, keep=request.keep_versions, protect={sha})
    report_json = json.loads(json.dumps(report.to_dict()))  # plain JSON types, as it crosses the activity boundary
    return StageResult(app, adapter, sha, version_path(adapter, sha), copied, pruned, report_json)


def _lazy_chunks(store: AdapterStore, app: str, adapter: str, name: str, size: int) -> Iterator[bytes]:
    yield from store.read_blob(app, adapter, name, max_bytes=size)


def prune_versions(
    target: StagingTarget, app: str, adapter: str, keep: int, protect: Iterable[str] = ()
) -> tuple[str, ...]:
    """Remove all but the newest `keep` versions; never one in `protect` or referenced by the app's manifest."""
    protected = set(protect)
    manifest = target.read_manifest(app)
    referenced = {e.path.rstrip("/") for e in manifest.adapters.values()} if manifest else set()
    versions = sorted(target.list_versions(app, adapter), key=lambda v: v.modified, reverse=True)
    removed = []
    for v in versions[keep:]:
        if v.sha256 in protected or version_path(adapter, v.sha256) in referenced:
            continue
        target.remove_version(app, adapter, v.sha256)
        removed.append(v.sha256)
    return tuple(sorted(removed))
