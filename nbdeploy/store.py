"""SQLite store (WAL) for model versions, deployments, routing and events.

A name's server holds several versions: each has an ``active`` row in ``deployments`` (all of
them share the server's url, port, token and handle), and ``routes`` keeps the routing the
server was last given (versions, weights, shadow, guards) with its admin token.

One short-lived connection per operation keeps it safe across threads, kernels and processes;
``BEGIN IMMEDIATE`` serialises writers so two processes never take the same version number.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nbdeploy import _settings
from nbdeploy._errors import NbdeployError
from nbdeploy.vocabulary import Deployment, DeploymentState, ServerSettings

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    name        TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    path        TEXT    NOT NULL,
    sha256      TEXT    NOT NULL,
    variant     TEXT    NOT NULL,
    framework   TEXT,
    size_bytes  INTEGER,
    created_at  TEXT    NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS deployments (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    runtime     TEXT    NOT NULL,
    state       TEXT    NOT NULL,
    url         TEXT,
    port        INTEGER,
    token       TEXT,
    handle      TEXT    NOT NULL DEFAULT '{}',
    settings    TEXT    NOT NULL DEFAULT '{}',
    owner       TEXT    NOT NULL DEFAULT '',
    created_at  TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS deployments_by_name ON deployments (name, state);
CREATE TABLE IF NOT EXISTS endpoint_benchmarks (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment_id INTEGER NOT NULL,
    name          TEXT    NOT NULL,
    version       INTEGER NOT NULL,
    measured_at   TEXT    NOT NULL,
    report        TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS endpoint_benchmarks_by_deployment
    ON endpoint_benchmarks (deployment_id, id);
CREATE TABLE IF NOT EXISTS routes (
    name         TEXT PRIMARY KEY,
    routing      TEXT NOT NULL,
    admin_token  TEXT NOT NULL,
    guard_reason TEXT,
    updated_at   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    ts          TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    message     TEXT    NOT NULL,
    data        TEXT
);
CREATE TABLE IF NOT EXISTS pushes (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    sha256      TEXT    NOT NULL,
    registry    TEXT    NOT NULL,
    reference   TEXT    NOT NULL,
    digest      TEXT    NOT NULL,
    settings    TEXT    NOT NULL DEFAULT '{}',
    pushed_at   TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS pushes_by_name ON pushes (name, version, id);
"""

TABLES = tuple(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", SCHEMA))

# Columns added after a store was first created, with their definition, for older files.
ADDED_COLUMNS = {
    "deployments": {"settings": "TEXT NOT NULL DEFAULT '{}'", "owner": "TEXT NOT NULL DEFAULT ''"}
}


# How long one SQLite call waits for the file, and how long a write waits in all: a write that
# cannot get the database in that time fails with a clear message instead of hanging.
BUSY_TIMEOUT_S = 2.0
LOCK_WAIT_S = 10.0


class StoreBusyError(NbdeployError):
    """Another process held the store's write lock for longer than ``LOCK_WAIT_S``."""


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Store:
    """The SQLite file under NBDEPLOY_HOME; every method opens and closes its own connection."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else _settings.db_path()
        if not self._schema_current():
            self._create_schema()

    def _schema_current(self) -> bool:
        """Whether the file is already in WAL mode with every table and column: a read that
        takes no lock, so the many short-lived Stores of concurrent processes do not queue."""
        conn = self._connect()
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                return False
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
            if not set(TABLES) <= tables:
                return False
            return all(
                set(columns) <= {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
                for table, columns in ADDED_COLUMNS.items()
            )
        finally:
            conn.close()

    def _create_schema(self) -> None:
        """WAL mode, then the tables and any columns added since, under the write lock; the
        file holds bearer tokens, so only its owner may read it (SQLite gives its -wal and
        -shm files the same mode)."""
        conn = self._connect()
        self.path.chmod(0o600)
        try:
            _retry_locked(lambda: conn.execute("PRAGMA journal_mode=WAL"), self.path)
        finally:
            conn.close()
        with self.transaction() as conn:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            _add_missing_columns(conn)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that holds the database's write lock from its first statement."""
        conn = self._connect()
        try:
            _retry_locked(lambda: conn.execute("BEGIN IMMEDIATE"), self.path)
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        conn = self._connect()
        try:
            return [dict(row) for row in conn.execute(sql, params).fetchall()]
        finally:
            conn.close()

    # versions -----------------------------------------------------------------------------

    @staticmethod
    def max_version(conn: sqlite3.Connection, name: str) -> int:
        row = conn.execute("SELECT MAX(version) FROM versions WHERE name = ?", (name,)).fetchone()
        return int(row[0] or 0)

    @staticmethod
    def insert_version(conn: sqlite3.Connection, **row: Any) -> None:
        row.setdefault("created_at", now())
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        conn.execute(f"INSERT INTO versions ({columns}) VALUES ({marks})", tuple(row.values()))

    def versions(self, name: str | None = None) -> list[dict[str, Any]]:
        if name is None:
            return self._query("SELECT * FROM versions ORDER BY name, version DESC")
        return self._query("SELECT * FROM versions WHERE name = ? ORDER BY version DESC", (name,))

    def version(self, name: str, version: int) -> dict[str, Any] | None:
        rows = self._query(
            "SELECT * FROM versions WHERE name = ? AND version = ?", (name, int(version))
        )
        return rows[0] if rows else None

    # deployments --------------------------------------------------------------------------

    def add_deployment(
        self,
        *,
        name: str,
        version: int,
        runtime: str,
        state: str,
        url: str | None = None,
        port: int | None = None,
        token: str | None = None,
        handle: dict[str, Any] | None = None,
        settings: ServerSettings | None = None,
        owner: str = "",
    ) -> int:
        stamp = now()
        with self.transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO deployments (name, version, runtime, state, url, port, token, handle,"
                " settings, owner, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    version,
                    runtime,
                    state,
                    url,
                    port,
                    token,
                    json.dumps(handle or {}),
                    json.dumps((settings or ServerSettings()).to_dict()),
                    owner,
                    stamp,
                    stamp,
                ),
            )
            return int(cursor.lastrowid)

    def update_deployment(self, deployment_id: int, **fields: Any) -> None:
        if "handle" in fields:
            fields["handle"] = json.dumps(fields["handle"])
        if "settings" in fields:
            fields["settings"] = json.dumps(fields["settings"].to_dict())
        fields["updated_at"] = now()
        assignments = ", ".join(f"{key} = ?" for key in fields)
        with self.transaction() as conn:
            conn.execute(
                f"UPDATE deployments SET {assignments} WHERE id = ?",
                (*fields.values(), deployment_id),
            )

    def apply_routing(
        self,
        name: str,
        *,
        routing: dict[str, Any],
        admin_token: str,
        server: dict[str, Any],
        guard_reason: str | None = None,
        launch_id: int | None = None,
    ) -> list[Deployment]:
        """Record in one transaction what a name's server now holds: an active row for every
        version in ``routing``, the others retired, every row on ``server`` (runtime, url,
        port, token, handle, settings, owner), and the routing itself; return the active rows."""
        versions = {int(v) for v in routing["weights"]} | {int(v) for v in routing["shadow"]}
        stamp = now()
        shared = {
            "runtime": server["runtime"],
            "url": server["url"],
            "port": server["port"],
            "token": server["token"],
            "handle": json.dumps(server["handle"]),
            "settings": json.dumps(server["settings"].to_dict()),
        }
        with self.transaction() as conn:
            rows = conn.execute(
                "SELECT id, version FROM deployments WHERE name = ? AND state = 'active'", (name,)
            ).fetchall()
            present = {int(row["version"]) for row in rows}
            if launch_id is not None:  # a new server: its launch row becomes the stable's row
                conn.execute(
                    "UPDATE deployments SET state = 'retired', updated_at = ?"
                    " WHERE name = ? AND state = 'active'",
                    (stamp, name),
                )
                conn.execute(
                    "UPDATE deployments SET state = 'active', updated_at = ? WHERE id = ?",
                    (stamp, launch_id),
                )
                rows = conn.execute(
                    "SELECT id, version FROM deployments WHERE id = ?", (launch_id,)
                ).fetchall()
                present = {int(row["version"]) for row in rows}
            for row in rows:
                if int(row["version"]) not in versions:
                    conn.execute(
                        "UPDATE deployments SET state = 'retired', updated_at = ? WHERE id = ?",
                        (stamp, row["id"]),
                    )
            for version in sorted(versions - present):
                conn.execute(
                    "INSERT INTO deployments (name, version, runtime, state, url, port, token,"
                    " handle, settings, owner, created_at, updated_at)"
                    " VALUES (?, ?, ?, 'active', ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        name,
                        version,
                        shared["runtime"],
                        shared["url"],
                        shared["port"],
                        shared["token"],
                        shared["handle"],
                        shared["settings"],
                        server["owner"],
                        stamp,
                        stamp,
                    ),
                )
            assignments = ", ".join(f"{key} = ?" for key in shared)
            conn.execute(
                f"UPDATE deployments SET {assignments}, updated_at = ?"
                " WHERE name = ? AND state = 'active'",
                (*shared.values(), stamp, name),
            )
            conn.execute(
                "INSERT INTO routes (name, routing, admin_token, guard_reason, updated_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET routing = excluded.routing,"
                " admin_token = excluded.admin_token, guard_reason = excluded.guard_reason,"
                " updated_at = excluded.updated_at",
                (name, json.dumps(routing), admin_token, guard_reason, stamp),
            )
        return self.deployments(name=name)

    def retire_all(self, name: str, state: DeploymentState = "retired") -> list[Deployment]:
        """Mark every active or starting row of ``name`` (and its routing) as gone."""
        with self.transaction() as conn:
            rows = [
                _record(dict(row))
                for row in conn.execute(
                    "SELECT * FROM deployments WHERE name = ? AND state IN ('active', 'starting')",
                    (name,),
                )
            ]
            conn.execute(
                "UPDATE deployments SET state = ?, updated_at = ?"
                " WHERE name = ? AND state IN ('active', 'starting')",
                (state, now(), name),
            )
            conn.execute("DELETE FROM routes WHERE name = ?", (name,))
        return rows

    def route(self, name: str) -> dict[str, Any] | None:
        """``{"routing": dict, "admin_token": str, "guard_reason": str | None}`` of a name."""
        rows = self._query("SELECT * FROM routes WHERE name = ?", (name,))
        if not rows:
            return None
        return {**rows[0], "routing": json.loads(rows[0]["routing"])}

    def last_port(self, name: str) -> int | None:
        """The port the name's server last listened on, to bring it back at the same URL."""
        rows = self._query(
            "SELECT port FROM deployments WHERE name = ? AND port IS NOT NULL AND port > 0"
            " ORDER BY id DESC LIMIT 1",
            (name,),
        )
        return int(rows[0]["port"]) if rows else None

    def last_grpc_port(self, name: str) -> int | None:
        """The gRPC port the name's server last had (kept in its handle)."""
        rows = self._query(
            "SELECT handle FROM deployments WHERE name = ? AND handle LIKE '%grpc_port%'"
            " ORDER BY id DESC LIMIT 1",
            (name,),
        )
        if not rows:
            return None
        port = json.loads(rows[0]["handle"]).get("grpc_port")
        return int(port) if port else None

    def forget_version(self, name: str, version: int) -> None:
        """Drop a removed version's rows (its files are gone; its events stay)."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM versions WHERE name = ? AND version = ?", (name, version))
            conn.execute(
                "DELETE FROM endpoint_benchmarks WHERE name = ? AND version = ?", (name, version)
            )

    def deployments(
        self, *, name: str | None = None, states: tuple[DeploymentState, ...] = ("active",)
    ) -> list[Deployment]:
        marks = ", ".join("?" for _ in states)
        sql = f"SELECT * FROM deployments WHERE state IN ({marks})"
        params: tuple[Any, ...] = tuple(states)
        if name is not None:
            sql += " AND name = ?"
            params += (name,)
        return [_record(row) for row in self._query(sql + " ORDER BY name, version DESC", params)]

    def deployment(self, deployment_id: int) -> Deployment | None:
        rows = self._query("SELECT * FROM deployments WHERE id = ?", (deployment_id,))
        return _record(rows[0]) if rows else None

    # endpoint benchmarks ------------------------------------------------------------------

    def add_endpoint_benchmark(
        self, *, deployment_id: int, name: str, version: int, report: dict[str, Any]
    ) -> None:
        """Keep an HTTP benchmark of a deployment (``BenchmarkReport.to_dict()``, its rows)."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO endpoint_benchmarks (deployment_id, name, version, measured_at,"
                " report) VALUES (?, ?, ?, ?, ?)",
                (int(deployment_id), name, int(version), now(), json.dumps(report, default=str)),
            )

    def endpoint_benchmark(
        self, deployment_id: int, *, name: str | None = None, version: int | None = None
    ) -> dict[str, Any] | None:
        """The latest HTTP benchmark of a deployment (``measured_at`` and the ``report`` dict);
        with ``name`` and ``version``, else the latest of an earlier launch of that version (a
        rollback serves the same model)."""
        rows = self._query(
            "SELECT * FROM endpoint_benchmarks WHERE deployment_id = ? ORDER BY id DESC LIMIT 1",
            (int(deployment_id),),
        )
        if not rows and name is not None and version is not None:
            rows = self._query(
                "SELECT * FROM endpoint_benchmarks WHERE name = ? AND version = ?"
                " ORDER BY id DESC LIMIT 1",
                (name, int(version)),
            )
        if not rows:
            return None
        return {**rows[0], "report": json.loads(rows[0]["report"])}

    # events -------------------------------------------------------------------------------

    def add_event(self, name: str, kind: str, message: str, data: Any = None) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO events (ts, name, kind, message, data) VALUES (?, ?, ?, ?, ?)",
                (
                    now(),
                    name,
                    kind,
                    message,
                    json.dumps(data, default=str) if data is not None else None,
                ),
            )

    def events(self, name: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        if name is None:
            return self._query("SELECT * FROM events ORDER BY id DESC LIMIT ?", (limit,))
        return self._query(
            "SELECT * FROM events WHERE name = ? ORDER BY id DESC LIMIT ?", (name, limit)
        )

    # pushed images ------------------------------------------------------------------------

    def add_push(
        self,
        *,
        name: str,
        version: int,
        sha256: str,
        registry: str,
        reference: str,
        digest: str,
        settings: dict[str, Any],
    ) -> None:
        """Keep an image pushed for a cluster: its tag, its registry digest and the settings
        baked in as the server's defaults."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO pushes (name, version, sha256, registry, reference, digest,"
                " settings, pushed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    int(version),
                    sha256,
                    registry,
                    reference,
                    digest,
                    json.dumps(settings, default=str),
                    now(),
                ),
            )

    def pushes(self, name: str, version: int | None = None) -> list[dict[str, Any]]:
        """The images pushed for ``name`` (of one ``version``), newest first."""
        sql, params = "SELECT * FROM pushes WHERE name = ?", (name,)
        if version is not None:
            sql, params = sql + " AND version = ?", (name, int(version))
        rows = self._query(sql + " ORDER BY id DESC", params)
        return [{**row, "settings": json.loads(row["settings"] or "{}")} for row in rows]


def _retry_locked(statement: Callable[[], Any], path: Path) -> None:
    """Run a statement that SQLite may refuse with "database is locked" while another process
    holds the file (the busy timeout does not cover every case), retrying until
    ``LOCK_WAIT_S`` have passed in all; then say which file is held instead of waiting on."""
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            statement()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() >= deadline:
                raise StoreBusyError(
                    f"the nbdeploy store {path} stayed locked by another process for more than"
                    f" {LOCK_WAIT_S:.0f} s; nothing was changed. Retry when the other nbdeploy"
                    " command (a deploy, a benchmark saving its results) has finished"
                ) from None
            time.sleep(0.05)


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    for table, columns in ADDED_COLUMNS.items():
        present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        for column, definition in columns.items():
            if column not in present:
                try:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
                except sqlite3.OperationalError as exc:
                    if "duplicate column" not in str(exc):
                        raise


def _record(row: dict[str, Any]) -> Deployment:
    """A deployments row as its typed record (older rows kept their settings in the handle)."""
    handle = json.loads(row.get("handle") or "{}")
    settings = json.loads(row.get("settings") or "{}") or handle.pop("tuning", None)
    handle.pop("tuning", None)
    return Deployment(
        id=int(row["id"]),
        name=row["name"],
        version=int(row["version"]),
        runtime=row["runtime"],
        state=row["state"],
        url=row["url"] or "",
        port=int(row["port"] or 0),
        token=row["token"] or None,
        handle=handle,
        settings=ServerSettings.from_dict(settings),
        owner=row.get("owner") or "",
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )
