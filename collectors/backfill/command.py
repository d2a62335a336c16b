"""``flowmetrics backfill`` and ``flowmetrics reconcile``: arguments and wiring.

This module is the backfill's composition root (like ``infra.services`` for
the services): it builds clients, readers, the publisher and the cursor store
from :class:`~infra.settings.Settings`. Usage: :data:`USAGE`.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import structlog
from aiokafka.errors import KafkaError

from collectors.backfill.auth import github_auth, jira_auth
from collectors.backfill.cursors import CursorStore
from collectors.backfill.exceptions import BackfillConfigError, BackfillError, ScopeBusy
from collectors.backfill.github import KINDS, github_readers
from collectors.backfill.http import ApiClient, RetryPolicy
from collectors.backfill.jira import JiraApi, JiraReader
from collectors.backfill.progress import Progress, make_progress
from collectors.backfill.reader import ScopeReader
from collectors.backfill.runner import RunOptions, ScopeOutcome, run_scope
from collectors.exceptions import CollectorError
from collectors.publisher import KafkaPublisher
from infra.kafka import BrokerUnavailable, make_producer
from infra.services import github_mapping
from infra.settings import Settings
from processor.stages import load_stage_config
from schemas.topics import Topics

log = structlog.get_logger("backfill")

USAGE = """\
    flowmetrics backfill jira   --project KEY [--project KEY2 ...] --since DATE
    flowmetrics backfill github --repo OWNER/NAME [--repo ...] --since DATE
                                [--only issues,commits,deployments,workflow_runs]
    flowmetrics reconcile       [--jira-project KEY ...] [--github-repo OWNER/NAME ...]
                                [--every SECONDS]

--since is a date (2024-01-31, UTC midnight), an ISO-8601 time, or <N>d (N days
ago). A backfill continues a scope's cursor when the cursor already covers
--since (--restart ignores it). Reconcile always continues from the cursors (a
scope without one starts FLOW_RECONCILE_FIRST_DAYS ago), for the scopes given
or else those of FLOW_RECONCILE_JIRA_PROJECTS / FLOW_RECONCILE_GITHUB_REPOS.
Credentials and tuning: FLOW_JIRA_*, FLOW_GITHUB_*, FLOW_BACKFILL_* (docs/backfill.md).
"""

_PROJECT = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,254}$")
_REPO = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_DAYS_AGO = re.compile(r"^(\d+)d$")


# -- arguments ----------------------------------------------------------------------


def parse_since(value: str, *, now: datetime | None = None) -> datetime:
    """``2024-01-31``, ``2024-01-31T10:00:00+02:00`` or ``30d``; naive means UTC."""
    value = value.strip()
    days = _DAYS_AGO.match(value)
    if days:
        return (now or datetime.now(UTC)) - timedelta(days=int(days.group(1)))
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a date (YYYY-MM-DD), an ISO time or <N>d"
        ) from exc
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _since(value: str) -> datetime:
    return parse_since(value)


def _project(value: str) -> str:
    if not _PROJECT.match(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a Jira project key")
    return value.upper()


def _repo(value: str) -> str:
    if not _REPO.match(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not OWNER/NAME")
    return value


def _kinds(value: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in value.split(",") if k.strip())
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"--only takes a comma list of {', '.join(KINDS)}")
    return kinds


def add_backfill_parsers(sub: Any) -> None:
    """Add ``backfill`` and ``reconcile`` to the ``flowmetrics`` subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--progress",
        choices=("auto", "bar", "log"),
        default="auto",
        help="a progress bar (bar), log lines (log), or bar on a terminal",
    )
    backfill = sub.add_parser(
        "backfill",
        help="read history from the Jira or GitHub REST API",
        description=USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sources = backfill.add_subparsers(dest="source", required=True)
    jira = sources.add_parser("jira", parents=[common], help="Jira issues and changelogs")
    jira.add_argument(
        "--project",
        action="append",
        required=True,
        type=_project,
        metavar="KEY",
        help="project key (repeatable)",
    )
    github = sources.add_parser("github", parents=[common], help="GitHub repositories")
    github.add_argument(
        "--repo",
        action="append",
        required=True,
        type=_repo,
        metavar="OWNER/NAME",
        help="repository (repeatable)",
    )
    github.add_argument(
        "--only", type=_kinds, default=KINDS, help=f"resources to read (default: {','.join(KINDS)})"
    )
    for parser in (jira, github):
        parser.add_argument(
            "--since",
            required=True,
            type=_since,
            metavar="DATE",
            help="changes updated since: YYYY-MM-DD, ISO time or <N>d",
        )
        parser.add_argument(
            "--restart", action="store_true", help="ignore the stored cursor and read from --since"
        )
    reconcile = sub.add_parser(
        "reconcile",
        parents=[common],
        help="catch up every configured scope from its cursor (for a schedule)",
    )
    reconcile.add_argument("--jira-project", action="append", type=_project, metavar="KEY")
    reconcile.add_argument("--github-repo", action="append", type=_repo, metavar="OWNER/NAME")
    reconcile.add_argument(
        "--every", type=float, metavar="SECONDS", help="repeat forever, this long between passes"
    )


# -- wiring -------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    jira_projects: tuple[str, ...] = ()
    github_repos: tuple[str, ...] = ()
    github_kinds: tuple[str, ...] = KINDS
    options: RunOptions = field(default_factory=RunOptions)
    progress: str = "auto"


def request_from_args(settings: Settings, args: argparse.Namespace) -> Request:
    overlap = timedelta(seconds=settings.backfill_overlap_s)
    first = timedelta(days=settings.reconcile_first_days)
    if args.command == "backfill":
        options = RunOptions(
            since=args.since, restart=args.restart, overlap=overlap, default_since=first
        )
        if args.source == "jira":
            return Request(
                jira_projects=tuple(args.project), options=options, progress=args.progress
            )
        return Request(
            github_repos=tuple(args.repo),
            github_kinds=tuple(args.only),
            options=options,
            progress=args.progress,
        )
    projects = args.jira_project or _split(settings.reconcile_jira_projects, _project)
    repos = args.github_repo or _split(settings.reconcile_github_repos, _repo)
    if not projects and not repos:
        raise BackfillConfigError(
            "nothing to reconcile: pass --jira-project/--github-repo or set "
            "FLOW_RECONCILE_JIRA_PROJECTS / FLOW_RECONCILE_GITHUB_REPOS"
        )
    return Request(
        tuple(projects),
        tuple(repos),
        options=RunOptions(overlap=overlap, default_since=first),
        progress=args.progress,
    )


def _split(value: str, check: Any) -> list[str]:
    try:
        return [check(v.strip()) for v in value.split(",") if v.strip()]
    except argparse.ArgumentTypeError as exc:
        raise BackfillConfigError(str(exc)) from exc


def _secret(value: Any) -> str | None:
    return value.get_secret_value() if value is not None else None


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        max_retries=settings.backfill_max_retries,
        backoff_base_s=settings.backfill_backoff_base_s,
        backoff_cap_s=min(60.0, settings.backfill_max_sleep_s),
        max_sleep_s=settings.backfill_max_sleep_s,
        secondary_wait_s=min(60.0, settings.backfill_max_sleep_s),
    )


def _http(settings: Settings, base_url: str, auth: httpx.Auth, headers: dict[str, str]) -> Any:
    connections = settings.backfill_concurrency * 2
    return httpx.AsyncClient(
        base_url=base_url.rstrip("/"),
        auth=auth,
        headers={"User-Agent": "flowmetrics-backfill", **headers},
        timeout=settings.backfill_timeout_s,
        follow_redirects=True,
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )


def jira_api_kind(settings: Settings) -> JiraApi:
    if settings.jira_api != "auto":
        return settings.jira_api
    return "datacenter" if _secret(settings.jira_pat) else "cloud"


def jira_client(settings: Settings) -> ApiClient:
    if not settings.jira_base_url:
        raise BackfillConfigError("FLOW_JIRA_BASE_URL is not set")
    auth = jira_auth(
        email=settings.jira_email or None,
        api_token=_secret(settings.jira_api_token),
        pat=_secret(settings.jira_pat),
    )
    http = _http(settings, settings.jira_base_url, auth, {"Accept": "application/json"})
    return ApiClient(http, retry_policy(settings), name="jira")


def github_client(settings: Settings) -> ApiClient:
    auth = github_auth(
        token=_secret(settings.github_token),
        app_id=settings.github_app_id or None,
        private_key=_secret(settings.github_app_private_key),
        installation_id=settings.github_app_installation_id or None,
        api_url=settings.github_api_url,
    )
    headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
    http = _http(settings, settings.github_api_url, auth, headers)
    return ApiClient(http, retry_policy(settings), name="github")


@asynccontextmanager
async def backfill_context(
    settings: Settings, database_url: str, kafka_bootstrap: str, progress: Progress
) -> AsyncIterator[tuple[CursorStore, KafkaPublisher]]:
    async with AsyncExitStack() as stack:
        stack.callback(progress.close)
        producer = make_producer(kafka_bootstrap, idempotent=settings.kafka_idempotent_producer)
        try:
            await producer.start()
        except KafkaError as exc:
            await producer.stop()
            raise BrokerUnavailable(f"broker {kafka_bootstrap} unreachable: {exc!r}") from exc
        stack.push_async_callback(producer.stop)
        store = await CursorStore.connect(database_url)
        stack.push_async_callback(store.close)
        yield store, KafkaPublisher(producer, Topics(settings.topic_prefix))


async def run_request(
    settings: Settings,
    request: Request,
    *,
    database_url: str,
    kafka_bootstrap: str,
    progress: Progress | None = None,
) -> list[ScopeOutcome | BaseException]:
    """Run every scope of ``request`` in turn; a failed scope does not stop the others."""
    stages = load_stage_config(settings.stages_file)
    mapping = github_mapping(settings)
    outcomes: list[ScopeOutcome | BaseException] = []
    async with AsyncExitStack() as stack:
        readers: list[ScopeReader] = []
        clients: list[ApiClient] = []
        if request.jira_projects:
            client = jira_client(settings)
            stack.push_async_callback(client.aclose)
            clients.append(client)
            readers += [
                JiraReader(
                    client,
                    jira_api_kind(settings),
                    project,
                    stages=stages,
                    page_size=settings.backfill_page_size,
                    concurrency=settings.backfill_concurrency,
                )
                for project in request.jira_projects
            ]
        if request.github_repos:
            client = github_client(settings)
            stack.push_async_callback(client.aclose)
            clients.append(client)
            for repo in request.github_repos:
                readers += github_readers(
                    client,
                    repo,
                    request.github_kinds,
                    mapping=mapping,
                    page_size=settings.backfill_page_size,
                    concurrency=settings.backfill_concurrency,
                )
        # Only now, when the settings proved usable: a bar left open would garble errors.
        if progress is None:
            progress = make_progress({"auto": None, "bar": True, "log": False}[request.progress])
        for client in clients:
            client.on_wait = progress.waiting
        store, publisher = await stack.enter_async_context(
            backfill_context(settings, database_url, kafka_bootstrap, progress)
        )
        for reader in readers:
            try:
                outcomes.append(
                    await run_scope(
                        reader,
                        store=store,
                        publisher=publisher,
                        progress=progress,
                        options=request.options,
                    )
                )
            except ScopeBusy as exc:
                log.warning("backfill_scope_busy", source=reader.source, scope=reader.scope)
                outcomes.append(exc)
            except (BackfillError, CollectorError) as exc:
                outcomes.append(exc)
    return outcomes


def summary(outcomes: list[ScopeOutcome | BaseException]) -> str:
    lines = []
    for outcome in outcomes:
        if isinstance(outcome, ScopeOutcome):
            lines.append(
                f"{outcome.source:<7} {outcome.scope:<40} {outcome.mode:<11} "
                f"{outcome.items:>8} items {outcome.events:>9} events "
                f"{outcome.seconds:>8.1f} s {outcome.rate_per_s:>8.1f}/s"
            )
        else:
            lines.append(f"failed: {outcome}")
    return "\n".join(lines)


def run_backfill_command(
    settings: Settings, args: argparse.Namespace, *, database_url: str, kafka_bootstrap: str
) -> int:
    """Entry point of both subcommands; returns the exit status."""
    try:
        request = request_from_args(settings, args)
    except BackfillConfigError as exc:
        print(f"flowmetrics {args.command}: {exc}", file=sys.stderr)
        return 2
    every = getattr(args, "every", None)

    async def once() -> int:
        outcomes = await run_request(
            settings, request, database_url=database_url, kafka_bootstrap=kafka_bootstrap
        )
        print(summary(outcomes), flush=True)
        return 0 if all(isinstance(o, ScopeOutcome) for o in outcomes) else 1

    async def main() -> int:
        if not every:
            return await once()
        while True:  # stopped by SIGINT/SIGTERM
            await once()
            await asyncio.sleep(every)

    try:
        return asyncio.run(main())
    except BackfillConfigError as exc:
        print(f"flowmetrics {args.command}: {exc}", file=sys.stderr)
        return 2
    except (BackfillError, BrokerUnavailable) as exc:
        print(f"flowmetrics {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
