"""The rows every result is built from, in one place: candidates, rounds, hull entries.

:mod:`matloop.results.export` writes them as CSV files; :mod:`matloop.results.report` and
:mod:`matloop.results.plots` read them. Everything comes from the store; nothing here
relaxes or loads a potential (a campaign's potential label is stored with it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from matloop.store.documents import CandidateDoc, EvaluationDoc

if TYPE_CHECKING:
    from matloop.store import CampaignDoc, MatloopStore

__all__ = [
    "NEAR_STABLE",
    "CANDIDATE_FIELDS",
    "campaign_potential",
    "candidate_rows",
    "dft_hull_rows",
    "hull_entries",
    "reference_rows",
    "reference_version_of",
    "round_rows",
]

NEAR_STABLE = 0.1  # eV/atom: what gets a CIF in cifs/


def campaign_potential(doc: CampaignDoc) -> str:
    """The potential label of a stored campaign (e.g. ``'CHGNet 0.3.0'``): recorded with it,
    or, for campaigns stored before it was, read from its hull scheme."""
    from matloop.evaluators.stability import parse_hull_scheme

    if doc.potential:
        return doc.potential
    return parse_hull_scheme(doc.hull_scheme)[0] if doc.hull_scheme else ""


#: What ``candidates.csv`` takes from each stored document: never a structure or a history,
#: so that a campaign of 100,000 candidates is read in one pass of small rows.
CANDIDATE_FIELDS = tuple(f for f in CandidateDoc.model_fields
                         if f not in ("structure", "history", "conditions"))
RELAXATION_FIELDS = ("candidate_id", "energy_per_atom", "n_steps", "max_force", "converged",
                     "potential", "evidence")
EVALUATION_FIELDS = tuple(f for f in EvaluationDoc.model_fields
                          if f not in ("round", "properties"))


def candidate_rows(store: MatloopStore, campaign: str) -> list[dict[str, Any]]:
    """One row per candidate: the candidate, its relaxation and its evaluation merged.

    Each collection is read once, only the fields the rows hold (see ``CANDIDATE_FIELDS``).
    """
    from matloop.evaluators.evidence import evidence_for_potential

    mine = {"campaign": campaign}
    evaluations = {e["candidate_id"]: e
                   for e in store.project("evaluations", mine, EVALUATION_FIELDS)}
    relaxations = {r["candidate_id"]: r
                   for r in store.project("relaxations", mine, RELAXATION_FIELDS)}
    dft = {d.candidate_id: d for d in store.dft_results(campaign)}
    rows = []
    for row in store.project("candidates", mine, CANDIDATE_FIELDS,
                             sort={"round": 1, "candidate_id": 1}):
        if (relax := relaxations.get(row["candidate_id"])) is not None:
            row.update(
                energy_per_atom=relax["energy_per_atom"], n_steps=relax["n_steps"],
                max_force=relax["max_force"], converged=relax["converged"],
                potential=relax["potential"],
                evidence=relax["evidence"] or evidence_for_potential(relax["potential"]),
            )
        if (ev := evaluations.get(row["candidate_id"])) is not None:
            # evaluations written before evidence was recorded leave these None: keep the
            # relaxation's values then
            row.update({k: v for k, v in ev.items() if v is not None})
            row["novelty_reference"] = json.dumps(ev["novelty_reference"], sort_keys=True)
        if (check := dft.get(row["candidate_id"])) is not None:
            # a DFT verification beside the ML evaluation (its energy is not in the ML hull)
            row.update(dft_evidence=check.evidence, dft_code=check.code, dft_ok=check.ok,
                       dft_converged=check.converged,
                       dft_energy_converged=check.energy_converged,
                       dft_energy_per_atom=check.energy_per_atom,
                       dft_matches_ml_structure=check.matches_ml_structure,
                       dft_e_above_hull=check.dft_e_above_hull, dft_verdict=check.verdict)
        rows.append(row)
    return rows


def round_rows(store: MatloopStore, campaign: str) -> list[dict[str, Any]]:
    return [
        {"round": r.round, "status": r.status, "started_at": r.started_at,
         "completed_at": r.completed_at, **r.metrics, **diagnostic_cells(r.metrics)}
        for r in store.rounds(campaign)
    ]


#: The loop diagnostics of a round as flat cells (rounds.csv, report, Prefect artifacts).
DIAGNOSTIC_COLUMNS = [
    "allocation_strategy", "allocation", "relaxed_by_generator", "hits_by_generator",
    "hit_rate_by_generator", "repeat_proposals", "duplicates_rejected", "duplicate_share",
    "known_skipped_by_generator",
    "surrogate_mae", "surrogate_bias", "surrogate_within_1sigma", "surrogate_within_2sigma",
]


def by_generator(value: Any) -> str | None:
    """``{"a": 1, "b": 0.25}`` as ``"a=1; b=0.25"`` (one CSV cell); None stays None."""
    if not isinstance(value, dict):
        return value
    return "; ".join(f"{k}={round(v, 4) if isinstance(v, float) else v}"
                     for k, v in value.items())  # fmt: skip


def diagnostic_cells(metrics: dict[str, Any]) -> dict[str, Any]:
    """A round's loop diagnostics (see :mod:`matloop.loop.diagnostics`) as flat cells:
    per-generator dicts become ``name=value`` lists, the allocation its proposals asked."""
    allocation = metrics.get("allocation") or {}
    cells = {key: by_generator(metrics.get(key)) for key in DIAGNOSTIC_COLUMNS}
    cells["allocation_strategy"] = allocation.get("strategy")
    cells["allocation"] = by_generator(allocation.get("asked"))
    return cells


def hull_entries(store: MatloopStore, campaign: str) -> list[tuple[dict[str, Any], Any]]:
    """Every entry of the campaign's latest hull as ``(row, corrected entry)`` pairs.

    The hull of the last evaluation: the elemental and seed references, and every candidate
    that was evaluated (a candidate relaxed but not yet evaluated, or whose energy the
    correction scheme rejected, is not part of it). Entries are built exactly as
    :class:`matloop.loop.evaluate.EvaluateStep` builds them.
    """
    from pymatgen.core import Structure

    from matloop.evaluators.evidence import evidence_for_potential
    from matloop.evaluators.stability import CORRECTION_NAME, make_entry, parse_hull_scheme

    doc = store.get_campaign(campaign)
    if doc is None or not doc.hull_scheme:
        return []
    potential = campaign_potential(doc)
    correct = parse_hull_scheme(doc.hull_scheme)[1] == CORRECTION_NAME
    elements = doc.config["chemical_space"]["elements"]
    ids = [f"element:{el}" for el in elements] + doc.seed_reference_ids
    evaluated = [e["candidate_id"] for e in store.project(
        "evaluations", {"campaign": campaign}, ["candidate_id"], sort={"candidate_id": 1})]
    pairs: list[tuple[dict[str, Any], Any]] = []
    sources = [
        ("reference", r.reference_id, r.structure, r.energy_per_atom, r.source,
         r.evidence, r.potential)
        for r in store.references(potential, ids=ids)
    ]
    sources += [
        ("candidate", r.candidate_id, r.structure, r.energy_per_atom, f"campaign round {r.round}",
         r.evidence or evidence_for_potential(r.potential), r.potential)
        for r in store.relaxations(campaign, ids=evaluated) if r.ok and r.structure
    ]
    for kind, entry_id, structure, energy_per_atom, source, evidence, pot in sources:
        entry = make_entry(Structure.from_dict(structure), energy_per_atom, entry_id,
                           correct=correct)
        composition = entry.composition
        pairs.append((
            {
                "hull": "ml", "entry_id": entry_id, "kind": kind,
                "formula": composition.formula.replace(" ", ""),
                "reduced_formula": composition.reduced_formula,
                "n_atoms": int(composition.num_atoms),
                "energy_per_atom": entry.uncorrected_energy_per_atom,
                "energy": entry.uncorrected_energy,
                "correction": entry.correction,
                "corrected_energy": entry.energy,
                "corrected_energy_per_atom": entry.energy_per_atom,
                "correction_scheme": CORRECTION_NAME if correct else "none",
                "source": source, "evidence": evidence, "potential": pot,
            },
            entry,
        ))
    return pairs


def reference_rows(store: MatloopStore, campaign: str) -> list[dict[str, Any]]:
    """The rows of ``references.csv``: every hull entry, raw and corrected energies, and its
    ``e_above_hull`` in the hull they make together."""
    from pymatgen.analysis.phase_diagram import PhaseDiagram

    pairs = hull_entries(store, campaign)
    if not pairs:
        return []
    pd = PhaseDiagram([entry for _, entry in pairs])
    rows = []
    for row, entry in pairs:
        row["e_above_hull"] = float(pd.get_e_above_hull(entry))
        row["formation_energy_per_atom"] = float(pd.get_form_energy_per_atom(entry))
        rows.append(row)
    return rows


def dft_hull_rows(store: MatloopStore, campaign: str) -> list[dict[str, Any]]:
    """The DFT hull's rows of ``references.csv`` (``hull`` = ``dft``): the DFT references of
    the campaign's space and its converged DFT verifications, raw DFT energies (no
    correction), with the settings each was computed with."""
    from pymatgen.core import Structure

    from matloop.evaluators.dft_hull import dft_hull, dft_label_of

    doc = store.get_campaign(campaign)
    results = [d for d in store.dft_results(campaign) if d.ok and d.structure]
    if doc is None or not results or not doc.config.get("dft"):
        return []
    label = dft_label_of(doc.config["dft"])
    ids = [f"element:{el}" for el in doc.config["chemical_space"]["elements"]]
    refs = store.references(label, ids=ids + doc.seed_reference_ids)
    rows = []
    for kind, entry_id, structure, energy, source, evidence, settings in [
        *(("reference", r.reference_id, r.structure, r.energy_per_atom, r.source, r.evidence,
           r.settings) for r in refs),
        *(("candidate", d.candidate_id, d.structure, d.energy_per_atom,
           f"campaign round {d.round}", d.evidence, d.settings) for d in results),
    ]:
        composition = Structure.from_dict(structure).composition
        n = int(composition.num_atoms)
        rows.append({
            "hull": "dft", "entry_id": entry_id, "kind": kind,
            "formula": composition.formula.replace(" ", ""),
            "reduced_formula": composition.reduced_formula, "n_atoms": n,
            "energy_per_atom": energy, "energy": energy * n, "correction": 0.0,
            "corrected_energy": energy * n, "corrected_energy_per_atom": energy,
            "correction_scheme": "none", "source": source, "evidence": evidence,
            "potential": label, "settings": json.dumps(settings, sort_keys=True),
        })
    hull = dft_hull([(r["entry_id"], r["formula"], r["energy_per_atom"]) for r in rows
                     if r["kind"] == "reference"],
                    [(r["entry_id"], r["formula"], r["energy_per_atom"]) for r in rows
                     if r["kind"] == "candidate"])
    for row in rows:
        row["e_above_hull"] = hull.e_above_hull.get(row["entry_id"])
        row["formation_energy_per_atom"] = hull.formation_energy.get(row["entry_id"])
    return rows


def reference_version_of(rows: Sequence[dict[str, Any]], scheme: str | None) -> str:
    """The reference-set version of the ML hull given as ``references.csv`` rows."""
    from matloop.evaluators.evidence import reference_set_version

    return reference_set_version(
        [(r["entry_id"], r["formula"], float(r["energy_per_atom"])) for r in rows
         if r.get("hull", "ml") in ("ml", "")], scheme
    )
