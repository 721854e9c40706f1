"""Proposals drawn from a labelled table: the candidate pool of a replay campaign.

In a replay campaign (``relaxer: {potential: replay, ...}``) the "relaxer" answers from a
table of known results, so the only proposals it can answer are the table's own rows. This
generator proposes them: each round a random handful of rows inside the chemical space that it
has not proposed before in this process. The acquisition function then decides which of
them to "relax", which is exactly the agent benchmark of CAMD's after-the-fact sampler, run
through the real loop (store, steps, Prefect) in seconds.

Examples
--------
>>> gen = TableRows(ChemicalSpace(["Ca", "Ti", "O"], 5), path="val.csv.gz")  # doctest: +SKIP
>>> len(gen.sample(10))  # doctest: +SKIP
10
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field

from matloop.generators.base import ChemicalSpace, Generator, GeneratorSettings

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pymatgen.core import Structure

__all__ = ["TableRows"]


class TableRows(Generator):
    """Random, not yet proposed rows of a CSV table with a CIF column.

    Parameters
    ----------
    chemical_space
        Rows with other elements or larger cells are never proposed.
    seed
        Seeds the default random generator.
    path
        The table (CSV, optionally gzipped), usually the replay relaxer's own.
    cif_column, id_column
        Column names of the structures and of the row identifiers.
    """

    name = "table_rows"

    class Settings(GeneratorSettings):
        path: str = Field(description="The table (CSV, optionally gzipped)")
        cif_column: str = "cif"
        id_column: str = "material_id"

    def __init__(
        self,
        chemical_space: ChemicalSpace,
        seed: int = 0,
        *,
        path: str,
        cif_column: str = "cif",
        id_column: str = "material_id",
    ) -> None:
        from matloop.relax.replay import cached_oracle

        self.chemical_space = chemical_space
        self.seed = seed
        self.path = str(path)
        table = cached_oracle(self.path, (), cif_column=cif_column, id_column=id_column)
        self._structures = table.structures
        self._allowed = np.array(
            [i for i, s in enumerate(table.structures) if chemical_space.allows(s)], dtype=int
        )
        if self._allowed.size == 0:
            raise ValueError(f"{path}: no row lies in the chemical space")
        self._proposed: set[int] = set()
        self._rng = np.random.default_rng(seed)

    def sample(
        self,
        n: int,
        conditions: Mapping[str, Any] | None = None,
        rng: np.random.Generator | None = None,
    ) -> list[Structure]:
        """Up to ``n`` rows not proposed before (fewer when the table runs out)."""
        rng = rng if rng is not None else self._rng
        fresh = np.array([i for i in self._allowed if i not in self._proposed], dtype=int)
        chosen = rng.permutation(fresh)[: max(0, int(n))]
        self._proposed.update(int(i) for i in chosen)
        return [self._structures[i].copy() for i in chosen]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "table": self.path}
