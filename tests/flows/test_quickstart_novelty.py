"""The quickstart calls no textbook crystal a discovery.

It ships no reference crystals, so rock-salt CaO, cubic perovskite CaTiO3, rutile and anatase
TiO2 and rock-salt TiO, relaxed and on the hull, are "stable, novelty unknown" (unjudged),
never novel. Relaxations are written by hand (energies roughly CHGNet's); the real
``evaluate`` step and ``campaign_summary`` judge them.
"""

from __future__ import annotations

from pathlib import Path

from pymatgen.core import Lattice, Structure

from matloop.config import load_config
from matloop.loop import CampaignRun
from matloop.store.documents import structure_dict
from matloop.identity import candidate_id
from matloop.results.report import campaign_summary
from matloop.store import (
    CandidateDoc,
    CandidateStatus,
    MatloopStore,
    ReferenceDoc,
    RelaxationDoc,
    RoundDoc,
)

QUICKSTART = Path(__file__).resolve().parents[2] / "deployments" / "campaigns" / "quickstart.yaml"


def textbook_crystals() -> dict[str, tuple[Structure, float]]:
    """Structure and an energy per atom (eV/atom) well below the elements: each on the hull."""
    rocksalt = lambda a, els: Structure.from_spacegroup(  # noqa: E731
        "Fm-3m", Lattice.cubic(a), els, [[0, 0, 0], [0.5, 0.5, 0.5]]).get_primitive_structure()
    return {
        "CaO rock-salt": (rocksalt(4.81, ["Ca", "O"]), -6.4),
        "TiO rock-salt": (rocksalt(4.18, ["Ti", "O"]), -8.5),
        "CaTiO3 perovskite": (Structure.from_spacegroup(
            "Pm-3m", Lattice.cubic(3.89), ["Ca", "Ti", "O"],
            [[0.5, 0.5, 0.5], [0, 0, 0], [0.5, 0, 0]]), -8.0),
        "TiO2 rutile": (Structure.from_spacegroup(
            "P4_2/mnm", Lattice.tetragonal(4.59, 2.96), ["Ti", "O"],
            [[0, 0, 0], [0.305, 0.305, 0]]), -8.9),
        "TiO2 anatase": (Structure.from_spacegroup(
            "I4_1/amd", Lattice.tetragonal(3.78, 9.51), ["Ti", "O"],
            [[0, 0.75, 0.125], [0, 0.75, 0.333]]).get_primitive_structure(), -8.88),
    }


def test_the_quickstart_reports_no_textbook_crystal_as_a_discovery():
    config = load_config(QUICKSTART)
    assert not (config.seed_data.files or config.seed_data.materials_project
                or config.seed_data.optimade)  # the quickstart ships no reference
    config = config.model_copy(update={"store": "memory://"})
    run = CampaignRun(config, MatloopStore("memory://"))
    campaign = run.ensure_campaign()
    campaign.references_ready, campaign.hull_scheme = True, run.hull_scheme
    run.store.save_campaign(campaign)
    run.store.save_references([
        ReferenceDoc(reference_id=f"element:{el}", potential=run.potential, formula=el,
                     chemsys=el, energy_per_atom=e, source="elemental",
                     structure=structure_dict(Structure(Lattice.cubic(3.0), [el], [[0] * 3])))
        for el, e in (("Ca", -1.9), ("Ti", -7.8), ("O", -4.9))
    ])
    run.store.save_round(RoundDoc(campaign=run.name, round=1,
                                  steps_done=["generate", "screen", "relax"]))
    names = {}
    for name, (structure, energy) in textbook_crystals().items():
        cid = candidate_id(structure)
        names[cid] = name
        comp = structure.composition
        run.store.add_candidates([CandidateDoc(
            campaign=run.name, candidate_id=cid, round=1, formula=comp.reduced_formula,
            chemsys=comp.chemical_system, nsites=len(structure),
            structure=structure_dict(structure), generator="prototype_substitution",
            status=CandidateStatus.relaxed, selected_round=1,
        )])
        run.store.save_relaxations([RelaxationDoc(
            campaign=run.name, candidate_id=cid, ok=True, converged=True,
            energy_per_atom=energy, structure=structure_dict(structure),
            potential=run.potential, round=1,
        )])
    counts = run.evaluate(1).counts
    evaluations = {names[e.candidate_id]: e for e in run.store.evaluations(run.name)}
    assert set(evaluations) == set(names.values())
    for name, e in evaluations.items():
        assert e.novelty == "unjudged" and not e.is_novel, name
        assert e.novelty_reference["sets"] == [] and e.novelty_reference["n_chemsys"] == 0
    stable = sum(e.is_stable and e.is_unique for e in evaluations.values())
    assert stable >= 3  # on or near the hull: the test would mean nothing otherwise
    assert counts["hits"] == 0 and counts["stable_novelty_unknown"] == stable
    summary = campaign_summary(run.store, run.name)
    assert summary["discoveries"] == 0 and summary["stable_novelty_unknown"] == stable
