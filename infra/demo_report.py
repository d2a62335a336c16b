"""What ``make demo`` prints about flow analytics: aging WIP and two forecasts.

Reads only the public API, so the demo shows what a user would get.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx

AGING = "/api/v1/flow/aging-wip"
FORECAST = "/api/v1/flow/forecast"


async def summarize_flow_analytics(
    api: httpx.AsyncClient,
    *,
    team: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    items: int = 10,
    horizon_days: int = 14,
    oldest: int = 3,
) -> list[str]:
    """Lines to print: aging WIP by flag and the oldest items, then "when will ``items``
    be done" and "how many in ``horizon_days`` days" (seeded, so reruns agree)."""
    window: dict[str, Any] = {
        k: v for k, v in (("team", team), ("start", start and start.isoformat()),
                          ("end", end and end.isoformat())) if v is not None
    }
    lines = ["Aging work in progress" + (f" ({team})" if team else "") + ":"]
    aging = await _get(api, AGING, window)
    if "error" in aging:
        lines.append(f"  unavailable: {aging['error']}")
    else:
        lines.extend(_aging_lines(aging, oldest))

    lines.append("Forecast" + (f" ({team})" if team else "") + ":")
    when = await _get(api, FORECAST, {**window, "items": items, "seed": 1})
    if "error" in when:
        lines.append(f"  when will {items} more items be done: {when['error']}")
        return lines
    answers = ", ".join(
        f"{a['date'] or 'beyond ' + str(when['horizon_days']) + ' days'} ({a['confidence']}%)"
        for a in when["answers"]
    )
    history = when["history"]
    lines.append(
        f"  {items} more items done by: {answers}"
        f"  [{when['trials']:,} trials over {history['days']} days,"
        f" {history['per_day_mean']} items/day]"
    )
    until = datetime.fromisoformat(when["begins"]) + timedelta(days=horizon_days - 1)
    many = await _get(api, FORECAST, {**window, "until": until.date().isoformat(), "seed": 1})
    if "error" not in many:
        counts = ", ".join(f"{a['items']} ({a['confidence']}%)" for a in many["answers"])
        lines.append(f"  items done by {until.date().isoformat()}: at least {counts}")
    return lines


def _aging_lines(aging: dict[str, Any], oldest: int) -> list[str]:
    s = aging["summary"]
    total = sum(s.values())
    line = (
        f"  {total} items in progress: {s['on_track']} on track, {s['at_risk']} at risk"
        f" (> p85), {s['breached']} breached (> p95)"
    )
    if s["no_reference"]:
        line += f", {s['no_reference']} without completed items to compare with"
    lines = [line]
    for item in aging["items"][:oldest]:
        ref = aging["teams"].get(item["team"], {})
        lines.append(
            f"    {item['key']}: {item['age_hours']:.1f} h, in {item['stage']}"
            f" ({item['flag'] or 'no reference'}; team {item['team']}"
            f" p85 {ref.get('p85_hours')} h, p95 {ref.get('p95_hours')} h)"
        )
    return lines


async def _get(api: httpx.AsyncClient, path: str, params: dict[str, Any]) -> dict[str, Any]:
    response = await api.get(path, params=params)
    if response.status_code == 200:
        body: dict[str, Any] = response.json()
        return body
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    return {"error": f"{response.status_code} {detail}"}
