"""Catalogue metadata (items, fusion weights, feedback counters) in SQLite, WAL mode.

Why SQLite: it is in the standard library, made for several processes on one host (WAL lets
every worker read while one writes, without reader locks), commits a row in constant time
whatever the catalogue size (items.json was rewritten whole on every add: seconds at 1M items),
and answers lookups by id or user from disk pages every worker shares, so no worker keeps a
private copy of the catalogue in memory. A key-value file per item or an append-only log would
need the compaction, locking and crash recovery that SQLite already has.

An item exists once its row is committed. Each row records `seq`, the store manifest generation
whose segments hold its vectors (written and committed before the row): a worker's state built
from manifest generation G shows only rows with seq <= G, so catalogue and vectors agree even
while that worker has not yet picked up a newer manifest.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from flashfit_server.atomic import fault_point

FORMAT_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, category TEXT, color TEXT, tags TEXT NOT NULL,
    user_id TEXT, caption TEXT NOT NULL, image_file TEXT NOT NULL, created_at TEXT NOT NULL,
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS items_by_user ON items(user_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
COLUMNS = "id, name, category, color, tags, user_id, caption, image_file, created_at"
_IN_CHUNK = 500  # ids per IN (...) query, below SQLite's variable limit


@dataclass
class Item:
    id: int
    name: str
    category: str | None = None
    color: str | None = None
    tags: list[str] = field(default_factory=list)
    user_id: str | None = None
    caption: str = ""
    image_file: str = ""
    created_at: str = ""

    def to_api(self) -> dict:
        data = asdict(self)
        data.pop("image_file")
        data["image_url"] = f"/api/items/{self.id}/image"
        return data

    def row(self, seq: int) -> tuple:
        return (self.id, self.name, self.category, self.color, json.dumps(self.tags), self.user_id,
                self.caption, self.image_file, self.created_at, seq)

    @classmethod
    def from_row(cls, row: tuple) -> Item:
        tags = json.loads(row[4])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ValueError(f"item {row[0]}: tags must be a list of strings")
        return cls(row[0], row[1], row[2], row[3], tags, row[5], row[6], row[7], row[8])


@dataclass
class LegacyCatalog:
    """items.json of the format before the SQLite catalogue; read once, to migrate."""

    items: dict[int, Item]
    next_id: int

    @classmethod
    def load(cls, path: Path) -> LegacyCatalog:
        data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        items = {int(raw["id"]): Item(**raw) for raw in data.get("items", [])}
        return cls(items, int(data.get("next_id", max(items, default=0) + 1)))


class CatalogDB:
    """One SQLite file; a connection per thread (sqlite3 connections are not shared)."""

    def __init__(self, path: Path, fsync_commits: bool = False):
        self.path = path
        self.fsync_commits = fsync_commits
        self._local = threading.local()

    def connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=True)
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL: in WAL mode a commit is a write() of its frames to the -wal file, no fsync
            # (those come at checkpoints). It survives the process being killed at any point (the
            # kernel holds the written pages), which is the store's guarantee; a power loss may
            # roll back the last commits, never corrupt the file. See datastore.py, "Durability".
            conn.execute(f"PRAGMA synchronous={'FULL' if self.fsync_commits else 'NORMAL'}")
            self._local.conn = conn
        return conn

    def create(self) -> None:
        conn = self.connect()
        conn.executescript(SCHEMA)
        conn.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?)", (str(FORMAT_VERSION),))

    # --- reads ------------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        row = self.connect().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def next_id(self) -> int:
        (max_id,) = self.connect().execute("SELECT COALESCE(MAX(id), 0) FROM items").fetchone()
        return max(int(self.meta("next_id") or 1), max_id + 1)

    def get(self, item_id: int, max_seq: int | None = None) -> Item | None:
        sql = f"SELECT {COLUMNS} FROM items WHERE id = ?"
        args: tuple = (item_id,)
        if max_seq is not None:
            sql, args = sql + " AND seq <= ?", (item_id, max_seq)
        row = self.connect().execute(sql, args).fetchone()
        return Item.from_row(row) if row else None

    def count(self, max_seq: int | None = None) -> int:
        if max_seq is None:
            return int(self.connect().execute("SELECT COUNT(*) FROM items").fetchone()[0])
        return int(self.connect().execute("SELECT COUNT(*) FROM items WHERE seq <= ?", (max_seq,)).fetchone()[0])

    def all_ids(self) -> set[int]:
        return {row[0] for row in self.connect().execute("SELECT id FROM items")}

    def fetch(self, ids: Iterable[int], max_seq: int) -> dict[int, Item]:
        found: dict[int, Item] = {}
        ids = [int(i) for i in ids]
        conn = self.connect()
        for first in range(0, len(ids), _IN_CHUNK):
            chunk = ids[first : first + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            for row in conn.execute(f"SELECT {COLUMNS} FROM items WHERE seq <= ? AND id IN ({marks})", (max_seq, *chunk)):
                found[row[0]] = Item.from_row(row)
        return found

    def present(self, ids: Iterable[int], max_seq: int) -> set[int]:
        ids = [int(i) for i in ids]
        found: set[int] = set()
        conn = self.connect()
        for first in range(0, len(ids), _IN_CHUNK):
            chunk = ids[first : first + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            found.update(r[0] for r in conn.execute(f"SELECT id FROM items WHERE seq <= ? AND id IN ({marks})", (max_seq, *chunk)))
        return found

    # --- writes (callers hold the data folder's writer lock) --------------------------------

    def insert(self, items: list[Item], seq: int, next_id: int) -> None:
        conn = self.connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("INSERT INTO items VALUES (?,?,?,?,?,?,?,?,?,?)", [i.row(seq) for i in items])
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('next_id', ?)", (str(next_id),))
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('committed_seq', ?)", (str(seq),))
            fault_point("before-commit:catalog")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def delete(self, item_id: int, seq: int) -> Item | None:
        """Remove a row; `seq` is the manifest generation that will tombstone its vectors."""
        conn = self.connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            item = self.get(item_id)
            if item is not None:
                conn.execute("DELETE FROM items WHERE id = ?", (item_id,))
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('committed_seq', ?)", (str(seq),))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return item

    def set_meta(self, key: str, value: str) -> None:
        self.connect().execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def update_meta(self, key: str, change) -> str:  # noqa: ANN001 - (str | None) -> str
        """Read-modify-write of one meta value in one write transaction (feedback counters)."""
        conn = self.connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            value = change(self.meta(key))
            conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return value

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class CatalogItems(Mapping[int, Item]):
    """The items a state shows: rows committed with seq <= its manifest generation."""

    def __init__(self, db: CatalogDB, max_seq: int):
        self._db = db
        self._max_seq = max_seq

    def __getitem__(self, item_id: int) -> Item:
        item = self._db.get(int(item_id), self._max_seq)
        if item is None:
            raise KeyError(item_id)
        return item

    def __contains__(self, item_id: object) -> bool:
        return isinstance(item_id, int) and self._db.get(item_id, self._max_seq) is not None

    def __iter__(self) -> Iterator[int]:
        rows = self._db.connect().execute("SELECT id FROM items WHERE seq <= ? ORDER BY id", (self._max_seq,))
        return iter([r[0] for r in rows])

    def __len__(self) -> int:
        return self._db.count(self._max_seq)

    def values(self) -> list[Item]:  # type: ignore[override]
        rows = self._db.connect().execute(f"SELECT {COLUMNS} FROM items WHERE seq <= ? ORDER BY id", (self._max_seq,))
        return [Item.from_row(r) for r in rows]


class CatalogView:
    """What DataState.catalog offers: item lookups pinned to one manifest generation."""

    def __init__(self, db: CatalogDB, max_seq: int):
        self.db = db
        self.max_seq = max_seq
        self.items = CatalogItems(db, max_seq)

    def fetch(self, ids: Iterable[int]) -> dict[int, Item]:
        return self.db.fetch(ids, self.max_seq)

    def present(self, ids: Iterable[int]) -> set[int]:
        return self.db.present(ids, self.max_seq)

    def ids_for_user(self, user_id: str) -> list[int]:
        rows = self.db.connect().execute(
            "SELECT id FROM items WHERE user_id = ? AND seq <= ? ORDER BY id", (user_id, self.max_seq)
        )
        return [r[0] for r in rows]

    def page(self, offset: int, limit: int, user_id: str | None = None) -> tuple[list[Item], int]:
        where = "seq <= ?"
        args: list[int | str] = [self.max_seq]
        if user_id is not None:
            where, args = where + " AND user_id = ?", [*args, user_id]
        conn = self.db.connect()
        total = int(conn.execute(f"SELECT COUNT(*) FROM items WHERE {where}", args).fetchone()[0])
        rows = conn.execute(f"SELECT {COLUMNS} FROM items WHERE {where} ORDER BY id LIMIT ? OFFSET ?", [*args, limit, offset])
        return [Item.from_row(r) for r in rows], total
