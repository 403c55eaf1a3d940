"""SQLite store (WAL) for orchestration instances, their history, their inbox and pending activities,
and for entities (state and queued operation requests).

Tables: ``instances`` (one row per instance: status, input, output, custom status, times, parent link,
execution number and the planner's counters), ``history`` (events per instance, in order), ``inbox``
(events not yet delivered: activity results, timers with their due time, external events,
terminations, sub-orchestration results, execution starts) and ``work`` (activities scheduled and not
yet answered). Everything an episode changes goes in through :meth:`Store.apply` as one
:class:`Batch`, in one transaction, so a host killed at any point restarts from a consistent state:
unanswered activities are run again (at-least-once, as in Azure) and undelivered events stay queued.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devhost.history import Event

RUNNING_STATUSES = ("Pending", "Running", "ContinuedAsNew")
TERMINAL_STATUSES = ("Completed", "Failed", "Terminated")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL, input TEXT, output TEXT,
    custom_status TEXT, created TEXT NOT NULL, updated TEXT NOT NULL, parent_id TEXT, parent_seq INTEGER,
    execution INTEGER NOT NULL DEFAULT 0, plan TEXT);
CREATE INDEX IF NOT EXISTS instances_status ON instances(status);
CREATE INDEX IF NOT EXISTS instances_created ON instances(created);
CREATE TABLE IF NOT EXISTS history (
    instance_id TEXT NOT NULL, n INTEGER NOT NULL, event TEXT NOT NULL,
    PRIMARY KEY (instance_id, n)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS inbox (
    id INTEGER PRIMARY KEY, instance_id TEXT NOT NULL, visible_at REAL NOT NULL, event TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS inbox_instance ON inbox(instance_id);
CREATE TABLE IF NOT EXISTS work (
    id INTEGER PRIMARY KEY, instance_id TEXT NOT NULL, execution INTEGER NOT NULL, seq INTEGER NOT NULL,
    name TEXT NOT NULL, input TEXT);
CREATE INDEX IF NOT EXISTS work_instance ON work(instance_id);
CREATE TABLE IF NOT EXISTS entities (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, key TEXT NOT NULL, exists_ INTEGER NOT NULL, state TEXT,
    last_op TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entity_queue (
    id INTEGER PRIMARY KEY, entity_id TEXT NOT NULL, request TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS entity_queue_entity ON entity_queue(entity_id);
"""


class StoreError(RuntimeError):
    """The state database cannot be opened or written."""


@dataclass
class InstanceRecord:
    """One row of ``instances``. JSON columns hold JSON text (``None`` when absent)."""

    id: str
    name: str
    status: str
    input_json: str | None
    output_json: str | None
    custom_status_json: str | None
    created: str
    updated: str
    parent_id: str | None = None
    parent_seq: int | None = None
    execution: int = 0
    plan_json: str | None = None


@dataclass(frozen=True)
class InboxRow:
    """An event waiting for delivery to ``instance_id`` from ``visible_at`` (epoch seconds) on."""

    id: int
    instance_id: str
    visible_at: float
    event: Event


@dataclass(frozen=True)
class WorkRow:
    """An activity scheduled as task ``seq`` of ``instance_id``'s execution ``execution``."""

    id: int
    instance_id: str
    execution: int
    seq: int
    name: str
    input_json: str | None


@dataclass
class EntityRecord:
    """One row of ``entities``: ``id`` is the scheduler id ``@name@key``; ``state`` the state JSON."""

    id: str
    name: str
    key: str
    exists: bool
    state: str | None
    last_op: str


@dataclass(frozen=True)
class EntityQueueRow:
    """An operation request (the extension's RequestMessage as a dict) queued for ``entity_id``."""

    id: int
    entity_id: str
    request: dict[str, Any]


@dataclass
class Batch:
    """Changes written together in one transaction."""

    instances: list[InstanceRecord] = field(default_factory=list)
    history_clear: list[str] = field(default_factory=list)
    history_append: list[tuple[str, int, Event]] = field(default_factory=list)
    inbox_clear: list[str] = field(default_factory=list)
    inbox_delete: list[int] = field(default_factory=list)
    inbox_add: list[InboxRow] = field(default_factory=list)
    work_clear: list[str] = field(default_factory=list)
    work_delete: list[int] = field(default_factory=list)
    work_add: list[WorkRow] = field(default_factory=list)
    entities: list[EntityRecord] = field(default_factory=list)
    entity_queue_delete: list[int] = field(default_factory=list)
    entity_queue_add: list[EntityQueueRow] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any(bool(v) for v in vars(self).values())


@dataclass
class ActiveInstance:
    """An unfinished instance as loaded on restart."""

    record: InstanceRecord
    history: list[Event]
    inbox: list[InboxRow]
    work: list[WorkRow]


@dataclass(frozen=True)
class InstanceQuery:
    """Filters for :meth:`Store.query`."""

    statuses: Sequence[str] = ()
    created_from: str | None = None
    created_to: str | None = None
    prefix: str | None = None
    top: int | None = None
    offset: int = 0
    after: tuple[str, str] | None = None  # keyset continuation: (created, id) of the previous page's last row


class Store:
    """SQLite-backed state of one task hub. Use from one thread (the host's event loop)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open state database {self.path}: {exc}") from exc

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def reset(self) -> None:
        """Delete every instance, event and work item."""
        with self._tx():
            for table in ("instances", "history", "inbox", "work", "entities", "entity_queue"):
                self._db.execute(f"DELETE FROM {table}")

    def max_row_id(self) -> int:
        """Largest inbox/work id in use (new ids continue from here)."""
        row = self._db.execute(
            "SELECT max(coalesce((SELECT max(id) FROM inbox), 0), coalesce((SELECT max(id) FROM work), 0),"
            " coalesce((SELECT max(id) FROM entity_queue), 0))"
        ).fetchone()
        return int(row[0] or 0)

    def apply(self, batch: Batch) -> None:
        """Write ``batch`` in one transaction."""
        if not batch:
            return
        db = self._db
        with self._tx():
            if batch.history_clear:
                db.executemany("DELETE FROM history WHERE instance_id=?", [(i,) for i in batch.history_clear])
            if batch.inbox_clear:
                db.executemany("DELETE FROM inbox WHERE instance_id=?", [(i,) for i in batch.inbox_clear])
            if batch.work_clear:
                db.executemany("DELETE FROM work WHERE instance_id=?", [(i,) for i in batch.work_clear])
            if batch.instances:
                db.executemany(
                    "INSERT OR REPLACE INTO instances VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    [(r.id, r.name, r.status, r.input_json, r.output_json, r.custom_status_json, r.created,
                      r.updated, r.parent_id, r.parent_seq, r.execution, r.plan_json) for r in batch.instances])
            if batch.history_append:
                db.executemany("INSERT OR REPLACE INTO history VALUES (?,?,?)",
                               [(i, n, json.dumps(e)) for i, n, e in batch.history_append])
            if batch.inbox_delete:
                db.executemany("DELETE FROM inbox WHERE id=?", [(i,) for i in batch.inbox_delete])
            if batch.inbox_add:
                db.executemany("INSERT INTO inbox VALUES (?,?,?,?)",
                               [(r.id, r.instance_id, r.visible_at, json.dumps(r.event)) for r in batch.inbox_add])
            if batch.work_delete:
                db.executemany("DELETE FROM work WHERE id=?", [(i,) for i in batch.work_delete])
            if batch.work_add:
                db.executemany("INSERT INTO work VALUES (?,?,?,?,?,?)",
                               [(w.id, w.instance_id, w.execution, w.seq, w.name, w.input_json)
                                for w in batch.work_add])
            if batch.entities:
                db.executemany("INSERT OR REPLACE INTO entities VALUES (?,?,?,?,?,?)",
                               [(e.id, e.name, e.key, int(e.exists), e.state, e.last_op) for e in batch.entities])
            if batch.entity_queue_add:  # before the deletes: a request may be queued and answered in one round
                db.executemany("INSERT INTO entity_queue VALUES (?,?,?)",
                               [(r.id, r.entity_id, json.dumps(r.request)) for r in batch.entity_queue_add])
            if batch.entity_queue_delete:
                db.executemany("DELETE FROM entity_queue WHERE id=?", [(i,) for i in batch.entity_queue_delete])

    def get(self, instance_id: str) -> InstanceRecord | None:
        """The instance row, or ``None``."""
        row = self._db.execute("SELECT * FROM instances WHERE id=?", (instance_id,)).fetchone()
        return InstanceRecord(*row) if row else None

    def history(self, instance_id: str) -> list[Event]:
        """The instance's history events, in order."""
        rows = self._db.execute("SELECT event FROM history WHERE instance_id=? ORDER BY n", (instance_id,))
        return [json.loads(r[0]) for r in rows]

    def query(self, q: InstanceQuery) -> list[InstanceRecord]:
        """Instances matching ``q``, oldest first."""
        clauses: list[str] = []
        args: list[Any] = []
        if q.statuses:
            clauses.append(f"status IN ({','.join('?' * len(q.statuses))})")
            args.extend(q.statuses)
        if q.created_from:
            clauses.append("created >= ?")
            args.append(q.created_from)
        if q.created_to:
            clauses.append("created <= ?")
            args.append(q.created_to)
        if q.prefix:
            clauses.append("substr(id, 1, ?) = ?")
            args.extend([len(q.prefix), q.prefix])
        if q.after is not None:
            clauses.append("(created > ? OR (created = ? AND id > ?))")
            args.extend([q.after[0], q.after[0], q.after[1]])
        sql = "SELECT * FROM instances"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY created, id LIMIT ? OFFSET ?"
        args.extend([q.top if q.top is not None else -1, q.offset])
        return [InstanceRecord(*row) for row in self._db.execute(sql, args)]

    def purge(self, instance_ids: Iterable[str]) -> int:
        """Delete these instances (and their history, inbox and work); returns how many existed."""
        ids = [(i,) for i in instance_ids]
        with self._tx():
            before = self._db.total_changes
            self._db.executemany("DELETE FROM instances WHERE id=?", ids)
            deleted = self._db.total_changes - before
            for table in ("history", "inbox", "work"):
                self._db.executemany(f"DELETE FROM {table} WHERE instance_id=?", ids)
        return deleted

    def load_active(self) -> list[ActiveInstance]:
        """Every unfinished instance with its history, inbox and unanswered activities."""
        marks = ",".join("?" * len(RUNNING_STATUSES))
        records = [InstanceRecord(*row) for row in self._db.execute(
            f"SELECT * FROM instances WHERE status IN ({marks}) ORDER BY created", RUNNING_STATUSES)]
        active = []
        for rec in records:
            inbox = [InboxRow(i, iid, t, json.loads(e)) for i, iid, t, e in self._db.execute(
                "SELECT * FROM inbox WHERE instance_id=? ORDER BY id", (rec.id,))]
            work = [WorkRow(*row) for row in self._db.execute(
                "SELECT * FROM work WHERE instance_id=? ORDER BY id", (rec.id,))]
            active.append(ActiveInstance(rec, self.history(rec.id), inbox, work))
        return active

    def entity(self, entity_id: str) -> EntityRecord | None:
        """The entity row for scheduler id ``@name@key``, or ``None``."""
        row = self._db.execute("SELECT * FROM entities WHERE id=?", (entity_id,)).fetchone()
        return _entity(row) if row else None

    def query_entities(self, name: str | None, *, after: str | None = None, limit: int = 100,
                       last_op_from: str | None = None, last_op_to: str | None = None) -> list[EntityRecord]:
        """Existing entities (of ``name`` when given), by scheduler id, after ``after``."""
        clauses: list[str] = ["exists_ = 1"]
        args: list[Any] = []
        if name:
            clauses.append("name = ?")
            args.append(name)
        if after:
            clauses.append("id > ?")
            args.append(after)
        if last_op_from:
            clauses.append("last_op >= ?")
            args.append(last_op_from)
        if last_op_to:
            clauses.append("last_op <= ?")
            args.append(last_op_to)
        sql = f"SELECT * FROM entities WHERE {' AND '.join(clauses)} ORDER BY id LIMIT ?"
        return [_entity(row) for row in self._db.execute(sql, [*args, limit])]

    def load_entity_queue(self) -> list[EntityQueueRow]:
        """Every queued entity request, in arrival order."""
        return [EntityQueueRow(i, e, json.loads(r)) for i, e, r in
                self._db.execute("SELECT * FROM entity_queue ORDER BY id")]

    def _tx(self) -> _Transaction:
        return _Transaction(self._db)


def _entity(row: tuple[Any, ...]) -> EntityRecord:
    return EntityRecord(row[0], row[1], row[2], bool(row[3]), row[4], row[5])


class _Transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on error)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self._db.execute("COMMIT")
        else:
            self._db.execute("ROLLBACK")
