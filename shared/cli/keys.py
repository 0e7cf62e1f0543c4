"""``ner keys create|revoke|list``, and the admin key that ``ner up`` makes for local use."""

from __future__ import annotations

import argparse
import sys

from sqlalchemy.exc import SQLAlchemyError

from shared.core.config import Settings
from shared.core.db import get_sessionmaker
from shared.core.tables import ApiKeyScope
from shared.keys import service as keys

LOCAL_ADMIN_NAME = "local admin (ner up)"
NAME_MAX = 200


def _ensure_schema(settings: Settings) -> None:
    # The default SQLite file may not exist yet on a fresh machine; a server database is migrated
    # by the operator (`ner db upgrade`), never behind their back.
    if settings.is_sqlite:
        from shared.core import migrate

        migrate.upgrade(settings.database_url)


def cmd_create(args: argparse.Namespace, settings: Settings) -> int:
    """Print a new key once (stdout: the key alone, so scripts can capture it)."""
    if len(args.name) > NAME_MAX:
        print(f"ner keys create: --name is longer than {NAME_MAX} characters", file=sys.stderr)
        return 2
    _ensure_schema(settings)
    with get_sessionmaker()() as session:
        created = keys.create_key(
            session=session, scope=args.scope, name=args.name, rate_limit_per_minute=args.rate_limit
        )
    limit = (
        f"{created.rate_limit_per_minute} requests a minute"
        if created.rate_limit_per_minute
        else f"the default rate limit ({settings.rate_limit_per_minute} a minute)"
    )
    print(
        f"created API key {created.id} ({created.prefix}, scope {created.scope.value}, {limit}); "
        "it is shown only now:",
        file=sys.stderr,
    )
    print(created.plaintext)
    return 0


def cmd_revoke(args: argparse.Namespace, settings: Settings) -> int:
    _ensure_schema(settings)
    with get_sessionmaker()() as session:
        try:
            row = keys.revoke_key(session=session, ident=args.key)
        except keys.KeyNotFound as exc:
            print(f"ner keys revoke: {exc}", file=sys.stderr)
            return 1
        print(f"revoked API key {row.id} ({row.prefix}, scope {row.scope.value})")
    return 0


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    _ensure_schema(settings)
    with get_sessionmaker()() as session:
        rows = keys.list_keys(session=session)
        header = f"{'ID':>5}  {'PREFIX':<12}  {'SCOPE':<7}  {'RATE/MIN':>8}  {'CREATED':<20}  {'REVOKED':<20}"
        print(f"{header}  NAME")
        for row in rows:
            revoked = row.revoked_at.strftime("%Y-%m-%d %H:%M:%S") if row.revoked_at else "-"
            created = row.created_at.strftime("%Y-%m-%d %H:%M:%S")
            scope = row.scope.value
            rate = str(row.rate_limit_per_minute or "default")
            columns = f"{row.id:>5}  {row.prefix:<12}  {scope:<7}  {rate:>8}  {created:<20}  {revoked:<20}"
            print(f"{columns}  {row.name}")
    return 0


def _guarded(handler):  # type: ignore[no-untyped-def]
    """A database that is down or not migrated is one line, not a traceback."""

    def run(args: argparse.Namespace, settings: Settings) -> int:
        try:
            return handler(args, settings)
        except SQLAlchemyError as exc:
            reason = str(exc.orig if getattr(exc, "orig", None) else exc).splitlines()[0]
            hint = "is it running and migrated (`ner db upgrade`)?"
            print(f"ner keys: database error ({reason}); {hint}", file=sys.stderr)
            return 1

    return run


def _rate_limit(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value[:40]!r}") from None
    if not 1 <= number <= keys.MAX_RATE_LIMIT:
        raise argparse.ArgumentTypeError(f"must be 1 to {keys.MAX_RATE_LIMIT} requests a minute")
    return number


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``ner keys``."""
    parser = subparsers.add_parser("keys", help="create, revoke and list API keys")
    sub = parser.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    scopes = [scope.value for scope in ApiKeyScope]

    create = sub.add_parser("create", help="create a key and print it (once)")
    create.add_argument("--scope", required=True, choices=scopes, help="what the key may do")
    create.add_argument("--name", default="", help="who or what the key is for")
    create.add_argument(
        "--rate-limit",
        type=_rate_limit,
        default=None,
        metavar="N",
        help="requests a minute on /predict* and job submission (default: NER_RATE_LIMIT_PER_MINUTE)",
    )
    create.set_defaults(handler=_guarded(cmd_create))

    revoke = sub.add_parser("revoke", help="revoke a key by its prefix (ner_xxxxxxxx) or id")
    revoke.add_argument("key", metavar="PREFIX_OR_ID")
    revoke.set_defaults(handler=_guarded(cmd_revoke))

    listing = sub.add_parser("list", help="list keys (prefixes only; keys are stored hashed)")
    listing.set_defaults(handler=_guarded(cmd_list))


def prepare_local_stack(*, settings: Settings, env: dict[str, str]) -> None:
    """For ``ner up``: a fresh metrics folder and, with auth on, an admin key printed for local use.

    The key of the previous ``ner up`` is revoked, so local keys do not pile up.
    """
    from shared.core.metrics import MULTIPROC_ENV, prepare_dir

    # The children (gateway, workers) count in one fresh folder; the gateway's /metrics adds it up.
    env[MULTIPROC_ENV] = str(prepare_dir(settings, clean=True))
    if settings.auth == "off":
        return
    with get_sessionmaker()() as session:
        keys.revoke_named(session=session, name=LOCAL_ADMIN_NAME)
        created = keys.create_key(session=session, scope=ApiKeyScope.admin, name=LOCAL_ADMIN_NAME)
    print(
        f"ner up: admin API key for this local stack (send it as X-API-Key; revoked by the next "
        f"`ner up`):\n\n    {created.plaintext}\n\n"
        f"Try it:\n\n    {try_it_curl(settings, created.plaintext)}\n",
        flush=True,
    )


def try_it_curl(settings: Settings, key: str) -> str:
    """A ready-to-paste request to this stack's /predict/ with ``key``."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    body = '{"text": "Google was founded by Larry Page and Sergey Brin in California."}'
    return (
        f"curl -s http://{host}:{settings.port}/predict/ -H 'X-API-Key: {key}' "
        f"-H 'Content-Type: application/json' -d '{body}'"
    )
