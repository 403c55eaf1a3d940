"""The adapter store against Azurite: upload, completion rule, validation on blobs, staging, pruning, manifest."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from activities.adapter_store import (
    MARKER_NAME,
    AdapterNotFoundError,
    AdapterStore,
    BlobStoreSettings,
    CompleteAdapter,
    CompletionMarker,
    DigestMismatchError,
    FileTooLargeError,
    IncompleteAdapterError,
    InvalidMarkerError,
    LocalFolderTarget,
    ShareSettings,
    StageInput,
    StageResult,
    ValidateInput,
    stage_adapter,
)
from activities.validation import ValidationRules, validate_adapter_folder
from devhost.azurite import Azurite
from inference_image.inference_server.manifest import AdapterEntry, Manifest, adapter_digest
from tests.activities.lora_builder import BASE_MODEL, adapter_files, write_adapter

pytestmark = pytest.mark.azurite
RULES = ValidationRules(base_model=BASE_MODEL, max_rank=8)


@pytest.fixture
def store(azurite: Azurite, container_name: str) -> Iterator[AdapterStore]:
    """A store on a fresh container of the session's Azurite."""
    s = AdapterStore(BlobStoreSettings(connection_string=azurite.connection_string, container=container_name))
    s.ensure_container()
    yield s
    s.container.delete_container()
    s.close()


def make_folder(tmp_path: Path, seed: str) -> Path:
    return write_adapter(tmp_path / f"src-{seed}", adapter_files(seed=seed))


def test_upload_then_complete(store: AdapterStore, tmp_path: Path) -> None:
    """An uploaded folder is complete, with the folder's digest and the marker written last."""
    folder = make_folder(tmp_path, "a")
    marker = store.upload_adapter_folder(folder, "chat", "a1")
    assert marker.sha256 == adapter_digest(folder)
    assert marker.deployment_id.startswith(f"chat.{marker.modified:%Y%m%dT%H%M%S}")
    done = store.get_complete("chat", "a1")
    assert done.sha256 == marker.sha256
    assert set(done.files) == {"README.md", "adapter_config.json", "adapter_model.safetensors"}
    assert MARKER_NAME in store.list_adapter_blobs("chat", "a1")
    assert CompleteAdapter.from_dict(json.loads(json.dumps(done.to_dict()))) == done


def test_files_without_marker_not_listed(store: AdapterStore, tmp_path: Path) -> None:
    """An upload still in progress (no marker) is not found."""
    folder = make_folder(tmp_path, "b")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        store.container.upload_blob(store.blob_name("chat", "partial", name), (folder / name).read_bytes())
    with pytest.raises(AdapterNotFoundError):
        store.get_complete("chat", "partial")


def test_marker_with_missing_or_resized_blob_not_listed(store: AdapterStore, tmp_path: Path) -> None:
    """A marker naming a missing blob, or one of another size, does not make the adapter complete."""
    store.upload_adapter_folder(make_folder(tmp_path, "c"), "chat", "c1")
    store.container.delete_blob(store.blob_name("chat", "c1", "README.md"))
    with pytest.raises(IncompleteAdapterError, match="README.md"):
        store.get_complete("chat", "c1")
    store.container.upload_blob(store.blob_name("chat", "c1", "README.md"), b"another length", overwrite=True)
    with pytest.raises(IncompleteAdapterError, match="bytes"):
        store.get_complete("chat", "c1")


def test_bad_marker_rejected(store: AdapterStore, tmp_path: Path) -> None:
    """A marker whose digest disagrees with its file list is invalid."""
    store.upload_adapter_folder(make_folder(tmp_path, "d"), "chat", "d1")
    data = json.loads(store.container.download_blob(store.blob_name("chat", "d1", MARKER_NAME)).readall())
    data["sha256"] = "0" * 64
    store.container.upload_blob(store.blob_name("chat", "d1", MARKER_NAME), json.dumps(data), overwrite=True)
    with pytest.raises(InvalidMarkerError):
        store.get_complete("chat", "d1")


def test_validate_on_blobs_matches_folder(store: AdapterStore, tmp_path: Path) -> None:
    """Validation on blobs gives the same report as on the source folder."""
    folder = make_folder(tmp_path, "v")
    store.upload_adapter_folder(folder, "chat", "v1")
    request = ValidateInput.from_dict(json.loads(json.dumps(ValidateInput("chat", "v1", RULES).to_dict())))
    assert store.validate(request) == validate_adapter_folder(folder, RULES)


def test_read_blob_size_capped(store: AdapterStore, tmp_path: Path) -> None:
    """Reading a blob over the cap fails before streaming it; under the cap it streams the content."""
    folder = make_folder(tmp_path, "cap")
    store.upload_adapter_folder(folder, "chat", "cap")
    with pytest.raises(FileTooLargeError):
        store.read_blob("chat", "cap", "adapter_model.safetensors", max_bytes=10)
    data = b"".join(store.read_blob("chat", "cap", "adapter_config.json"))
    assert data == (folder / "adapter_config.json").read_bytes()


def test_stage_copies_then_is_idempotent(store: AdapterStore, tmp_path: Path) -> None:
    """Staging writes <root>/<app>/adapters/<adapter>/<sha>/ with identical files; a second call copies nothing."""
    folder = make_folder(tmp_path, "s")
    sha = store.upload_adapter_folder(folder, "chat", "s1").sha256
    target = LocalFolderTarget(tmp_path / "staged")
    result = stage_adapter(store, target, StageInput("chat", "s1", sha), RULES)
    version = tmp_path / "staged" / "chat" / result.path
    assert result.copied and result.path == f"adapters/s1/{sha}" and result.report["sha256"] == sha
    assert adapter_digest(version) == sha
    assert (version / "adapter_model.safetensors").read_bytes() == (
        folder / "adapter_model.safetensors"
    ).read_bytes()
    again = stage_adapter(store, target, StageInput("chat", "s1", sha), RULES)
    assert not again.copied
    assert StageResult.from_dict(json.loads(json.dumps(again.to_dict()))) == again
    assert [p.name for p in version.parent.iterdir()] == [sha]


def test_stage_detects_sha_mismatch(store: AdapterStore, tmp_path: Path) -> None:
    """A blob replaced after the marker (same size, other bytes) fails staging and leaves nothing behind."""
    folder = make_folder(tmp_path, "m")
    sha = store.upload_adapter_folder(folder, "chat", "m1").sha256
    original = (folder / "adapter_config.json").read_bytes()
    tampered = original.replace(b"CAUSAL_LM", b"CAUSAL_XX")
    assert len(tampered) == len(original)
    store.container.upload_blob(
        store.blob_name("chat", "m1", "adapter_config.json"), tampered, overwrite=True
    )
    target = LocalFolderTarget(tmp_path / "staged")
    with pytest.raises(DigestMismatchError, match="adapter_config.json"):
        stage_adapter(store, target, StageInput("chat", "m1", sha), RULES)
    assert list((tmp_path / "staged" / "chat" / "adapters" / "m1").iterdir()) == []


def test_stage_refuses_replaced_adapter(store: AdapterStore, tmp_path: Path) -> None:
    """Staging the accepted digest after a newer upload replaced the adapter fails instead of staging the new one."""
    accepted = store.upload_adapter_folder(make_folder(tmp_path, "one"), "chat", "r1").sha256
    store.upload_adapter_folder(make_folder(tmp_path, "two"), "chat", "r1")
    with pytest.raises(DigestMismatchError, match="newer upload"):
        stage_adapter(store, LocalFolderTarget(tmp_path / "staged"), StageInput("chat", "r1", accepted), RULES)


def test_prune_keeps_newest_and_manifest_versions(store: AdapterStore, tmp_path: Path) -> None:
    """Old versions beyond keep_versions are removed, except the one the manifest still references."""
    target = LocalFolderTarget(tmp_path / "staged")
    shas = []
    for seed in ("p0", "p1", "p2", "p3"):
        sha = store.upload_adapter_folder(make_folder(tmp_path, seed), "chat", "p")
        shas.append(sha.sha256)
        result = stage_adapter(store, target, StageInput("chat", "p", sha.sha256, keep_versions=2), RULES)
        if seed == "p0":
            entry = AdapterEntry(result.path, sha.sha256, "v0")
            target.write_manifest("chat", Manifest(adapters={"p": entry}, active="p"))
    remaining = {v.sha256 for v in target.list_versions("chat", "p")}
    assert remaining == {shas[0], shas[2], shas[3]}
    assert result.pruned == (shas[1],)


def test_manifest_round_trip(tmp_path: Path) -> None:
    """A manifest written through the local target reads back equal, at <root>/<app>/manifest.json."""
    target = LocalFolderTarget(tmp_path)
    assert target.read_manifest("chat") is None
    manifest = Manifest(adapters={"a": AdapterEntry("adapters/a/" + "1" * 64, "1" * 64, "v1")}, active="a")
    target.write_manifest("chat", manifest)
    assert (tmp_path / "chat" / "manifest.json").is_file()
    assert target.read_manifest("chat") == manifest


def test_unsafe_names_refused(store: AdapterStore, tmp_path: Path) -> None:
    """App and adapter names are checked before any storage call."""
    with pytest.raises(ValueError, match="unsafe_name"):
        store.upload_adapter_folder(tmp_path / "does-not-matter", "../x", "a")
    with pytest.raises(ValueError, match="unsafe_name"):
        stage_adapter(store, LocalFolderTarget(tmp_path), StageInput("chat", "A B", "1" * 64), RULES)


def test_stage_validates_the_staged_copy(store: AdapterStore, tmp_path: Path) -> None:
    """Content that passes the marker's hashes but breaks the rules (rank 9999, e.g. swapped in after validation
    read the blobs) is refused by staging, and nothing is put in place."""
    folder = write_adapter(tmp_path / "big", adapter_files(seed="big", r=9999))
    sha = store.upload_adapter_folder(folder, "chat", "big").sha256
    target = LocalFolderTarget(tmp_path / "staged")
    with pytest.raises(ValueError, match="rank_too_large"):
        stage_adapter(store, target, StageInput("chat", "big", sha), RULES)
    assert not target.has_version("chat", "big", sha)


def test_staged_version_changed_in_place_is_refused(store: AdapterStore, tmp_path: Path) -> None:
    """A version already staged is validated again before reuse: a tampered staged copy is refused."""
    folder = make_folder(tmp_path, "t")
    sha = store.upload_adapter_folder(folder, "chat", "t1").sha256
    target = LocalFolderTarget(tmp_path / "staged")
    result = stage_adapter(store, target, StageInput("chat", "t1", sha), RULES)
    (tmp_path / "staged" / "chat" / result.path / "adapter_config.json").write_bytes(b"{}")
    with pytest.raises(ValueError):
        stage_adapter(store, target, StageInput("chat", "t1", sha), RULES)


@pytest.mark.parametrize("files", [
    {"a.json": {"size": 1e400, "sha256": "0" * 64}},
    {"a.json": {"size": -1, "sha256": "0" * 64}},
    {"a.json": {"size": True, "sha256": "0" * 64}},
    {"a.json": {"size": 2, "sha256": "not hex"}},
    {"a.json": "nope"},
    {"../a.json": {"size": 2, "sha256": "0" * 64}},
])
def test_forged_marker_fields_are_invalid(files: dict) -> None:
    """Out-of-range, wrongly typed or unsafe marker fields are `InvalidMarkerError`, never another exception."""
    text = json.dumps({"files": files, "sha256": "0" * 64}).replace('"1e400"', "1e400")
    with pytest.raises(InvalidMarkerError):
        CompletionMarker.from_json(text.replace("Infinity", "1e400"))


def test_deeply_nested_marker_is_invalid() -> None:
    """A marker of 100,000 nested lists is `InvalidMarkerError` (not a RecursionError)."""
    with pytest.raises(InvalidMarkerError):
        CompletionMarker.from_json("[" * 100_000 + "]" * 100_000)


def test_manifest_removed_by_writing_none(tmp_path: Path) -> None:
    """Writing None removes the manifest (a rollback to "there was none"); removing a missing one is fine."""
    target = LocalFolderTarget(tmp_path)
    target.write_manifest("chat", Manifest(adapters={}, active=None))
    target.write_manifest("chat", None)
    target.write_manifest("chat", None)
    assert target.read_manifest("chat") is None


def test_marker_json_shape() -> None:
    """The marker is the documented JSON and parses back; a marker without files is invalid."""
    marker = CompletionMarker.for_files({})
    with pytest.raises(InvalidMarkerError):
        CompletionMarker.from_json(marker.to_json())
    text = json.dumps({"files": {"a.json": {"size": 2, "sha256": "ab" * 32}}, "sha256": "0" * 64})
    with pytest.raises(InvalidMarkerError, match="digest"):
        CompletionMarker.from_json(text)


def test_settings_hide_secrets() -> None:
    """Connection strings and credentials stay out of repr; settings check themselves."""
    settings = BlobStoreSettings(connection_string="AccountKey=secret")
    assert "secret" not in repr(settings)
    assert "secret" not in repr(ShareSettings(share_name="s", connection_string="AccountKey=secret"))
    with pytest.raises(ValueError, match="connection_string or account_url"):
        BlobStoreSettings()
    from_env = BlobStoreSettings.from_env({"ADAPTERS_ACCOUNT_URL": "https://acct.blob.core.windows.net",
                                           "STORAGE_ACCOUNT_NAME": "inference-share-account"})
    assert from_env.account_url == "https://acct.blob.core.windows.net" and from_env.container == "adapters"
    trigger_style = BlobStoreSettings.from_env({"AdaptersStorage": "UseDevelopmentStorage=true"})
    assert trigger_style.connection_string == "UseDevelopmentStorage=true" and trigger_style.account_url is None
