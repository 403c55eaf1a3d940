"""Pure manifest planning: activation, retirement past the cap, rollback safety."""

from datetime import UTC, datetime

from inference_image.inference_server.manifest import AdapterEntry, Manifest
from orchestrations.manifest_plan import activate, adapter_version

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def entry(name: str, sha: str) -> AdapterEntry:
    return AdapterEntry(f"adapters/{name}/{sha}", sha, adapter_version(name, sha))


def test_first_activation_makes_the_adapter_active() -> None:
    """With no manifest yet, the adapter becomes the only and active one."""
    m = activate(None, "alpha", entry("alpha", "a" * 64), NOW, base_model="tiny-llama")
    assert m.active == "alpha" and list(m.adapters) == ["alpha"]
    assert m.base_model == "tiny-llama" and m.updated_at == NOW.isoformat()
    assert m.active_version == "alpha@aaaaaaaaaaaa"


def test_redeploy_moves_the_name_to_newest_and_replaces_its_entry() -> None:
    """Deploying a new version of an existing name replaces it and orders it last."""
    m1 = activate(None, "alpha", entry("alpha", "a" * 64), NOW)
    m2 = activate(m1, "beta", entry("beta", "b" * 64), NOW)
    m3 = activate(m2, "alpha", entry("alpha", "c" * 64), NOW)
    assert list(m3.adapters) == ["beta", "alpha"]
    assert m3.adapters["alpha"].sha256 == "c" * 64 and m3.active == "alpha"


def test_cap_retires_oldest_but_never_the_previous_active() -> None:
    """Past the cap the oldest adapters go, but the previous active one stays for rollback."""
    m = Manifest(adapters={n: entry(n, n[0] * 64) for n in ["a1", "b1", "c1"]}, active="a1")
    out = activate(m, "d1", entry("d1", "d" * 64), NOW, max_adapters=2)
    assert set(out.adapters) == {"a1", "d1"} and out.active == "d1"


def test_manifest_round_trips_through_json_with_order() -> None:
    """The written manifest reads back equal, adapters still oldest first."""
    m = activate(activate(None, "zeta", entry("zeta", "z" * 64), NOW), "alpha", entry("alpha", "a" * 64), NOW)
    back = Manifest.from_json(m.to_json())
    assert back == m and list(back.adapters) == ["zeta", "alpha"]
