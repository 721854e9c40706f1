"""Hull references, prepared once per campaign before its first round: elemental ground
states and the seed crystals, relaxed with the campaign's own relaxer."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from matloop.loop.step import StepResult
from matloop.store import ReferenceDoc
from matloop.store.documents import structure_dict

if TYPE_CHECKING:
    from collections.abc import Iterable

    from pymatgen.entries.computed_entries import ComputedEntry

    from matloop.loop.context import RunContext

__all__ = ["load_seed_crystals", "prepare_references", "reference_entries", "reference_labels"]


def prepare_references(ctx: RunContext) -> StepResult:
    """Relax elemental ground states and seed crystals once; skip what is stored.

    The campaign record must exist (:func:`matloop.loop.campaign.ensure_campaign`).
    """
    campaign = ctx.store.get_campaign(ctx.name)
    result = StepResult("references", 0)
    if campaign.references_ready:
        result.skipped = True
        return result
    potential = ctx.potential
    elements = list(ctx.config.chemical_space.elements)
    stored = {ref.reference_id for ref in ctx.store.references(potential)}
    missing = [el for el in elements if f"element:{el}" not in stored]
    if missing and ctx.replaying:
        # the table holds formation energies: every element sits at 0 eV/atom
        from pymatgen.core import Lattice, Structure

        ctx.store.save_references([
            ReferenceDoc(
                reference_id=f"element:{el}", potential=potential, formula=el,
                chemsys=el, energy_per_atom=0.0, source="elemental",
                structure=structure_dict(Structure(Lattice.cubic(3.0), [el], [[0, 0, 0]])),
            )
            for el in missing
        ])
    elif missing:
        from matloop.relax.references import relax_elemental_references

        ctx.progress.message(f"loading {ctx.config.relaxer.potential}, then relaxing "
                             f"elemental references for {', '.join(missing)}")
        outcomes = relax_elemental_references(missing, ctx.maker, ctx.store.job_store())
        ctx.store.save_references([
            ReferenceDoc(
                reference_id=f"element:{el}", potential=potential, formula=el, chemsys=el,
                energy_per_atom=float(out.energy_per_atom),
                structure=structure_dict(out.structure), source="elemental",
            )
            for el, out in outcomes.items()
        ])
    from matloop.data import count_by_system

    seeds, problems = load_seed_crystals(ctx)
    seed_ids = [f"seed:{seed.source}:{seed.source_id}" for seed in seeds]
    todo = [(rid, s) for rid, s in zip(seed_ids, seeds, strict=True) if rid not in stored]
    if todo:
        ctx.progress.message(f"relaxing {len(todo)} seed crystal(s) as hull references")
        ctx.progress.relax_started(len(todo))
        relaxer = ctx.reference_relaxer
        for done, (rid, seed) in enumerate(todo, start=1):
            (out,) = relaxer.relax([(rid, seed.structure)])
            ctx.progress.relax_advanced(done, len(todo), rid)
            if not out.ok:
                problems.append(f"seed {seed.source_id} did not relax: {out.reason}")
                continue
            ctx.store.save_references([
                ReferenceDoc(
                    reference_id=rid, potential=potential,
                    formula=out.structure.composition.reduced_formula,
                    chemsys=out.structure.composition.chemical_system,
                    energy_per_atom=float(out.energy_per_atom),
                    structure=structure_dict(out.structure), source=seed.source,
                    source_id=seed.source_id, retrieved_at=seed.retrieved_at,
                    properties=seed.properties,
                )
            ])
    for problem in problems:
        ctx.progress.message(f"seed data: {problem}")
    stored = {ref.reference_id for ref in ctx.store.references(potential)}
    campaign = ctx.store.get_campaign(ctx.name)
    campaign.seed_reference_ids = [rid for rid in seed_ids if rid in stored]
    campaign.seed_systems = count_by_system(
        seed.structure for rid, seed in zip(seed_ids, seeds, strict=True) if rid in stored)
    campaign.hull_scheme = ctx.hull_scheme
    ctx.store.save_campaign(campaign)
    campaign.reference_e_above_hull = reference_labels(ctx)  # needs the saved reference ids
    # ready only with its labels: a run stopped in between labels them when resumed
    campaign.references_ready = True
    ctx.store.save_campaign(campaign)
    result.counts = {
        "elements": len(elements),
        "seeds": len(campaign.seed_reference_ids),
        "problems": len(problems),
    }
    return result


def reference_entries(
    references: Iterable[ReferenceDoc], *, correct: bool
) -> list[ComputedEntry]:
    """Hull entries (:func:`matloop.evaluators.stability.make_entry`) of stored references."""
    from matloop.evaluators.stability import make_entry
    from matloop.store.documents import structure_from_dict

    return [make_entry(structure_from_dict(r.structure), r.energy_per_atom, r.reference_id,
                       correct=correct)
            for r in references]  # fmt: skip


def reference_labels(ctx: RunContext) -> dict[str, float]:
    """e_above_hull of each reference on the hull of the references alone: the surrogate's
    first labels, so round 1 can already rank its candidates when the seed data hold at
    least ``MIN_TRAINING_POINTS`` compounds (the evaluate step refreshes them every round).
    Empty otherwise, and when the references do not make a hull: elements alone, all at
    0 eV/atom, teach a surrogate nothing about compounds, so round 1 then picks at random."""
    from matloop.evaluators.stability import compute_hull
    from matloop.loop.labels import MIN_TRAINING_POINTS

    references = ctx.references()
    if sum("-" in r.chemsys for r in references) < MIN_TRAINING_POINTS:  # compounds only
        return {}
    try:
        entries = reference_entries(references, correct=ctx.corrects_energies)
        hull = compute_hull(entries, [], scheme=ctx.hull_scheme)
    except Exception as err:  # e.g. an element without a reference, a rejected correction
        logging.getLogger(__name__).warning("no reference hull before round 1: %s", err)
        return {}
    return {e.entry_id: float(hull.e_above_hull[e.entry_id]) for e in entries}


def load_seed_crystals(ctx: RunContext):
    """Seed crystals inside the chemical space, plus a list of problems met reading."""
    from matloop.data import RowFilter, fetch_materials_project, in_chemical_space, read_structures

    space = ctx.config.chemical_space
    crystals, problems = [], []
    for seed_file in ctx.config.seed_data.files:
        # rows of other chemistries are not parsed (a few dozen of thousands are wanted)
        wanted = RowFilter(elements=frozenset(space.elements), max_atoms=seed_file.max_atoms)
        report = read_structures(
            seed_file.path, seed_file.format, seed_file.cif_column, seed_file.id_column,
            row_filter=wanted,
        )
        problems += report.problems
        crystals += [
            c
            for c in report.crystals
            if in_chemical_space(c.structure, space.elements, seed_file.max_atoms)
        ]
    if ctx.config.seed_data.materials_project:
        report = fetch_materials_project(space.elements)
        crystals += [
            c for c in report.crystals if in_chemical_space(c.structure, space.elements, 40)
        ]
    for source in ctx.config.seed_data.optimade:
        from matloop.optimade_source import fetch_optimade

        report = fetch_optimade(source.base_url, source.filter, list(space.elements),
                                cache_dir=source.cache, refresh=source.refresh,
                                max_results=source.max_results)  # fmt: skip
        problems += report.problems
        crystals += [c for c in report.crystals
                     if in_chemical_space(c.structure, space.elements, source.max_atoms)]
    return crystals, problems
