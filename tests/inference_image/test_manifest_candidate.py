"""The manifest's `candidate`: parsing, validation, JSON round trip (docs/rollouts.md, issue #14)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from inference_server.manifest import AdapterEntry, CandidateEntry, Manifest, ManifestError

LIVE = {"path": "alpha/1", "sha256": "a" * 64, "version": "alpha@0123456789ab"}
CANDIDATE = {"adapter": "alpha", "path": "_staged/alpha/" + "b" * 64, "sha256": "b" * 64,
             "version": "alpha@abcdef012345", "weight": 0.1}


def manifest_dict(candidate: Any = CANDIDATE, **extra: Any) -> dict[str, Any]:
    return {"schema": 1, "adapters": {"alpha": LIVE}, "active": "alpha", "alias": "live", "candidate": candidate,
            **extra}


def test_candidate_parsed_and_round_trips() -> None:
    m = Manifest.from_dict(manifest_dict())
    assert m.candidate == CandidateEntry("alpha", CANDIDATE["path"], "b" * 64, "alpha@abcdef012345", 0.1)
    assert m.candidate_version == "alpha@abcdef012345"
    assert m.active_version == "alpha@0123456789ab"
    back = Manifest.from_json(m.to_json())
    assert back == m
    assert json.loads(m.to_json())["candidate"]["weight"] == 0.1


@pytest.mark.parametrize("candidate", [None, "absent"])
def test_no_candidate_is_none(candidate: Any) -> None:
    data = manifest_dict(candidate)
    if candidate == "absent":
        del data["candidate"]
    m = Manifest.from_dict(data)
    assert m.candidate is None and m.candidate_version is None
    assert Manifest.from_json(m.to_json()).candidate is None


@pytest.mark.parametrize("weight", [0, 1, 0.5, 1.0])
def test_weight_bounds_accepted(weight: float) -> None:
    m = Manifest.from_dict(manifest_dict({**CANDIDATE, "weight": weight}))
    assert m.candidate is not None and m.candidate.weight == float(weight)
    assert isinstance(m.candidate.weight, float)


def test_weight_defaults_to_zero() -> None:
    data = {k: v for k, v in CANDIDATE.items() if k != "weight"}
    m = Manifest.from_dict(manifest_dict(data))
    assert m.candidate is not None and m.candidate.weight == 0.0


@pytest.mark.parametrize(("change", "says"), [
    ({"weight": 1.5}, "weight"),
    ({"weight": -0.1}, "weight"),
    ({"weight": "0.1"}, "weight"),
    ({"weight": True}, "weight"),
    ({"weight": float("nan")}, "weight"),
    ({"path": "/abs/path"}, "relative"),
    ({"path": "_staged/../../etc"}, "relative"),
    ({"adapter": ""}, "adapter"),
    ({"sha256": 5}, "sha256"),
    ({"version": None}, "version"),
    ({"version": LIVE["version"]}, "already one of the manifest's adapters"),
])
def test_bad_candidate_refused(change: dict[str, Any], says: str) -> None:
    with pytest.raises(ManifestError, match=says):
        Manifest.from_dict(manifest_dict({**CANDIDATE, **change}))


def test_candidate_not_an_object_refused() -> None:
    with pytest.raises(ManifestError, match="candidate"):
        Manifest.from_dict(manifest_dict(["alpha"]))


def test_candidate_may_share_the_adapter_name_but_not_a_version_of_another_adapter() -> None:
    data = manifest_dict({**CANDIDATE, "adapter": "beta", "version": "beta@1"})
    data["adapters"]["beta"] = {"path": "beta/1", "sha256": "c" * 64, "version": "beta@1"}
    with pytest.raises(ManifestError, match="already"):
        Manifest.from_dict(data)


def test_built_manifest_serializes_candidate() -> None:
    m = Manifest(adapters={"alpha": AdapterEntry(**LIVE)}, active="alpha",
                 candidate=CandidateEntry(**CANDIDATE))
    assert Manifest.from_json(m.to_json()) == m
