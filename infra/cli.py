"""The ``flowmetrics`` command line.

flowmetrics up        collectors + processor + API in one process (embedded
                      broker/PostgreSQL when FLOW_KAFKA_BOOTSTRAP /
                      FLOW_DATABASE_URL are unset)
flowmetrics demo      ``up`` + a synthetic dataset through the real webhooks,
                      then the headline numbers (DEMO_EXIT=1: exit after)
flowmetrics migrate   schema and topics
flowmetrics collect | process | serve   one service each, for production
flowmetrics api-key create NAME | revoke KEY_ID | list   the API's bearer keys
flowmetrics backfill jira --project KEY --since DATE | github --repo OWNER/NAME --since DATE
                      history from the REST APIs (see docs/backfill.md)
flowmetrics reconcile catch every configured scope up from its cursor (for a schedule)
flowmetrics replay | rebuild | dlq list | dlq redrive   recover from the kept raw
                      payloads, the stored events, the dead-letter topic
                      (docs/operations-durability.md)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import structlog

from collectors.backfill.command import add_backfill_parsers, run_backfill_command
from infra.api_keys_cli import add_api_key_parser, run_api_key_command
from infra.db import migrate
from infra.durability_cli import add_durability_parsers, run_durability_command
from infra.kafka import BrokerUnavailable, ensure_topics
from infra.logging import configure_logging
from infra.services import (
    Endpoints,
    run_api,
    run_collectors,
    run_processor,
    topics_for,
)
from infra.settings import Settings
from infra.topic_config import topic_specs

log = structlog.get_logger("cli")

Service = Callable[[Settings, Endpoints, asyncio.Event], Awaitable[None]]


@contextmanager
def backends(settings: Settings, *, embedded_ok: bool = True) -> Iterator[Endpoints]:
    """The configured broker and database, or embedded ones started for this run."""
    with ExitStack() as stack:
        database_url = settings.database_url
        bootstrap = settings.kafka_bootstrap
        if (not database_url or not bootstrap) and not embedded_ok:
            raise SystemExit("FLOW_DATABASE_URL and FLOW_KAFKA_BOOTSTRAP are required here")
        if not database_url or not bootstrap:
            from infra.embedded import EmbeddedBroker, EmbeddedPostgres

            if not database_url:
                pg = stack.enter_context(EmbeddedPostgres(settings.home))
                database_url = pg.dsn
                log.info("embedded_postgres_started", dsn=database_url, data=str(pg.data_dir))
            if not bootstrap:
                broker = stack.enter_context(EmbeddedBroker(settings.home / "logs"))
                bootstrap = broker.bootstrap
                settings.kafka_idempotent_producer = False
                log.info("embedded_broker_started", bootstrap=bootstrap)
        yield Endpoints(database_url=database_url, kafka_bootstrap=bootstrap)


async def prepare(settings: Settings, ends: Endpoints, *, broker_optional: bool = False) -> None:
    await asyncio.to_thread(migrate, ends.database_url)
    topics = topics_for(settings)
    try:
        await ensure_topics(ends.kafka_bootstrap, topics.all(), specs=topic_specs(topics),
                            attempts=3 if broker_optional else 30)  # fmt: skip
    except BrokerUnavailable as exc:
        if not broker_optional:
            raise
        # The collectors accept into their spool and create the topics once it answers.
        log.warning("broker_unavailable_at_start", error=str(exc))


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)


async def run_services(
    settings: Settings,
    ends: Endpoints,
    services: list[Service],
    stop: asyncio.Event,
    after_start: Callable[[], Coroutine[Any, Any, None]] | None = None,
) -> None:
    tasks: list[asyncio.Task[None]] = [
        asyncio.create_task(_as_coroutine(s(settings, ends, stop))) for s in services
    ]
    try:
        if after_start is not None:
            helper = asyncio.create_task(after_start())
            done, _ = await asyncio.wait([helper, *tasks], return_when=asyncio.FIRST_COMPLETED)
            if helper not in done:
                stop.set()
            else:
                helper.result()
        await asyncio.wait(
            [*tasks, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        stop.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                log.error("service_failed", error=repr(result))


async def _as_coroutine(awaitable: Awaitable[None]) -> None:
    await awaitable


def _run(
    settings: Settings,
    services: list[Service],
    *,
    embedded_ok: bool = True,
    broker_optional: bool = False,
    after_start: Callable[[Settings, Endpoints, asyncio.Event], Awaitable[None]] | None = None,
) -> None:
    with backends(settings, embedded_ok=embedded_ok) as ends:

        async def main() -> None:
            stop = asyncio.Event()
            _stop_on_signals(stop)
            await prepare(settings, ends, broker_optional=broker_optional)
            hook = None
            if after_start is not None:

                async def hook() -> None:
                    await after_start(settings, ends, stop)

            await run_services(settings, ends, services, stop, hook)

        asyncio.run(main())


def cmd_migrate(settings: Settings) -> None:
    with backends(settings, embedded_ok=False) as ends:
        asyncio.run(prepare(settings, ends))
    print("schema and topics are up to date")


def cmd_demo(settings: Settings) -> None:
    from infra.demo import run_demo

    if not settings.database_url:
        # A fresh embedded database each run, so the numbers are the dataset's alone.
        settings.home = settings.home / "demo"
        shutil.rmtree(settings.home / "pgdata", ignore_errors=True)

    exit_after = os.environ.get("DEMO_EXIT", "") not in ("", "0")

    async def after_start(s: Settings, ends: Endpoints, stop: asyncio.Event) -> None:
        await run_demo(s, ends)
        if exit_after:
            stop.set()
        else:
            print(
                f"\nAPI: http://{s.api_host}:{s.api_port}/docs  "
                f"collectors: http://{s.collector_host}:{s.collector_port}  (Ctrl-C to stop)",
                flush=True,
            )

    _run(settings, [run_collectors, run_processor, run_api], after_start=after_start)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowmetrics",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("up", "run collectors, processor and API in one process"),
        ("demo", "run everything and feed it a synthetic dataset"),
        ("migrate", "apply database migrations and create topics"),
        ("collect", "run the webhook collectors"),
        ("process", "run one processor (a consumer-group member)"),
        ("serve", "run the read-only API"),
    ):
        sub.add_parser(name, help=text)
    add_api_key_parser(sub)
    add_backfill_parsers(sub)
    add_durability_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        # The demo is a development run, but still signs its webhooks.
        os.environ.setdefault("FLOW_ENV", "development")
        os.environ.setdefault("FLOW_JIRA_WEBHOOK_SECRET", secrets.token_hex(16))
        os.environ.setdefault("FLOW_GITHUB_WEBHOOK_SECRET", secrets.token_hex(16))
    try:
        # These serve nothing, so the webhook secrets a server needs are not asked for.
        serves_nothing = args.command in ("api-key", "replay", "rebuild", "dlq")
        settings = Settings(allow_unsigned=True) if serves_nothing else Settings()
    except ValueError as exc:
        print(f"flowmetrics: invalid settings: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    configure_logging(settings.log_level, json=settings.log_json, secrets=settings.secret_values())
    if args.command == "api-key":
        raise SystemExit(run_api_key_command(settings.database_url, args))
    if args.command in ("replay", "rebuild", "dlq"):
        raise SystemExit(run_durability_command(settings, args))
    if args.command in ("backfill", "reconcile"):
        with backends(settings, embedded_ok=False) as ends:
            asyncio.run(prepare(settings, ends))
            raise SystemExit(
                run_backfill_command(
                    settings,
                    args,
                    database_url=ends.database_url,
                    kafka_bootstrap=ends.kafka_bootstrap,
                )
            )
    commands: dict[str, Callable[[], Any]] = {
        "up": lambda: _run(settings, [run_collectors, run_processor, run_api]),
        "demo": lambda: cmd_demo(settings),
        "migrate": lambda: cmd_migrate(settings),
        "collect": lambda: _run(
            settings, [run_collectors], embedded_ok=False, broker_optional=True
        ),
        "process": lambda: _run(settings, [run_processor], embedded_ok=False),
        "serve": lambda: _run(settings, [run_api], embedded_ok=False),
    }
    commands[args.command]()


if __name__ == "__main__":
    main()
