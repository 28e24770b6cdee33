"""Workload token sources: a file re-read on change, an environment variable, a fixed token."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from deputy.sdk.agent import (
    EnvTokenSource,
    FileTokenSource,
    StaticTokenSource,
    TokenSource,
    WorkloadTokenUnavailable,
)

TOKEN_A = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnLWE"
TOKEN_B = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJiIn0.c2lnLWI"  # same length as TOKEN_A


class CountingFileSource(FileTokenSource):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.reads = 0

    def _read(self) -> str:
        self.reads += 1
        return super()._read()


def same_stat_times(path: Path, like: Path) -> None:
    info = os.stat(like)
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))


async def test_file_is_read_once_until_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN_A + "\n")
    source = CountingFileSource(path)
    assert source.token() == TOKEN_A and await source.atoken() == TOKEN_A
    assert source.token() == TOKEN_A and source.reads == 1
    path.write_text(TOKEN_B + "-longer")
    assert source.token() == TOKEN_B + "-longer" and source.reads == 2


async def test_file_rewritten_in_place_with_the_same_size(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN_A)
    source = FileTokenSource(path)
    assert source.token() == TOKEN_A
    before = os.stat(path).st_mtime_ns
    path.write_text(TOKEN_B)
    os.utime(path, ns=(before + 1_000_000, before + 1_000_000))
    assert await source.atoken() == TOKEN_B


def test_kubernetes_symlink_swap_is_seen(tmp_path: Path) -> None:
    """Projected volumes: token -> ..data/token, and ..data -> ..<timestamp> swapped atomically."""
    volume = tmp_path / "tokens"
    volume.mkdir()
    old = volume / "..2026_01_01_12_00_00.1"
    old.mkdir()
    (old / "token").write_text(TOKEN_A)
    (volume / "..data").symlink_to(old.name)
    (volume / "token").symlink_to("..data/token")
    source = CountingFileSource(volume / "token")
    assert source.token() == TOKEN_A

    new = volume / "..2026_01_01_12_10_00.2"
    new.mkdir()
    (new / "token").write_text(TOKEN_B)
    same_stat_times(new / "token", old / "token")  # same size, same mtime: only the inode moves
    (volume / "..data_tmp").symlink_to(new.name)
    os.replace(volume / "..data_tmp", volume / "..data")
    assert source.token() == TOKEN_B and source.reads == 2
    assert source.token() == TOKEN_B and source.reads == 2


def test_file_problems_are_clear_and_keep_the_token_out(tmp_path: Path) -> None:
    missing = FileTokenSource(tmp_path / "absent")
    with pytest.raises(WorkloadTokenUnavailable, match="cannot read the workload token file"):
        missing.token()
    cases = {
        "empty": (b"  \n", "is empty"),
        "spaces": (b"secret part one two", "characters a token cannot have"),
        "binary": (b"\xff\xfesecret", "not ASCII"),
        "huge": (b"a" * (64 * 1024 + 1), "larger than"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(WorkloadTokenUnavailable, match=message) as caught:
            FileTokenSource(path).token()
        assert "secret" not in str(caught.value)
    assert repr(FileTokenSource(tmp_path / "x")) == f"FileTokenSource({str(tmp_path / 'x')!r})"


def test_a_file_that_goes_away_is_an_error_not_a_stale_token(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN_A)
    source = FileTokenSource(path)
    assert source.token() == TOKEN_A
    path.unlink()
    with pytest.raises(WorkloadTokenUnavailable):
        source.token()


async def test_environment_variable_is_read_on_every_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DEPUTY_WORKLOAD_TOKEN", f" {TOKEN_A}\n")
    source = EnvTokenSource()
    assert source.token() == TOKEN_A
    monkeypatch.setenv("DEPUTY_WORKLOAD_TOKEN", TOKEN_B)
    assert await source.atoken() == TOKEN_B
    monkeypatch.delenv("DEPUTY_WORKLOAD_TOKEN")
    with pytest.raises(WorkloadTokenUnavailable, match="DEPUTY_WORKLOAD_TOKEN is not set"):
        source.token()
    assert "eyJ" not in repr(source)


def test_environment_mapping_can_be_given() -> None:
    environ = {"AGENT_TOKEN": ""}
    source = EnvTokenSource("AGENT_TOKEN", environ)
    with pytest.raises(WorkloadTokenUnavailable, match="AGENT_TOKEN is empty"):
        source.token()
    environ["AGENT_TOKEN"] = TOKEN_A
    assert source.token() == TOKEN_A


async def test_static_source() -> None:
    source: TokenSource = StaticTokenSource(TOKEN_A)
    assert source.token() == TOKEN_A and await source.atoken() == TOKEN_A
    assert TOKEN_A not in repr(source)
    with pytest.raises(WorkloadTokenUnavailable):
        StaticTokenSource("two words")
