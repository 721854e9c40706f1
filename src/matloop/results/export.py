"""Write a campaign's results to a folder: tables, CIFs, plots and a report.

``candidates.csv``   every candidate with its status, energies, evidence level and flags
``rounds.csv``       one row per round with the loop's metrics and diagnostics (generator
                     allocation, hits and hit rate per generator as ``name=value; ...``,
                     repeats, surrogate MAE / bias / calibration)
``references.csv``   every entry the hull was built from, with raw and corrected energies:
                     ``PhaseDiagram([PDEntry(Composition(formula), corrected_energy), ...])``
                     recomputes every exported ``e_above_hull`` (see :func:`recompute_hull`)
``summary.json``     the campaign's key numbers (also shown by ``matloop status --json``)
``cifs/``            relaxed structures of the stable or nearly stable (≤ 0.1 eV/atom), as
                     relaxed (P1, every site listed); ``cif_symprec`` writes them
                     symmetrized instead (spglib: ~0.3 s per cubic crystal, so off by default)
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

from matloop.results.rows import (  # noqa: F401  reference_version_of: for readers of the CSV
    DIAGNOSTIC_COLUMNS,
    NEAR_STABLE,
    candidate_rows,
    dft_hull_rows,
    reference_rows,
    reference_version_of,
    round_rows,
)

log = logging.getLogger("matloop")
CIF_BATCH = 2000  # relaxations read at a time for cifs/ (each holds a structure)

CANDIDATE_COLUMNS = [
    "candidate_id", "round", "selected_round", "formula", "nsites", "generator", "prototype",
    "status", "reason", "energy_per_atom", "corrected_energy_per_atom",
    "formation_energy_per_atom", "e_above_hull", "is_stable", "novelty", "novelty_reference",
    "is_novel", "is_unique", "duplicate_of", "spacegroup", "evidence", "potential", "converged",
    "max_force", "n_steps",
    "hull_scheme", "hull_version", "reference_set_version", "dft_evidence", "dft_code",
    "dft_ok", "dft_converged", "dft_energy_converged", "dft_energy_per_atom",
    "dft_matches_ml_structure",
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
    *[c for c in DIAGNOSTIC_COLUMNS if c not in ("surrogate_mae", "surrogate_within_1sigma",
                                                  "surrogate_within_2sigma")],
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
    cif_symprec: float | None = None,
) -> Path:
    """Write every file listed in the module docstring; returns the folder.

    ``generators`` are the campaign's generators when they are at hand (``matloop run``): each
    one with a latent space (an ``encode(structures)`` method) gets a latent map.
    ``cif_symprec`` (Å) writes symmetrized CIFs with that tolerance instead of the relaxed
    cells as they are.
    """
    from matloop.results.report import campaign_summary, write_reports

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
    n_cifs = _write_cifs(store, campaign, out / "cifs", symprec=cif_symprec)
    from matloop.results import plots

    figures = plots.campaign_plots(store, campaign, out / "plots", rounds, references,
                                   generators=generators)
    write_reports(store, campaign, out, candidates=candidates, rounds=rounds,
                  references=references, summary=summary, n_cifs=n_cifs, figures=figures)
    return out


def _write_cifs(
    store: MatloopStore, campaign: str, folder: Path, symprec: float | None = None
) -> int:
    """Write the relaxed structure of every evaluated candidate within ``NEAR_STABLE`` of the
    hull; returns how many. Only their relaxations are read (in batches, by id)."""
    from pymatgen.core import Structure
    from pymatgen.io.cif import CifWriter

    near = [e["candidate_id"] for e in store.project(
        "evaluations", {"campaign": campaign}, ["candidate_id", "e_above_hull"])
        if e["e_above_hull"] <= NEAR_STABLE]
    count = 0
    for start in range(0, len(near), CIF_BATCH):
        for relax in store.relaxations(campaign, ids=near[start:start + CIF_BATCH]):
            if relax.ok and relax.structure:
                structure = Structure.from_dict(relax.structure)
                CifWriter(structure, symprec=symprec).write_file(
                    folder / f"{relax.candidate_id}.cif")
                count += 1
    return count
