"""Run the benchmarks, print the table, write ``bench/results/<date>.json``.

    python -m bench.run                    # the issue's sizes: 1 M events, 10 M transitions
    python -m bench.run --quick            # small sizes: a smoke test in a few minutes
    python -m bench.run --events 200000 --only processor --profile

Targets (issue #7, on a 2-core machine) are printed beside each figure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench.api_bench import api_latency
from bench.collector_bench import collector_throughput
from bench.harness import REPO, backends, server_version
from bench.processor_bench import throughput

RESULTS = REPO / "bench" / "results"
PARTS = ("processor", "api", "collector")

TARGET_EVENTS_PER_S = 50_000
TARGET_VS_CEILING = 0.5
TARGET_VS_FAUST = 5.0
TARGET_P99_MS = 50.0
TARGET_VS_RAW = 10.0
TARGET_RSS_DRIFT = 0.2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    p.add_argument("--events", type=int, help="events pre-loaded (default 1,000,000)")
    p.add_argument("--small-events", type=int, help="the memory check's small run (100,000)")
    p.add_argument("--api-transitions", type=int, help="API data set size (10,000,000)")
    p.add_argument("--api-requests", type=int, help="requests per endpoint (200)")
    p.add_argument("--raw-repeats", type=int, help="runs of each raw-table query (3)")
    p.add_argument("--collector-rate", type=float, default=200.0, help="fixed offered rate /s")
    p.add_argument("--collector-seconds", type=float, help="seconds per collector phase (10)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated of {PARTS}")
    p.add_argument("--no-faust", action="store_true", help="skip the Faust peer")
    p.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the processor's N-event run; top frames in the results",
    )
    p.add_argument("--timeout", type=float, default=1800.0, help="per participant, seconds")
    p.add_argument("--out", type=Path, help="results file (default bench/results/<date>.json)")
    args = p.parse_args(argv)
    quick = args.quick
    defaults = {
        "events": 20_000 if quick else 1_000_000,
        "small_events": 5_000 if quick else 100_000,
        "api_transitions": 200_000 if quick else 10_000_000,
        "api_requests": 30 if quick else 200,
        "raw_repeats": 1 if quick else 3,
        "collector_seconds": 3.0 if quick else 10.0,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.parts = [part.strip() for part in args.only.split(",") if part.strip()]
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        p.error(f"unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    return args


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    stamp = datetime.now(UTC)
    log_dir = RESULTS / "logs"
    out: dict[str, Any] = {
        "started": stamp.isoformat(),
        "machine": machine(),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    with backends() as found:
        out["machine"]["postgres"] = f"{found.pg_kind}, {server_version(found.pg_server)}"
        profile = RESULTS / f"{stamp:%Y-%m-%d}-processor.folded" if args.profile else None
        if "processor" in args.parts:
            say(f"processor: {args.events:,} events (+ {args.small_events:,} for memory)")
            out["processor"] = await throughput(
                found,
                events=args.events,
                small=args.small_events,
                seed=args.seed,
                log_dir=log_dir,
                faust=not args.no_faust,
                profile=profile,
                timeout=args.timeout,
            )
            if profile is not None and profile.exists():
                out["processor"]["profile"] = {
                    "file": str(profile.relative_to(REPO)),
                    **hotspots(profile),
                }
        if "api" in args.parts:
            say(f"api: {args.api_transitions:,} transitions")
            out["api"] = await api_latency(
                found,
                transitions=args.api_transitions,
                requests=args.api_requests,
                raw_repeats=args.raw_repeats,
                log_dir=log_dir,
                teams=[None, "Payments"],
            )
        if "collector" in args.parts:
            say(f"collector: {args.collector_rate:.0f}/s for {args.collector_seconds:.0f}s")
            out["collector"] = await collector_throughput(
                found, rate=args.collector_rate, seconds=args.collector_seconds, log_dir=log_dir
            )
    out["finished"] = datetime.now(UTC).isoformat()
    return out


def say(text: str) -> None:
    print(f"== {text}", file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip()

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": git("rev-parse", "--short", "HEAD"),
        "dirty": bool(git("status", "--porcelain")),
    }


def hotspots(folded: Path, top: int = 25) -> dict[str, Any]:
    """Self and inclusive sample shares per frame, from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f.split(" (")[0] + _where(f) for f in stack.split(";")]
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(frame, round(100 * n / total, 1)) for frame, n in counter.most_common(top)]

    return {"samples": total, "self_pct": share(own), "inclusive_pct": share(inclusive)}


def _where(frame: str) -> str:
    """``name (path/to/file.py:12)`` → `` [file.py]``: which module, not which line."""
    inside = frame.rpartition(" (")[2].rstrip(")")
    path = inside.rpartition(":")[0]
    return f" [{Path(path).name}]" if path else ""


# -- the table -------------------------------------------------------------------


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def rate(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.0f}/s"


def table(out: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    proc = out.get("processor")
    if proc:
        ours, small = proc["processor"], proc["processor_small"]
        ceiling, faust = proc["ceiling"], proc["faust"]
        ev = ours.get("events_per_s")
        rows.append(
            (
                f"processor, end to end ({proc['events']:,} events)",
                rate(ev),
                f">= {TARGET_EVENTS_PER_S:,}/s",
                verdict(ev is not None and ev >= TARGET_EVENTS_PER_S),
            )
        )
        rows.append(
            (
                f"  after its first commit (startup {_num(ours.get('startup_s'))} s)",
                rate(ours.get("steady_events_per_s")),
                "",
                "",
            )
        )
        if ours.get("cpu_busy") is not None:
            rows.append(("  its own CPU, share of one core", _num(ours["cpu_busy"], 2), "", ""))
        check = ours.get("check", {})
        rows.append(
            (
                "  derived tables match the stream",
                str(check.get("ok")),
                "all counts",
                verdict(check.get("ok")),
            )
        )
        c = ceiling.get("events_per_s")
        rows.append(("ceiling: getmany + decode + COPY", rate(c), "", ceiling.get("error", "")))
        ratio = ev / c if ev and c else None
        rows.append(
            (
                "processor / ceiling",
                _num(ratio, 2),
                f">= {TARGET_VS_CEILING}",
                verdict(None if ratio is None else ratio >= TARGET_VS_CEILING),
            )
        )
        f = faust.get("steady_events_per_s")
        note = (
            faust.get("error")
            or faust.get("note")
            or (
                f"joined after {_num(faust.get('startup_s'))} s; end to end "
                f"{rate(faust.get('events_per_s'))}"
            )
        )
        rows.append(("faust-streaming, stream.take (after join)", rate(f), "", note))
        ratio = ev / f if ev and f else None
        rows.append(
            (
                "processor / faust",
                _num(ratio, 1),
                f">= {TARGET_VS_FAUST:.0f}",
                verdict(None if ratio is None else ratio >= TARGET_VS_FAUST),
            )
        )
        big, little = ours.get("peak_rss_mb"), small.get("peak_rss_mb")
        drift = big / little - 1 if big and little else None
        rows.append(
            (
                f"processor peak RSS, {proc['small_events']:,} -> {proc['events']:,}",
                f"{little} -> {big} MB",
                f"+/- {TARGET_RSS_DRIFT:.0%}",
                verdict(None if drift is None else abs(drift) <= TARGET_RSS_DRIFT)
                + ("" if drift is None else f" ({drift:+.0%})"),
            )
        )
        curve = ours.get("rss_curve_mb") or []
        if len(curve) >= 2:
            # Within the long run: RSS once a tenth of it is done, and the most after.
            first, most = curve[0], max(curve[1:], key=lambda c: c[1])
            rows.append(
                (
                    f"  within the run: at {first[0]:,} -> highest after",
                    f"{first[1]} -> {most[1]} MB ({most[1] / first[1] - 1:+.0%})",
                    "",
                    "",
                )
            )
    api = out.get("api")
    if api:
        for e in api.get("endpoints", []):
            label = f"API {e['path']} ({e['scope']})"
            if "error" in e:
                rows.append((label, "n/a", "", e["error"]))
                continue
            p99 = e["p99_ms"]
            rows.append(
                (
                    label,
                    f"p50 {e['p50_ms']:.1f} / p99 {p99:.1f} ms",
                    f"p99 < {TARGET_P99_MS:.0f} ms",
                    verdict(p99 < TARGET_P99_MS),
                )
            )
            if e.get("raw_p50_ms") is not None:
                speed = e["speedup_p50"]
                rows.append(
                    (
                        "  vs raw tables (p50)",
                        f"{e['raw_p50_ms']:,.0f} ms = {speed:.1f}x",
                        f">= {TARGET_VS_RAW:.0f}x",
                        verdict(speed >= TARGET_VS_RAW)
                        + ("" if e.get("raw_agrees") is not False else ", ANSWERS DIFFER"),
                    )
                )
            elif e.get("raw_error"):
                rows.append(("  vs raw tables", "n/a", "", e["raw_error"]))
    col = out.get("collector")
    if col:
        if "error" in col:
            rows.append(("collector", "n/a", "", col["error"][:80]))
        else:
            sat, fixed = col["saturation"], col["fixed_rate"]
            rows.append(
                (
                    f"collector saturation ({sat['concurrency']} in flight)",
                    rate(sat["acks_per_s"]),
                    "",
                    f"p99 {sat['p99_ms']:.1f} ms",
                )
            )
            rows.append(
                (
                    f"collector at {fixed['offered_per_s']:.0f}/s offered",
                    rate(fixed["acks_per_s"]),
                    "",
                    f"p50 {fixed['p50_ms']:.1f} / p99 {fixed['p99_ms']:.1f} ms",
                )
            )
    return rows


def _num(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def render(rows: list[tuple[str, str, str, str]]) -> str:
    head = ("measure", "figure", "target", "verdict")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    line = "| " + " | ".join(f"{{:<{w}}}" for w in widths) + " |"
    out = [line.format(*head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line.format(*r) for r in rows]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = asyncio.run(run_all(args))
    rows = table(out)
    out["table"] = [
        dict(zip(("measure", "figure", "target", "verdict"), r, strict=True)) for r in rows
    ]
    suffix = "-quick" if args.quick else ""
    path = args.out or RESULTS / f"{datetime.now(UTC):%Y-%m-%d}{suffix}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2, default=str))
    print(render(rows))
    if "profile" in out.get("processor", {}):
        print("\nprocessor profile, inclusive share of samples:")
        for frame, share in out["processor"]["profile"]["inclusive_pct"][:20]:
            print(f"  {share:5.1f}%  {frame}")
        print("self share:")
        for frame, share in out["processor"]["profile"]["self_pct"][:15]:
            print(f"  {share:5.1f}%  {frame}")
    print(f"\nresults: {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")


if __name__ == "__main__":
    main()
