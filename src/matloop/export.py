"""Write a campaign's results to a folder: tables, CIFs, plots and a report.

``candidates.csv``   every candidate with its status, energies, evidence level and flags
``rounds.csv``       one row per round with the loop's metrics
``references.csv``   every entry the hull was built from, with raw and corrected energies:
                     ``PhaseDiagram([PDEntry(Composition(formula), corrected_energy), ...])``
                     recomputes every exported ``e_above_hull`` (see :func:`recompute_hull`)
``summary.json``     the campaign's key numbers (also shown by ``matloop status --json``)
``cifs/``            relaxed structures of the stable or nearly stable (≤ 0.1 eV/atom)
``plots/``           hit rate per round, the convex hull, latent maps of learned generators
``report.html``      one self-contained page (plots embedded) a person can read
``report.md``        the same in markdown

Examples
--------
>>> from matloop.store import MatloopStore
>>> export_campaign(MatloopStore("memory://"), "nothing", "/tmp/x")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
KeyError: "no campaign named 'nothing' in the store (campaigns: none)"
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pymatgen.analysis.phase_diagram import PhaseDiagram

    from matloop.store import MatloopStore

log = logging.getLogger("matloop")

NEAR_STABLE = 0.1  # eV/atom: what gets a CIF in cifs/

CANDIDATE_COLUMNS = [
    "candidate_id", "round", "selected_round", "formula", "nsites", "generator", "prototype",
    "status", "reason", "energy_per_atom", "corrected_energy_per_atom",
    "formation_energy_per_atom", "e_above_hull", "is_stable", "novelty", "novelty_reference",
    "is_novel", "is_unique", "duplicate_of", "spacegroup", "evidence", "potential", "converged",
    "max_force", "n_steps",
    "hull_scheme", "hull_version", "reference_set_version", "dft_evidence", "dft_code",
    "dft_ok", "dft_converged", "dft_energy_per_atom", "dft_matches_ml_structure",
    "dft_e_above_hull", "dft_verdict",
    "predicted_e_above_hull", "predicted_std",
]
ROUND_COLUMNS = [
    "round", "status", "proposed", "rejected", "selected", "relaxed", "failed", "evaluated",
    "stable", "novel", "unjudged", "stable_novelty_unknown", "unique", "hits", "hit_rate",
    "best_e_above_hull", "surrogate_mae",
    "surrogate_within_1sigma", "surrogate_within_2sigma", "surrogate_std_scale", "acquisition",
    "reference_set_version", "started_at",
    "completed_at",
]
REFERENCE_COLUMNS = [
    "hull", "entry_id", "kind", "formula", "reduced_formula", "n_atoms", "energy_per_atom",
    "energy",
    "correction", "corrected_energy", "corrected_energy_per_atom", "correction_scheme",
    "e_above_hull", "formation_energy_per_atom", "source", "evidence", "potential",
    "settings",
]


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})


def candidate_rows(store: MatloopStore, campaign: str) -> list[dict[str, Any]]:
    """One row per candidate: the candidate, its relaxation and its evaluation merged."""
    from matloop.evaluators.evidence import evidence_for_potential

    evaluations = {e.candidate_id: e for e in store.evaluations(campaign)}
    relaxations = {r.candidate_id: r for r in store.relaxations(campaign)}
    from matloop.report import _dft_results

    dft = {d.candidate_id: d for d in _dft_results(store, campaign)}
    rows = []
    for cand in store.candidates(campaign):
        row: dict[str, Any] = cand.model_dump(exclude={"structure", "history", "conditions"})
        if (relax := relaxations.get(cand.candidate_id)) is not None:
            row.update(
                energy_per_atom=relax.energy_per_atom, n_steps=relax.n_steps,
                max_force=relax.max_force, converged=relax.converged, potential=relax.potential,
                evidence=relax.evidence or evidence_for_potential(relax.potential),
            )
        if (ev := evaluations.get(cand.candidate_id)) is not None:
            # evaluations written before evidence was recorded leave these None: keep the
            # relaxation's values then
            row.update({k: v for k, v in ev.model_dump(exclude={"round", "properties"}).items()
                        if v is not None})
            row["novelty_reference"] = json.dumps(ev.novelty_reference, sort_keys=True)
        if (check := dft.get(cand.candidate_id)) is not None:
            # a DFT verification beside the ML evaluation (its energy is not in the ML hull)
            row.update(dft_evidence=check.evidence, dft_code=check.code, dft_ok=check.ok,
                       dft_converged=check.converged, dft_energy_per_atom=check.energy_per_atom,
                       dft_matches_ml_structure=check.matches_ml_structure,
                       dft_e_above_hull=check.dft_e_above_hull, dft_verdict=check.verdict)
        rows.append(row)
    return rows


def round_rows(store: MatloopStore, campaign: str) -> list[dict[str, Any]]:
    return [
        {"round": r.round, "status": r.status, "started_at": r.started_at,
         "completed_at": r.completed_at, **r.metrics}
        for r in store.rounds(campaign)
    ]


def hull_entries(store: MatloopStore, campaign: str) -> list[tuple[dict[str, Any], Any]]:
    """Every entry of the campaign's latest hull as ``(row, corrected entry)`` pairs.

    The hull of the last evaluation: the elemental and seed references, and every candidate
    that was evaluated (a candidate relaxed but not yet evaluated, or whose energy the
    correction scheme rejected, is not part of it). Entries are built exactly as
    :meth:`matloop.flows.steps.CampaignRun.evaluate` builds them.
    """
    from pymatgen.core import Structure

    from matloop.evaluators.evidence import evidence_for_potential
    from matloop.evaluators.stability import CORRECTION_NAME, make_entry
    from matloop.relax.makers import needs_mp2020_correction, relaxer_potential

    doc = store.get_campaign(campaign)
    if doc is None or not doc.hull_scheme:
        return []
    potential = relaxer_potential(doc.config["relaxer"])
    correct = needs_mp2020_correction(doc.config["relaxer"]["potential"])
    elements = doc.config["chemical_space"]["elements"]
    ids = [f"element:{el}" for el in elements] + doc.seed_reference_ids
    evaluations = {e.candidate_id: e for e in store.evaluations(campaign)}
    pairs: list[tuple[dict[str, Any], Any]] = []
    sources = [
        ("reference", r.reference_id, r.structure, r.energy_per_atom, r.source,
         r.evidence, r.potential)
        for r in store.references(potential, ids=ids)
    ]
    sources += [
        ("candidate", r.candidate_id, r.structure, r.energy_per_atom, f"campaign round {r.round}",
         r.evidence or evidence_for_potential(r.potential), r.potential)
        for r in store.relaxations(campaign, ids=list(evaluations)) if r.ok and r.structure
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


def recompute_hull(
    references_csv: str | Path, hull: str = "ml"
) -> tuple[PhaseDiagram, dict[str, float]]:
    """Rebuild a campaign's hull from an exported ``references.csv`` with plain pymatgen.

    Returns the ``PhaseDiagram`` and ``entry_id -> e_above_hull`` for every row of one hull:
    ``hull="ml"`` (the ML potential's) or ``"dft"`` (the DFT verifications' hull, DFT
    references of the same settings). Nothing of matloop is needed; this is the whole
    recipe (with the rows of one ``hull`` value)::

        entries = [PDEntry(Composition(row["formula"]), float(row["corrected_energy"]),
                           name=row["entry_id"]) for row in csv.DictReader(open(path))]
        pd = PhaseDiagram(entries)
        pd.get_e_above_hull(entry)
    """
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
    from pymatgen.core import Composition

    with Path(references_csv).open() as handle:
        rows = [r for r in csv.DictReader(handle) if (r.get("hull") or "ml") == hull]
    entries = [
        PDEntry(Composition(r["formula"]), float(r["corrected_energy"]), name=r["entry_id"])
        for r in rows
    ]
    pd = PhaseDiagram(entries)
    return pd, {e.name: float(pd.get_e_above_hull(e)) for e in entries}


def export_campaign(
    store: MatloopStore,
    campaign: str,
    output: str | Path,
    *,
    generators: Sequence[Any] = (),
) -> Path:
    """Write every file listed in the module docstring; returns the folder.

    ``generators`` are the campaign's generators when they are at hand (``matloop run``): each
    one with a latent space (an ``encode(structures)`` method) gets a latent map.
    """
    from matloop.report import campaign_summary, write_reports

    if store.get_campaign(campaign) is None:
        known = ", ".join(c.campaign for c in store.campaigns()) or "none"
        raise KeyError(f"no campaign named {campaign!r} in the store (campaigns: {known})")
    out = Path(output)
    (out / "cifs").mkdir(parents=True, exist_ok=True)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    candidates = candidate_rows(store, campaign)
    rounds = round_rows(store, campaign)
    _write_csv(out / "candidates.csv", CANDIDATE_COLUMNS, candidates)
    _write_csv(out / "rounds.csv", ROUND_COLUMNS, rounds)
    references = reference_rows(store, campaign)
    _write_csv(out / "references.csv", REFERENCE_COLUMNS,
               references + dft_hull_rows(store, campaign))
    summary = campaign_summary(store, campaign, references=references)
    if summary["hull_stale"]:
        log.warning(
            "%s: the stored evaluations were judged against hull %s, the exported references "
            "make hull %s (a round was interrupted after relaxing?)", campaign,
            summary["stored_reference_set_versions"], summary["reference_set_version"],
        )
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    n_cifs = _write_cifs(store, campaign, out / "cifs")
    from matloop import plots

    figures = plots.campaign_plots(store, campaign, out / "plots", rounds, references,
                                   generators=generators)
    write_reports(store, campaign, out, candidates=candidates, rounds=rounds,
                  references=references, summary=summary, n_cifs=n_cifs, figures=figures)
    return out


def _write_cifs(store: MatloopStore, campaign: str, folder: Path) -> int:
    from pymatgen.core import Structure
    from pymatgen.io.cif import CifWriter

    relaxations = {r.candidate_id: r for r in store.relaxations(campaign) if r.ok}
    count = 0
    for ev in store.evaluations(campaign):
        relax = relaxations.get(ev.candidate_id)
        if ev.e_above_hull <= NEAR_STABLE and relax is not None and relax.structure:
            structure = Structure.from_dict(relax.structure)
            CifWriter(structure, symprec=0.1).write_file(folder / f"{ev.candidate_id}.cif")
            count += 1
    return count
