"""What a relaxation tells the loop: :class:`RelaxOutcome`, shared by every relaxer."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer
from pymatgen.core import Structure

__all__ = ["OutcomeStructure", "RelaxOutcome", "structure_as_dict"]


def structure_as_dict(structure: Structure | None) -> dict | None:
    """A structure as a JSON-safe pymatgen dict."""
    from monty.json import jsanitize

    return None if structure is None else jsanitize(structure.as_dict(), strict=True)


#: A structure field of an outcome model: a pymatgen Structure in Python, its pymatgen dict
#: in JSON mode (``model_dump(mode="json")``), shared by RelaxOutcome and DftOutcome.
OutcomeStructure = Annotated[
    Structure | None, PlainSerializer(structure_as_dict, when_used="json")
]


class RelaxOutcome(BaseModel):
    """What the loop needs to know about one relaxation.

    Examples
    --------
    >>> out = RelaxOutcome(candidate_id="x", ok=False, reason="too many atoms (40 > 20)",
    ...                    potential="CHGNet 0.3.0", wall_s=0.0)
    >>> out.converged
    False
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    candidate_id: str = Field(description="Id of the candidate that was relaxed.")
    ok: bool = Field(
        description="True when the relaxation converged and passed every sanity check."
    )
    structure: OutcomeStructure = Field(
        None, description="Relaxed structure (kept for failed jobs that produced one)."
    )
    energy_per_atom: float | None = Field(
        None,
        description="Final raw (uncorrected) potential energy in eV/atom; None when the job "
        "produced none or it was not finite.",
    )
    n_steps: int | None = Field(
        None,
        description="Ionic steps in the atomate2 task document (optimiser steps plus the "
        "initial and final frames).",
    )
    max_force: float | None = Field(None, description="Largest final atomic force norm in eV/Å.")
    converged: bool = Field(
        False, description="Whether the optimiser reached fmax (forces and stress)."
    )
    reason: str | None = Field(None, description="Why the relaxation failed; None if ok.")
    job_uuid: str | None = Field(
        None, description="uuid of the jobflow job whose task document is in the JobStore."
    )
    potential: str = Field(description="Potential and model version, e.g. 'CHGNet 0.3.0'.")
    wall_s: float = Field(description="Wall-clock seconds spent on this structure.")
    properties: dict[str, float] = Field(
        default_factory=dict,
        description="Other computed labels (a replay table's columns, e.g. dir_gap).",
    )
    worker: str | None = Field(
        None, description="Address of the Dask worker that relaxed it; None: this process."
    )
