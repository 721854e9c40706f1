"""Typed documents: the store speaks in these, never in loose dicts.

One document per stage: a candidate (what was proposed and where it stands), its
relaxation, its evaluation, a round, a campaign, a hull reference and a model checkpoint.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


def utcnow() -> str:
    """ISO timestamp (strings keep every backend, montydb included, happy)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def structure_dict(structure: Any) -> dict:
    """A pymatgen Structure as the JSON-safe dict documents keep (site properties dropped)."""
    from monty.json import jsanitize

    clean = structure.copy()
    clean.properties = {}
    return jsanitize(clean.as_dict(), strict=False)


def structure_from_dict(data: dict) -> Any:
    """The pymatgen Structure of a stored structure dict."""
    from pymatgen.core import Structure

    return Structure.from_dict(data)


class CandidateStatus(StrEnum):
    """Lifecycle: ``proposed → selected | rejected → relaxed | failed → evaluated``."""

    proposed = "proposed"
    selected = "selected"
    rejected = "rejected"
    relaxing = "relaxing"
    relaxed = "relaxed"
    failed = "failed"
    evaluated = "evaluated"


class StatusChange(BaseModel):
    status: CandidateStatus
    at: str = Field(default_factory=utcnow)
    reason: str | None = None
    round: int | None = None


class _Doc(BaseModel):
    model_config = ConfigDict(extra="ignore", use_enum_values=True)


class CandidateDoc(_Doc):
    """A proposed crystal and where it stands."""

    campaign: str = Field(description="Campaign name")
    candidate_id: str = Field(description="Hash of the canonical reduced structure")
    round: int = Field(description="Round in which it was first proposed")
    formula: str = Field(description="Reduced formula")
    chemsys: str = Field(description="Chemical system, e.g. Ca-O-Ti")
    nsites: int
    structure: dict[str, Any] = Field(description="Proposed structure (pymatgen dict)")
    generator: str = Field(description="Registry name of the generator that proposed it")
    generator_version: int | str = 0
    prototype: str | None = Field(None, description="Prototype or template, when known")
    proposal: str | None = Field(
        None, description="The generator's own label of this proposal (a template and its "
        "decoration), by which it skips the proposal in later rounds")
    conditions: dict[str, Any] = Field(default_factory=dict)
    status: CandidateStatus = CandidateStatus.proposed
    reason: str | None = Field(None, description="Why it was rejected or failed")
    history: list[StatusChange] = Field(default_factory=list)
    predicted_e_above_hull: float | None = None
    predicted_std: float | None = None
    acquisition_score: float | None = None
    single_point_energy: float | None = Field(
        None, description="The potential's energy of the proposed structure, eV/atom "
        "(acquisition.single_point)")
    selected_round: int | None = None
    times_proposed: int = 1
    claimed_by: str | None = Field(None, description="Worker relaxing it (host:pid)")
    claimed_at: str | None = None
    created_at: str = Field(default_factory=utcnow)


class RelaxationDoc(_Doc):
    """The outcome of relaxing one candidate (or a hull reference)."""

    campaign: str
    candidate_id: str
    ok: bool
    converged: bool = False
    energy_per_atom: float | None = Field(None, description="Raw potential energy, eV/atom")
    structure: dict[str, Any] | None = Field(None, description="Relaxed structure")
    n_steps: int | None = None
    max_force: float | None = Field(None, description="Final max force, eV/Å")
    potential: str = ""
    job_uuid: str | None = None
    wall_s: float | None = None
    reason: str | None = None
    round: int | None = None
    evidence: str | None = Field(
        None, description="Evidence level of the energy; None: derived from the potential"
    )
    properties: dict[str, float] = Field(
        default_factory=dict, description="Other labels the relaxer computed (replay tables)"
    )
    worker: str | None = Field(None, description="Dask worker that relaxed it; None: in-process")
    created_at: str = Field(default_factory=utcnow)

    @classmethod
    def from_outcome(
        cls, outcome: Any, campaign: str, round_: int, potential: str
    ) -> RelaxationDoc:
        """The document of a relaxer's outcome (a ``matloop.relax.outcome.RelaxOutcome``),
        labelled with the campaign's ``potential``."""
        structure = outcome.structure
        return cls(
            campaign=campaign,
            candidate_id=outcome.candidate_id,
            ok=outcome.ok,
            converged=outcome.converged,
            energy_per_atom=outcome.energy_per_atom,
            structure=structure_dict(structure) if structure is not None else None,
            n_steps=outcome.n_steps,
            max_force=outcome.max_force,
            potential=potential,
            job_uuid=outcome.job_uuid,
            wall_s=outcome.wall_s,
            reason=outcome.reason,
            round=round_,
            properties=outcome.properties,
            worker=outcome.worker,
        )


class EvaluationDoc(_Doc):
    """How a relaxed candidate was judged, against which hull."""

    campaign: str
    candidate_id: str
    round: int
    formula: str
    energy_per_atom: float
    corrected_energy_per_atom: float | None = None
    formation_energy_per_atom: float | None = None
    e_above_hull: float
    e_above_hull_at_round: float | None = Field(
        None, description="e_above_hull against the hull as it stood when first evaluated"
    )
    is_stable: bool = Field(description="e_above_hull within the campaign's threshold")
    is_novel: bool = Field(description="novelty == 'novel' (a known or unjudged one is not)")
    is_unique: bool
    duplicate_of: str | None = None
    novelty: str | None = Field(
        None,
        description="novel | known | unjudged: unjudged when the reference sets hold no "
        "crystal of its chemical system (None: evaluated before novelty was judged)",
    )
    novelty_reference: dict[str, Any] = Field(
        default_factory=dict,
        description="Reference sets searched (sets), known crystals of its chemical system "
        "(n_chemsys) and of each subsystem (n_subsystems)",
    )
    spacegroup: str | None = None
    hull_scheme: str = Field(description="Potential + correction scheme used for the hull")
    hull_version: int = Field(description="Round whose hull this evaluation used")
    evidence: str = Field(
        "mlip-relaxed",
        description="How the energy was obtained: mlip-relaxed | dft-single-point | dft-relaxed",
    )
    potential: str | None = Field(
        None, description="Potential (name and version) or DFT code that gave the energy"
    )
    settings: dict[str, Any] = Field(
        default_factory=dict, description="Relaxation settings (fmax, steps, functional, …)"
    )
    converged: bool | None = Field(None, description="Whether the relaxation converged")
    max_force: float | None = Field(None, description="Final max force of the relaxation, eV/Å")
    n_steps: int | None = Field(None, description="Relaxation steps taken")
    reference_set_version: str | None = Field(
        None,
        description="Hash of every entry of the hull it was judged against (ids, cell formulas, "
        "raw energies, correction scheme); recomputable from the export's references.csv",
    )
    n_hull_entries: int | None = Field(None, description="Entries in that hull")
    properties: dict[str, float] = Field(default_factory=dict)
    updated_at: str = Field(default_factory=utcnow)


class ReferenceDoc(_Doc):
    """A hull reference: an elemental ground state or a known compound, relaxed with the
    campaign's potential. Shared by campaigns that use the same potential."""

    reference_id: str = Field(description="e.g. 'element:O' or 'seed:mp-1234'")
    potential: str
    formula: str
    chemsys: str
    energy_per_atom: float
    structure: dict[str, Any]
    source: str = Field(
        description="elemental | file:<name> | materials-project | optimade:<provider>"
    )
    source_id: str | None = None
    retrieved_at: str | None = Field(
        None, description="When the crystal was fetched from its database (OPTIMADE, MP)"
    )
    evidence: str = "mlip-relaxed"
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="Settings of the calculation that gave the energy (DFT references)",
    )
    properties: dict[str, float] = Field(default_factory=dict)
    created_at: str = Field(default_factory=utcnow)


class RoundDoc(_Doc):
    """One round of a campaign; ``steps_done`` makes an interrupted round resumable."""

    campaign: str
    round: int
    status: str = "started"
    steps_done: list[str] = Field(default_factory=list)
    metrics: dict[str, Any] = Field(default_factory=dict)
    started_at: str = Field(default_factory=utcnow)
    completed_at: str | None = None


class CampaignDoc(_Doc):
    campaign: str
    config: dict[str, Any]
    status: str = "created"
    rounds_completed: int = 0
    references_ready: bool = False
    hull_scheme: str | None = None
    potential: str | None = Field(
        None, description="Label of the campaign's relaxer, e.g. 'CHGNet 0.3.0' (references "
        "and relaxations carry it); None for campaigns stored before it was recorded"
    )
    seed_reference_ids: list[str] = Field(
        default_factory=list, description="Seed crystals of this campaign's space in the hull"
    )
    seed_systems: dict[str, int] | None = Field(
        None, description="Seed crystals in the hull per chemical system, e.g. {'Cl-Na': 3} "
        "(None: recorded before this field existed)"
    )
    reference_e_above_hull: dict[str, float] = Field(
        default_factory=dict, description="e_above_hull of each reference at the last evaluation"
    )
    stop_reason: str | None = None
    dft_reference_failures: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="DFT hull references whose calculation failed, per reference id: the DFT "
        "label ('potential') it ran under, attempts, the last reason and round. The verify "
        "step gives up on one after a bounded number of attempts with the same settings",
    )
    created_at: str = Field(default_factory=utcnow)
    updated_at: str = Field(default_factory=utcnow)


class ModelDoc(_Doc):
    """A versioned generator checkpoint (bytes in the store, with its hash)."""

    campaign: str
    name: str
    version: int
    kind: str
    sha256: str
    checkpoint_path: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    created_at: str = Field(default_factory=utcnow)


class DftDoc(_Doc):
    """A DFT verification of one candidate, kept beside its ML evaluation.

    DFT energies (a CP2K or VASP total energy) are on their own scale: they never enter the
    ML hull, which stays on the potential's (MP-compatible) scale.
    """

    campaign: str
    candidate_id: str
    round: int = Field(description="Round whose evaluation picked it for verification")
    ok: bool = Field(description="The calculation finished and converged")
    code: str = Field(description="cp2k | vasp")
    kind: str = Field(description="relax (ions and cell) | static (single point)")
    evidence: str = Field(description="dft-relaxed | dft-single-point")
    energy_per_atom: float | None = Field(None, description="DFT total energy, eV/atom")
    energy: float | None = Field(None, description="DFT total energy of the cell, eV")
    structure: dict[str, Any] | None = Field(None, description="Final DFT structure")
    converged: bool = False
    energy_converged: bool | None = Field(
        None, description="Stopped at MAX_ITER but accepted: its energy had settled "
        "(dft.energy_tolerance); None when the optimiser converged or nothing was checked"
    )
    reason: str | None = Field(None, description="Why it failed")
    settings: dict[str, Any] = Field(
        default_factory=dict, description="Functional, basis / POTCARs, cutoffs, k-points"
    )
    ml_energy_per_atom: float | None = Field(None, description="ML energy, eV/atom (raw)")
    ml_e_above_hull: float | None = Field(None, description="ML e_above_hull when picked")
    ml_potential: str | None = Field(None, description="Potential of the ML relaxation")
    volume_ratio: float | None = Field(
        None, description="DFT cell volume / ML cell volume (relax only)"
    )
    matches_ml_structure: bool | None = Field(
        None, description="StructureMatcher: the DFT structure is the ML one (relax only)"
    )
    dft_e_above_hull: float | None = Field(
        None, description="Energy above the DFT hull (same code and settings), eV/atom"
    )
    verdict: str | None = Field(
        None,
        description="confirmed (DFT-relaxed, converged, within the threshold on the DFT "
        "hull) | refuted (DFT-relaxed, above it) | checked-stable / checked-unstable (single "
        "point) | failed | None (no DFT hull could be built)",
    )
    dft_hull_version: str | None = Field(
        None, description="Hash of the DFT hull's entries (see references.csv, hull=dft)"
    )
    dft_reference_ids: list[str] = Field(
        default_factory=list, description="DFT references of its chemical system in that hull"
    )
    job_uuid: str | None = None
    wall_s: float | None = None
    created_at: str = Field(default_factory=utcnow)

    @classmethod
    def from_outcome(
        cls, outcome: Any, campaign: str, round_: int, ml: RelaxationDoc,
        ml_e_above_hull: float | None, volume_ratio: float | None = None,
        matches_ml_structure: bool | None = None,
    ) -> DftDoc:
        """The document of a DFT outcome (``matloop.relax.dft.DftOutcome``) beside the ML
        relaxation ``ml`` it verifies."""
        structure = outcome.structure
        return cls(
            campaign=campaign, candidate_id=outcome.candidate_id, round=round_,
            ok=outcome.ok, code=outcome.code, kind=outcome.kind, evidence=outcome.evidence,
            energy_per_atom=outcome.energy_per_atom, energy=outcome.energy,
            structure=structure_dict(structure) if structure is not None else None,
            converged=outcome.converged, energy_converged=outcome.energy_converged,
            reason=outcome.reason, settings=outcome.settings,
            ml_energy_per_atom=ml.energy_per_atom, ml_e_above_hull=ml_e_above_hull,
            ml_potential=ml.potential, volume_ratio=volume_ratio,
            matches_ml_structure=matches_ml_structure, job_uuid=outcome.job_uuid,
            wall_s=outcome.wall_s,
        )
