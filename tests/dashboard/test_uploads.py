"""The browser's upload route (`POST /api/apps/{app}/uploads`, orchestrations/uploads.py): the form is parsed
strictly, names that leave the adapter folder are refused, size limits answer 413 before the body is parsed, and on
the embedded default a valid upload becomes a record that goes live while a bad one is refused with its rule's code
and nothing is uploaded."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import azure.functions as func
import pytest
import requests

from orchestrations import uploads
from orchestrations.http_util import BadRequest
from tests.e2e.helpers import TIMEOUT, variant

FILES = ("adapter_config.json", "adapter_model.safetensors")


def _form(files: dict[str, bytes]) -> tuple[str, bytes]:
    """A multipart body as `requests` (urllib3) encodes it: content type and bytes."""
    prepared = requests.Request("POST", "http://x/", files=[("file", (n, d)) for n, d in files.items()]).prepare()
    return prepared.headers["Content-Type"], prepared.body


def _folder_form(folder: Path, **extra: bytes) -> dict[str, bytes]:
    return {**{n: (folder / n).read_bytes() for n in FILES}, **extra}


# -- the form, without a host ---------------------------------------------------------------------------------------
def test_parts_come_back_byte_for_byte_by_relative_name() -> None:
    files = {"adapter_config.json": b'{"r": 8}', "adapter_model.safetensors": bytes(range(256)) * 3 + b"\r\n--x\r\n",
             "sub/notes.txt": b"\r\n\r\n", ".DS_Store": b"junk"}
    content_type, body = _form(files)
    parts = {p.name: bytes(p.data) for p in uploads.parse_form(content_type, body)}
    assert parts == files


@pytest.mark.parametrize("name", ["../adapter_config.json", "/etc/passwd", "a/../../b", "a\\b.json", "./x.json",
                                  "a//b.json", "C:x.json", "../.hidden", "x\x01.json", "café.json"])
def test_names_that_could_leave_the_folder_are_refused(name: str) -> None:
    content_type, body = _form({"adapter_config.json": b"{}", name: b"data"})
    with pytest.raises(BadRequest) as refused:
        uploads.parse_form(content_type, body)
    assert refused.value.status == 400


@pytest.mark.parametrize("content_type, body, why", [
    ("application/json", b"{}", "multipart/form-data"),
    ("multipart/form-data", b"", "boundary"),
    ("multipart/form-data; boundary=b", b"--b\r\nContent-Disposition: form-data; name=file; filename=x.json\r\n\r\nx",
     "closing boundary"),
    ("multipart/form-data; boundary=b", b"--b\r\nContent-Disposition: form-data; name=adapter\r\n\r\nx\r\n--b--",
     "file name"),
])
def test_malformed_forms_are_refused_with_the_reason(content_type: str, body: bytes, why: str) -> None:
    with pytest.raises(BadRequest, match=why):
        uploads.parse_form(content_type, body)


def test_a_name_given_twice_is_refused() -> None:
    part = b"--b\r\nContent-Disposition: form-data; name=file; filename=adapter_config.json\r\n\r\n{}\r\n"
    with pytest.raises(BadRequest, match="twice"):
        uploads.parse_form("multipart/form-data; boundary=b", part * 2 + b"--b--\r\n")
    assert [p.name for p in uploads.parse_form("multipart/form-data; boundary=b", part + b"--b--\r\n")] == [
        "adapter_config.json"]


def test_a_boundary_line_with_more_on_it_is_refused() -> None:
    part = b"Content-Disposition: form-data; name=file; filename=a.json\r\n\r\n{}\r\n"
    assert uploads.parse_form("multipart/form-data; boundary=b", b"preamble\r\n--b\r\n" + part + b"--b--")
    with pytest.raises(BadRequest, match="more than the boundary"):
        uploads.parse_form("multipart/form-data; boundary=b", b"--bx\r\n" + part + b"--b--")
    with pytest.raises(BadRequest, match="more than the boundary"):
        uploads.parse_form("multipart/form-data; boundary=b", b"--b\r\n" + part + b"--b--\r\n" + part + b"--b--")


def _request(body: bytes, content_type: str, length: str | None = None, **params: str) -> func.HttpRequest:
    headers = {"content-type": content_type}
    if length is not None:
        headers["content-length"] = length
    return func.HttpRequest(method="POST", url="http://host/api/apps/demo/uploads", headers=headers, body=body,
                            params={"adapter": "beta", **params}, route_params={"app": "demo"})


def _answer(request: func.HttpRequest) -> tuple[int, str]:
    with ThreadPoolExecutor(1) as pool:  # its own loop: Playwright's sync API may hold this thread's
        response = pool.submit(asyncio.run, uploads.handle_upload(request, None)).result()
    return response.status_code, response.get_body().decode()


def test_too_large_is_413_from_the_declared_length_before_the_body_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uploads, "services", lambda: SimpleNamespace(settings=SimpleNamespace(max_adapter_mb=1)))

    class Unread(bytes):
        def __len__(self) -> int:
            raise AssertionError("the body was looked at")

    request = _request(b"", "multipart/form-data; boundary=b", length=str((1 << 20) + uploads.MULTIPART_ALLOWANCE + 1))
    request._HttpRequest__body_bytes = Unread()  # noqa: SLF001 - a body that fails the test if it is touched
    status, body = _answer(request)
    assert status == 413 and "MAX_ADAPTER_MB=1" in body


def test_too_large_is_413_from_the_files_without_a_length(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uploads, "services", lambda: SimpleNamespace(settings=SimpleNamespace(max_adapter_mb=1)))
    content_type, body = _form({"adapter_config.json": b"{}", "adapter_model.safetensors": b"x" * ((1 << 20) + 1)})
    status, answer = _answer(_request(body, content_type))
    assert status == 413 and "adapters may be 1048576 bytes" in answer
    content_type, body = _form({"adapter_config.json": b"{}", "adapter_model.safetensors": b"x" * (2 << 20)})
    assert _answer(_request(body, content_type))[0] == 413


def _fake_services(deletion: dict | None, exists: bool) -> SimpleNamespace:
    svc = SimpleNamespace(settings=SimpleNamespace(max_adapter_mb=1),
                          records=SimpleNamespace(deletion=lambda app: deletion, has_app=lambda app: exists),
                          apps=SimpleNamespace(describe=lambda app: SimpleNamespace(exists=exists)),
                          read_manifest=lambda app: None)
    svc.store = SimpleNamespace(upload_adapter_folder=lambda *a: pytest.fail("nothing may be uploaded"))
    return svc


@pytest.mark.parametrize("deletion, exists, params, status, why", [
    ({"id": "delete-demo.20261130T000000000000"}, True, {}, 409, "is being deleted (delete-demo."),
    ({"id": "delete-demo.20261130T000000000000"}, False, {"create": "1"}, 409, "is being deleted"),
    (None, False, {}, 404, "create=1"),
    (None, False, {"create": "0"}, 404, "create=1"),
])
def test_an_app_being_deleted_is_409_and_an_unknown_one_404_without_create(
        monkeypatch: pytest.MonkeyPatch, deletion: dict | None, exists: bool, params: dict[str, str], status: int,
        why: str) -> None:
    from orchestrations import status_api

    svc = _fake_services(deletion, exists)
    monkeypatch.setattr(uploads, "services", lambda: svc)
    monkeypatch.setattr(status_api, "services", lambda: svc)
    content_type, body = _form({"adapter_config.json": b"{}", "adapter_model.safetensors": b"x"})
    answer = _answer(_request(body, content_type, **params))
    assert answer[0] == status and why in answer[1]


@pytest.mark.parametrize("params, why", [({"adapter": "../x"}, "unsafe_name"), ({"adapter": ""}, "adapter=NAME")])
def test_a_bad_adapter_name_is_400(monkeypatch: pytest.MonkeyPatch, params: dict[str, str], why: str) -> None:
    monkeypatch.setattr(uploads, "services", lambda: pytest.fail("nothing is read before the names are checked"))
    status, answer = _answer(_request(b"", "multipart/form-data; boundary=b", **params))
    assert status == 400 and why in answer


# -- on the embedded default ------------------------------------------------------------------------------------------
def _post(stack, app: str, files: dict[str, bytes], adapter: str, **params: str) -> requests.Response:
    return requests.post(f"{stack.url}/api/apps/{app}/uploads", params={"adapter": adapter, **params},
                         files=[("file", (n, d)) for n, d in files.items()], timeout=60)


def _error(response: requests.Response) -> str:
    assert response.headers["Content-Type"].startswith("application/json"), response.text
    return response.json()["error"]["message"]


@pytest.mark.slow
def test_upload_from_the_browser_route_goes_live(local_stack, tmp_path: Path) -> None:
    from adapterctl.follow import follow

    kit, app = local_stack.kit, "browser-up"
    refused = _post(local_stack, app, _folder_form(kit.adapters["beta"]), "beta")
    assert refused.status_code == 404 and "create=1" in _error(refused)
    assert local_stack.store.list_adapter_blobs(app, "beta") == {}

    answer = _post(local_stack, app, _folder_form(kit.adapters["beta"], **{".DS_Store": b"x"}), "beta", create="1")
    assert answer.status_code == 202, answer.text
    started = answer.json()
    assert started["status_url"].endswith(f"/api/deployments/{started['id']}")
    assert answer.headers["Location"] == started["status_url"]
    assert set(local_stack.store.list_adapter_blobs(app, "beta")) == {*FILES, "_COMPLETE"}
    record = follow(local_stack.api, started["id"], TIMEOUT, lambda _: None, interval=0.1)
    assert record["stage"] == "live", record
    assert local_stack.api.app(app)["served"]["sha256"] == started["sha256"]

    # the app exists now: no create needed; a rank over MAX_LORA_RANK (16 here) is refused with the rule's code
    big = variant(kit.adapters["alpha"], tmp_path / "big-rank", r=64)
    refused = _post(local_stack, app, _folder_form(big), "big")
    assert refused.status_code == 400 and _error(refused).startswith("invalid adapter: rank_too_large:")
    assert local_stack.store.list_adapter_blobs(app, "big") == {}

    for name in ("../escape.json", "sub/../../escape.json", "/abs.json"):
        refused = _post(local_stack, app, _folder_form(kit.adapters["beta"], **{name: b"{}"}), "beta")
        assert refused.status_code == 400 and "unsafe file name" in _error(refused), name
    refused = _post(local_stack, app, {"adapter_config.json": (kit.adapters["beta"] / FILES[0]).read_bytes()}, "x")
    assert refused.status_code == 400 and "missing_weights" in _error(refused)
    assert local_stack.store.list_adapter_blobs(app, "x") == {}

    too_big = _post(local_stack, app, _folder_form(kit.adapters["beta"], **{"extra.txt": b"x" * (2 << 20)}), "beta")
    assert too_big.status_code == 413  # MAX_ADAPTER_MB=1 on this stack

    rules = requests.get(f"{local_stack.url}/api/uploads/rules", timeout=10).json()
    assert rules["max_total_bytes"] == 1 << 20 and rules["max_rank"] == 16
