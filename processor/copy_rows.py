"""Binary COPY of derived rows and events.

Text COPY formats every value as text in Python-side code and escapes every
string; binary COPY writes timestamps and numbers as fixed-size values and
strings as they are. Profiled at 18 % of the processor's samples in text form
(docs/adr/0003); binary halves its CPU on the same rows.

Binary COPY carries no types, so the writer must name them: they are read off
the row type's annotations (``str`` → text, ``datetime`` → timestamptz, ...),
which are also the tables' column types (the migrations are the other half of
that contract; a mismatch fails the COPY loudly, it cannot corrupt silently).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable
from datetime import datetime
from functools import cache
from typing import Any

from psycopg import AsyncCursor
from psycopg.types.json import Jsonb

_PG_TYPES: dict[Any, str] = {
    str: "text",
    int: "int4",
    float: "float8",
    bool: "bool",
    datetime: "timestamptz",
    tuple[str, ...]: "text[]",
}


def _pg_type(annotation: Any) -> str:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _pg_type(inner)
    return _PG_TYPES[annotation]


@cache
def pg_types(row_type: type) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(column names, PostgreSQL types) of a NamedTuple or dataclass row type."""
    hints = typing.get_type_hints(row_type)
    return tuple(hints), tuple(_pg_type(h) for h in hints.values())


async def copy_rows(
    cur: AsyncCursor[Any],
    table: str,
    columns: Iterable[str],
    pg_type_names: Iterable[str],
    rows: Iterable[Any],
) -> None:
    """COPY ``rows`` (sequences in ``columns`` order) into ``table``, binary."""
    names = list(pg_type_names)
    arrays = [i for i, name in enumerate(names) if name.endswith("[]")]
    async with cur.copy(f"copy {table} ({', '.join(columns)}) from stdin (format binary)") as copy:
        copy.set_types(names)
        if arrays:
            for row in rows:
                values = list(row)
                for i in arrays:
                    values[i] = list(values[i])
                await copy.write_row(values)
        else:
            for row in rows:
                await copy.write_row(row)


def _same(text: str) -> str:
    return text


def json_text(text: str) -> Jsonb:
    """Already-serialized JSON for a binary jsonb column (no second serialization)."""
    return Jsonb(text, dumps=_same)
