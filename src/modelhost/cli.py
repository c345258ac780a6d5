"""The `modelhost` command: serve, and administer keys, organizations, projects, users, invites,
usage, rate limits and quotas.

Every command accepts ``--json`` and then prints exactly one JSON object on stdout: for an object
the Administration API also serves (projects, invites), its wire model, as the API answers it. A
failure is the API's error envelope (``{"error": {"message", "type", "param", "code"}}``), exit 2.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel
from pydantic_core import PydanticCustomError
from sqlalchemy.orm import Session, sessionmaker

from modelhost.organization import bootstrap, operations
from modelhost.auth.policy import KeyKind, OrgRole
from modelhost.config import Settings
from modelhost.errors import APIError, InvalidRequest
from modelhost.limits.service import LimitSettings
from modelhost.protocol.common import stored_text
from modelhost.store import UsageLedger, migrate, open_engine, session_factory

if TYPE_CHECKING:
    from modelhost.catalog import Catalog


def _migrated(settings: Settings) -> sessionmaker[Session]:
    engine = open_engine(settings.resolved_database_url())
    migrate(engine)
    return session_factory(engine)


def _open_store(settings: Settings) -> sessionmaker[Session]:
    """The store, migrated, with its first organization (created on first use)."""
    sessions = _migrated(settings)
    bootstrap.bootstrap(sessions)
    return sessions


def _emit(args: argparse.Namespace, payload: BaseModel | Mapping[str, object], human: Callable[[], str]) -> None:
    if args.json:
        print(payload.model_dump_json() if isinstance(payload, BaseModel) else json.dumps(payload, default=str))
    else:
        print(human())


def _table(rows: Sequence[Mapping[str, object]], columns: Sequence[str]) -> str:
    if not rows:
        return "(none)"
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


# -- serve ------------------------------------------------------------------------------------
def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from modelhost.api import create_app
    from modelhost.api.server import run_server
    from modelhost.observability import configure_logging

    if args.host:
        settings.host = args.host
    if args.port is not None:
        settings.port = args.port
    if args.model:
        settings.model_path = args.model
    if settings.models_file is not None:
        _checked_models_file(settings.models_file)  # a plain error now, not a traceback from the server's startup
    sessions = _migrated(settings)
    first = bootstrap.bootstrap(sessions)
    if not _is_loopback(settings.host) and not any(not k["revoked"] for k in operations.list_keys(sessions)):
        print(
            f"error: refusing to listen on {settings.host}: there is no API key yet, so nobody could use the server "
            "and nothing protects it. Create one with `modelhost keys create`, or bind 127.0.0.1.",
            file=sys.stderr,
        )
        return 2
    if first.created:
        print(
            f"First start: created organization {first.organization_id} (Personal), its default project "
            f"{first.project_id} and owner {first.user_email} in {settings.home}.\n"
            f"Create an API key with:  modelhost keys create",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps({"url": f"http://{settings.host}:{settings.port}/v1", "organization": first.organization_id}))
        sys.stdout.flush()
    else:
        what = f"the models in {settings.models_file}" if settings.models_file else settings.model_id
        print(f"modelhost serving {what} on http://{settings.host}:{settings.port}/v1", file=sys.stderr)
    configure_logging(access_log=settings.access_log)
    run_server(create_app(settings), settings)  # returns after a graceful SIGTERM/SIGINT shutdown
    return 0


# -- keys -------------------------------------------------------------------------------------
def cmd_keys_create(args: argparse.Namespace, settings: Settings) -> int:
    key = operations.create_key(
        _open_store(settings),
        user=args.user,
        organization=args.org,
        project=args.project,
        kind=args.kind,
        name=args.name,
    )
    _emit(
        args,
        key,
        lambda: (
            f"{key['secret']}\n\nThis is the only time the secret is shown; store it now.\n"
            f"id {key['id']}  organization {key['organization']}  project {key['project']}"
        ),
    )
    return 0


def cmd_keys_list(args: argparse.Namespace, settings: Settings) -> int:
    keys = operations.list_keys(_open_store(settings))
    _emit(args, {"object": "list", "data": keys}, lambda: _table(keys, ["id", "kind", "redacted_value", "organization", "project", "revoked"]))
    return 0


def cmd_keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    key = operations.revoke_key(_open_store(settings), args.key_id)
    _emit(args, key, lambda: f"revoked {key['id']}")
    return 0


# -- organizations, projects, users -----------------------------------------------------------
def cmd_orgs_create(args: argparse.Namespace, settings: Settings) -> int:
    org = operations.create_organization(_open_store(settings), args.name, owner=args.owner)
    _emit(args, org, lambda: f"{org['id']}  {org['name']}  (default project {org['default_project']})")
    return 0


def cmd_orgs_list(args: argparse.Namespace, settings: Settings) -> int:
    orgs = operations.list_organizations(_open_store(settings))
    _emit(args, {"object": "list", "data": orgs}, lambda: _table(orgs, ["id", "name", "created_at"]))
    return 0


def cmd_projects_create(args: argparse.Namespace, settings: Settings) -> int:
    project = operations.create_project(_open_store(settings), args.org, args.name)
    _emit(args, project, lambda: f"{project.id}  {project.name}")
    return 0


def cmd_projects_list(args: argparse.Namespace, settings: Settings) -> int:
    projects = operations.list_projects(_open_store(settings), args.org)
    _emit(args, projects, lambda: _table([p.model_dump() for p in projects.data], ["id", "name", "status"]))
    return 0


def cmd_projects_archive(args: argparse.Namespace, settings: Settings) -> int:
    project = operations.archive_project(_open_store(settings), args.project_id)
    _emit(args, project, lambda: f"archived {project.id}")
    return 0


def cmd_users_create(args: argparse.Namespace, settings: Settings) -> int:
    sessions = _open_store(settings)
    user = operations.create_user(sessions, args.email, args.name)
    if args.org:
        operations.add_member(sessions, user["id"], args.org, args.role)  # type: ignore[arg-type]
        user["default_organization"] = args.org
    _emit(args, user, lambda: f"{user['id']}  {user['email']}")
    return 0


def cmd_users_add(args: argparse.Namespace, settings: Settings) -> int:
    member = operations.add_member(_open_store(settings), args.user, args.org, args.role)
    _emit(args, member, lambda: f"{member['user']} is {member['role']} of {member['organization']}")
    return 0


def cmd_users_list(args: argparse.Namespace, settings: Settings) -> int:
    users = operations.list_users(_open_store(settings))
    _emit(args, {"object": "list", "data": users}, lambda: _table(users, ["id", "email", "default_organization"]))
    return 0


# -- invites ----------------------------------------------------------------------------------
def cmd_invites_create(args: argparse.Namespace, settings: Settings) -> int:
    invite = operations.create_invite(_open_store(settings), args.email, args.role, args.org, args.project or [])
    _emit(args, invite, lambda: f"{invite.id}  {invite.email} invited as {invite.role} (pending)")
    return 0


def cmd_invites_list(args: argparse.Namespace, settings: Settings) -> int:
    found = operations.list_invites(_open_store(settings), args.org)
    _emit(args, found, lambda: _table([i.model_dump() for i in found.data], ["id", "email", "role", "status"]))
    return 0


def cmd_invites_accept(args: argparse.Namespace, settings: Settings) -> int:
    invite = operations.accept_invite(_open_store(settings), args.invite_id, args.user, args.name)
    _emit(args, invite, lambda: f"{invite.email} accepted {invite.id} and joined as {invite.role}")
    return 0


def cmd_invites_delete(args: argparse.Namespace, settings: Settings) -> int:
    deleted = operations.delete_invite(_open_store(settings), args.invite_id)
    _emit(args, deleted, lambda: f"deleted {deleted.id}")
    return 0


# -- usage ------------------------------------------------------------------------------------
def _when(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def cmd_usage(args: argparse.Namespace, settings: Settings) -> int:
    until = _when(args.until) if args.until else None
    since = _when(args.since) if args.since else datetime.now(timezone.utc) - timedelta(days=args.days)
    ledger = UsageLedger(_open_store(settings))
    totals = [t.__dict__ for t in ledger.totals(since=since, until=until, organization_id=args.org)]
    payload = {
        "object": "usage",
        "since": since.isoformat(),
        "until": until.isoformat() if until else None,
        "data": totals,
    }
    columns = ["organization_id", "project_id", "model", "requests", "prompt_tokens", "completion_tokens"]
    _emit(args, payload, lambda: _table(totals, columns))
    return 0


# -- rate limits and quotas -------------------------------------------------------------------
_LIMIT_FLAGS = {
    "rpm": "max_requests_per_1_minute",
    "tpm": "max_tokens_per_1_minute",
    "rpd": "max_requests_per_1_day",
    "concurrency": "max_concurrent_requests",
    "batch_tokens": "batch_1_day_max_input_tokens",
}


def _limit_value(text: str) -> int | None:
    if text.strip().lower() == "inherit":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("a whole number ≥ 0 (0: no limit) or 'inherit'") from None
    if value < 0:
        raise argparse.ArgumentTypeError("a whole number ≥ 0 (0: no limit) or 'inherit'")
    return value


def _limit_settings(settings: Settings) -> LimitSettings:
    return LimitSettings(_open_store(settings), settings, [settings.model_id])


def cmd_limits_set(args: argparse.Namespace, settings: Settings) -> int:
    values = {field: getattr(args, flag) for flag, field in _LIMIT_FLAGS.items() if hasattr(args, flag)}
    if not values:
        raise InvalidRequest("Give at least one of --rpm, --tpm, --rpd, --concurrency, --batch-tokens.")
    service = _limit_settings(settings)
    row = service.set_rate_limits(service.scope(organization=args.org, project=args.project), values, model=args.model)
    _emit(args, row, lambda: _table(row["effective"], ["model", *_LIMIT_FLAGS.values()]))  # type: ignore[arg-type]
    return 0


def cmd_limits_show(args: argparse.Namespace, settings: Settings) -> int:
    service = _limit_settings(settings)
    scope = service.scope(organization=args.org, project=args.project) if args.org or args.project else None
    shown = service.show_rate_limits(scope)
    rows = shown.get("effective", shown["configured"])
    columns = ["model", *_LIMIT_FLAGS.values()] if scope else ["scope", "scope_id", "model", "set_by", *_LIMIT_FLAGS.values()]
    _emit(args, shown, lambda: _table(rows, columns))  # type: ignore[arg-type]
    return 0


def cmd_quotas_set(args: argparse.Namespace, settings: Settings) -> int:
    if args.hard is None and args.soft is None:
        raise InvalidRequest("Give --hard and/or --soft (the value 'none' clears one; clearing both removes the quota).")
    service = _limit_settings(settings)
    quota = service.set_quota(
        service.scope(organization=args.org, project=args.project),
        unit=args.unit,
        period=args.period,
        hard_limit=args.hard,
        soft_limit=args.soft,
    )
    _emit(args, quota, lambda: _table([quota], list(quota)))
    return 0


def cmd_quotas_show(args: argparse.Namespace, settings: Settings) -> int:
    service = _limit_settings(settings)
    scope = service.scope(organization=args.org, project=args.project) if args.org or args.project else None
    quotas = service.show_quotas(scope)
    columns = ["scope", "scope_id", "unit", "period", "used", "soft_limit", "hard_limit", "period_end"]
    _emit(args, {"object": "list", "data": quotas}, lambda: _table(quotas, columns))
    return 0


def _checked_models_file(path: Path) -> Catalog:
    """The models file as `serve` and SIGHUP would load it (GGUFs present, vLLM importable), no weights loaded."""
    from modelhost.catalog import CatalogError, load_catalog
    from modelhost.catalog.build import preflight

    try:
        catalog = load_catalog(path)
        preflight(path, catalog)
    except CatalogError as exc:
        raise InvalidRequest(str(exc)) from exc
    return catalog


def cmd_models_check(args: argparse.Namespace, settings: Settings) -> int:
    path = Path(args.file) if args.file else settings.models_file
    if path is None:
        raise InvalidRequest("give the models file to check, or set MODELHOST_MODELS_FILE")
    catalog = _checked_models_file(path)
    rows = [
        {
            "id": spec.id,
            "aliases": ",".join(spec.aliases),
            "backend": spec.backend.type,
            "capabilities": ",".join(sorted(spec.features)),
            "context_length": spec.context_length,
        }
        for spec in catalog.models
    ]
    payload = {
        "object": "list",
        "data": rows,
        "organizations": {oid: a.models for oid, a in catalog.organizations.items()},
        "projects": {pid: a.models for pid, a in catalog.projects.items()},
    }
    _emit(args, payload, lambda: _table(rows, ["id", "aliases", "backend", "capabilities", "context_length"]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON object")
    parser = argparse.ArgumentParser(prog="modelhost", description="The OpenAI API platform, self-hosted.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", parents=[common], help="start the API server")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--model", help="GGUF file to serve instead of the bundled model")
    serve.set_defaults(func=cmd_serve)

    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="action", required=True)
    create = keys.add_parser("create", parents=[common], help="create a key (the secret is printed once)")
    create.add_argument("--user", help="user id or email (default: the first owner)")
    create.add_argument("--org", help="organization id or name (default: the user's default)")
    create.add_argument("--project", help="project id (default: the organization's default project)")
    create.add_argument("--kind", choices=[KeyKind.PROJECT, KeyKind.USER, KeyKind.ADMIN], default=KeyKind.PROJECT,
                        help="project key (sk-proj-…, bound to one project), user key (sk-…, any of the user's "
                        "organizations) or admin key (sk-admin-…, the Administration API of one organization; owners only)")
    create.add_argument("--name", default="default")
    create.set_defaults(func=cmd_keys_create)
    keys.add_parser("list", parents=[common], help="list keys (redacted)").set_defaults(func=cmd_keys_list)
    revoke = keys.add_parser("revoke", parents=[common], help="revoke a key")
    revoke.add_argument("key_id")
    revoke.set_defaults(func=cmd_keys_revoke)

    orgs = sub.add_parser("orgs", help="organizations").add_subparsers(dest="action", required=True)
    org_create = orgs.add_parser("create", parents=[common])
    org_create.add_argument("name")
    org_create.add_argument("--owner", help="user id or email (default: the first owner)")
    org_create.set_defaults(func=cmd_orgs_create)
    orgs.add_parser("list", parents=[common]).set_defaults(func=cmd_orgs_list)

    projects = sub.add_parser("projects", help="projects").add_subparsers(dest="action", required=True)
    p_create = projects.add_parser("create", parents=[common])
    p_create.add_argument("name")
    p_create.add_argument("--org", required=True)
    p_create.set_defaults(func=cmd_projects_create)
    p_list = projects.add_parser("list", parents=[common])
    p_list.add_argument("--org")
    p_list.set_defaults(func=cmd_projects_list)
    p_archive = projects.add_parser("archive", parents=[common])
    p_archive.add_argument("project_id")
    p_archive.set_defaults(func=cmd_projects_archive)

    users = sub.add_parser("users", help="users").add_subparsers(dest="action", required=True)
    u_create = users.add_parser("create", parents=[common])
    u_create.add_argument("email")
    u_create.add_argument("--name")
    u_create.add_argument("--org", help="also make the user a member of this organization")
    u_create.add_argument("--role", choices=OrgRole.ALL, default=OrgRole.READER)
    u_create.set_defaults(func=cmd_users_create)
    u_add = users.add_parser("add", parents=[common], help="add a user to an organization")
    u_add.add_argument("user")
    u_add.add_argument("--org", required=True)
    u_add.add_argument("--role", choices=OrgRole.ALL, default=OrgRole.READER)
    u_add.set_defaults(func=cmd_users_add)
    users.add_parser("list", parents=[common]).set_defaults(func=cmd_users_list)

    invites = sub.add_parser("invites", help="invitations into an organization").add_subparsers(dest="action", required=True)
    i_create = invites.add_parser("create", parents=[common], help="invite an email address")
    i_create.add_argument("email")
    i_create.add_argument("--org", help="organization id or name (default: the first owner's)")
    i_create.add_argument("--role", choices=OrgRole.ALL, default=OrgRole.READER)
    i_create.add_argument("--project", action="append", metavar="PROJECT_ID[:ROLE]",
                          help="also join this project on acceptance (role member or owner); repeatable")
    i_create.set_defaults(func=cmd_invites_create)
    i_list = invites.add_parser("list", parents=[common], help="list invites and their status")
    i_list.add_argument("--org", help="organization id or name (default: the first owner's)")
    i_list.set_defaults(func=cmd_invites_list)
    i_accept = invites.add_parser("accept", parents=[common], help="accept an invite on behalf of the invited user")
    i_accept.add_argument("invite_id")
    i_accept.add_argument("--user", required=True, metavar="EMAIL", help="the invited email (confirms who accepts)")
    i_accept.add_argument("--name", help="name of the user, if they are new")
    i_accept.set_defaults(func=cmd_invites_accept)
    i_delete = invites.add_parser("delete", parents=[common], help="withdraw a pending invite")
    i_delete.add_argument("invite_id")
    i_delete.set_defaults(func=cmd_invites_delete)

    usage = sub.add_parser("usage", parents=[common], help="token totals by organization, project and model")
    usage.add_argument("--since", help="ISO time (default: --days ago)")
    usage.add_argument("--until", help="ISO time (default: now)")
    usage.add_argument("--days", type=float, default=30.0)
    usage.add_argument("--org", help="only this organization")
    usage.set_defaults(func=cmd_usage)

    limits = sub.add_parser("limits", help="rate limits per organization, project and model").add_subparsers(
        dest="action", required=True
    )
    l_set = limits.add_parser("set", parents=[common], help="set rate limits (0: no limit; 'inherit': use the parent's)")
    l_show = limits.add_parser("show", parents=[common], help="what is set, and what each model's limits resolve to")
    quotas = sub.add_parser("quotas", help="spend budgets per organization and project").add_subparsers(
        dest="action", required=True
    )
    q_set = quotas.add_parser("set", parents=[common], help="set a budget per period (amounts: tokens or dollars)")
    q_show = quotas.add_parser("show", parents=[common], help="budgets with what was spent this period")
    for command in (l_set, l_show, q_set, q_show):
        where = command.add_mutually_exclusive_group(required=command in (l_set, q_set))
        where.add_argument("--org", help="organization id or name")
        where.add_argument("--project", help="project id")
    l_set.add_argument("--model", default="*", help="one model id (default: all models, '*')")
    l_set.add_argument("--rpm", type=_limit_value, default=argparse.SUPPRESS, help="requests per minute")
    l_set.add_argument("--tpm", type=_limit_value, default=argparse.SUPPRESS, help="tokens per minute")
    l_set.add_argument("--rpd", type=_limit_value, default=argparse.SUPPRESS, help="requests per day")
    l_set.add_argument("--concurrency", type=_limit_value, default=argparse.SUPPRESS,
                       help="requests one key may have running at once (all models only)")
    l_set.add_argument("--batch-tokens", type=_limit_value, default=argparse.SUPPRESS,
                       help="input tokens unfinished batches may hold enqueued per model")
    l_set.set_defaults(func=cmd_limits_set)
    l_show.set_defaults(func=cmd_limits_show)
    q_set.add_argument("--unit", choices=["tokens", "usd"], default="tokens")
    q_set.add_argument("--period", choices=["day", "week", "month"], default="month", help="UTC calendar period")
    q_set.add_argument("--hard", help="refuse requests past this amount ('none' clears it)")
    q_set.add_argument("--soft", help="log a warning past this amount ('none' clears it)")
    q_set.set_defaults(func=cmd_quotas_set)
    q_show.set_defaults(func=cmd_quotas_show)
    models = sub.add_parser("models", help="the models file (MODELHOST_MODELS_FILE)").add_subparsers(dest="action", required=True)
    m_check = models.add_parser("check", parents=[common], help="check a models file before serving or reloading it (SIGHUP)")
    m_check.add_argument("file", nargs="?", help="the TOML file (default: MODELHOST_MODELS_FILE)")
    m_check.set_defaults(func=cmd_models_check)
    return parser


def _unstorable_argument(args: argparse.Namespace) -> str | None:
    """Why an argument the store would keep or look up cannot be stored as given, or None.

    Bytes that are not UTF-8 reach Python as unpaired surrogates (``\\udcff``), which no store can
    encode, and PostgreSQL cannot hold NUL: both were tracebacks. `serve` and `models` take paths
    and addresses, which may be any bytes.
    """
    if args.command in ("serve", "models"):
        return None
    for name, value in vars(args).items():
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, str):
                continue
            try:
                stored_text(item)
            except PydanticCustomError as exc:
                why = "is not valid UTF-8" if exc.type == "invalid_unicode" else "cannot hold a NUL character"
                return f"argument {name} {why}: {item!r}"
    return None


def _fail(args: argparse.Namespace, error: APIError) -> int:
    if getattr(args, "json", False):
        print(json.dumps(error.body()))
    else:
        print(f"error: {error.message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    unstorable = _unstorable_argument(args)
    if unstorable is not None:
        return _fail(args, InvalidRequest(unstorable))
    settings = Settings()
    try:
        return int(args.func(args, settings))
    except APIError as exc:
        return _fail(args, exc)
