"""One run per campaign: a lease in the store, renewed by a heartbeat.

``matloop run`` and each scheduled run of ``matloop serve`` take the campaign's lease before
any work and give it back at the end. A second run of the same campaign on the same store
is refused at once, with who holds the lease (host and pid), since when, and how to take
over. A holder that died without giving it back (SIGKILL, a lost machine) stops renewing
it: once it expires, the next run takes it over. On the holder's own host a dead pid is
seen at once, so a rerun after a crash does not wait for the expiry. ``--take-over``
takes a lease that has not yet expired (for a holder you know is gone).

The lease is one plain document per campaign in the ``leases`` collection, changed only by
the store's atomic primitives (:meth:`MatloopStore.insert_new`, a compare-and-swap with
:meth:`MatloopStore.update_where` on the holder's token and heartbeat), so it works on
every engine the store runs on: the embedded one, MongoDB and the in-memory one.

Examples
--------
>>> from matloop.store import MatloopStore
>>> store = MatloopStore("memory://")
>>> lease = CampaignLease(store, "demo").acquire()
>>> try:
...     CampaignLease(store, "demo").acquire()
... except LeaseHeld as err:
...     print(str(err)[:35])
campaign 'demo' is already running:
>>> lease.release()
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from matloop.store.facade import MatloopStore

COLLECTION = "leases"
#: Seconds a lease lasts without a heartbeat; override with MATLOOP_LEASE_TTL_S.
DEFAULT_TTL_S = 60.0
#: A child process (a scheduled run of ``matloop serve``) holds its parent's lease.
TOKEN_ENV = "MATLOOP_LEASE_TOKEN"


def lease_ttl_s() -> float:
    return float(os.environ.get("MATLOOP_LEASE_TTL_S") or DEFAULT_TTL_S)


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True)
class LeaseInfo:
    """Who holds a campaign's lease, as stored."""

    campaign: str
    host: str
    pid: int
    token: str
    since: float
    heartbeat: float
    expires: float
    released: bool = False

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> LeaseInfo:
        return cls(campaign=doc["campaign"], host=doc["host"], pid=int(doc["pid"]),
                   token=doc["token"], since=float(doc["since"]),
                   heartbeat=float(doc["heartbeat"]), expires=float(doc["expires"]),
                   released=bool(doc.get("released")))  # fmt: skip

    @property
    def holder(self) -> str:
        return f"pid {self.pid} on host {self.host}"

    def expired(self, now: float | None = None) -> bool:
        return self.released or (now or time.time()) > self.expires

    def holder_gone(self) -> bool:
        """The holder ran on this host and its pid is dead (it cannot renew the lease)."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, owned by someone else
            return False
        return False


class LeaseHeld(RuntimeError):
    """Another run holds the campaign's lease; the message says who and what to do."""

    def __init__(self, info: LeaseInfo) -> None:
        self.info = info
        now = time.time()
        super().__init__(
            f"campaign {info.campaign!r} is already running: {info.holder} holds it since "
            f"{_when(info.since)} (last heartbeat {now - info.heartbeat:.0f} s ago). Wait "
            f"for that run to finish; if it is gone, the lease expires at "
            f"{_when(info.expires)} and the next run takes over, or run again with "
            "--take-over to take it now"
        )


class CampaignLease:
    """The lease of one campaign in one store, held by this process (or its parent).

    ``acquire`` takes it or raises :class:`LeaseHeld`; ``heartbeat`` renews it (False when
    another run took it over); ``release`` gives it back. ``keep_alive`` renews it from a
    background thread while a block runs.
    """

    def __init__(
        self,
        store: MatloopStore,
        campaign: str,
        ttl_s: float | None = None,
        token: str | None = None,
    ) -> None:
        self.store = store
        self.campaign = campaign
        self.ttl_s = ttl_s or lease_ttl_s()
        inherited = os.environ.get(TOKEN_ENV, "")
        prefix = f"{campaign}="
        # MATLOOP_LEASE_TOKEN=campaign=token: a run started by the holder shares its lease
        self.inherited = token is None and inherited.startswith(prefix)
        self.token = token or (inherited[len(prefix):] if self.inherited else uuid.uuid4().hex)
        self.held = False
        self.lost = False

    @property
    def _id(self) -> str:
        return f"lease:{self.campaign}"

    def _doc(self, now: float, since: float | None = None) -> dict[str, Any]:
        return {
            "_id": self._id, "campaign": self.campaign, "host": socket.gethostname(),
            "pid": os.getpid(), "token": self.token, "since": since or now,
            "heartbeat": now, "expires": now + self.ttl_s, "released": False,
        }

    def current(self) -> LeaseInfo | None:
        doc = self.store.find_raw(COLLECTION, {"campaign": self.campaign})
        return LeaseInfo.from_doc(doc) if doc else None

    def acquire(self, take_over: bool = False) -> CampaignLease:
        """Take the lease: free, released, expired, ours (or our parent's), its holder
        dead on this host, or ``take_over``. Raises :class:`LeaseHeld` otherwise."""
        for _ in range(5):  # a lost compare-and-swap means someone else moved: look again
            now = time.time()
            if self.store.insert_new(COLLECTION, self._doc(now), {"campaign": self.campaign}):
                self.held = True
                return self
            info = self.current()
            if info is None:
                continue
            ours = info.token == self.token
            if not (ours or take_over or info.expired(now) or info.holder_gone()):
                raise LeaseHeld(info)
            doc = self._doc(now, since=info.since if ours else None)
            if self.inherited and ours:  # the parent keeps its own host/pid as the holder
                doc.update(host=info.host, pid=info.pid)
            swapped = self.store.update_where(
                COLLECTION,
                {"campaign": self.campaign, "token": info.token, "heartbeat": info.heartbeat},
                {"$set": {k: v for k, v in doc.items() if k != "_id"}},
            )
            if swapped is not None:
                self.held = True
                return self
        info = self.current()
        raise LeaseHeld(info) if info else RuntimeError("could not take the campaign lease")

    def heartbeat(self) -> bool:
        """Renew the lease; False (and ``lost``) when another run has taken it over."""
        now = time.time()
        found = self.store.update_where(
            COLLECTION, {"campaign": self.campaign, "token": self.token},
            {"$set": {"heartbeat": now, "expires": now + self.ttl_s}},
        )
        if found is None:
            self.lost = True
        return found is not None

    def release(self) -> None:
        """Give the lease back (a lease inherited from a parent stays the parent's)."""
        if self.held and not self.inherited:
            self.store.update_where(
                COLLECTION, {"campaign": self.campaign, "token": self.token},
                {"$set": {"released": True, "expires": 0.0}},
            )
        self.held = False

    @contextlib.contextmanager
    def keep_alive(
        self,
        open_store: Callable[[], MatloopStore] | None = None,
        on_lost: Callable[[], None] | None = None,
    ) -> Iterator[CampaignLease]:
        """Renew the lease every ttl/4 seconds from a thread while the block runs, then
        release it. ``open_store`` gives the thread its own store connection (SQLite
        connections belong to one thread); by default the thread reopens this store."""
        stop = threading.Event()
        opener = open_store or self.store.reopen

        def beat() -> None:
            store = opener()
            renewer = CampaignLease(store, self.campaign, self.ttl_s, token=self.token)
            while not stop.wait(self.ttl_s / 4):
                try:
                    alive = renewer.heartbeat()
                except Exception:  # noqa: BLE001 - a store hiccup: try again next beat
                    continue
                if not alive:
                    self.lost = True
                    if on_lost is not None:
                        on_lost()
                    return

        thread = threading.Thread(target=beat, name=f"lease-{self.campaign}", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join(timeout=5)
            self.release()


def read_lease(store: MatloopStore, campaign: str) -> LeaseInfo | None:
    """The campaign's lease as stored (held, expired or released), or None."""
    return CampaignLease(store, campaign, token="-").current()
