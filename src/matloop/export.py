"""Write a campaign's results to a folder: tables, CIFs, plots and a short report.

``candidates.csv``   every candidate with its status, energies and flags
``rounds.csv``       one row per round with the loop's metrics
``references.csv``   every entry the hull was built from (recompute any e_above_hull)
``cifs/``            relaxed structures of the stable or nearly stable (≤ 0.1 eV/atom)
``plots/``           hit rate per round, the convex hull of the chemical space
``report.md``        a summary a person can read
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matloop.store import MatloopStore

log = logging.getLogger("matloop")

NEAR_STABLE = 0.1  # eV/atom: what gets a CIF in cifs/

CANDIDATE_COLUMNS = [
    "candidate_id", "round", "selected_round", "formula", "nsites", "generator", "prototype", "status", "reason",
    "energy_per_atom", "corrected_energy_per_atom", "formation_energy_per_atom",
    "e_above_hull", "is_stable", "is_novel", "is_unique", "duplicate_of", "spacegroup",
    "evidence", "hull_scheme", "predicted_e_above_hull", "predicted_std", "n_steps",
    "max_force", "converged",
]
ROUND_COLUMNS = [
    "round", "status", "proposed", "rejected", "selected", "relaxed", "failed", "evaluated",
    "stable", "novel", "unique", "hits", "hit_rate", "best_e_above_hull", "surrogate_mae",
    "surrogate_within_1sigma", "acquisition", "started_at", "completed_at",
]


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})


def candidate_rows(store: MatloopStore, campaign: str) -> list[dict[str, Any]]:
    evaluations = {e.candidate_id: e for e in store.evaluations(campaign)}
    relaxations = {r.candidate_id: r for r in store.relaxations(campaign)}
    rows = []
    for cand in store.candidates(campaign):
        row: dict[str, Any] = cand.model_dump(exclude={"structure", "history", "conditions"})
        if (relax := relaxations.get(cand.candidate_id)) is not None:
            row.update(
                energy_per_atom=relax.energy_per_atom, n_steps=relax.n_steps,
                max_force=relax.max_force, converged=relax.converged,
            )
        if (ev := evaluations.get(cand.candidate_id)) is not None:
            row.update(ev.model_dump(exclude={"round", "properties"}))
        rows.append(row)
    return rows


def round_rows(store: MatloopStore, campaign: str) -> list[dict[str, Any]]:
    return [
        {"round": r.round, "status": r.status, "started_at": r.started_at,
         "completed_at": r.completed_at, **r.metrics}
        for r in store.rounds(campaign)
    ]


def reference_rows(store: MatloopStore, campaign: str) -> list[dict[str, Any]]:
    """Every entry of the campaign's hull: references and relaxed candidates."""
    doc = store.get_campaign(campaign)
    if doc is None or not doc.hull_scheme:
        return []
    from matloop.relax.makers import potential_version

    potential = potential_version(doc.config["relaxer"]["potential"])
    elements = doc.config["chemical_space"]["elements"]
    ids = [f"element:{el}" for el in elements] + doc.seed_reference_ids
    rows = [
        {"entry_id": r.reference_id, "formula": r.formula, "energy_per_atom": r.energy_per_atom,
         "source": r.source, "evidence": r.evidence, "potential": r.potential}
        for r in store.references(potential, ids=ids)
    ]
    rows += [
        {"entry_id": r.candidate_id, "formula": r.structure and _formula(r.structure),
         "energy_per_atom": r.energy_per_atom, "source": f"campaign round {r.round}",
         "evidence": "mlip-relaxed", "potential": r.potential}
        for r in store.relaxations(campaign) if r.ok
    ]
    return rows


def _formula(structure_dict: dict) -> str:
    from pymatgen.core import Structure

    return Structure.from_dict(structure_dict).composition.formula.replace(" ", "")


def export_campaign(store: MatloopStore, campaign: str, output: str | Path) -> Path:
    """Write every file listed in the module docstring; returns the folder."""
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
    _write_csv(
        out / "references.csv",
        ["entry_id", "formula", "energy_per_atom", "source", "evidence", "potential"],
        references,
    )
    n_cifs = _write_cifs(store, campaign, out / "cifs")
    plots = _plots(store, campaign, out / "plots", rounds)
    (out / "report.md").write_text(_report(store, campaign, candidates, rounds, n_cifs, plots))
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


def _plots(store: MatloopStore, campaign: str, folder: Path, rounds: list[dict]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if rounds:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        xs = [r["round"] for r in rounds]
        ax.plot(xs, [r.get("hit_rate") or 0.0 for r in rounds], "o-", label="hit rate")
        ax.set_xlabel("round")
        ax.set_ylabel("hit rate (novel, unique, near hull)")
        ax.set_ylim(0, 1.05)
        ax.set_xticks(xs)
        ax2 = ax.twinx()
        ax.set_zorder(ax2.get_zorder() + 1)  # the hit-rate line in front of the bars
        ax.patch.set_visible(False)
        cumulative, total = [], 0
        for r in rounds:
            total += r.get("hits") or 0
            cumulative.append(total)
        ax2.bar(xs, cumulative, alpha=0.25, color="tab:green", label="cumulative hits")
        ax2.set_ylabel("cumulative discoveries")
        ax.set_title(campaign)
        fig.tight_layout()
        fig.savefig(folder / "hit_rate.png", dpi=120)
        plt.close(fig)
        written.append("plots/hit_rate.png")
    try:
        if _hull_plot(store, campaign, folder / "hull.png"):
            written.append("plots/hull.png")
    except Exception as err:  # a plot must never lose the export
        log.warning("could not draw the convex hull: %s", err)
    return written


def _hull_plot(store: MatloopStore, campaign: str, path: Path) -> bool:
    from pymatgen.core import Structure

    from matloop.evaluators.stability import make_entry, plot_hull

    rows = reference_rows(store, campaign)
    if not rows:
        return False
    structures = {r.reference_id: r.structure for r in store.references(rows[0]["potential"])}
    structures.update({r.candidate_id: r.structure for r in store.relaxations(campaign) if r.ok})
    entries = [
        make_entry(Structure.from_dict(structures[row["entry_id"]]), row["energy_per_atom"],
                   row["entry_id"])
        for row in rows
    ]
    from pymatgen.analysis.phase_diagram import PhaseDiagram

    stable_ids = [e.candidate_id for e in store.evaluations(campaign) if e.is_novel and e.is_stable]
    plot_hull(PhaseDiagram(entries), path, highlight_ids=stable_ids)
    return path.exists()


def _report(store, campaign, candidates, rounds, n_cifs, plots) -> str:
    doc = store.get_campaign(campaign)
    evaluated = [c for c in candidates if c.get("e_above_hull") not in (None, "")]
    best = sorted(evaluated, key=lambda c: c["e_above_hull"])[:15]
    lines = [
        f"# Campaign {campaign}",
        "",
        f"Chemical space: {'-'.join(doc.config['chemical_space']['elements'])} "
        f"(≤ {doc.config['chemical_space']['max_atoms']} atoms per cell). "
        f"Hull: {doc.hull_scheme}. Status: {doc.status}"
        + (f" ({doc.stop_reason})" if doc.stop_reason else "") + ".",
        "",
        "Every energy here comes from an ML potential relaxation (`mlip-relaxed`): "
        "a candidate near the hull is a lead for DFT, not a confirmed compound.",
        "",
        (f"Novelty is judged against {len(doc.seed_reference_ids)} known crystal(s) of the "
         "space given as seed data." if doc.seed_reference_ids else
         "**No seed data was given: 'novel' means new to this campaign only.** Give known "
         "crystals under `seed_data` to judge novelty against them."),
        "",
        "## Rounds",
        "",
        "| round | proposed | rejected | relaxed | failed | stable | novel | hits | hit rate |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rounds:
        lines.append(
            f"| {r['round']} | {r.get('proposed', 0)} | {r.get('rejected', 0)} | "
            f"{r.get('relaxed', 0)} | {r.get('failed', 0)} | {r.get('stable', 0)} | "
            f"{r.get('novel', 0)} | {r.get('hits', 0)} | {(r.get('hit_rate') or 0):.0%} |"
        )
    lines += [
        "",
        "## Best candidates",
        "",
        "| candidate | formula | round relaxed | space group | E above hull (eV/atom) | novel "
        "| unique |",
        "|---|---|---:|---|---:|---|---|",
    ]
    for c in best:
        cif = f"[{c['candidate_id']}](cifs/{c['candidate_id']}.cif)" if (
            c["e_above_hull"] <= NEAR_STABLE) else c["candidate_id"]
        lines.append(
            f"| {cif} | {c['formula']} | {c.get('selected_round') or c['round']} | "
            f"{c.get('spacegroup') or ''} | "
            f"{c['e_above_hull']:.3f} | {c.get('is_novel')} | {c.get('is_unique')} |"
        )
    lines += ["", f"{n_cifs} CIF(s) of stable or nearly stable crystals in `cifs/`.", ""]
    lines += [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"
