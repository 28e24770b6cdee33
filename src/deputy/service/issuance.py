"""Issuance: verify → decide → take quota → mint → audit, for every adapter."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from deputy.audit.log import AuditLog
from deputy.audit.record import DecisionRecord, IssuedCredential
from deputy.clock import Clock
from deputy.errors import (
    AccessDenied,
    CommitOutcomeUnknown,
    InvalidRequest,
    InvalidToken,
    OAuthError,
    RateLimited,
    Reason,
    ServerError,
    StoreUnavailable,
    TemporarilyUnavailable,
    TokenRejected,
)
from deputy.identity.errors import KeysUnavailable
from deputy.identity.user import Principal, UserVerifier
from deputy.identity.workload import Workload, WorkloadVerifier
from deputy.ids import IdSource
from deputy.policy.engine import Decision, Grant, Subject, decide
from deputy.policy.model import Policy, Workflow
from deputy.policy.quota import QuotaDemand, QuotaStore, seconds_until_next_day, utc_day
from deputy.service.request import IssueRequest, decode_json_body, parse_issue_request
from deputy.tokens.mint import Attribution, Credential, CredentialDraft, Minter

RETRY_AFTER_UNAVAILABLE = 1

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Facts about the HTTP exchange that the audit record keeps."""

    request_id: str
    client_address: str | None
    endpoint: str = "/issue"


@dataclass(frozen=True, slots=True)
class IssueResult:
    """Credentials of one execution, keyed by tool."""

    execution_id: str
    decision_id: str
    credentials: tuple[Credential, ...]

    def body(self, now: float) -> dict[str, Any]:
        return {
            "credentials": {
                c.draft.tool: {
                    "access_token": c.token,
                    "token_type": "Bearer",
                    "expires_in": max(0, c.draft.expires_at - int(now)),
                    "expires_at": c.draft.expires_at,
                    "scope": c.draft.scope,
                    "audience": c.draft.audience,
                }
                for c in self.credentials
            },
            "execution_id": self.execution_id,
            "decision_id": self.decision_id,
        }


@dataclass
class _Trail:
    """What is known so far about a request, for the audit record whatever the outcome."""

    decision_id: str
    execution_id: str
    time: float
    context: RequestContext
    workload: Workload | None = None
    request: IssueRequest | None = None
    principal: Principal | None = None
    workflow: str | None = None
    decision: Decision | None = None

    def record(
        self,
        *,
        status: int,
        error: str | None = None,
        reasons: tuple[Reason, ...] = (),
        credentials: tuple[IssuedCredential, ...] = (),
        policy_version: str | None = None,
    ) -> DecisionRecord:
        req, who, wl = self.request, self.principal, self.workload
        return DecisionRecord(
            decision_id=self.decision_id,
            time=self.time,
            endpoint=self.context.endpoint,
            outcome="allow" if status == 200 else "deny",
            status=status,
            request_id=self.context.request_id,
            client_address=self.context.client_address,
            error=error,
            workload_id=wl.id if wl else None,
            workload_issuer=wl.issuer if wl else None,
            agent_instance=req.agent_id if req else None,
            workload_instance=wl.instance if wl else None,
            user_id=who.user_id if who else None,
            user_issuer=who.issuer if who else None,
            claimed_user_id=req.user_id if req else None,
            delegation=who.how if who else None,
            tier=who.tier if who else None,
            workflow=self.workflow,
            execution_id=self.execution_id if req else None,
            tools_requested={
                t: list(s) if s is not None else [] for t, s in (req.tools.items() if req else ())
            },
            ttl_seconds=self.decision.ttl if self.decision else (req.ttl_seconds if req else None),
            credentials=credentials,
            reasons=tuple(r.as_dict() for r in reasons),
            policy_version=policy_version,
        )


class IssuanceService:
    """The single path from a verified request to audited credentials."""

    def __init__(
        self,
        *,
        policy: Policy,
        workloads: WorkloadVerifier,
        users: UserVerifier,
        quota: QuotaStore,
        minter: Minter,
        audit: AuditLog,
        clock: Clock,
        ids: IdSource,
    ) -> None:
        self._policy = policy
        self._workloads = workloads
        self._users = users
        self._quota = quota
        self._minter = minter
        self._audit = audit
        self._clock = clock
        self._ids = ids

    async def issue(self, bearer: str | None, body: bytes, context: RequestContext) -> IssueResult:
        """Run one issuance; every outcome, allowed or denied, is audited before returning."""
        trail = _Trail(
            self._ids.prefixed("dec"), self._ids.prefixed("exe"), self._clock.now(), context
        )
        try:
            return await self._issue(trail, bearer, body)
        except OAuthError as err:
            await self._record_refusal(trail, err)
            raise
        except Exception:
            # A fault of Deputy's own: refuse, and still record the decision.
            _log.exception("issuance failed unexpectedly (decision %s)", trail.decision_id)
            fault = ServerError("internal error; nothing was issued")
            await self._record_refusal(trail, fault)
            raise fault from None

    async def _record_refusal(self, trail: _Trail, err: OAuthError) -> None:
        """Audit a request that gets no credential; if even that fails, answer 503."""
        record = trail.record(
            status=err.status_code,
            error=err.error,
            reasons=err.reasons,
            policy_version=self._policy.version if trail.workflow else None,
        )
        try:
            await self._audit.append(record)
        except StoreUnavailable:
            raise _audit_unavailable() from None

    async def _issue(self, trail: _Trail, bearer: str | None, body: bytes) -> IssueResult:
        if not bearer:
            raise InvalidToken("an agent workload token is required as a Bearer token")
        try:
            trail.workload = await self._workloads.verify(bearer)
        except KeysUnavailable:
            raise _keys_unavailable() from None
        except TokenRejected as err:
            raise InvalidToken(f"workload token rejected: {err.reason}") from None
        request = trail.request = parse_issue_request(decode_json_body(body))
        workflow = self._select_workflow(trail.workload, request.workflow)
        trail.workflow = workflow.name
        subject = await self._establish_subject(trail, workflow, request)
        decision = trail.decision = decide(
            self._policy, workflow, subject, request.tools, request.ttl_seconds
        )
        now = trail.time
        day = utc_day(now)
        assert trail.principal is not None
        demands = self._demands(workflow, trail.principal, request)
        try:
            if not decision.allow:
                over = self._quota.exceeded(day, demands)
                raise AccessDenied(
                    "policy denied the request", reasons=decision.reasons + _quota_reasons(over)
                )
            over = self._quota.consume(day, demands)
        except StoreUnavailable:
            raise _audit_unavailable() from None
        if over:
            raise RateLimited(
                "daily issuance limit reached",
                reasons=_quota_reasons(over),
                retry_after=seconds_until_next_day(now),
            )
        try:
            drafts = self._draft(trail, workflow, subject, decision)
        except Exception:
            self._quota.refund(day, demands)
            raise
        record = trail.record(
            status=200,
            credentials=tuple(
                IssuedCredential(d.jti, d.tool, d.audience, d.scope, d.category, d.expires_at)
                for d in drafts
            ),
            policy_version=decision.policy_version,
        )
        try:
            # Signed only once the record is committed: no credential without its record.
            tokens = await self._audit.append(record, [d.claims for d in drafts])
        except StoreUnavailable as err:
            # Refund only what surely was not recorded: a record that may still land (or did,
            # unsigned) keeps its quota, and so does a cancelled append (not caught here).
            if not isinstance(err, CommitOutcomeUnknown):
                self._quota.refund(day, demands)
            raise _audit_unavailable() from None
        credentials = tuple(d.signed(t) for d, t in zip(drafts, tokens, strict=True))
        return IssueResult(trail.execution_id, trail.decision_id, credentials)

    def _select_workflow(self, workload: Workload, name: str | None) -> Workflow:
        if name is not None:
            workflow = self._policy.workflows.get(name)
            if workflow is None:
                raise InvalidRequest(f"unknown workflow '{name}'")
            if not workflow.admits(workload.id):
                raise AccessDenied(
                    "policy denied the request",
                    reasons=(
                        Reason(
                            "workflow.agents",
                            f"workload {workload.id} is not one of the agents of workflow '{name}'",
                        ),
                    ),
                )
            return workflow
        matches = self._policy.workflows_for(workload.id)
        if not matches:
            raise AccessDenied(
                "policy denied the request",
                reasons=(Reason("workflow.agents", f"no workflow admits workload {workload.id}"),),
            )
        if len(matches) > 1:
            names = ", ".join(sorted(w.name for w in matches))
            raise InvalidRequest(
                f"workload matches several workflows ({names}); name one in `workflow`"
            )
        return matches[0]

    async def _establish_subject(
        self, trail: _Trail, workflow: Workflow, request: IssueRequest
    ) -> Subject:
        assert trail.workload is not None
        if workflow.delegation == "asserted":
            if request.user_token is not None:
                raise InvalidRequest(
                    f"workflow '{workflow.name}' uses asserted delegation; omit `user_token`"
                )
            if request.user_id is None:
                raise InvalidRequest(
                    f"workflow '{workflow.name}' uses asserted delegation: `user_id` is required"
                )
            trail.principal = Principal(request.user_id, trail.workload.id, "asserted")
            return Subject(trail.workload.id, request.user_id, None, "asserted")
        if request.user_token is None:
            raise InvalidRequest(
                f"workflow '{workflow.name}' acts for a verified user: `user_token` is required"
            )
        try:
            principal = trail.principal = await self._users.verify(request.user_token)
        except KeysUnavailable:
            raise _keys_unavailable() from None
        except TokenRejected as err:
            raise InvalidRequest(f"user_token rejected: {err.reason}") from None
        return Subject(
            trail.workload.id, principal.user_id, principal.tier, "user_token", request.user_id
        )

    def _demands(
        self, workflow: Workflow, principal: Principal, request: IssueRequest
    ) -> tuple[QuotaDemand, ...]:
        counts: dict[str, int] = {}
        for name in request.tools:
            tool = self._policy.tools.get(name)
            if tool is not None and name in workflow.tools:
                counts[tool.category] = counts.get(tool.category, 0) + 1
        return tuple(
            QuotaDemand(
                principal.issuer,
                principal.user_id,
                category,
                amount,
                workflow.rate_limits[category],
            )
            for category, amount in counts.items()
            if category in workflow.rate_limits
        )

    def _draft(
        self, trail: _Trail, workflow: Workflow, subject: Subject, decision: Decision
    ) -> tuple[CredentialDraft, ...]:
        assert trail.request is not None and trail.principal is not None
        issued_at = int(trail.time)
        expires_at = issued_at + decision.ttl
        if trail.principal.expires_at is not None:
            expires_at = min(expires_at, int(trail.principal.expires_at))
        who = Attribution(
            user_id=subject.user_id or subject.workload_id,
            workload_id=subject.workload_id,
            agent_instance=trail.request.agent_id,
            execution_id=trail.execution_id,
            workflow=workflow.name,
            decision_id=trail.decision_id,
            delegation=subject.delegation,
        )
        return tuple(self._draft_one(g, who, issued_at, expires_at) for g in decision.grants)

    def _draft_one(
        self, grant: Grant, who: Attribution, issued_at: int, expires_at: int
    ) -> CredentialDraft:
        return self._minter.draft(
            tool=grant.tool.name,
            audience=grant.tool.audience,
            scope=grant.scope,
            category=grant.tool.category,
            who=who,
            issued_at=issued_at,
            expires_at=expires_at,
        )


def _audit_unavailable() -> TemporarilyUnavailable:
    return TemporarilyUnavailable(
        "the audit store is unavailable; nothing was issued, retry shortly",
        retry_after=RETRY_AFTER_UNAVAILABLE,
    )


def _keys_unavailable() -> TemporarilyUnavailable:
    return TemporarilyUnavailable(
        "the keys of a trusted issuer cannot be fetched; retry shortly",
        retry_after=RETRY_AFTER_UNAVAILABLE,
    )


def _quota_reasons(over: tuple[QuotaDemand, ...]) -> tuple[Reason, ...]:
    return tuple(
        Reason(
            "rate_limit",
            f"user {d.user_id} reached the daily limit of {d.limit} credentials "
            f"for category '{d.category}'",
        )
        for d in over
    )
