"""Issuance: verify → decide → take quota → mint → audit, for every adapter."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from deputy.audit.log import AuditLog, Ledger
from deputy.audit.record import DecisionRecord, IssuedCredential
from deputy.clock import Clock
from deputy.errors import (
    AccessDenied,
    CommitOutcomeUnknown,
    InvalidDpopProof,
    InvalidRequest,
    InvalidToken,
    OAuthError,
    RateLimited,
    Reason,
    ServerError,
    StoreUnavailable,
    TemporarilyUnavailable,
    TokenRejected,
    UnauthorizedClient,
)
from deputy.identity.errors import KeysUnavailable
from deputy.identity.user import Principal, UserVerifier
from deputy.identity.workload import Workload, WorkloadVerifier
from deputy.ids import IdSource
from deputy.policy.engine import Chain, Decision, Grant, Subject, decide
from deputy.policy.model import Policy, Workflow
from deputy.policy.quota import QuotaDemand, QuotaStore, seconds_until_next_day, utc_day
from deputy.policy.targets import resolve_targets
from deputy.service.context import RETRY_AFTER_UNAVAILABLE, RequestContext
from deputy.service.request import IssueRequest, decode_json_body, parse_issue_request
from deputy.service.revocation import Revocations
from deputy.tokens.dpop import DpopVerifier
from deputy.tokens.mint import Attribution, Credential, CredentialDraft, Minter
from deputy.tokens.verify import CredentialVerifier, VerifiedCredential

__all__ = [
    "IssuanceService",
    "IssueResult",
    "Issuer",
    "JsonIssue",
    "RequestContext",
    "WorkloadProof",
    "verify_workload",
]

_log = logging.getLogger(__name__)
ANY_WORKLOAD = frozenset({"spiffe", "oidc"})


@dataclass(frozen=True, slots=True)
class WorkloadProof:
    """A token presented as the agent's workload identity, and how a rejection is answered."""

    token: str = field(repr=False)
    name: str  # how the request calls it, for messages
    rejected: type[OAuthError] = InvalidToken
    kinds: frozenset[str] = ANY_WORKLOAD  # which kinds of workload token it may be
    # A client assertion must be addressed to Deputy alone, or whoever else it names could
    # replay it here (draft-ietf-oauth-rfc7523bis).
    sole_audience: bool = False


class Exchange(Protocol):
    """One adapter's request: its workload proofs, its parse step and its error dialect."""

    def proofs(self) -> tuple[WorkloadProof, ...]:
        """The workload tokens presented; raises if there are none or they are malformed."""
        ...

    async def parse(self, workload: Workload) -> IssueRequest:
        """The rest of the request, parsed once the workload is verified.

        A coroutine because checking a DPoP proof records its ``jti`` with the replay
        guard, which replicas share over the network.
        """
        ...

    def translate(self, err: OAuthError) -> OAuthError:
        """The error as this adapter's protocol names it (recorded as such)."""
        ...


@dataclass(frozen=True, slots=True)
class DpopBinding:
    """The DPoP headers of one request, and where to check them (RFC 9449 §4.3)."""

    proofs: tuple[str, ...] = field(repr=False)
    method: str
    url: str  # the public URL of the endpoint (htu)
    verifier: DpopVerifier | None = None

    async def jkt(self) -> str | None:
        """The thumbprint of the key the credentials get bound to, if a proof was sent."""
        if not self.proofs:
            return None
        if len(self.proofs) > 1 or self.verifier is None:
            raise InvalidDpopProof("send exactly one DPoP header")
        try:
            proof = await self.verifier.verify(self.proofs[0], method=self.method, url=self.url)
        except TokenRejected as err:
            raise InvalidDpopProof(f"DPoP proof rejected: {err.reason}") from None
        except StoreUnavailable:
            # The proof's jti could not be recorded: refuse rather than risk a replay.
            raise TemporarilyUnavailable(
                "DPoP proofs cannot be checked for replay now; retry shortly",
                retry_after=RETRY_AFTER_UNAVAILABLE,
            ) from None
        return proof.jkt


NO_DPOP = DpopBinding((), "POST", "")


@dataclass(frozen=True, slots=True)
class JsonIssue:
    """``POST /issue``: the workload token as a Bearer token, and a JSON body."""

    bearer: str | None = field(repr=False)
    body: bytes = field(repr=False)
    dpop: DpopBinding = NO_DPOP

    def proofs(self) -> tuple[WorkloadProof, ...]:
        if not self.bearer:
            raise InvalidToken("an agent workload token is required as a Bearer token")
        return (WorkloadProof(self.bearer, "workload token"),)

    async def parse(self, workload: Workload) -> IssueRequest:
        request = parse_issue_request(decode_json_body(self.body))
        jkt = await self.dpop.jkt()
        return request if jkt is None else replace(request, dpop_jkt=jkt)

    def translate(self, err: OAuthError) -> OAuthError:
        return err


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
                    "token_type": c.draft.token_type,
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


class Issuer(Protocol):
    """What the adapters call: :class:`IssuanceService`, or a wrapper that observes it."""

    async def issue(self, exchange: Exchange, context: RequestContext) -> IssueResult: ...


@dataclass
class _Trail:
    """What is known so far about a request, for the audit record whatever the outcome."""

    decision_id: str
    execution_id: str
    time: float
    context: RequestContext
    policy: Policy  # the one policy this request is decided under, whatever a reload does
    workload: Workload | None = None
    request: IssueRequest | None = None
    principal: Principal | None = None
    workflow: str | None = None
    decision: Decision | None = None
    parent: VerifiedCredential | None = None
    may_act: str | None = None

    @property
    def agent_instance(self) -> str | None:
        """The instance the request names, else the one its workload token attests."""
        if self.request is not None and self.request.agent_id is not None:
            return self.request.agent_id
        if self.workload is None:
            return None
        return self.workload.instance or self.workload.id

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
            agent_instance=self.agent_instance if req else None,
            workload_instance=wl.instance if wl else None,
            user_id=who.user_id if who else None,
            user_issuer=who.issuer if who else None,
            claimed_user_id=req.user_id if req else None,
            delegation=who.how if who else None,
            tier=who.tier if who else None,
            workflow=self.workflow,
            execution_id=self.execution_id if req else None,
            tools_requested={
                t: list(s) if s is not None else []
                for t, s in (req.tools.items() if req and req.tools else ())
            },
            ttl_seconds=self.decision.ttl if self.decision else (req.ttl_seconds if req else None),
            credentials=credentials,
            reasons=tuple(r.as_dict() for r in reasons),
            policy_version=policy_version,
            grant_type=req.grant if req and req.grant != "issue" else None,
            parent_jti=self.parent.jti if self.parent else None,
            parent_actors=self.parent.actors if self.parent else (),
            may_act=self.may_act,
            dpop_jkt=req.dpop_jkt if req else None,
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
        credentials: CredentialVerifier,
        ledger: Ledger,
        revocations: Revocations,
    ) -> None:
        self._credentials = credentials
        self._ledger = ledger
        self._revocations = revocations
        self._policy = policy
        self._workloads = workloads
        self._users = users
        self._quota = quota
        self._minter = minter
        self._audit = audit
        self._clock = clock
        self._ids = ids

    @property
    def policy(self) -> Policy:
        """The policy new requests are decided under."""
        return self._policy

    def use_policy(self, policy: Policy) -> None:
        """Decide new requests under ``policy``; a request under way keeps the one it began with."""
        self._policy = policy

    async def issue(self, exchange: Exchange, context: RequestContext) -> IssueResult:
        """Run one issuance; every outcome, allowed or denied, is audited before returning."""
        trail = _Trail(
            self._ids.prefixed("dec"),
            self._ids.prefixed("exe"),
            self._clock.now(),
            context,
            self._policy,
        )
        try:
            return await self._issue(trail, exchange)
        except OAuthError as err:
            refusal = exchange.translate(err)
            await self._record_refusal(trail, refusal)
            raise refusal from None
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
            policy_version=trail.policy.version,
        )
        try:
            await self._audit.append(record)
        except StoreUnavailable:
            raise _audit_unavailable() from None

    async def _issue(self, trail: _Trail, exchange: Exchange) -> IssueResult:
        trail.workload = await verify_workload(self._workloads, exchange.proofs())
        request = trail.request = await exchange.parse(trail.workload)
        policy = trail.policy
        workflow = _select_workflow(policy, trail.workload, request.workflow)
        trail.workflow = workflow.name
        subject = await self._establish_subject(trail, workflow, request)
        tools = request.tools
        if tools is None:
            tools = resolve_targets(policy, workflow, request.targets, request.scopes)
        decision = trail.decision = decide(
            policy,
            workflow,
            subject,
            tools,
            request.ttl_seconds,
            dpop_bound=request.dpop_jkt is not None,
        )
        now = trail.time
        day = utc_day(now)
        assert trail.principal is not None
        demands = _demands(policy, workflow, trail.principal, tools)
        try:
            if not decision.allow:
                over = await self._quota.exceeded(day, demands)
                raise AccessDenied(
                    "policy denied the request", reasons=decision.reasons + _quota_reasons(over)
                )
            over = await self._quota.consume(day, demands)
        except StoreUnavailable:
            raise _counters_unavailable() from None
        if over:
            raise RateLimited(
                "daily issuance limit reached",
                reasons=_quota_reasons(over),
                retry_after=seconds_until_next_day(now),
            )
        try:
            drafts = self._draft(trail, workflow, subject, decision)
        except Exception:
            await self._refund(day, demands)
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
                await self._refund(day, demands)
            raise _audit_unavailable() from None
        credentials = tuple(d.signed(t) for d, t in zip(drafts, tokens, strict=True))
        return IssueResult(trail.execution_id, trail.decision_id, credentials)

    async def _refund(self, day: int, demands: tuple[QuotaDemand, ...]) -> None:
        """Give back a request's quota; if the counters cannot be reached, it stays taken.

        Taken too much is the safe direction (the user gets fewer credentials, never more),
        and the request's own answer (its fault, or 503) must not turn into another.
        """
        try:
            await self._quota.refund(day, demands)
        except StoreUnavailable:
            _log.warning("quota refund failed: the counter store is unavailable; it stays taken")

    async def _establish_subject(
        self, trail: _Trail, workflow: Workflow, request: IssueRequest
    ) -> Subject:
        workload = trail.workload
        assert workload is not None
        if request.grant == "client_credentials" or workflow.delegation == "none":
            return self._agent_itself(trail, workflow, request)
        token, field_ = request.user_token, request.subject_field
        # A user's token seen before is no Deputy credential: no need to look closer.
        if (
            token is not None
            and request.grant == "token_exchange"
            and self._users.cached(token) is None
        ):
            chained = await self._chained_subject(trail, token, field_, request.subject_is_id_token)
            if chained is not None:
                return chained
        if workflow.delegation == "asserted":
            if request.grant != "issue":
                raise InvalidRequest(
                    f"workflow '{workflow.name}' uses asserted delegation: exchange a Deputy "
                    f"credential as `{field_}`, or name the user at /issue"
                )
            if token is not None:
                raise InvalidRequest(
                    f"workflow '{workflow.name}' uses asserted delegation; omit `user_token`"
                )
            if request.user_id is None:
                raise InvalidRequest(
                    f"workflow '{workflow.name}' uses asserted delegation: `user_id` is required"
                )
            trail.principal = Principal(request.user_id, workload.id, "asserted")
            return Subject(workload.id, request.user_id, None, "asserted")
        if token is None:
            raise InvalidRequest(
                f"workflow '{workflow.name}' acts for a verified user: `{field_}` is required"
            )
        try:
            principal = trail.principal = await self._users.verify(token)
        except KeysUnavailable:
            raise _keys_unavailable() from None
        except TokenRejected as err:
            raise InvalidRequest(f"{field_} rejected: {err.reason}") from None
        trail.may_act = principal.may_act
        return Subject(
            workload.id,
            principal.user_id,
            principal.tier,
            "user_token",
            request.user_id,
            may_act=principal.may_act,
        )

    def _agent_itself(self, trail: _Trail, workflow: Workflow, request: IssueRequest) -> Subject:
        """No user: the agent acts as itself, where its workflow says so."""
        workload = trail.workload
        assert workload is not None
        if workflow.delegation != "none":
            raise UnauthorizedClient(
                f"workflow '{workflow.name}' acts for users; an agent may act as itself only "
                "in a workflow with `delegation: none`"
            )
        if request.grant == "token_exchange":
            raise InvalidRequest(
                f"workflow '{workflow.name}' acts for no user: use grant_type=client_credentials"
            )
        if request.user_token is not None or request.user_id is not None:
            raise InvalidRequest(
                f"workflow '{workflow.name}' acts for no user; omit `user_token` and `user_id`"
            )
        trail.principal = Principal(workload.id, workload.issuer, "none")
        return Subject(workload.id, workload.id, None, "none")

    async def _chained_subject(
        self, trail: _Trail, token: str, field_: str, said_id_token: bool
    ) -> Subject | None:
        """A Deputy credential as the subject: a sub-agent continues its execution."""
        if not self._credentials.claims_to_be_ours(token):
            return None  # a user's token: the user verifier decides
        if said_id_token:
            raise InvalidRequest(
                f"{field_} is a Deputy access token, not an ID token: say so in its type"
            )
        workload = trail.workload
        assert workload is not None
        try:
            parent = self._credentials.verify(token)
        except TokenRejected as err:
            raise InvalidRequest(f"{field_} rejected: {err.reason}") from None
        if await self._revocations.covering(parent.claims) is not None:
            raise InvalidRequest(f"{field_} rejected: it has been revoked")
        try:
            entry = await self._ledger.credential(parent.jti)
        except StoreUnavailable:
            raise _audit_unavailable() from None
        if entry is None or entry.user_id is None or entry.workflow is None:
            raise InvalidRequest(f"{field_} rejected: no issued credential has its jti")
        trail.parent = parent
        if entry.execution_id is not None:
            trail.execution_id = entry.execution_id
        delegation = entry.delegation or "none"
        trail.principal = Principal(
            entry.user_id,
            entry.user_issuer or "",
            delegation,
            entry.tier,
            float(parent.expires_at),
        )
        chain = Chain(parent.actors, entry.workflow, parent.audience, parent.scopes, delegation)
        # The user's may_act binds the whole chain: only that workload ever acts for them.
        trail.may_act = entry.may_act
        return Subject(
            workload.id, entry.user_id, entry.tier, delegation, may_act=entry.may_act, chain=chain
        )

    def _draft(
        self, trail: _Trail, workflow: Workflow, subject: Subject, decision: Decision
    ) -> tuple[CredentialDraft, ...]:
        assert trail.request is not None and trail.principal is not None
        issued_at = int(trail.time)
        expires_at = issued_at + decision.ttl
        if trail.principal.expires_at is not None:
            expires_at = min(expires_at, int(trail.principal.expires_at))
        parent = trail.parent.actors if trail.parent else ()
        lineage = trail.parent.lineage if trail.parent else ()
        who = Attribution(
            user_id=subject.user_id or subject.workload_id,
            actors=(subject.workload_id, *parent),
            agent_instance=trail.agent_instance or subject.workload_id,
            execution_id=trail.execution_id,
            workflow=workflow.name,
            decision_id=trail.decision_id,
            delegation=subject.delegation,
            delegated_from=lineage,
            jkt=trail.request.dpop_jkt,
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


async def verify_workload(
    verifier: WorkloadVerifier, proofs: tuple[WorkloadProof, ...]
) -> Workload:
    """Every proof must verify and name the same workload."""
    found: Workload | None = None
    for proof in proofs:
        try:
            workload = await verifier.verify(proof.token)
        except KeysUnavailable:
            raise _keys_unavailable() from None
        except TokenRejected as err:
            raise proof.rejected(f"{proof.name} rejected: {err.reason}") from None
        if workload.kind not in proof.kinds:
            kinds = " or ".join(sorted(proof.kinds))
            raise proof.rejected(f"{proof.name} must be a {kinds} token")
        if proof.sole_audience and not workload.sole_audience:
            raise proof.rejected(f"{proof.name} must name Deputy as its only audience")
        if found is not None and workload.id != found.id:
            names = " and ".join(p.name for p in proofs)
            raise InvalidRequest(f"{names} name different workloads")
        found = workload
    if found is None:
        raise InvalidRequest("no workload token was presented")
    return found


def _select_workflow(policy: Policy, workload: Workload, name: str | None) -> Workflow:
    """The named workflow if it admits the workload, else the only one that does."""
    if name is not None:
        workflow = policy.workflows.get(name)
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
    matches = policy.workflows_for(workload.id)
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


def _demands(
    policy: Policy, workflow: Workflow, principal: Principal, tools: Mapping[str, object]
) -> tuple[QuotaDemand, ...]:
    """What the request takes of each rate-limited category of its workflow."""
    counts: dict[str, int] = {}
    for name in tools:
        tool = policy.tools.get(name)
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


def _counters_unavailable() -> TemporarilyUnavailable:
    """The quota counters (or the audit log they are seeded from) cannot be read: fail closed."""
    return TemporarilyUnavailable(
        "the quota counters are unavailable; nothing was issued, retry shortly",
        retry_after=RETRY_AFTER_UNAVAILABLE,
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
