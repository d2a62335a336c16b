"""``flowmetrics replay | rebuild | dlq list | dlq redrive``: recovering from what was kept.

    flowmetrics replay            raw topic → current mapping → events topic (+ events table)
    flowmetrics rebuild           events table → every derived table
    flowmetrics dlq list          the dead-letter topic: reason, topic/partition/offset, id
    flowmetrics dlq redrive P:O … | --all | --reason TEXT   publish again after a fix

All are idempotent: stable event ids and recompute-from-history projections.
docs/operations-durability.md says when to use which.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any, TextIO

import orjson

from infra.kafka import make_producer
from infra.services import github_mapping, projections, stage_config, topics_for
from infra.settings import Settings
from processor.dead_letters import list_dead_letters, redrive, select
from processor.projections import ProjectionRegistry
from processor.replay import rebuild, replay

COMMANDS = ("replay", "rebuild", "dlq")


def add_durability_parsers(sub: Any) -> None:
    p = sub.add_parser("replay", help="re-normalize the raw topic and publish the events again")
    p.add_argument("--no-store", action="store_true",
                   help="only publish; leave the events table to the processor")  # fmt: skip
    p.add_argument("--batch", type=int, default=2000, help="raw records per batch")
    p = sub.add_parser("rebuild", help="recompute every derived table from the stored events")
    p.add_argument("--chunk", type=int, default=500, help="entities per transaction")
    dlq = sub.add_parser("dlq", help="the dead-letter topic: list | redrive")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    p = dlq_sub.add_parser("list", help="every dead letter with its reason and origin")
    p.add_argument("--reason", help="only those whose reason contains this text")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p = dlq_sub.add_parser("redrive", help="publish dead letters again with the current code")
    p.add_argument("positions", nargs="*", metavar="PARTITION:OFFSET",
                   help="dead letters by their place on the dead-letter topic")  # fmt: skip
    p.add_argument("--all", action="store_true", help="every dead letter")
    p.add_argument("--reason", help="those whose reason contains this text")
    p.add_argument("--dry-run", action="store_true", help="say what would be published")


def run_durability_command(settings: Settings, args: argparse.Namespace,
                           out: TextIO = sys.stdout) -> int:  # fmt: skip
    needs_db = args.command == "rebuild" or (args.command == "replay" and not args.no_store)
    needs_kafka = args.command in ("replay", "dlq")
    missing = [name for name, need, value in (
        ("FLOW_DATABASE_URL", needs_db, settings.database_url),
        ("FLOW_KAFKA_BOOTSTRAP", needs_kafka, settings.kafka_bootstrap),
    ) if need and not value]  # fmt: skip
    if missing:
        print(f"flowmetrics {args.command}: {' and '.join(missing)} required", file=sys.stderr)
        return 2
    return asyncio.run(_run(settings, args, out))


async def _run(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    registry = ProjectionRegistry(projections(settings, stage_config(settings)))
    if args.command == "rebuild":
        rebuilt = await rebuild(settings.database_url, registry, chunk=args.chunk)
        _json(out, rebuilt.as_dict())
        return 0
    if args.command == "dlq" and args.dlq_command == "list":
        letters = await list_dead_letters(settings.kafka_bootstrap, topics_for(settings))
        _print_letters(out, select(letters, reason_contains=args.reason), as_json=args.json)
        return 0
    if args.command == "dlq" and not (args.all or args.positions or args.reason):
        print("flowmetrics dlq redrive: name PARTITION:OFFSET, --reason or --all", file=sys.stderr)
        return 2
    idempotent = settings.kafka_idempotent_producer
    producer = make_producer(settings.kafka_bootstrap, idempotent=idempotent)
    await producer.start()
    try:
        if args.command == "replay":
            report = await replay(
                bootstrap=settings.kafka_bootstrap, topics=topics_for(settings),
                producer=producer, stages=stage_config(settings), mapping=github_mapping(settings),
                dsn=None if args.no_store else settings.database_url, registry=registry,
                batch=args.batch,
            )  # fmt: skip
            _json(out, report.as_dict())
            for delivery_id, why in report.unmappable:
                _json(out, {"unmappable": delivery_id, "reason": why})
            return 0
        letters = select(
            await list_dead_letters(settings.kafka_bootstrap, topics_for(settings)),
            positions=args.positions, reason_contains=args.reason,
        )  # fmt: skip
        outcomes = await redrive(
            letters, producer=producer, topics=topics_for(settings),
            stages=stage_config(settings), mapping=github_mapping(settings), dry_run=args.dry_run,
        )  # fmt: skip
        for outcome in outcomes:
            _json(out, outcome.summary())
        failing = sum(o.status == "still_failing" for o in outcomes)
        _json(out, {"redriven": len(outcomes) - failing, "still_failing": failing})
        return 1 if failing else 0
    finally:
        await producer.stop()


def _json(out: TextIO, value: Any) -> None:
    out.write(orjson.dumps(value).decode() + "\n")


def _print_letters(out: TextIO, letters: list[Any], *, as_json: bool) -> None:
    if as_json:
        for letter in letters:
            _json(out, letter.summary())
        return
    out.write(f"{'DLQ':<10} {'ORIGIN':<10} {'FROM':<34} {'ID':<34} REASON\n")
    for d in letters:
        origin = f"{d.topic}/{d.source_partition}/{d.source_offset}" if d.topic else "webhook"
        out.write(f"{d.position:<10} {d.origin:<10} {origin:<34} {d.identity:<34} {d.reason}\n")
    out.write(f"{len(letters)} dead letter(s)\n")
