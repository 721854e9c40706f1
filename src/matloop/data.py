"""Reading known crystals (seed data): CSV with a CIF column, extxyz, ASE databases, and
the Materials Project when ``MP_API_KEY`` is set.

Unreadable rows are reported and skipped, never silently dropped: every reader returns the
crystals it could read and a list of problems naming the row and the reason.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pymatgen.core import Structure

log = logging.getLogger(__name__)


@dataclass
class SeedCrystal:
    """A known crystal: where it came from and its numeric properties, if any."""

    source_id: str
    structure: Structure
    source: str
    properties: dict[str, float] = field(default_factory=dict)
    retrieved_at: str | None = None  # when fetched from a database (OPTIMADE)


@dataclass
class ReadReport:
    crystals: list[SeedCrystal]
    problems: list[str]

    def summary(self) -> str:
        text = f"read {len(self.crystals)} crystal(s)"
        if self.problems:
            text += f", skipped {len(self.problems)} unreadable row(s)"
        return text


def _check_ordered(structure: Structure) -> None:
    if not structure.is_ordered:
        raise ValueError("partial occupancies are not supported")
    if len(structure) == 0:
        raise ValueError("no atoms")


def _numeric(row: dict[str, Any], skip: set[str]) -> dict[str, float]:
    out = {}
    for key, value in row.items():
        if key in skip:
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            out[key] = number
    return out


@dataclass(frozen=True)
class RowFilter:
    """What a reader may skip without parsing: rows whose ``elements`` column (comma
    separated symbols, as in ``../shared/data``) or ``nsites`` column shows the crystal
    cannot be wanted. CIF parsing costs 5-15 ms a row, and a campaign wants a few dozen of
    thousands of rows. The caller still checks the crystals read (the columns only
    prefilter); rows skipped are not parsed, so their problems are not reported."""

    elements: frozenset[str] | None = None  # only crystals of these elements
    max_atoms: int | None = None  # at most this many sites
    max_elements: int | None = None  # at most this many distinct elements

    def skips(self, row: dict[str, Any]) -> bool:
        listed = row.get("elements")
        if isinstance(listed, str) and listed.strip():
            symbols = {s.strip() for s in listed.split(",")}
            if self.elements is not None and not symbols <= self.elements:
                return True
            if self.max_elements is not None and len(symbols) > self.max_elements:
                return True
        nsites = row.get("nsites")
        known = isinstance(nsites, numbers.Real) and math.isfinite(nsites)
        if self.max_atoms is not None and known:
            return nsites > self.max_atoms
        return False


def read_csv(
    path: Path,
    cif_column: str = "cif",
    id_column: str = "material_id",
    row_filter: RowFilter | None = None,
) -> ReadReport:
    """CSV (optionally gzipped) with one CIF text per row, as in ``../shared/data``;
    ``row_filter`` skips, unparsed, rows its columns show are not wanted.

    A file is parsed once per version (its path, name, mtime and size) and row filter in a
    process, so campaigns run one after another (a benchmark) read the same seed file once;
    every call gets its own copies of the crystals."""
    stat = path.stat()
    key = (str(path.resolve()), path.name, stat.st_mtime_ns, stat.st_size, cif_column, id_column,
           row_filter)  # fmt: skip
    parsed = _CSV_TABLES.get(key)
    if parsed is None:
        parsed = _parse_csv(path, cif_column, id_column, row_filter)
        _CSV_TABLES[key] = parsed
        while len(_CSV_TABLES) > _CSV_TABLES_MAX:
            _CSV_TABLES.popitem(last=False)
    else:
        _CSV_TABLES.move_to_end(key)
    crystals, problems = parsed
    return ReadReport(
        [replace(c, structure=c.structure.copy(), properties=dict(c.properties))
         for c in crystals],
        list(problems),
    )


def _parse_csv(
    path: Path, cif_column: str, id_column: str, row_filter: RowFilter | None = None
) -> tuple[list[SeedCrystal], list[str]]:
    import pandas as pd
    from pymatgen.core import Structure

    frame = pd.read_csv(path)
    if cif_column not in frame.columns:
        raise ValueError(
            f"{path}: no column {cif_column!r} with CIF text; columns are {list(frame.columns)}"
        )
    crystals, problems = [], []
    for index, row in enumerate(frame.to_dict("records")):
        if row_filter is not None and row_filter.skips(row):
            continue
        source_id = str(row.get(id_column, f"row{index}"))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                structure = Structure.from_str(str(row[cif_column]), fmt="cif")
            _check_ordered(structure)
        except Exception as err:  # pymatgen raises many kinds on broken CIFs
            problems.append(f"{path.name} row {index} ({source_id}): {err}".strip())
            continue
        properties = _numeric(row, {cif_column, id_column, "nsites"})
        crystals.append(SeedCrystal(source_id, structure, f"file:{path.name}", properties))
    return crystals, problems


#: Parsed CSV files, least recently read first (parsing thousands of CIFs takes seconds).
_CSV_TABLES: OrderedDict[tuple, tuple[list[SeedCrystal], list[str]]] = OrderedDict()
_CSV_TABLES_MAX = 8


def read_ase(path: Path, fmt: str) -> ReadReport:
    """extxyz files or ASE databases (``.db``), through ASE."""
    from pymatgen.io.ase import AseAtomsAdaptor

    crystals, problems = [], []
    if fmt == "ase-db":
        from ase.db import connect

        rows = [(f"id{row.id}", row.toatoms(), dict(row.key_value_pairs)) for row in
                connect(str(path)).select()]
    else:
        from ase.io import read

        rows = [(f"frame{i}", atoms, dict(atoms.info)) for i, atoms in
                enumerate(read(str(path), index=":", format="extxyz"))]
    for source_id, atoms, info in rows:
        try:
            structure = AseAtomsAdaptor.get_structure(atoms)
            _check_ordered(structure)
        except Exception as err:
            problems.append(f"{path.name} {source_id}: {err}")
            continue
        properties = _numeric(info, set())
        crystals.append(SeedCrystal(source_id, structure, f"file:{path.name}", properties))
    return ReadReport(crystals, problems)


def guess_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    if name.endswith((".xyz", ".extxyz", ".xyz.gz", ".extxyz.gz")):
        return "extxyz"
    if name.endswith(".db"):
        return "ase-db"
    raise ValueError(f"{path}: cannot tell the format from the name; set format: csv|extxyz|ase-db")


def expand_path(path: str | os.PathLike) -> Path:
    """``~`` and ``$VAR`` / ``${VAR}`` expanded; a variable left unset is a clear error.

    Campaign files name shared data through a variable (e.g.
    ``${MATLOOP_SHARED_DATA}/known_crystals_mp.csv.gz``), so no file points at a folder
    of one machine.
    """
    text = os.path.expandvars(os.path.expanduser(str(path)))
    if "$" in text:
        raise ValueError(f"{path}: environment variable not set ({text})")
    return Path(text)


def read_structures(
    path: str | Path,
    fmt: str | None = None,
    cif_column: str = "cif",
    id_column: str = "material_id",
    row_filter: RowFilter | None = None,
) -> ReadReport:
    """Read known crystals from a file; a missing file is an error, a bad row a problem.
    ``$VAR`` in ``path`` is expanded (:func:`expand_path`). ``row_filter`` lets a CSV
    reader skip rows unparsed (:class:`RowFilter`; other formats read every row)."""
    path = expand_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"seed data file not found: {path}")
    fmt = fmt or guess_format(path)
    if fmt == "csv":
        return read_csv(path, cif_column, id_column, row_filter)
    return read_ase(path, fmt)


def in_chemical_space(structure: Structure, elements: list[str], max_atoms: int) -> bool:
    symbols = {el.symbol for el in structure.composition.elements}
    return symbols <= set(elements) and len(structure) <= max_atoms


def fetch_materials_project(elements: list[str], api_key: str | None = None) -> ReadReport:
    """Known compounds of every sub-system of ``elements`` from the Materials Project.

    Needs ``MP_API_KEY`` (or ``api_key``) and the ``mp-api`` package.
    """
    api_key = api_key or os.environ.get("MP_API_KEY")
    if not api_key:
        raise RuntimeError("MP_API_KEY is not set: cannot fetch from the Materials Project")
    from itertools import combinations

    from mp_api.client import MPRester

    systems = [
        "-".join(sorted(combo))
        for size in range(1, len(elements) + 1)
        for combo in combinations(elements, size)
    ]
    from matloop.store.documents import utcnow

    crystals: list[SeedCrystal] = []
    retrieved_at = utcnow()
    # MP_API_ENDPOINT (a mirror, a test server) is read here, not only when mp_api is imported
    endpoint = os.environ.get("MP_API_ENDPOINT") or None
    try:
        with MPRester(api_key, endpoint=endpoint) as mpr:
            docs = mpr.materials.summary.search(
                chemsys=systems, fields=["material_id", "structure", "energy_above_hull"]
            )
    except Exception as err:  # mp_api raises MPRestError, requests errors, ...
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RuntimeError(f"Materials Project fetch failed: {reason}") from err
    for doc in docs:
        props = {}
        if getattr(doc, "energy_above_hull", None) is not None:
            props["mp_energy_above_hull"] = float(doc.energy_above_hull)
        crystals.append(
            SeedCrystal(str(doc.material_id), doc.structure, "materials-project", props,
                        retrieved_at=retrieved_at)
        )
    return ReadReport(crystals, [])


# -- seed coverage: is there a known crystal to judge novelty against? ---------------------
def chemical_systems(elements: list[str], min_size: int = 2) -> list[str]:
    """Every chemical system of ``elements`` with at least ``min_size`` elements, named as
    pymatgen names them (``"Cl-Na"``: sorted, joined by ``-``), smallest first."""
    from itertools import combinations

    return [
        "-".join(sorted(combo))
        for size in range(min_size, len(elements) + 1)
        for combo in combinations(sorted(elements), size)
    ]


def count_by_system(structures) -> dict[str, int]:
    """Crystals per chemical system (``{"Cl-Na": 3}``), as :func:`seed_coverage` takes them."""
    counts: dict[str, int] = {}
    for structure in structures:
        system = structure.composition.chemical_system
        counts[system] = counts.get(system, 0) + 1
    return counts


#: Spaces of more elements are judged as a whole: they have too many subsystems to list.
MAX_ENUMERATED_ELEMENTS = 6


def seed_coverage(counts: dict[str, int], elements: list[str]) -> dict[str, Any]:
    """How well seed crystals cover a chemical space, and the warning to show when not.

    ``counts`` maps chemical systems (``"Cl-Na"``) to seed crystals in them (elements too,
    they are ignored: elemental references are relaxed anyway). Returns ``{"systems":
    {system: count} for every system of 2+ elements (for spaces of more than
    :data:`MAX_ENUMERATED_ELEMENTS` elements: those with seed crystals), "empty": [systems
    with none], "warning": str | None}``. A system with no seed crystal has nothing to judge novelty
    against there: a known compound proposed again would look new.

    >>> seed_coverage({"Cl-Na": 0}, ["Na", "Cl"])["warning"][:44]
    'seed data has no known crystal in the Cl-Na '
    >>> seed_coverage({"Cl-Na": 3}, ["Na", "Cl"])["warning"] is None
    True
    """
    if len(elements) <= MAX_ENUMERATED_ELEMENTS:
        systems = {system: int(counts.get(system, 0)) for system in chemical_systems(elements)}
    else:  # 2**n subsystems: judge the space as a whole, list the systems that have some
        systems = {system: int(n) for system, n in counts.items() if "-" in system and n}
    empty = [system for system, n in systems.items() if n == 0]
    warning = None
    if len(elements) > 1 and sum(systems.values()) == 0:
        space = "-".join(sorted(elements))
        warning = (
            f"seed data has no known crystal in the {space} space: nothing to judge novelty "
            f"against, so its candidates' novelty will be 'unjudged', never 'novel'; add known "
            f"crystals of {space} under seed_data"
        )
    elif empty:
        warning = (
            f"seed data has no known crystal in {', '.join(empty)} (of {len(systems)} "
            "chemical systems): novelty there is 'unjudged', never 'novel'"
        )
    return {"systems": systems, "empty": empty, "warning": warning}
