"""``flowmetrics api-key create | revoke | list``: API keys in ``api_keys``.

These write, so they connect with ``FLOW_DATABASE_URL`` (the API's own role
cannot). The token is printed once, by ``create``, and never stored.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, TextIO

import psycopg

from api.auth import IssuedKey, issue_key
from infra.db import libpq_dsn

NAME_MAX = 200


@dataclass(frozen=True)
class KeyRecord:
    key_id: str
    name: str
    created_at: datetime
    revoked_at: datetime | None


def create_api_key(conn: psycopg.Connection[Any], name: str) -> IssuedKey:
    if not name.strip() or len(name) > NAME_MAX:
        raise ValueError(f"a key name is 1 to {NAME_MAX} characters")
    key = issue_key(name.strip())
    conn.execute(
        "insert into api_keys (key_id, name, key_hash) values (%s, %s, %s)",
        (key.key_id, key.name, key.key_hash),
    )
    return key


def revoke_api_key(conn: psycopg.Connection[Any], key_id: str) -> bool:
    """True when an active key was revoked; revoking twice keeps the first time."""
    cur = conn.execute(
        "update api_keys set revoked_at = now() where key_id = %s and revoked_at is null",
        (key_id,),
    )
    return cur.rowcount == 1


def list_api_keys(conn: psycopg.Connection[Any]) -> list[KeyRecord]:
    rows = conn.execute(
        "select key_id, name, created_at, revoked_at from api_keys order by created_at, key_id"
    ).fetchall()
    return [KeyRecord(*row) for row in rows]


def add_api_key_parser(sub: Any) -> None:
    """Registers ``api-key`` on the CLI's subparsers."""
    parser = sub.add_parser("api-key", help="create, revoke or list API keys")
    actions = parser.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="issue a key; its token is printed once")
    create.add_argument("name", help="who or what uses the key")
    revoke = actions.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("key_id")
    listing = actions.add_parser("list", help="every key, revoked ones too (never a token)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")


def run_api_key_command(
    database_url: str, args: argparse.Namespace, out: TextIO = sys.stdout
) -> int:
    """Runs one ``api-key`` action; returns the process exit code."""
    if not database_url:
        print("flowmetrics api-key: FLOW_DATABASE_URL is required", file=sys.stderr)
        return 2
    try:
        with psycopg.connect(libpq_dsn(database_url)) as conn:
            return _run(conn, args, out)
    except psycopg.errors.UndefinedTable:
        print(
            "flowmetrics api-key: no api_keys table; run `flowmetrics migrate` first",
            file=sys.stderr,
        )
        return 2
    except (psycopg.Error, ValueError) as exc:
        print(f"flowmetrics api-key: {exc}", file=sys.stderr)
        return 1


def _run(conn: psycopg.Connection[Any], args: argparse.Namespace, out: TextIO) -> int:
    if args.action == "create":
        key = create_api_key(conn, args.name)
        print(f"key id: {key.key_id}\nname:   {key.name}\ntoken:  {key.token}", file=out)
        print("The token is shown only now; store it as a secret.", file=sys.stderr)
        return 0
    if args.action == "revoke":
        if revoke_api_key(conn, args.key_id):
            print(f"revoked {args.key_id}", file=out)
            return 0
        print(f"flowmetrics api-key: no active key {args.key_id!r}", file=sys.stderr)
        return 1
    for record in list_api_keys(conn):
        if args.json:
            print(json.dumps(asdict(record), default=str), file=out)
        else:
            state = f"revoked {record.revoked_at:%Y-%m-%d %H:%M}" if record.revoked_at else "active"
            print(
                f"{record.key_id}  {record.created_at:%Y-%m-%d %H:%M}  {state:<24}  {record.name}",
                file=out,
            )
    return 0
