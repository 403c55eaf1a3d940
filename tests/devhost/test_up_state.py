"""`devhost up`'s state folder: ours (marked) is resumed or, with fresh, emptied; anyone else's is left alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from devhost.up import STATE_MARKER, StateDirError, claim_state


def test_new_folder_is_marked_then_resumed(tmp_path: Path) -> None:
    state = tmp_path / "a" / "state"
    with claim_state(state) as resumed:
        assert not resumed and (state / STATE_MARKER).is_file()
        (state / "blobs").write_text("kept")
    with claim_state(state) as resumed:
        assert resumed and (state / "blobs").read_text() == "kept"


def test_empty_folder_is_taken(tmp_path: Path) -> None:
    with claim_state(tmp_path) as resumed:
        assert not resumed and (tmp_path / STATE_MARKER).is_file()


def test_fresh_empties_only_our_folder(tmp_path: Path) -> None:
    with claim_state(tmp_path / "state"):
        (tmp_path / "state" / "blobs").write_text("old")
    with claim_state(tmp_path / "state", fresh=True) as resumed:
        assert not resumed and sorted(p.name for p in (tmp_path / "state").iterdir()) == [STATE_MARKER]


@pytest.mark.parametrize("fresh", [False, True])
def test_foreign_folder_is_refused_untouched(tmp_path: Path, fresh: bool) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(StateDirError, match="not made by `devhost up`"), claim_state(tmp_path, fresh=fresh):
        pass
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    with pytest.raises(StateDirError), claim_state(tmp_path / "notes.txt", fresh=fresh):
        pass
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("fresh", [False, True])
def test_folder_in_use_is_refused(tmp_path: Path, fresh: bool) -> None:
    """A second `up` on a folder an `up` holds gets a clear error and deletes nothing, even with fresh."""
    with claim_state(tmp_path / "state"):
        (tmp_path / "state" / "blobs").write_text("live")
        with pytest.raises(StateDirError, match="in use"), claim_state(tmp_path / "state", fresh=fresh):
            pass
        assert (tmp_path / "state" / "blobs").read_text() == "live"
