"""The embedded default store: JSON documents in one SQLite file, with real indexes.

``sqlite://PATH`` keeps every collection of a campaign database in the SQLite file PATH
(write-ahead log, so readers never wait for a writer). Each collection is a table of JSON
documents; an index on fields ``(a, b)`` is an SQLite expression index on
``json_extract(doc, '$.a'), json_extract(doc, '$.b')``, and a query's equality and ``$in``
conditions on indexed fields are answered by SQL with that index. Whatever else a Mongo
filter says is checked in Python with mongomock's matcher, so any filter works, and the
indexed ones are fast.

Every write runs in one ``BEGIN IMMEDIATE`` transaction: a multi-document write lands whole
or not at all (a killed process leaves no half), and a read-modify-write such as
:meth:`SQLiteStore.find_one_and_update` is atomic across processes, which is what claims
need.

Why not neosqlite (measured, 100,000 candidate documents, 2 shared cores): its query
translator wraps every equality in an ``OR EXISTS (json_each ...)`` for array semantics and
turns ``$in`` into ``json_each``, so its indexes go unused: a keyed ``replace_one`` upsert
took 0.46 s, a ``$in`` of 1,000 ids 0.5 s, a 100-operation ``bulk_write`` 4-6 s, and an
``$or`` of equalities fell back to a 12 s Python scan. Here the same lookups take
milliseconds (``benchmarks/store_scale.py``).
"""

from __future__ import annotations

import base64
import copy
import gc
import json
import math
import os
import re
import sqlite3
import threading
from collections import Counter
from datetime import datetime
from typing import TYPE_CHECKING, Any

from maggma.core import Store

if TYPE_CHECKING:
    from collections.abc import Iterator

_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_SQL_VARIABLES = 30000  # below SQLite's 32,766 bound parameters per statement
_SPECIAL = ('"$date"', '"$binary"', '"$float"')


# -- one shared connection per database file and process -------------------------------------
class _Database:
    """An SQLite connection shared by every collection of one file in one process."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.RLock()  # one statement at a time: Prefect runs tasks in threads
        self.users = 0
        self.db = sqlite3.connect(
            path, timeout=120, isolation_level=None, check_same_thread=False
        )
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # WAL: a killed process loses nothing

    def transaction(self) -> _Transaction:
        return _Transaction(self)


class _Transaction:
    def __init__(self, database: _Database) -> None:
        self.database = database

    def __enter__(self) -> sqlite3.Connection:
        self.database.lock.acquire()
        self.database.db.execute("BEGIN IMMEDIATE")
        return self.database.db

    def __exit__(self, kind, value, traceback) -> None:
        try:
            self.database.db.execute("COMMIT" if kind is None else "ROLLBACK")
        finally:
            self.database.lock.release()


_DATABASES: dict[tuple[int, str], _Database] = {}
_DATABASES_LOCK = threading.Lock()


def _database(path: str) -> _Database:
    key = (os.getpid(), os.path.abspath(path))  # a forked child opens its own connection
    with _DATABASES_LOCK:
        if key not in _DATABASES:
            _DATABASES[key] = _Database(path)
        database = _DATABASES[key]
        database.users += 1
        return database


def _release(database: _Database) -> None:
    with _DATABASES_LOCK:
        database.users -= 1
        if database.users <= 0:
            _DATABASES.pop((os.getpid(), os.path.abspath(database.path)), None)
            with database.lock:
                database.db.close()


# -- documents <-> JSON ----------------------------------------------------------------------
def _encode(value: Any) -> Any:
    from enum import Enum

    if isinstance(value, datetime):
        return {"$date": value.isoformat()}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$binary": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, Enum):
        return value.value
    if hasattr(value, "as_dict"):  # MSONable objects, as maggma's stores keep them
        return value.as_dict()
    if hasattr(value, "tolist"):  # numpy arrays and numbers
        return value.tolist()
    if hasattr(value, "binary"):  # bson ObjectId-like values
        return str(value)
    raise TypeError(f"cannot store a {type(value).__name__} in a document")


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as ``{"$float": "nan"}``: SQLite's JSON refuses them."""
    if isinstance(value, float) and not math.isfinite(value):
        return {"$float": repr(value)}
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _decode_special(obj: dict) -> Any:
    if len(obj) == 1:
        if "$float" in obj:
            return float(obj["$float"])
        if "$date" in obj:
            return datetime.fromisoformat(obj["$date"])
        if "$binary" in obj:
            return base64.b64decode(obj["$binary"])
    return obj


def dumps(doc: dict) -> str:
    doc = {k: v for k, v in doc.items() if k != "_id"}
    try:
        return json.dumps(doc, default=_encode, allow_nan=False)
    except ValueError:  # a NaN or an infinity somewhere: rare, so only then walk the document
        return json.dumps(_finite(doc), default=_encode, allow_nan=False)


def loads(text: str, rowid: int) -> dict:
    hook = _decode_special if any(s in text for s in _SPECIAL) else None
    doc = json.loads(text, object_hook=hook)
    doc["_id"] = rowid
    return doc


# -- Mongo update operators ------------------------------------------------------------------
def _parent(doc: dict, path: str, create: bool) -> tuple[dict | None, str]:
    *head, last = path.split(".")
    node: Any = doc
    for part in head:
        if not isinstance(node, dict):
            return None, last
        if part not in node or node[part] is None:
            if not create:
                return None, last
            node[part] = {}
        node = node[part]
    return (node if isinstance(node, dict) else None), last


def apply_update(doc: dict, update: dict) -> dict:
    """``doc`` changed in place by a Mongo update (``$set``, ``$unset``, ``$inc``,
    ``$push``) or replaced by a plain document. Values are not copied: the caller writes
    the result out at once."""
    if not any(k.startswith("$") for k in update):
        return {**update, "_id": doc.get("_id")}
    new = doc
    for op, fields in update.items():
        for path, value in fields.items():
            parent, last = _parent(new, path, create=op != "$unset")
            if parent is None:
                if op == "$unset":
                    continue
                raise ValueError(f"cannot {op} {path!r}: a parent is not a document")
            if op == "$set":
                parent[last] = value
            elif op == "$unset":
                parent.pop(last, None)
            elif op == "$inc":
                parent[last] = parent.get(last, 0) + value
            elif op == "$push":
                items = value["$each"] if isinstance(value, dict) and "$each" in value else [value]
                parent.setdefault(last, []).extend(items)
            elif op == "$setOnInsert":
                continue
            else:
                raise NotImplementedError(f"update operator {op} is not supported by sqlite://")
    return new


def _sort_value(value: Any) -> tuple:
    # Mongo's order across types: null, numbers, strings, everything else
    if value is None:
        return (0, 0)
    if isinstance(value, bool | int | float):
        return (1, value)
    if isinstance(value, str):
        return (2, value)
    return (3, str(value))


def _get(doc: dict, path: str) -> Any:
    node: Any = doc
    for part in path.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _project(doc: dict, properties: list[str] | None, without: list[str] | None = None) -> dict:
    if without:  # what SQL has not cut out already (nested fields, fields the filter named)
        for path in without:
            if "." not in path:
                doc.pop(path, None)
                continue
            parent, last = _parent(doc, path, create=False)
            if parent is not None:
                parent.pop(last, None)
    if not properties:
        return doc
    # as MongoDB: a field the document lacks is left out, not returned as null
    out: dict = {"_id": doc["_id"]}
    for path in properties:
        if "." not in path:  # the common case, fast
            if path in doc:
                out[path] = doc[path]
            continue
        source, last = _parent(doc, path, create=False)
        if source is None or last not in source:
            continue
        parent, last = _parent(out, path, create=True)
        if parent is not None:
            parent[last] = source[last]
    return out


class SQLiteStore(Store):
    """A maggma store over one collection (table) of an SQLite database file.

    Besides maggma's API it offers the bulk operations matloop's hot paths use:
    :meth:`update_many`, :meth:`update_each`, :meth:`find_one_and_update` (atomic across
    processes), :meth:`count_by` and :meth:`ensure_indexes` (compound indexes).

    Examples
    --------
    >>> import tempfile, os
    >>> store = SQLiteStore(os.path.join(tempfile.mkdtemp(), "x.db"), "things", key="name")
    >>> store.connect()
    >>> store.update([{"name": "a", "n": 1}, {"name": "b", "n": 2}])
    >>> store.count({"n": {"$gt": 1}})
    1
    >>> store.close()
    """

    def __init__(
        self, database_path: str, collection_name: str, key: str = "_id", **kwargs: Any
    ) -> None:
        if not re.match(r"^[A-Za-z0-9_.-]+$", collection_name):
            raise ValueError(f"collection name {collection_name!r} is not a plain name")
        self.database_path = str(database_path)
        self.collection_name = collection_name
        self.kwargs = kwargs
        self._database: _Database | None = None
        self._indexed: set[str] = set()
        super().__init__(key=key, **kwargs)

    # -- maggma plumbing -------------------------------------------------------------------
    @property
    def name(self) -> str:
        return f"sqlite://{self.database_path}/{self.collection_name}"

    @property
    def _collection(self):  # maggma's abstract hook; this store is its own collection
        return self

    def connect(self, force_reset: bool = False) -> None:
        if self._database is not None and not force_reset:
            return
        if self._database is not None:
            _release(self._database)
        self._database = _database(self.database_path)
        with self._write() as db:
            db.execute(
                f'CREATE TABLE IF NOT EXISTS "{self.collection_name}" '
                "(id INTEGER PRIMARY KEY, doc TEXT NOT NULL)"
            )
        self._indexed = self._read_indexes()
        if self.key != "_id":
            self.ensure_indexes([(self.key,)])

    def close(self) -> None:
        if self._database is not None:
            _release(self._database)
            self._database = None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SQLiteStore) and (
            (self.database_path, self.collection_name)
            == (other.database_path, other.collection_name)
        )

    def __hash__(self) -> int:
        return hash((self.database_path, self.collection_name))

    # -- indexes ---------------------------------------------------------------------------
    def _index_name(self, fields: tuple[str, ...]) -> str:
        return "ix__" + self.collection_name + "__" + "__".join(fields)

    def _read_indexes(self) -> set[str]:
        prefix = "ix__" + self.collection_name + "__"
        rows = self._db().execute(
            "SELECT name FROM sqlite_master WHERE type='index' AND tbl_name=?",
            (self.collection_name,),
        ).fetchall()
        return {f for (n,) in rows if n.startswith(prefix) for f in n[len(prefix):].split("__")}

    def ensure_indexes(self, indexes: list[tuple[str, ...]]) -> None:
        """Create (compound) indexes that do not exist yet."""
        for fields in indexes:
            if not all(_FIELD.match(f) for f in fields):
                raise ValueError(f"cannot index {fields}: not plain field names")
            columns = ", ".join(f"json_extract(doc, '$.{f}')" for f in fields)
            with self._write() as db:
                db.execute(
                    f'CREATE INDEX IF NOT EXISTS "{self._index_name(tuple(fields))}" '
                    f'ON "{self.collection_name}" ({columns})'
                )
            self._indexed.update(fields)

    def ensure_index(self, key: str, unique: bool = False) -> bool:
        self.ensure_indexes([(key,)])
        return True

    # -- low level -------------------------------------------------------------------------
    def _db(self) -> sqlite3.Connection:
        if self._database is None:
            raise RuntimeError(f"{self.name} is not connected")
        return self._database.db

    def _write(self) -> _Transaction:
        if self._database is None:
            raise RuntimeError(f"{self.name} is not connected")
        return self._database.transaction()

    def _where(self, criteria: dict) -> tuple[str, list, bool]:
        """SQL for the indexed equality / ``$in`` conditions of a filter, its parameters,
        and whether SQL says everything (no Python check needed)."""
        clauses, params, exact = [], [], True
        for field, cond in criteria.items():
            column = "id" if field == "_id" else f"json_extract(doc, '$.{field}')"
            usable = field == "_id" or (field in self._indexed and _FIELD.match(field))
            scalar = (str, int, float)
            if usable and isinstance(cond, scalar) and not isinstance(cond, bool):
                clauses.append(f"{column} = ?")
                params.append(cond)
            elif (
                usable and isinstance(cond, dict) and list(cond) == ["$in"]
                and len(cond["$in"]) <= _SQL_VARIABLES
                and all(isinstance(v, scalar) and not isinstance(v, bool) for v in cond["$in"])
            ):
                if not cond["$in"]:
                    clauses.append("0")
                else:
                    clauses.append(f"{column} IN ({','.join('?' * len(cond['$in']))})")
                    params.extend(cond["$in"])
            else:
                exact = False
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params, exact

    def _rows(
        self,
        criteria: dict | None,
        limit: int = 0,
        fields: list[str] | None = None,
        without: list[str] | None = None,
    ) -> Iterator[dict]:
        """Documents matching ``criteria``, in insertion order; with ``fields``, at least
        those top-level fields; with ``without``, lacking those top-level fields (SQLite cuts
        them out, so big values such as structures are never decoded)."""
        from mongomock.filtering import filter_applies

        criteria = criteria or {}
        where, params, exact = self._where(criteria)
        column = "doc"
        named = [*criteria, *(fields or [])]  # the Python check below (if any) needs these
        if fields and all(_FIELD.match(f) for f in named):
            keep = sorted({f.split(".")[0] for f in named} - {"_id"})
            # ``doc -> fullkey`` keeps each value's JSON text as stored (json_each's own
            # value column would turn true into 1 and round floats to 15 digits)
            column = ("(SELECT json_group_object(key, doc -> fullkey) FROM json_each(doc) "
                      f"WHERE key IN ({','.join('?' * len(keep))}))")
            params = [*keep, *params]
        elif without and all(_FIELD.match(f) for f in [*without, *named]):
            drop = sorted({f for f in without if "." not in f}
                          - {f.split(".")[0] for f in named})
            if drop:  # json_remove keeps the rest's JSON text as stored
                column = f"json_remove(doc, {','.join('?' * len(drop))})"
                params = [*(f"$.{f}" for f in drop), *params]
        sql = f'SELECT id, {column} FROM "{self.collection_name}"{where} ORDER BY id'
        if exact and limit:
            sql += f" LIMIT {int(limit)}"
        assert self._database is not None, f"{self.name} is not connected"
        with self._database.lock:
            rows = self._db().execute(sql, params).fetchall()
        # decode in one go with the cyclic GC paused: its passes over the growing list of
        # fresh documents made big reads several times slower (measured at 5,000 candidates)
        paused = gc.isenabled()
        gc.disable()
        try:
            docs = [loads(text, rowid) for rowid, text in rows]
        finally:
            if paused:
                gc.enable()
        found = 0
        for doc in docs:
            if exact or filter_applies(criteria, doc):
                yield doc
                found += 1
                if limit and found >= limit:
                    return

    # -- reads -----------------------------------------------------------------------------
    def count(self, criteria: dict | None = None, hint: Any = None) -> int:
        where, params, exact = self._where(criteria or {})
        if exact:
            with self._database.lock:  # type: ignore[union-attr]
                sql = f'SELECT COUNT(*) FROM "{self.collection_name}"{where}'
                return self._db().execute(sql, params).fetchone()[0]
        return sum(1 for _ in self._rows(criteria))

    def count_by(self, field: str, criteria: dict | None = None) -> dict[Any, int]:
        """How many documents matching ``criteria`` hold each value of ``field``."""
        where, params, exact = self._where(criteria or {})
        if exact and _FIELD.match(field):
            sql = (f"SELECT json_extract(doc, '$.{field}'), COUNT(*) "
                   f'FROM "{self.collection_name}"{where} GROUP BY 1')
            with self._database.lock:  # type: ignore[union-attr]
                return dict(self._db().execute(sql, params).fetchall())
        return dict(Counter(_get(doc, field) for doc in self._rows(criteria)))

    def query(
        self,
        criteria: dict | None = None,
        properties: dict | list | None = None,
        sort: dict | None = None,
        hint: Any = None,
        skip: int = 0,
        limit: int = 0,
    ) -> Iterator[dict]:
        without = None
        if isinstance(properties, dict):
            if properties and not any(v for k, v in properties.items() if k != "_id"):
                # an exclusion: {"a": 0, ...} (the _id always comes back here)
                without = [k for k in properties if k != "_id"]
                properties = None
            else:
                properties = [k for k, v in properties.items() if v]
        fields = [*properties, *(sort or {})] if properties else None
        if without:
            fields = None
        if not sort:
            docs = self._rows(criteria, limit=(skip + limit) if limit else 0, fields=fields,
                              without=without)
            for i, doc in enumerate(docs):
                if i >= skip:
                    yield _project(doc, properties, without)
            return
        docs = list(self._rows(criteria, fields=fields, without=[
            f for f in without or [] if f.split(".")[0] not in sort]))
        for field, direction in reversed(list(sort.items())):
            descending = int(getattr(direction, "value", direction)) < 0
            docs.sort(key=lambda d, f=field: _sort_value(_get(d, f)), reverse=descending)
        docs = docs[skip:skip + limit] if limit else docs[skip:]
        for doc in docs:
            yield _project(doc, properties, without)

    def groupby(
        self,
        keys: list[str] | str,
        criteria: dict | None = None,
        properties: dict | list | None = None,
        sort: dict | None = None,
        skip: int = 0,
        limit: int = 0,
    ) -> Iterator[tuple[dict, list[dict]]]:
        keys = keys if isinstance(keys, list) else [keys]
        groups: dict[str, tuple[dict, list[dict]]] = {}
        for doc in self.query(criteria, sort=sort):
            values = {k: _get(doc, k) for k in keys}
            token = json.dumps(values, sort_keys=True, default=str)
            groups.setdefault(token, (values, []))[1].append(doc)
        yield from list(groups.values())[skip:skip + limit] if limit else groups.values()

    # -- writes ----------------------------------------------------------------------------
    def update(self, docs: list[dict] | dict, key: list | str | None = None) -> None:
        """Upsert ``docs`` by ``key`` (default: the store's key), all in one transaction."""
        docs = docs if isinstance(docs, list) else [docs]
        key = key or self.key
        fields = key if isinstance(key, list) else [key]
        payload = [(doc, dumps(doc)) for doc in docs]  # a bad value fails before any write
        with self._write() as db:
            for doc, text in payload:
                rowid = self._first_id({f: doc.get(f) for f in fields})
                if rowid is None:
                    db.execute(f'INSERT INTO "{self.collection_name}" (doc) VALUES (?)',
                               (text,))
                else:
                    db.execute(f'UPDATE "{self.collection_name}" SET doc = ? WHERE id = ?',
                               (text, rowid))

    def _first_id(self, criteria: dict) -> int | None:
        where, params, exact = self._where(criteria)
        if not exact:
            found = next(self._rows(criteria, limit=1), None)
            return None if found is None else found["_id"]
        sql = f'SELECT id FROM "{self.collection_name}"{where} ORDER BY id LIMIT 1'
        row = self._db().execute(sql, params).fetchone()
        return None if row is None else row[0]

    def insert_many(self, docs: list[dict]) -> None:
        with self._write() as db:
            db.executemany(f'INSERT INTO "{self.collection_name}" (doc) VALUES (?)',
                           [(dumps(d),) for d in docs])

    def _apply(
        self, db: sqlite3.Connection, criteria: dict, update: dict, limit: int = 0,
        keep: bool = False,
    ) -> list[dict]:
        """Update the matching documents; returns them (as they were when ``keep``)."""
        changed = []
        for doc in list(self._rows(criteria, limit=limit)):
            before = copy.deepcopy(doc) if keep else doc
            db.execute(f'UPDATE "{self.collection_name}" SET doc = ? WHERE id = ?',
                       (dumps(apply_update(doc, update)), doc["_id"]))
            changed.append(before)
        return changed

    def insert_unless(self, criteria: dict, doc: dict) -> bool:
        """Insert ``doc`` unless a document matches ``criteria``, in one write transaction
        (atomic across processes); returns whether it was inserted."""
        with self._write() as db:
            if next(self._rows(criteria, limit=1), None) is not None:
                return False
            db.execute(f'INSERT INTO "{self.collection_name}" (doc) VALUES (?)', (dumps(doc),))
        return True

    def update_many(self, criteria: dict, update: dict) -> int:
        """Apply one Mongo update to every matching document; returns how many."""
        with self._write() as db:
            return len(self._apply(db, criteria, update))

    def update_each(self, changes: list[tuple[dict, dict]]) -> None:
        """Apply (filter, update) pairs, one document each, in one transaction."""
        with self._write() as db:
            for criteria, update in changes:
                self._apply(db, criteria, update, limit=1)

    def find_one_and_update(self, criteria: dict, update: dict) -> dict | None:
        """Atomically update the first matching document; returns it as it was."""
        with self._write() as db:
            changed = self._apply(db, criteria, update, limit=1, keep=True)
        return changed[0] if changed else None

    def remove_docs(self, criteria: dict) -> None:
        with self._write() as db:
            ids = [(doc["_id"],) for doc in self._rows(criteria)]
            db.executemany(f'DELETE FROM "{self.collection_name}" WHERE id = ?', ids)
