"""maggma's Mongo-like stores with the bulk operations matloop's hot paths need.

The same methods as :class:`~matloop.store.sqlite.SQLiteStore`, so the facade has one code
path for every backend: on MongoDB each is one round trip to the server (``update_many``,
one ``bulk_write``, ``find_one_and_update``, one ``aggregate``). montydb lacks some of them
(no ``bulk_write``, no ``aggregate``, no secondary indexes) and falls back to a document at
a time: it is kept so that older campaigns stay readable, not for speed.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from maggma.stores import MemoryStore, MongoURIStore, MontyStore


class BulkOperations:
    """Bulk writes and counts over the store's own pymongo-like collection."""

    #: montydb: no bulk_write, no aggregate, no secondary indexes
    per_document = False

    @property
    def collection(self) -> Any:
        return self._collection  # type: ignore[attr-defined]

    def insert_many(self, docs: list[dict]) -> None:
        if docs:
            self.collection.insert_many([dict(d) for d in docs])

    def insert_unless(self, criteria: dict, doc: dict) -> bool:
        """Insert ``doc`` unless a document matches ``criteria``; returns whether it was
        inserted. An upsert: on MongoDB two racing upserts of one ``_id`` cannot both insert
        (the loser gets a duplicate-key error)."""
        from pymongo.errors import DuplicateKeyError

        doc = dict(doc)
        if "_id" in doc:  # the _id goes in the query: montydb refuses it in $setOnInsert
            criteria = {"_id": doc.pop("_id"), **criteria}
        try:
            result = self.collection.update_one(criteria, {"$setOnInsert": doc}, upsert=True)
        except DuplicateKeyError:
            return False
        return result.upserted_id is not None

    def update_many(self, criteria: dict, update: dict) -> int:
        return self.collection.update_many(criteria, update).modified_count

    def update_each(self, changes: list[tuple[dict, dict]]) -> None:
        if not changes:
            return
        if self.per_document:
            for criteria, update in changes:
                self.collection.update_one(criteria, update)
            return
        from pymongo import UpdateOne

        self.collection.bulk_write([UpdateOne(c, u) for c, u in changes], ordered=False)

    def find_one_and_update(self, criteria: dict, update: dict) -> dict | None:
        return self.collection.find_one_and_update(criteria, update)

    def count_by(self, field: str, criteria: dict | None = None) -> dict[Any, int]:
        if self.per_document:
            found = self.collection.find(criteria or {}, {field: 1})
            return dict(Counter(doc.get(field) for doc in found))
        pipeline = [{"$match": criteria or {}}, {"$group": {"_id": f"${field}", "n": {"$sum": 1}}}]
        return {row["_id"]: row["n"] for row in self.collection.aggregate(pipeline)}

    def ensure_indexes(self, indexes: list[tuple[str, ...]]) -> None:
        if self.per_document:
            return
        for fields in indexes:
            self.collection.create_index([(f, 1) for f in fields])


class BulkMongoURIStore(BulkOperations, MongoURIStore):
    """A MongoDB collection (``mongodb://``)."""


class BulkMemoryStore(BulkOperations, MemoryStore):
    """A mongomock collection (``memory://``)."""


class BulkMontyStore(BulkOperations, MontyStore):
    """A montydb collection (``monty://``)."""

    per_document = True
