"""Known crystals from any OPTIMADE database (Materials Project, Alexandria, OQMD, AFLOW, COD…).

OPTIMADE is the common REST API those databases serve. :func:`fetch_optimade` asks one
provider, through the ``optimade`` package's client, for every structure of a chemical space
(``elements HAS ONLY …``, AND-ed with the user's own filter), and keeps each with its
provider, id and retrieval date. The answer is cached as one JSON file per (base URL,
filter, space), so a campaign fetches once and re-runs work offline; ``refresh=True`` asks
again.

Examples
--------
>>> optimade_filter(["Na", "Cl"], 'nsites<=8')
'(nsites<=8) AND elements HAS ONLY "Cl","Na"'
>>> fetch_optimade("https://optimade.materialsproject.org", "", ["Na", "Cl"])  # doctest: +SKIP
ReadReport(crystals=[SeedCrystal(source_id='mp-22862', ..., source='optimade:mp'), ...])
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

from matloop.data import ReadReport, SeedCrystal

__all__ = ["default_cache_dir", "fetch_optimade", "optimade_filter"]

log = logging.getLogger("matloop")

#: Served structures with two sites closer than this (Å) are reported, not used.
MIN_DISTANCE = 0.5

def default_cache_dir() -> Path:
    """``$MATLOOP_CACHE/optimade``, else ``~/.cache/matloop/optimade``."""
    root = os.environ.get("MATLOOP_CACHE") or Path.home() / ".cache" / "matloop"
    return Path(root) / "optimade"


def optimade_filter(elements: list[str], user_filter: str | None = None) -> str:
    """The filter of a chemical space: structures made only of ``elements`` (any subset),
    AND-ed with ``user_filter`` when given."""
    space = "elements HAS ONLY " + ",".join(f'"{el}"' for el in sorted(elements))
    return f"({user_filter}) AND {space}" if user_filter and user_filter.strip() else space


def _cache_path(cache_dir: Path, base_url: str, query: str) -> Path:
    key = hashlib.sha256(f"{base_url.rstrip('/')}\n{query}".encode()).hexdigest()[:16]
    return cache_dir / f"{key}.json"


def _query(base_url: str, query: str, max_results: int, timeout: float) -> dict[str, Any]:
    """One provider's answer: its entries and its provider prefix (from ``meta``)."""
    from optimade.client import OptimadeClient

    client = OptimadeClient(
        base_urls=[base_url], max_results_per_provider=max_results, use_async=False,
        silent=True, http_timeout=timeout, max_attempts=2,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # every field: asking for a subset drops the id on some servers (the reference one)
        results = client.get(query)
    answer = results["structures"][query]
    result = answer.get(base_url) or next(iter(answer.values()))
    if result.get("errors"):
        raise RuntimeError(f"OPTIMADE {base_url}: {result['errors']}")
    provider = (result.get("meta") or {}).get("provider") or {}
    return {"provider": provider.get("prefix") or provider.get("name") or base_url,
            "entries": result.get("data") or []}


def fetch_optimade(
    base_url: str,
    user_filter: str | None,
    elements: list[str],
    *,
    cache_dir: str | Path | None = None,
    refresh: bool = False,
    max_results: int = 1000,
    timeout: float = 60.0,
) -> ReadReport:
    """Every structure of the space ``elements`` that ``base_url`` holds (and ``user_filter``
    lets through), as seed crystals ``source='optimade:<provider>'``.

    Each crystal's ``properties`` hold nothing; its provider, id and retrieval date are in
    ``source``, ``source_id`` and ``retrieved_at``. The first successful answer is cached in
    ``cache_dir``; later calls read the cache (no network) unless ``refresh``. An entry that
    cannot be turned into an ordered periodic crystal is a problem, not an error.

    Raises
    ------
    RuntimeError
        The provider could not be reached (or answered with errors) and nothing is cached.
    """
    from matloop.store.documents import utcnow

    query = optimade_filter(elements, user_filter)
    cache = _cache_path(Path(cache_dir) if cache_dir else default_cache_dir(), base_url, query)
    if cache.is_file() and not refresh:
        answer = json.loads(cache.read_text())
        log.info("OPTIMADE %s: %d structure(s) from the cache %s", base_url,
                 len(answer["entries"]), cache)
    else:
        try:
            answer = _query(base_url, query, max_results, timeout)
        except Exception as err:
            raise RuntimeError(
                f"OPTIMADE {base_url} could not be queried ({type(err).__name__}: {err}) and "
                f"nothing is cached for filter {query!r}"
            ) from None
        answer.update(base_url=base_url, filter=query, retrieved_at=utcnow())
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(answer))
    return _to_crystals(answer)


def _to_crystals(answer: dict[str, Any]) -> ReadReport:
    from optimade.adapters import Structure as OptimadeStructure

    crystals, problems = [], []
    source = f"optimade:{answer['provider']}"
    for entry in answer["entries"]:
        entry_id = str(entry.get("id"))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                structure = OptimadeStructure(entry).as_pymatgen
            if not getattr(structure, "lattice", None) or not structure.is_ordered:
                raise ValueError("not an ordered periodic crystal")
            if not structure.is_valid(tol=MIN_DISTANCE):
                raise ValueError(f"atoms closer than {MIN_DISTANCE} Å")
        except Exception as err:  # the adapter raises many kinds on odd entries
            problems.append(f"{source} {entry_id}: {err}")
            continue
        crystals.append(SeedCrystal(entry_id, structure, source,
                                    retrieved_at=answer.get("retrieved_at")))
    return ReadReport(crystals, problems)
