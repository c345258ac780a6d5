"""Bearer token + OpenAI-Organization/OpenAI-Project headers → `Principal`, or an OpenAI auth error."""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timezone

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from modelhost.auth.keys import hash_secret, is_well_formed
from modelhost.auth import policy
from modelhost.auth.policy import KeyKind
from modelhost.auth.principal import ModelPolicy, Principal
from modelhost.errors import AuthenticationError, PermissionDenied, ServiceUnavailable
from modelhost.store import members, model_permissions, tenancy

NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using "
    "Bearer auth (i.e. Authorization: Bearer YOUR_KEY). Create a key with `modelhost keys create`."
)
BAD_KEY = "Incorrect API key provided. Create a key with `modelhost keys create`, or check that it was not revoked."
MISMATCHED_ORG = "OpenAI-Organization header should match organization for API key"
MISMATCHED_PROJECT = "OpenAI-Project header should match project for API key"
ADMIN_KEY_ON_INFERENCE = (
    "Admin keys (sk-admin-…) only work on the Administration and Usage APIs (/v1/organization/…). "
    "Use a project key for this request; create one with `modelhost keys create`."
)
INFERENCE_KEY_ON_ADMIN = (
    "You have insufficient permissions for this operation: the Administration and Usage APIs take an "
    "admin key (sk-admin-…). Create one with `modelhost keys create --kind admin`."
)


def _bad_key() -> AuthenticationError:
    return AuthenticationError(BAD_KEY, code="invalid_api_key")


def bearer_token(authorization: Sequence[str]) -> str:
    """The token of exactly one ``Authorization: Bearer …`` header; anything else is a 401."""
    if not authorization:
        raise AuthenticationError(NO_KEY)
    if len(authorization) > 1:
        raise AuthenticationError("Send exactly one Authorization header.", code="invalid_api_key")
    scheme, _, token = authorization[0].strip().partition(" ")
    if scheme.lower() != "bearer":
        raise AuthenticationError(NO_KEY)
    token = token.strip()
    if not token:
        raise AuthenticationError(NO_KEY)
    return token


def _model_policy(session: Session, project_id: str) -> ModelPolicy | None:
    """The project's own model permissions, trusted with the key for the cache time."""
    row = model_permissions.of_project(session, project_id)
    return None if row is None else ModelPolicy(row.mode, frozenset(row.model_ids))


class KeyUseTracker:
    """Remembers when each key was last used, so `last_used_at` costs no write per request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, datetime] = {}

    def mark(self, key_id: str) -> None:
        with self._lock:
            self._pending[key_id] = datetime.now(timezone.utc)

    def drain(self) -> dict[str, datetime]:
        with self._lock:
            pending, self._pending = self._pending, {}
        return pending


class Authenticator:
    """Verifies keys against the store, trusting a verified answer for `cache_seconds`.

    Revocation, a key owner's lost access to its project and a project's changed model permissions
    therefore take effect within `cache_seconds` on every replica.
    """

    def __init__(self, sessions: sessionmaker[Session], *, cache_seconds: float = 5.0) -> None:
        self._sessions = sessions
        self._cache_seconds = cache_seconds
        self._cache: dict[tuple[str, str | None, str | None], tuple[float, Principal]] = {}
        self._lock = threading.Lock()
        self.key_use = KeyUseTracker()

    def authenticate(
        self, authorization: Sequence[str], organization: str | None, project: str | None
    ) -> Principal:
        """The principal of an inference request (user, project or service-account key)."""
        principal = self._principal(authorization, organization, project)
        if principal.is_admin:
            raise PermissionDenied(ADMIN_KEY_ON_INFERENCE, code="insufficient_permissions")
        self.key_use.mark(principal.key_id)
        return principal

    def authenticate_admin(self, authorization: Sequence[str], organization: str | None) -> Principal:
        """The principal of an Administration API request: admin keys only."""
        principal = self._principal(authorization, organization, None)
        if not principal.is_admin:
            raise PermissionDenied(INFERENCE_KEY_ON_ADMIN, code="insufficient_permissions")
        self.key_use.mark(principal.key_id)
        return principal

    def _principal(self, authorization: Sequence[str], organization: str | None, project: str | None) -> Principal:
        token = bearer_token(authorization)
        if not is_well_formed(token):
            raise _bad_key()
        secret_hash = hash_secret(token)
        cache_key = (secret_hash, organization or None, project or None)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(cache_key)
        if hit is not None and hit[0] > now:
            principal = hit[1]
        else:
            principal = self._resolve(secret_hash, organization or None, project or None)
            with self._lock:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                self._cache[cache_key] = (now + self._cache_seconds, principal)
        return principal

    def _resolve(self, secret_hash: str, organization: str | None, project: str | None) -> Principal:
        try:
            with self._sessions() as session:
                return self._resolve_in(session, secret_hash, organization, project)
        except SQLAlchemyError as exc:
            # Fail closed: a store we cannot read never means "allow".
            raise ServiceUnavailable("The key store is unavailable; retry shortly.") from exc

    def _resolve_in(
        self, session: Session, secret_hash: str, organization: str | None, project: str | None
    ) -> Principal:
        record = tenancy.key_by_hash(session, secret_hash)
        if record is None or not hmac.compare_digest(record.secret_hash, secret_hash):
            raise _bad_key()
        return principal_of_record(session, record, organization, project)

    def flush_key_use(self) -> None:
        """Write pending `last_used_at` times; failures are retried at the next flush."""
        pending = self.key_use.drain()
        if not pending:
            return
        try:
            with self._sessions() as session:
                tenancy.touch_keys(session, pending)
                session.commit()
        except SQLAlchemyError:
            for key_id in pending:
                self.key_use.mark(key_id)
            raise


def key_in_force(session: Session, key_id: str, organization_id: str, project_id: str) -> bool:
    """Whether the stored key `key_id` would authenticate an inference request of this organization and
    project now, by the rules a bearer token meets (`principal_of_record`): not revoked, deleted or
    expired, its owner still allowed the project, the project active. Uncached: work that runs as a
    stored key (a batch's lines) asks it as it goes, so a revocation stops that work too."""
    record = tenancy.key_by_id(session, key_id)
    if record is None:
        return False
    try:
        who = principal_of_record(session, record, organization_id, project_id)
    except (AuthenticationError, PermissionDenied):
        return False
    return not who.is_admin and who.organization_id == organization_id and who.project_id == project_id


def principal_of_record(session: Session, record: tenancy.KeyRecord, organization: str | None, project: str | None) -> Principal:
    """The principal a stored key stands for, given the request's organization and project headers
    (None: not sent); an AuthenticationError when the key may not be used (revoked, expired, its
    owner or project no longer allowing it, a header naming another organization or project)."""
    if record.revoked or record.expired(datetime.now(timezone.utc)):
        raise _bad_key()
    if record.kind in (KeyKind.PROJECT, KeyKind.SERVICE_ACCOUNT):
        owner = record.user_id or record.service_account_id
        assert record.organization_id and record.project_id and owner, "project keys are bound to a project"
        # A key works only while its owner may use the project, as at OpenAI: an owner made reader
        # who is no member of the project holds an `inactive` key, refused until that access is
        # given back (removal from the project or organization revokes keys for good instead;
        # docs/administration.md).
        if record.project_status != "active" or not record.owner_access:
            raise _bad_key()
        if organization is not None and organization != record.organization_id:
            raise AuthenticationError(MISMATCHED_ORG, code="mismatched_organization")
        if project is not None and project != record.project_id:
            raise AuthenticationError(MISMATCHED_PROJECT, code="mismatched_project")
        return Principal(
            record.organization_id, record.project_id, owner, record.key_id, record.kind,
            model_policy=_model_policy(session, record.project_id),
        )
    assert record.user_id, "user and admin keys belong to a user"
    if record.kind == KeyKind.ADMIN:
        assert record.organization_id, "admin keys are bound to an organization"
        if organization is not None and organization != record.organization_id:
            raise AuthenticationError(MISMATCHED_ORG, code="mismatched_organization")
        member = tenancy.membership(session, record.user_id, record.organization_id)
        if not policy.may_hold_admin_key(member.role if member else None):
            raise _bad_key()
        return Principal(
            record.organization_id, "", record.user_id, record.key_id, KeyKind.ADMIN, policy.scopes_of(KeyKind.ADMIN)
        )

    user = session.get(tenancy.User, record.user_id)
    org_id = organization or (user.default_organization_id if user else None)
    if org_id is None or not tenancy.is_member(session, record.user_id, org_id):
        if organization is None:
            raise AuthenticationError(
                "This key's user belongs to no organization; add them with `modelhost users add`.",
                code="no_organization",
            )
        raise AuthenticationError(MISMATCHED_ORG, code="mismatched_organization")
    if project is not None:
        # A user key reaches the projects its user may use: those it is a member of, and every
        # project of an organization it owns. The default project is open to all members.
        chosen = session.get(tenancy.Project, project)
        if (
            chosen is None
            or chosen.organization_id != org_id
            or chosen.status != "active"
            or not members.may_use_project(session, chosen, record.user_id)
        ):
            raise AuthenticationError(MISMATCHED_PROJECT, code="mismatched_project")
    else:
        chosen = tenancy.default_project(session, org_id)
        assert chosen is not None, "every organization has a default project"
    return Principal(
        org_id, chosen.id, record.user_id, record.key_id, KeyKind.USER, model_policy=_model_policy(session, chosen.id)
    )
