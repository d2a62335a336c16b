"""The ceiling: the least work that still moves every event from Kafka into PostgreSQL.

A bare aiokafka ``getmany`` loop that decodes each record (orjson) and COPYs the
raw events into one unindexed table, one transaction per batch, offsets committed
after it: no validation, no dedupe, no folding. Same topic, same batch size, same
commit discipline as the processor, so ``processor ÷ ceiling`` is the share of the
hardware's budget the processor's real work leaves.

    python -m bench.ceiling --bootstrap HOST:PORT --topic T --group G --dsn DSN --expect N

Prints one JSON line: ``{"events", "done_unix", "first_record_unix"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import orjson
import psycopg
from aiokafka import AIOKafkaConsumer

TABLE = """create table if not exists ceiling_events (
    event_id text, type text, key text, occurred_at timestamptz, payload jsonb
)"""


async def drain(args: argparse.Namespace) -> dict[str, float | int]:
    consumer = AIOKafkaConsumer(
        args.topic,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    conn = await psycopg.AsyncConnection.connect(args.dsn)
    await conn.execute(TABLE)
    await conn.commit()
    await consumer.start()
    seen, first = 0, 0.0
    try:
        while seen < args.expect:
            batch = await consumer.getmany(timeout_ms=200, max_records=args.batch)
            records = [r for part in batch.values() for r in part]
            if not records:
                continue
            first = first or time.time()
            async with (
                conn.transaction(),
                conn.cursor() as cur,
                cur.copy(
                    "copy ceiling_events (event_id, type, key, occurred_at, payload) from stdin"
                ) as copy,
            ):
                for record in records:
                    value = record.value or b"{}"
                    event = orjson.loads(value)
                    await copy.write_row(
                        (
                            event["event_id"],
                            event["type"],
                            event["key"],
                            event["occurred_at"],
                            value.decode(),
                        )
                    )
            await consumer.commit()
            seen += len(records)
    finally:
        await consumer.stop()
        await conn.close()
    return {"events": seen, "done_unix": time.time(), "first_record_unix": first}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.ceiling", description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--batch", type=int, default=20_000)
    args = parser.parse_args(argv)
    result = asyncio.run(drain(args))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
