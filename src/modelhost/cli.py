"""The `modelhost` command: serve, and administer keys, organizations, projects, users and usage.

Every command accepts ``--json`` and then prints exactly one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone

from sqlalchemy.orm import Session, sessionmaker

from modelhost import accounts
from modelhost.config import Settings
from modelhost.store import UsageLedger, migrate, open_engine, session_factory


def _migrated(settings: Settings) -> sessionmaker[Session]:
    engine = open_engine(settings.resolved_database_url())
    migrate(engine)
    return session_factory(engine)


def _open_store(settings: Settings) -> sessionmaker[Session]:
    """The store, migrated, with its first organization (created on first use)."""
    sessions = _migrated(settings)
    accounts.bootstrap(sessions)
    return sessions


def _emit(args: argparse.Namespace, payload: dict[str, object], human: Callable[[], str]) -> None:
    if args.json:
        print(json.dumps(payload, default=str))
    else:
        print(human())


def _table(rows: list[dict[str, object]], columns: Sequence[str]) -> str:
    if not rows:
        return "(none)"
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


# -- serve ------------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from modelhost.api import create_app

    if args.host:
        settings.host = args.host
    if args.port is not None:
        settings.port = args.port
    if args.model:
        settings.model_path = args.model
    first = accounts.bootstrap(_migrated(settings))
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
        print(f"modelhost serving {settings.model_id} on http://{settings.host}:{settings.port}/v1", file=sys.stderr)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        timeout_keep_alive=5,
        h11_max_incomplete_event_size=64 * 1024,
    )
    return 0


# -- keys -------------------------------------------------------------------------------------
def cmd_keys_create(args: argparse.Namespace, settings: Settings) -> int:
    key = accounts.create_key(
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
    keys = accounts.list_keys(_open_store(settings))
    _emit(args, {"object": "list", "data": keys}, lambda: _table(keys, ["id", "kind", "redacted_value", "organization", "project", "revoked"]))
    return 0


def cmd_keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    key = accounts.revoke_key(_open_store(settings), args.key_id)
    _emit(args, key, lambda: f"revoked {key['id']}")
    return 0


# -- organizations, projects, users -----------------------------------------------------------
def cmd_orgs_create(args: argparse.Namespace, settings: Settings) -> int:
    org = accounts.create_organization(_open_store(settings), args.name, owner=args.owner)
    _emit(args, org, lambda: f"{org['id']}  {org['name']}  (default project {org['default_project']})")
    return 0


def cmd_orgs_list(args: argparse.Namespace, settings: Settings) -> int:
    orgs = accounts.list_organizations(_open_store(settings))
    _emit(args, {"object": "list", "data": orgs}, lambda: _table(orgs, ["id", "name", "created_at"]))
    return 0


def cmd_projects_create(args: argparse.Namespace, settings: Settings) -> int:
    project = accounts.create_project(_open_store(settings), args.org, args.name)
    _emit(args, project, lambda: f"{project['id']}  {project['name']}")
    return 0


def cmd_projects_list(args: argparse.Namespace, settings: Settings) -> int:
    projects = accounts.list_projects(_open_store(settings), args.org)
    _emit(args, {"object": "list", "data": projects}, lambda: _table(projects, ["id", "name", "organization", "status"]))
    return 0


def cmd_projects_archive(args: argparse.Namespace, settings: Settings) -> int:
    project = accounts.archive_project(_open_store(settings), args.project_id)
    _emit(args, project, lambda: f"archived {project['id']}")
    return 0


def cmd_users_create(args: argparse.Namespace, settings: Settings) -> int:
    sessions = _open_store(settings)
    user = accounts.create_user(sessions, args.email, args.name)
    if args.org:
        accounts.add_member(sessions, user["id"], args.org, args.role)  # type: ignore[arg-type]
        user["default_organization"] = args.org
    _emit(args, user, lambda: f"{user['id']}  {user['email']}")
    return 0


def cmd_users_add(args: argparse.Namespace, settings: Settings) -> int:
    member = accounts.add_member(_open_store(settings), args.user, args.org, args.role)
    _emit(args, member, lambda: f"{member['user']} is {member['role']} of {member['organization']}")
    return 0


def cmd_users_list(args: argparse.Namespace, settings: Settings) -> int:
    users = accounts.list_users(_open_store(settings))
    _emit(args, {"object": "list", "data": users}, lambda: _table(users, ["id", "email", "default_organization"]))
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
    create.add_argument("--kind", choices=["project", "user"], default="project",
                        help="project key (sk-proj-…, bound to one project) or user key (sk-…, any of the user's organizations)")
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
    u_create.add_argument("--role", choices=["owner", "reader"], default="reader")
    u_create.set_defaults(func=cmd_users_create)
    u_add = users.add_parser("add", parents=[common], help="add a user to an organization")
    u_add.add_argument("user")
    u_add.add_argument("--org", required=True)
    u_add.add_argument("--role", choices=["owner", "reader"], default="reader")
    u_add.set_defaults(func=cmd_users_add)
    users.add_parser("list", parents=[common]).set_defaults(func=cmd_users_list)

    usage = sub.add_parser("usage", parents=[common], help="token totals by organization, project and model")
    usage.add_argument("--since", help="ISO time (default: --days ago)")
    usage.add_argument("--until", help="ISO time (default: now)")
    usage.add_argument("--days", type=float, default=30.0)
    usage.add_argument("--org", help="only this organization")
    usage.set_defaults(func=cmd_usage)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    settings = Settings()
    try:
        return int(args.func(args, settings))
    except accounts.AccountError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"error": {"message": str(exc)}}))
        else:
            print(f"error: {exc}", file=sys.stderr)
        return 2
