"""The SQLite engine under ``sqlite://``: Mongo filters, indexes that SQL really uses,
whole-or-nothing writes, and claims that are atomic across processes."""

from __future__ import annotations

import json
import math
import multiprocessing
import sqlite3
from datetime import UTC, datetime

import mongomock
import pytest

from matloop.store.sqlite import SQLiteStore, apply_update


@pytest.fixture
def things(tmp_path):
    store = SQLiteStore(str(tmp_path / "x.db"), "things", key="name")
    store.connect()
    store.ensure_indexes([("campaign", "name"), ("campaign", "status")])
    yield store
    store.close()


DOCS = [
    {"campaign": "c", "name": f"n{i}", "status": ["a", "b", "c"][i % 3], "round": i % 4,
     "tags": ["x", "y"] if i % 2 else ["z"], "meta": {"k": i, "ok": i % 5 == 0},
     "score": None if i % 7 == 0 else i / 3, "flag": i % 3 == 0, "x": 0.1 + i * 0.2}
    for i in range(40)
]

FILTERS = [
    {"campaign": "c", "status": "a"},
    {"campaign": "c", "name": {"$in": ["n1", "n2", "missing"]}},
    {"tags": "y", "round": {"$gte": 2}},
    {"meta.ok": True},
    {"score": None},
    {"$or": [{"status": "a"}, {"meta.k": {"$lt": 3}}]},
    {"campaign": "c", "name": {"$in": []}},
    {"status": {"$ne": "b"}, "score": {"$exists": True}},
]


@pytest.mark.parametrize("criteria", FILTERS)
def test_filters_match_what_mongomock_matches(things, criteria):
    things.update([dict(d) for d in DOCS])
    reference = mongomock.MongoClient().db.things
    reference.insert_many([dict(d) for d in DOCS])
    expected = sorted(d["name"] for d in reference.find(criteria))
    assert sorted(d["name"] for d in things.query(criteria)) == expected
    assert things.count(criteria) == len(expected)


def test_queries_on_indexed_fields_use_the_index(things):
    things.update([dict(d) for d in DOCS])
    assert {"campaign", "name", "status"} <= things._read_indexes()
    db = sqlite3.connect(things.database_path)
    where, params, exact = things._where({"campaign": "c", "name": {"$in": ["n1", "n2"]}})
    assert exact
    plan = " ".join(str(row) for row in db.execute(
        f'EXPLAIN QUERY PLAN SELECT id, doc FROM "things"{where}', params))
    assert "USING INDEX ix__things__campaign__name" in plan, plan


def test_sort_skip_limit_and_projection(things):
    things.update([dict(d) for d in DOCS])
    docs = list(things.query({"campaign": "c"}, properties=["name", "meta.k"],
                             sort={"round": -1, "name": 1}, skip=1, limit=3))
    assert [d["name"] for d in docs] == ["n15", "n19", "n23"]
    assert docs[0]["meta"] == {"k": 15} and "status" not in docs[0]


def test_upsert_by_key_keeps_one_document_and_values_round_trip(things):
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    things.update({"name": "a", "n": 1, "at": at, "blob": b"\x00\x01"})
    things.update({"name": "a", "n": 2, "at": at, "blob": b"\x00\x01",
                   "odd": [float("nan"), {"x": float("-inf")}]})
    things.update_many({"name": "a"}, {"$set": {"std": float("inf")}})
    (doc,) = things.query({"name": "a"})
    assert (doc["n"], doc["at"], doc["blob"]) == (2, at, b"\x00\x01")
    assert math.isnan(doc["odd"][0]) and doc["odd"][1] == {"x": float("-inf")}
    assert doc["std"] == float("inf")


def test_update_operators_and_counts(things):
    things.update([dict(d) for d in DOCS])
    assert things.update_many({"campaign": "c", "status": "a"},
                              {"$inc": {"round": 10}, "$push": {"tags": {"w": 1}}}) == 14
    assert things.count_by("status", {"campaign": "c"}) == {"a": 14, "b": 13, "c": 13}
    doc = things.query_one({"name": "n0"})
    assert doc["round"] == 10 and doc["tags"][-1] == {"w": 1}
    things.update_each([({"name": "n1"}, {"$set": {"meta.k": -1}, "$unset": {"score": 1}})])
    doc = things.query_one({"name": "n1"})
    assert doc["meta"] == {"k": -1, "ok": False} and "score" not in doc
    assert apply_update({"a": 1}, {"b": 2}) == {"b": 2, "_id": None}  # a replacement


def test_a_failing_write_leaves_nothing_half_done(things):
    things.update([{"name": "a", "n": 1}, {"name": "b", "n": 1}])
    with pytest.raises(ValueError, match="not a document"):
        # the first document can be changed, the second cannot: neither is
        things.update_each([({"name": "a"}, {"$set": {"n": 2}}),
                            ({"name": "b"}, {"$set": {"n.deeper": 2}})])
    assert sorted(d["n"] for d in things.query()) == [1, 1]
    with pytest.raises(TypeError, match="cannot store"):
        things.insert_many([{"name": "c"}, {"name": "d", "bad": object()}])
    assert things.count() == 2


def _claim_all(path: str, out) -> None:
    store = SQLiteStore(path, "things", key="name")
    store.connect()
    mine = []
    while (doc := store.find_one_and_update(
        {"campaign": "c", "status": "selected"}, {"$set": {"status": "taken"}}
    )) is not None:
        mine.append(doc["name"])
    out.put(mine)
    store.close()


def test_find_one_and_update_is_atomic_across_processes(things):
    things.update([{"campaign": "c", "name": f"n{i}", "status": "selected"} for i in range(200)])
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    workers = [ctx.Process(target=_claim_all, args=(things.database_path, out)) for _ in range(3)]
    for w in workers:
        w.start()
    claims = [name for _ in workers for name in out.get(timeout=120)]
    for w in workers:
        w.join(timeout=60)
    assert sorted(claims) == sorted(f"n{i}" for i in range(200)), "a claim was lost or doubled"
    assert things.count({"status": "taken"}) == 200


@pytest.mark.parametrize("criteria", FILTERS)
@pytest.mark.parametrize(
    "properties", [["name", "meta", "flag", "x"], ["meta.k", "status"], ["tags", "score"]])
def test_projections_match_what_mongomock_returns(things, criteria, properties):
    """SQL cuts the projected fields out of the document (structures are never decoded);
    what comes back is what a Mongo projection returns, whatever the filter."""
    things.update([dict(d) for d in DOCS])
    reference = mongomock.MongoClient().db.things
    reference.insert_many([dict(d) for d in DOCS])
    projection = {p: 1 for p in properties}
    expected = [{k: v for k, v in d.items() if k != "_id"}
                for d in reference.find(criteria, projection)]
    found = [{k: v for k, v in d.items() if k != "_id"}
             for d in things.query(criteria, properties=properties, sort={"name": 1})]
    # exact values: booleans stay booleans, floats keep all their digits
    canonical = lambda rows: sorted(json.dumps(r, sort_keys=True) for r in rows)  # noqa: E731
    assert canonical(found) == canonical(expected)


@pytest.mark.parametrize("criteria", FILTERS)
@pytest.mark.parametrize("excluded", [["meta", "tags"], ["meta.k", "status"], ["score"]])
def test_exclusions_match_what_mongomock_returns(things, criteria, excluded):
    things.update([dict(d) for d in DOCS])
    reference = mongomock.MongoClient().db.things
    reference.insert_many([dict(d) for d in DOCS])
    projection = {p: 0 for p in excluded}
    expected = [{k: v for k, v in d.items() if k != "_id"}
                for d in reference.find(criteria, dict(projection))]
    for sort in (None, {"status": 1}):
        found = [{k: v for k, v in d.items() if k != "_id"}
                 for d in things.query(criteria, properties=projection, sort=sort)]
        canonical = lambda rows: sorted(json.dumps(r, sort_keys=True) for r in rows)  # noqa: E731
        assert canonical(found) == canonical(expected)
