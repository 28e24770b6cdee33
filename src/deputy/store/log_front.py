"""What every audit log store answers through its reader, and closing it with ``with``."""

from __future__ import annotations

from collections.abc import Iterator
from types import TracebackType
from typing import Self

from deputy.audit.log import AuditFilter, AuditReader, ChainReport
from deputy.audit.record import StoredRecord


class ReaderFront:
    """Reads go to ``self.reader``; leaving a ``with`` block calls ``close()``."""

    reader: AuditReader

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def query(self, audit_filter: AuditFilter) -> Iterator[StoredRecord]:
        return self.reader.query(audit_filter)

    def verify(self) -> ChainReport:
        return self.reader.verify()

    def issued_counts(self, since: float) -> dict[tuple[str, str, str], int]:
        return self.reader.issued_counts(since)
