"""A recovery store written by another state format is set aside (never deleted), a current one is kept."""

from __future__ import annotations

from pathlib import Path

from flows.launch import STATE_FORMAT, STATE_FORMAT_FILE, set_aside_stale_store


def _store(path: Path, stamp: str | None) -> Path:
    path.mkdir()
    (path / "part-0.sqlite3").write_bytes(b"snapshots")
    if stamp is not None:
        (path / STATE_FORMAT_FILE).write_text(stamp)
    return path


def test_a_store_of_an_older_format_is_moved_aside_with_its_contents(tmp_path: Path) -> None:
    store = _store(tmp_path / "recovery", None)
    aside = set_aside_stale_store(store)
    assert aside is not None and not store.exists()
    assert aside.name.startswith("recovery.format-1.") and (aside / "part-0.sqlite3").read_bytes() == b"snapshots"


def test_a_store_of_the_current_format_or_no_store_is_left_alone(tmp_path: Path) -> None:
    store = _store(tmp_path / "recovery", STATE_FORMAT)
    assert set_aside_stale_store(store) is None and (store / "part-0.sqlite3").exists()
    assert set_aside_stale_store(tmp_path / "missing") is None
