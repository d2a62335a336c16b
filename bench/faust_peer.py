"""The peer: the smallest faust-streaming agent that consumes the same topic.

One agent, ``stream.take(batch, within=1s)`` batches of JSON-decoded values, no
database: the stream processor the issue compares against, given the easiest
possible job. Needs the ``bench`` extra (``pip install -e '.[bench]'``).

    python -m bench.faust_peer --bootstrap HOST:PORT --topic T --group G --expect N

Prints JSON lines ``{"events", "done_unix", "first_record_unix", "complete"}``:
progress every 2 s, the last with ``complete: true`` once N values were
seen (or ``{"error": ...}`` when Faust cannot run here), then exits
without Faust's shutdown sequence, which is not what is measured.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time

import orjson


def run(args: argparse.Namespace) -> None:
    import faust  # imported here so a missing extra is reported, not a traceback at import

    app = faust.App(
        args.group,
        datadir=args.datadir or tempfile.mkdtemp(prefix="fm-bench-faust-"),  # never the cwd
        broker=f"kafka://{args.bootstrap}",
        store="memory://",
        web_enabled=False,
        topic_partitions=4,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_max_poll_records=args.batch,
    )
    topic = app.topic(args.topic, value_serializer="json", internal=False)
    state = {"seen": 0, "first": 0.0, "printed": 0.0}

    def report(**extra: object) -> None:
        now = time.time()
        line = {"events": state["seen"], "done_unix": now, "first_record_unix": state["first"]}
        sys.stdout.write(orjson.dumps({**line, **extra}).decode() + "\n")
        sys.stdout.flush()
        state["printed"] = now

    @app.agent(topic)
    async def count(stream):  # type: ignore[no-untyped-def]
        async for batch in stream.take(args.batch, within=1.0):
            state["first"] = state["first"] or time.time()
            state["seen"] += len(batch)
            if state["seen"] >= args.expect:
                report(complete=True)
                os._exit(0)
            if time.time() - state["printed"] > 2.0:
                report(complete=False)  # the partial rate, should the run time out

    from faust.worker import Worker

    Worker(app, loglevel="warning", quiet=True, redirect_stdouts=False).execute_from_commandline()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.faust_peer", description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--datadir", default="", help="Faust's state folder (default: a temp one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        run(args)
    except ImportError as exc:
        sys.stdout.write(orjson.dumps({"error": f"faust-streaming not importable: {exc}"}).decode())
        sys.stdout.write("\n")
        raise SystemExit(3) from exc


if __name__ == "__main__":
    main()
