"""Dependencies shared by the API's routers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from processor.stages import StageConfig


@dataclass
class AppState:
    pool: AsyncConnectionPool
    stages: StageConfig
    extra: dict[str, Any] = field(default_factory=dict)


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.flow
    return state


async def get_conn(request: Request) -> AsyncIterator[AsyncConnection[Any]]:
    async with get_state(request).pool.connection() as conn:
        yield conn


async def configure_read_only(conn: AsyncConnection[Any]) -> None:
    """Pool hook: every API connection is read-only, so a bug in a query cannot write.

    JIT off: the planner's cost estimates for window-sized aggregates cross the
    JIT threshold, and compiling costs more than the query (tens of ms). A
    larger ``work_mem``: percentiles filtered by project or type still sort every
    matching completion of a window (up to about 200,000 at 10 M transitions),
    which spills to disk at the 4 MB default.
    """
    await conn.set_autocommit(True)
    await conn.execute("set default_transaction_read_only = on")
    await conn.execute("set jit = off")
    await conn.execute("set work_mem = '32MB'")


ConnDep = Annotated[AsyncConnection[Any], Depends(get_conn)]
StateDep = Annotated[AppState, Depends(get_state)]
