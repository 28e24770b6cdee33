"""`deputy audit`: verify the chain, answer forensic queries, export for a SIEM."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer

from deputy.audit.forensics import parse_moment, timeline_of
from deputy.audit.log import AuditFilter
from deputy.audit.record import StoredRecord
from deputy.cli.options import DEFAULT_CONFIG, ConfigOption, audit_reader, load_or_exit

app = typer.Typer(help="The audit trail.", no_args_is_help=True)


def parse_since(value: str, now: float) -> float:
    """A time option's value as epoch seconds (see :func:`parse_moment`)."""
    try:
        return parse_moment(value, now)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None


@app.command()
def verify(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Check the hash chain; name the first bad record. Exit 1 if the chain is broken."""
    settings = load_or_exit(config)
    with audit_reader(settings) as reader:
        report = reader.verify()
    if report.ok:
        typer.echo(f"audit chain ok: {report.records} records")
        return
    typer.echo(f"audit chain BROKEN at record {report.first_bad_seq}: {report.problem}", err=True)
    raise typer.Exit(1)


def _shown(value: object) -> str:
    """A field as one safe line: control characters escaped, so no value can forge a line."""
    if value is None or value == "":
        return "-"
    text = str(value)
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _line(record: dict[str, Any]) -> str:
    when = datetime.fromtimestamp(record["time"], UTC).isoformat(timespec="seconds")
    creds = ", ".join(
        f"{_shown(c['tool'])}:{_shown(c['jti'])}" for c in record.get("credentials", [])
    )
    revocation = record.get("revocation")
    if isinstance(revocation, dict):
        return "  ".join(
            [
                when,
                "REVOKE",
                f"{_shown(revocation.get('selector'))}={_shown(revocation.get('value'))}",
                f"by={_shown(record.get('requested_by'))}",
                f"via={_shown(record.get('endpoint'))}",
                f"live={_shown(revocation.get('live_credentials'))}",
                f"reason={_shown(revocation.get('reason'))}",
            ]
        )
    uses = record.get("uses")
    if record.get("outcome") == "usage" and isinstance(uses, list):
        jtis = ", ".join(_shown(u.get("jti")) for u in uses if isinstance(u, dict))
        return "  ".join(
            [
                when,
                "USAGE",
                f"by={_shown(record.get('requested_by'))}",
                f"uses={len(uses)}",
                f"credentials=[{jtis}]",
            ]
        )
    parts = [
        when,
        _shown(record["outcome"]).upper(),
        f"status={record['status']}",
        f"grant={_shown(record.get('grant_type') or 'issue')}",
        f"workflow={_shown(record.get('workflow'))}",
        f"workload={_shown(record.get('workload_id'))}",
        f"instance={_shown(record.get('agent_instance'))}",
        f"user={_shown(record.get('user_id'))} ({_shown(record.get('delegation'))})",
        f"execution={_shown(record.get('execution_id'))}",
    ]
    if creds:
        parts.append(f"credentials=[{creds}]")
    if record.get("parent_jti"):
        parts.append(f"from={_shown(record['parent_jti'])}")
    for reason in record.get("reasons", []):
        parts.append(f"\n    {_shown(reason['rule'])}: {_shown(reason['message'])}")
    return "  ".join(parts)


@app.command()
def query(
    config: ConfigOption = DEFAULT_CONFIG,
    execution: Annotated[str | None, typer.Option(help="Execution id.")] = None,
    agent_instance: Annotated[str | None, typer.Option(help="Agent instance id.")] = None,
    workload: Annotated[str | None, typer.Option(help="Workload id (e.g. a SPIFFE ID).")] = None,
    user: Annotated[str | None, typer.Option(help="User id.")] = None,
    jti: Annotated[str | None, typer.Option(help="Credential id (jti).")] = None,
    since: Annotated[str | None, typer.Option(help="30m, 2h, 7d, epoch or ISO time.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many records.")] = 1000,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Which agent invocation used which credential for which user."""
    settings = load_or_exit(config)
    audit_filter = AuditFilter(
        execution_id=execution,
        agent_instance=agent_instance,
        workload_id=workload,
        user_id=user,
        jti=jti,
        since=parse_since(since, time.time()) if since else None,
        limit=limit,
    )
    with audit_reader(settings) as reader:
        for stored in reader.query(audit_filter):
            if as_json:
                typer.echo(json.dumps({**stored.record, "seq": stored.seq, "hash": stored.hash}))
            else:
                typer.echo(f"#{stored.seq} {_line(stored.record)}")


def _iso(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _shown(value)
    return datetime.fromtimestamp(value, UTC).isoformat(timespec="seconds")


def timeline_lines(records: list[dict[str, Any]]) -> Iterator[str]:
    """The timeline as text: each decision, its credentials under it, their uses under them."""
    for r in records:
        revocation = r.get("revocation")
        if isinstance(revocation, dict):
            yield f"#{r['seq']} {_line(r)}"
            continue
        kind = "exchange" if r.get("parent_jti") else "decision"
        parts = [
            f"#{r['seq']}",
            _iso(r.get("time")),
            _shown(r.get("outcome")).upper(),
            kind,
            f"status={_shown(r.get('status'))}",
            f"workflow={_shown(r.get('workflow'))}",
            f"workload={_shown(r.get('workload_id'))}",
            f"user={_shown(r.get('user_id'))}",
        ]
        if r.get("parent_jti"):
            parts.append(f"from={_shown(r.get('parent_jti'))}")
        yield "  ".join(parts)
        for reason in r.get("reasons") or ():
            if isinstance(reason, dict):
                yield f"    {_shown(reason.get('rule'))}: {_shown(reason.get('message'))}"
        for c in r.get("credentials") or ():
            if not isinstance(c, dict):
                continue
            yield "  ".join(
                [
                    "    credential",
                    f"tool={_shown(c.get('tool'))}",
                    f"jti={_shown(c.get('jti'))}",
                    f"scope={_shown(c.get('scope'))}",
                    f"expires={_iso(c.get('expires_at'))}",
                    f"uses={len(c.get('uses') or ())}",
                ]
            )
            for use in c.get("uses") or ():
                yield "  ".join(
                    [
                        "        use",
                        _iso(use.get("time")),
                        _shown(use.get("operation")),
                        f"-> {_shown(use.get('outcome'))}",
                        f"by={_shown(use.get('reported_by'))}",
                    ]
                )


@app.command()
def timeline(
    execution: Annotated[str, typer.Option(help="Execution id.")],
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
) -> None:
    """One execution: decisions, the credentials each minted, and each reported use of them."""
    settings = load_or_exit(config)
    with audit_reader(settings) as reader:
        records = timeline_of(reader, execution)
    if not records:
        typer.echo(f"no records for execution {_shown(execution)}", err=True)
        raise typer.Exit(1)
    if as_json:
        document = {"execution_id": execution, "records": records}
        typer.echo(json.dumps(document, ensure_ascii=True, allow_nan=False))
        return
    typer.echo(f"execution {_shown(execution)}")
    for line in timeline_lines(records):
        typer.echo(line)


def export_line(stored: StoredRecord) -> str:
    """One JSON Lines entry: the record body with its chain position; ASCII, one line.

    With a store of one chain per writer the line also names the chain and the record's
    place in it (``chain``, ``chain_seq``), so the line alone can be re-verified."""
    entry = {**stored.record, "seq": stored.seq, "hash": stored.hash, "prev_hash": stored.prev_hash}
    if stored.chain is not None:
        entry.update(chain=stored.chain, chain_seq=stored.chain_seq)
    return json.dumps(entry, ensure_ascii=True, allow_nan=False, separators=(",", ":")) + "\n"


def write_export(records: Iterable[StoredRecord], out: TextIO) -> int:
    """Write each record as it arrives (nothing is held back); the number written."""
    count = 0
    for stored in records:
        out.write(export_line(stored))
        count += 1
    return count


def _export_to_file(records: Iterable[StoredRecord], path: Path, *, force: bool) -> int:
    """Write under a private name in the same directory, fsync, then put it in place.

    Readers see no file or the whole export, never part of one. Without ``force`` the
    final step is a link, which fails rather than replace a file that appeared meanwhile.
    """
    directory = path.parent
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="ascii", newline="\n") as handle:
            count = write_export(records, handle)
            handle.flush()
            os.fsync(handle.fileno())
        if force:
            tmp.replace(path)
        else:
            os.link(tmp, path)
            tmp.unlink()
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):  # make the new name durable too, where supported
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return count


@app.command()
def export(
    config: ConfigOption = DEFAULT_CONFIG,
    since: Annotated[
        str | None, typer.Option(help="From this time on: 30m, 2h, 7d, epoch or ISO time.")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Before this time (exclusive); same forms as --since.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing --output file.")] = False,
) -> None:
    """Every record as JSON Lines, in seq order, with seq, hash and prev_hash, for a SIEM."""
    settings = load_or_exit(config)
    now = time.time()
    start = parse_since(since, now) if since else None
    end = parse_since(until, now) if until else None
    if output is not None and not force and output.exists():
        typer.echo(f"error: {output} exists; use --force to replace it", err=True)
        raise typer.Exit(1)
    with audit_reader(settings) as reader:
        records = reader.export(start, end)
        if output is None:
            try:
                write_export(records, sys.stdout)
                sys.stdout.flush()
            except BrokenPipeError:
                # The reader went away (`| head`): stop quietly, and keep Python from
                # complaining again when it flushes stdout at exit.
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                raise typer.Exit(0) from None
            return
        try:
            count = _export_to_file(records, output, force=force)
        except FileExistsError:
            typer.echo(f"error: {output} exists; use --force to replace it", err=True)
            raise typer.Exit(1) from None
        except OSError as exc:
            typer.echo(f"error: cannot write {output}: {exc.strerror or exc}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"exported {count} records to {output}", err=True)
