"""After-the-fact stand-in for relaxation: answer queries from a labelled table (CAMD's ATF).

CAMD's ``ATFSampler`` runs a whole campaign against a table of known results: the agent
chooses rows, the "experiment" looks their labels up. :class:`ReplayOracle` does the same for
matloop: a fixed pool of crystals (for example perov-5, with its DFT ``heat_ref`` and
``dir_gap``), queried by row index (agent benchmarks) or by structure (a matching row,
found with ``StructureMatcher`` among rows of the same reduced formula). It never relaxes
anything: the answer is the table's value, so a benchmark of hundreds of rounds runs in
seconds and every agent sees the same ground truth.

It stands *beside* the CHGNet relaxer, never instead of it: outcomes carry
``potential="replay:<table>"`` so nothing replayed can be mistaken for an ML-potential
energy.

Examples
--------
>>> from pymatgen.core import Lattice, Structure
>>> nacl = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
>>> oracle = ReplayOracle(["nacl"], [nacl], {"heat_ref": [-2.1]}, name="toy")
>>> oracle.query([0])["heat_ref"].tolist()
[-2.1]
>>> oracle.lookup(nacl.copy())
0
>>> oracle.relax_outcome("c1", nacl, energy_column="heat_ref").energy_per_atom
-2.1
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from matloop.relax.potentials import table_name

if TYPE_CHECKING:
    from pymatgen.core import Structure

    from matloop.relax.outcome import RelaxOutcome

__all__ = ["ReplayOracle", "cached_oracle", "table_name"]


def cached_oracle(
    path: str | Path,
    property_columns: tuple[str, ...],
    *,
    cif_column: str = "cif",
    id_column: str = "material_id",
) -> ReplayOracle:
    """:meth:`ReplayOracle.from_csv`, parsed once per process and arguments (a replay
    campaign's generator and relaxer read the same table; parsing 4,000 CIFs takes seconds).
    The instance is shared: its ``queried`` log is the process's, not one campaign's."""
    from matloop.data import expand_path  # ${VAR}: a campaign file names no machine's folder

    key = (str(expand_path(path).resolve()), tuple(property_columns), cif_column, id_column)
    if key not in _ORACLES:
        _ORACLES[key] = ReplayOracle.from_csv(
            key[0], list(property_columns), cif_column=cif_column, id_column=id_column,
            name=table_name(path),
        )
    return _ORACLES[key]


_ORACLES: dict[tuple, ReplayOracle] = {}


class ReplayOracle:
    """A labelled table of crystals that answers queries by lookup.

    Parameters
    ----------
    ids
        One identifier per row (e.g. ``material_id``).
    structures
        One structure per row.
    properties
        Column name -> values, one per row (NaN where unknown).
    name
        Table name, recorded in outcomes as ``potential="replay:<name>"``.

    Attributes
    ----------
    queried
        Row indices answered so far, in order (repeats are answered but not re-counted).
    """

    def __init__(
        self,
        ids: Sequence[str],
        structures: Sequence[Structure],
        properties: Mapping[str, Sequence[float]],
        name: str = "table",
    ) -> None:
        if len(ids) != len(structures):
            raise ValueError(f"{len(ids)} ids for {len(structures)} structures")
        self.ids = [str(i) for i in ids]
        self.structures = list(structures)
        self.properties = {k: np.asarray(v, dtype=float) for k, v in properties.items()}
        for key, values in self.properties.items():
            if len(values) != len(self.ids):
                raise ValueError(f"property {key!r} has {len(values)} values for {len(ids)} rows")
        self.name = name
        self.queried: list[int] = []
        self._seen: set[int] = set()
        self._by_formula: dict[str, list[int]] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_csv(
        cls,
        path: str | Path,
        property_columns: Sequence[str],
        *,
        cif_column: str = "cif",
        id_column: str = "material_id",
        limit: int | None = None,
        name: str | None = None,
    ) -> ReplayOracle:
        """Rows of a (gzipped) CSV with a CIF column, e.g. perov-5's ``val.csv.gz``."""
        import warnings

        import pandas as pd
        from pymatgen.core import Structure

        frame = pd.read_csv(path, nrows=limit)
        missing = [c for c in [cif_column, id_column, *property_columns] if c not in frame]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; has {list(frame.columns)}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # CIF parser chatter
            structures = [Structure.from_str(text, fmt="cif") for text in frame[cif_column]]
        return cls(
            frame[id_column].astype(str).tolist(),
            structures,
            {c: frame[c].to_numpy(dtype=float) for c in property_columns},
            name=name or Path(path).name.split(".")[0],
        )

    # -- agent queries -----------------------------------------------------------------
    def query(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        """The labels of rows ``indices`` (each column as an array), recorded as queried."""
        idx = np.asarray(indices, dtype=int).ravel()
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"row index out of range 0..{len(self) - 1}")
        for i in idx.tolist():
            if i not in self._seen:
                self._seen.add(i)
                self.queried.append(i)
        return {k: v[idx] for k, v in self.properties.items()}

    @property
    def n_queries(self) -> int:
        """Distinct rows answered so far: the budget an agent has spent."""
        return len(self.queried)

    # -- structure queries (a replay relaxer) ---------------------------------------------
    def lookup(self, structure: Structure) -> int | None:
        """Row of the table that matches ``structure`` (same reduced formula, then
        ``StructureMatcher`` with pymatgen's defaults), or None."""
        from pymatgen.analysis.structure_matcher import StructureMatcher

        if self._by_formula is None:
            self._by_formula = {}
            for i, s in enumerate(self.structures):
                self._by_formula.setdefault(s.composition.reduced_formula, []).append(i)
        rows = self._by_formula.get(structure.composition.reduced_formula, [])
        matcher = StructureMatcher()
        for i in rows:
            if matcher.fit(structure, self.structures[i]):
                return i
        return None

    def relax_outcome(
        self, candidate_id: str, structure: Structure, energy_column: str
    ) -> RelaxOutcome:
        """A :class:`~matloop.relax.runner.RelaxOutcome` answered from the table: the
        matching row's structure and ``energy_column`` as its energy, or a failure with the
        reason ``"not in the replay table"``."""
        import time

        from matloop.relax.outcome import RelaxOutcome

        start = time.perf_counter()
        row = self.lookup(structure)
        common = {"candidate_id": candidate_id, "potential": f"replay:{self.name}"}
        if row is None:
            return RelaxOutcome(ok=False, reason="not in the replay table",
                                wall_s=time.perf_counter() - start, **common)  # fmt: skip
        labels = {k: float(v[0]) for k, v in self.query([row]).items()}
        value = labels.pop(energy_column)
        if not np.isfinite(value):
            return RelaxOutcome(ok=False, reason=f"no {energy_column} in the replay table",
                                wall_s=time.perf_counter() - start, **common)  # fmt: skip
        return RelaxOutcome(
            ok=True,
            converged=True,
            structure=self.structures[row].copy(),
            energy_per_atom=value,
            n_steps=0,
            max_force=0.0,
            wall_s=time.perf_counter() - start,
            properties={k: v for k, v in labels.items() if np.isfinite(v)},
            **common,
        )
