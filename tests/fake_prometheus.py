"""A local Prometheus stand-in: answers ``GET /api/v1/query`` from a script.

Answers have the shape Prometheus 2.x/3.x gives for the service-graph query
(``sum by (client, server, connection_type) (...)`` drops ``__name__``)::

    {"status": "success",
     "data": {"resultType": "vector",
              "result": [{"metric": {"client": "checkout", "connection_type": "",
                                     "server": "payments"},
                          "value": [1772445600.0, "12"]}]}}

and, for errors, ``{"status": "error", "errorType": ..., "error": ...}`` with
Prometheus' status codes (400 bad_data, 422 execution, 503 unavailable).
The script is consumed in order; its last answer repeats.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson


def series(client: str | None, server: str | None, connection_type: str | None = "",
           value: str = "12") -> dict[str, Any]:
    """One result row; ``None`` leaves the label out."""
    labels = {k: v for k, v in (("client", client), ("server", server),
                                ("connection_type", connection_type)) if v is not None}
    return {"metric": labels, "value": [0.0, value]}


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    delay: float = 0.0


def vector(at: datetime, *rows: dict[str, Any]) -> Answer:
    """A success answer evaluated at ``at`` (every sample carries that timestamp)."""
    result = [{**r, "value": [at.timestamp(), r["value"][1]]} for r in rows]
    return Answer(200, {"status": "success",
                        "data": {"resultType": "vector", "result": result}})


def error(status: int = 503, error_type: str = "unavailable",
          message: str = "tsdb not ready") -> Answer:
    return Answer(status, {"status": "error", "errorType": error_type, "error": message})


def timeout(seconds: float) -> Answer:
    """An answer that comes after ``seconds``: longer than the client waits."""
    return Answer(503, {"status": "error", "errorType": "timeout", "error": "late"}, seconds)


@dataclass
class FakePrometheus:
    script: list[Answer] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    url: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def set_script(self, *answers: Answer) -> None:
        with self._lock:
            self.script = list(answers)

    def next_answer(self) -> Answer:
        with self._lock:
            if not self.script:
                return error(503, "unavailable", "no answer scripted")
            return self.script.pop(0) if len(self.script) > 1 else self.script[0]


@contextmanager
def fake_prometheus(*answers: Answer) -> Iterator[FakePrometheus]:
    fake = FakePrometheus(list(answers))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if parts.path != "/api/v1/query":
                self.send_error(404)
                return
            fake.queries.append(parse_qs(parts.query).get("query", [""])[0])
            answer = fake.next_answer()
            if answer.delay:
                time.sleep(answer.delay)
            body = orjson.dumps(answer.body)
            try:
                self.send_response(answer.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (the timeout case)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
