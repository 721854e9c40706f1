"""Choose a maggma backend from one URI.

``sqlite://PATH``  the embedded default: one SQLite file PATH with real indexes, no server
                   needed (:mod:`matloop.store.sqlite`)
``monty://PATH``   montydb in folder PATH: the embedded store of earlier versions, still read
                   and written (no secondary indexes: slow past a few thousand candidates);
                   ``matloop store migrate`` moves a campaign off it
``mongodb://…``    a real MongoDB (``mongodb+srv://`` too); the database is the URI's path,
                   ``matloop`` when it has none
``memory://``      mongomock, for tests (gone when the process ends)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from maggma.core import Store

SCHEMES = ("sqlite", "monty", "mongodb", "mongodb+srv", "memory")
EXPECTED = "sqlite://PATH, monty://PATH, mongodb://HOST/DB or memory://"


class StoreURIError(ValueError):
    """The store URI cannot be understood."""


def redact_uri(uri: str) -> str:
    """The URI with any password replaced, safe to print and log."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", uri)


#: pymongo settings for a campaign: give up on an unreachable server after seconds, not
#: pymongo's 30 s per operation; retry a write or read once after a dropped connection.
#: Options written in the URI (``?serverSelectionTimeoutMS=...``) win.
MONGO_CLIENT_OPTIONS = {
    "serverSelectionTimeoutMS": 5000,
    "connectTimeoutMS": 5000,
    "socketTimeoutMS": 120000,
    "retryWrites": True,
    "retryReads": True,
}


def mongo_client_options(uri: str) -> dict:
    """:data:`MONGO_CLIENT_OPTIONS` less those the URI sets itself."""
    from urllib.parse import parse_qsl

    given = {k.lower() for k, _ in parse_qsl(urlsplit(uri).query)}
    return {k: v for k, v in MONGO_CLIENT_OPTIONS.items() if k.lower() not in given}


@dataclass(frozen=True)
class Backend:
    """A parsed store URI that can open one maggma store per collection."""

    scheme: str
    uri: str
    path: Path | None = None
    database: str = "matloop"

    @classmethod
    def from_uri(cls, uri: str) -> Backend:
        if "://" not in uri:
            raise StoreURIError(
                f"store URI {redact_uri(uri)!r} has no scheme; expected one of {EXPECTED}"
            )
        scheme = uri.split("://", 1)[0].lower()
        if scheme not in SCHEMES:
            raise StoreURIError(
                f"store URI scheme {scheme!r} is not supported; expected one of {EXPECTED}"
            )
        if scheme == "sqlite":
            raw = uri.split("://", 1)[1]
            if not raw or raw.endswith("/"):
                raise StoreURIError(
                    "sqlite:// needs a database file, e.g. sqlite://./matloop-store.db"
                )
            # a relative path is fixed now: jobflow's local runs change the working directory
            # while a job runs, and a collection opened then must find the same file
            return cls("sqlite", uri, path=Path(raw).expanduser().absolute())
        if scheme == "monty":
            raw = uri.split("://", 1)[1]
            if not raw:
                raise StoreURIError("monty:// needs a folder, e.g. monty://./matloop-store")
            return cls("monty", uri, path=Path(raw).expanduser().absolute())
        if scheme == "memory":
            return cls("memory", uri)
        database = urlsplit(uri).path.strip("/") or "matloop"
        return cls(scheme, uri, database=database)

    @property
    def embedded(self) -> bool:
        """The database is a local file or folder (several processes may share it)."""
        return self.scheme in ("sqlite", "monty")

    def open(self, collection: str, key: str | list[str] = "_id") -> Store:
        """A maggma store for one collection (not yet connected).

        Every store returned offers, beside maggma's API, the bulk operations of
        :class:`~matloop.store.sqlite.SQLiteStore` (``update_many``, ``update_each``,
        ``find_one_and_update``, ``count_by``, ``ensure_indexes``).
        """
        if self.scheme == "sqlite":
            from matloop.store.sqlite import SQLiteStore

            assert self.path is not None
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return SQLiteStore(str(self.path), collection, key=key)
        from matloop.store import mongolike

        if self.scheme == "monty":
            assert self.path is not None
            self.path.mkdir(parents=True, exist_ok=True)
            return mongolike.BulkMontyStore(
                collection,
                database_path=str(self.path),
                database_name=self.database,
                storage="sqlite",
                key=key,
            )
        if self.scheme == "memory":
            return mongolike.BulkMemoryStore(collection, key=key)
        return mongolike.BulkMongoURIStore(
            self.uri, collection, database=self.database, key=key,
            mongoclient_kwargs=mongo_client_options(self.uri),
        )

    def __repr__(self) -> str:  # never leak credentials into logs or artifacts
        return f"Backend({redact_uri(self.uri)!r})"
