"""A SPIFFE Workload API server for tests: real gRPC on a unix socket, JWT-SVIDs from a signer.

It speaks the Workload API's gRPC service (the ``spiffe`` package's generated code) and
implements ``FetchJWTSVID`` only, which is all a JWT-SVID client asks for.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from spiffe._proto import workload_pb2, workload_pb2_grpc

from deputy.devtools.signer import SvidSigner


@dataclass
class FetchSeen:
    audience: list[str]
    spiffe_id: str
    workload_header: str | None


@dataclass
class FakeWorkloadApi(workload_pb2_grpc.SpiffeWorkloadAPIServicer):
    """Issues JWT-SVIDs for one workload path; ``failing`` makes every fetch UNAVAILABLE, and
    ``audience`` (if set) is put in SVIDs instead of the one asked for."""

    signer: SvidSigner
    path: str
    lifetime: int = 300
    failing: bool = False
    audience: str | None = None
    seen: list[FetchSeen] = field(default_factory=list)

    def FetchJWTSVID(self, request: Any, context: grpc.ServicerContext) -> Any:
        metadata = dict(context.invocation_metadata())
        self.seen.append(
            FetchSeen(list(request.audience), request.spiffe_id, metadata.get("workload.spiffe.io"))
        )
        if metadata.get("workload.spiffe.io") != "true":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "security header missing")
        if self.failing:
            context.abort(grpc.StatusCode.UNAVAILABLE, "agent restarting")
        spiffe_id = f"spiffe://{self.signer.trust_domain}{self.path}"
        token = self.signer.jwt_svid(
            self.path, audience=self.audience or request.audience[0], lifetime=self.lifetime
        )
        return workload_pb2.JWTSVIDResponse(
            svids=[workload_pb2.JWTSVID(spiffe_id=spiffe_id, svid=token)]
        )


@contextmanager
def workload_api_server(api: FakeWorkloadApi) -> Iterator[str]:
    """Serve ``api`` on a fresh unix socket; yields its ``unix://`` address."""
    directory = Path(tempfile.mkdtemp(prefix="wlapi-"))  # short: socket paths are limited
    socket = directory / "agent.sock"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server(api, server)
    server.add_insecure_port(f"unix:{socket}")
    server.start()
    try:
        yield f"unix://{socket}"
    finally:
        server.stop(None).wait()
        shutil.rmtree(directory, ignore_errors=True)
