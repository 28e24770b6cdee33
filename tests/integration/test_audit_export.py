"""`deputy audit export`: JSON Lines for a SIEM, streamed, filtered by time, read-only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from deputy.audit.log import AuditFilter
from deputy.audit.record import DecisionRecord
from deputy.cli.audit import export_line, write_export
from deputy.cli.main import app
from deputy.clock import FakeClock
from deputy.config import Settings, load_settings
from deputy.store.audit_store import open_reader
from deputy.store.postgres import PostgresAuditLog, PostgresAuditWriter
from deputy.store.sqlite import SqliteAuditLog
from deputy.store.sqlite.audit_reader import DB_FILE, SqliteAuditReader, open_head_key
from deputy.store.sqlite.audit_writer import SqliteAuditWriter
from tests.audit_records import HOSTILE, T0, check_lines, make_record
from tests.integration.deployment import write_deployment


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_deployment(tmp_path).config_path


@pytest.fixture
def settings(config: Path) -> Settings:
    return load_settings(config)


def open_log(settings: Settings) -> SqliteAuditLog | PostgresAuditLog:
    """An audit log in this process on the deployment's store, on the fake clock."""
    key = open_head_key(settings.data_dir)
    if settings.storage is None:
        return SqliteAuditLog(settings.data_dir / DB_FILE, key, clock=FakeClock(T0))
    return PostgresAuditLog(settings.storage, key, clock=FakeClock(T0))


def open_writer(settings: Settings) -> SqliteAuditWriter | PostgresAuditWriter:
    """The deployment's store's writer, for batches larger than a log groups."""
    key = open_head_key(settings.data_dir)
    if settings.storage is None:
        return SqliteAuditWriter(settings.data_dir / DB_FILE, key, clock=FakeClock(T0))
    return PostgresAuditWriter(settings.storage, key, clock=FakeClock(T0))


async def write(settings: Settings, records: list[DecisionRecord]) -> None:
    with open_log(settings) as audit_log:
        for record in records:
            await audit_log.append(record)


def export(config: Path, *args: str) -> Result:
    return CliRunner().invoke(app, ["audit", "export", "--config", str(config), *args])


def exported_seqs(result: Result) -> list[int]:
    assert result.exit_code == 0, result.output
    return [json.loads(line)["seq"] for line in result.stdout.splitlines()]


async def write_with_hostile_text(settings: Settings) -> None:
    await write(
        settings,
        [make_record(i) for i in range(1, 5)]
        + [make_record(5, user_id=HOSTILE, reasons=({"rule": "r", "message": HOSTILE},))],
    )


async def test_each_line_is_a_stored_record_with_its_chain_link(
    config: Path, settings: Settings
) -> None:
    await write_with_hostile_text(settings)
    result = export(config)
    assert result.exit_code == 0, result.output
    assert result.stdout.isascii() and result.stdout.endswith("}\n")
    lines = result.stdout.split("\n")[:-1]
    with closing(open_reader(settings)) as reader:
        stored = list(reader.export())
        queried = list(reader.query(AuditFilter()))
    assert len(lines) == len(stored) == 5
    assert [r.record for r in stored] == [r.record for r in queried]
    for line, record in zip(lines, stored, strict=True):
        assert line + "\n" == export_line(record)
        place = (
            {} if record.chain is None else {"chain": record.chain, "chain_seq": record.chain_seq}
        )
        assert json.loads(line) == {
            **record.record,
            "seq": record.seq,
            "hash": record.hash,
            "prev_hash": record.prev_hash,
            **place,
        }
        assert (record.chain is None) == (settings.storage is None)
    assert json.loads(lines[4])["user_id"] == HOSTILE
    assert "token" not in {key for line in lines for key in json.loads(line)}


async def test_a_siem_can_check_the_chain_from_the_lines_alone(
    config: Path, settings: Settings
) -> None:
    await write_with_hostile_text(settings)
    lines = export(config).stdout.splitlines()
    assert len(lines) == 5
    check_lines(lines)
    # An edited line no longer hashes to its link.
    edited = json.loads(lines[2])
    edited["user_id"] = "mallory"
    with pytest.raises(AssertionError):
        check_lines([*lines[:2], json.dumps(edited), *lines[3:]])


async def test_since_and_until_select_a_time_window_in_seq_order(
    config: Path, settings: Settings
) -> None:
    # Record 13 was decided late: its time falls inside the window though its seq does not.
    await write(settings, [make_record(i) for i in range(1, 13)] + [make_record(13, time=T0 + 5)])
    assert exported_seqs(export(config, "--since", str(T0 + 4), "--until", str(T0 + 9))) == [
        4,
        5,
        6,
        7,
        8,
        13,
    ]
    iso = datetime.fromtimestamp(T0 + 10, UTC).isoformat()
    assert exported_seqs(export(config, "--since", iso)) == [10, 11, 12]
    assert exported_seqs(export(config, "--until", str(T0 + 3))) == [1, 2]
    assert exported_seqs(export(config, "--since", str(T0 + 100))) == []
    everything = list(range(1, 14))
    assert exported_seqs(export(config)) == everything
    # Relative times count back from now; T0 lies in the future.
    assert exported_seqs(export(config, "--since", "1h")) == everything
    assert exported_seqs(export(config, "--until", "1h")) == []
    bad = export(config, "--since", "yesterday")
    assert bad.exit_code == 2 and bad.stdout == ""


def test_an_empty_log_exports_nothing(config: Path, settings: Settings) -> None:
    with open_log(settings):
        pass
    result = export(config)
    assert result.exit_code == 0 and result.stdout == ""


class Sink:
    """Counts lines and keeps only the last, as a pipe to a SIEM would hold nothing."""

    def __init__(self) -> None:
        self.lines = 0
        self.last = ""

    def write(self, text: str) -> int:
        self.lines += 1
        self.last = text
        return len(text)


@pytest.mark.sqlite_only("streams the SQLite reader over a file it writes itself")
def test_export_streams_in_constant_memory(tmp_path: Path) -> None:
    records = 50_000
    db = tmp_path / "audit.db"
    key = b"audit-head-key-for-tests-32bytes!"
    writer = SqliteAuditWriter(db, key, clock=FakeClock(T0))
    try:
        for start in range(1, records + 1, 5000):
            assert (
                writer.write([make_record(i) for i in range(start, start + 5000)]) == [None] * 5000
            )
    finally:
        writer.close()
    reader = SqliteAuditReader(db, key)
    sink = Sink()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        written = write_export(reader.export(), sink)  # type: ignore[arg-type]
        peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()
    assert written == sink.lines == records
    assert json.loads(sink.last)["seq"] == records
    # The export is ~25 MB of JSON; holding the rows or the lines would take far more.
    assert peak < 1_000_000, f"export held {peak:,} bytes"
    assert reader.verify().ok


async def test_output_file_is_written_whole_and_not_overwritten_without_force(
    config: Path, settings: Settings, tmp_path: Path
) -> None:
    await write(settings, [make_record(i) for i in range(1, 4)])
    out = tmp_path / "out" / "audit.jsonl"
    missing = export(config, "--output", str(out))
    assert missing.exit_code == 1 and "cannot write" in missing.stderr
    out.parent.mkdir()
    first = export(config, "--output", str(out))
    assert first.exit_code == 0, first.output
    assert first.stdout == "" and f"exported 3 records to {out}" in first.stderr
    assert out.read_text() == export(config).stdout
    assert os.stat(out).st_mode & 0o077 == 0  # audit data is not for every local user

    await write(settings, [make_record(4)])
    refused = export(config, "--output", str(out))
    assert refused.exit_code == 1 and "exists; use --force" in refused.stderr
    assert [json.loads(line)["seq"] for line in out.read_text().splitlines()] == [1, 2, 3]
    forced = export(config, "--output", str(out), "--force")
    assert forced.exit_code == 0 and "exported 4 records" in forced.stderr
    assert [json.loads(line)["seq"] for line in out.read_text().splitlines()] == [1, 2, 3, 4]
    assert sorted(p.name for p in out.parent.iterdir()) == ["audit.jsonl"]


@pytest.mark.sqlite_only("compares the bytes of the SQLite file before and after")
async def test_export_leaves_the_sqlite_file_as_it_was(config: Path, settings: Settings) -> None:
    await write(settings, [make_record(i) for i in range(1, 8)])
    db = settings.data_dir / DB_FILE
    before = db.read_bytes()
    assert exported_seqs(export(config, "--since", str(T0 + 3))) == [3, 4, 5, 6, 7]
    assert db.read_bytes() == before


async def test_export_leaves_the_log_as_it_was(config: Path, settings: Settings) -> None:
    await write(settings, [make_record(i) for i in range(1, 8)])
    assert exported_seqs(export(config, "--since", str(T0 + 3))) == [3, 4, 5, 6, 7]
    verify = CliRunner().invoke(app, ["audit", "verify", "--config", str(config)])
    assert verify.exit_code == 0 and "audit chain ok: 7 records" in verify.stdout
    with open_log(settings) as audit_log:  # and the writer still extends the log
        await audit_log.append(make_record(8))
        assert audit_log.verify().ok
    assert exported_seqs(export(config)) == list(range(1, 9))


def test_a_reader_that_stops_early_ends_the_export_quietly(
    config: Path, settings: Settings
) -> None:
    writer = open_writer(settings)
    try:
        for start in range(0, 20_000, 2_000):
            batch = [make_record(i, decision_id=f"d-{i}") for i in range(start, start + 2_000)]
            assert writer.write(batch) == [None] * len(batch)
    finally:
        writer.close()
    deputy = Path(sys.executable).parent / "deputy"
    piped = subprocess.run(
        ["bash", "-c", f'set -o pipefail; "{deputy}" audit export --config "{config}" | head -1'],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert piped.returncode == 0, piped.stderr
    assert piped.stderr == "" and json.loads(piped.stdout)["seq"] == 1
