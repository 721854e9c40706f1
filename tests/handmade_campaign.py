"""A small Na–Cl campaign built by hand (no CHGNet): references, candidates and relaxations
written as documents, then judged by the real ``CampaignRun.evaluate``. Shared by
``test_export.py`` and ``test_report.py``."""

from __future__ import annotations

from pymatgen.core import Lattice, Structure

from matloop.config import parse_config
from matloop.loop import CampaignRun
from matloop.store.documents import structure_dict
from matloop.identity import candidate_id
from matloop.store import (
    CandidateDoc,
    CandidateStatus,
    MatloopStore,
    ReferenceDoc,
    RelaxationDoc,
    RoundDoc,
)

NAME = "hand-na-cl"
SEED_ID = "seed:file:known.csv:zb-1"


def _structures() -> dict[str, Structure]:
    rocksalt = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    ).get_primitive_structure()
    return {
        "Na": Structure(Lattice.cubic(4.23), ["Na", "Na"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "Cl": Structure(Lattice.cubic(6.0), ["Cl", "Cl"], [[0, 0, 0], [0, 0, 0.335]]),
        "rocksalt": rocksalt,
        "cscl": Structure(Lattice.cubic(3.4), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "na2cl": Structure(Lattice.cubic(5.0), ["Na", "Na", "Cl"],
                           [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5]]),
        "nacl2": Structure(Lattice.cubic(5.2), ["Na", "Cl", "Cl"],
                           [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5]]),
        # a known Na-Cl crystal of the seed data (zinc blende, far above the hull): it makes
        # Na-Cl a judged system, so the candidates' novelty is novel or known, not unjudged
        "zincblende": Structure.from_spacegroup(
            "F-43m", Lattice.cubic(6.0), ["Na", "Cl"], [[0, 0, 0], [0.25, 0.25, 0.25]]
        ).get_primitive_structure(),
        "na3cl": Structure(Lattice.cubic(5.4), ["Na", "Na", "Na", "Cl"],
                           [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]),
    }


#: energies per atom (eV/atom), roughly CHGNet-like (CHGNet's scale already includes MP2020's
#: chloride correction, so the hull takes them as they are); (structure, round, energy, evidence)
CANDIDATES = [
    ("rocksalt", 1, -3.727, None),
    ("cscl", 1, -3.667, None),
    ("na2cl", 1, -2.755, None),
    ("nacl2", 2, -3.029, "dft-relaxed"),  # as if a DFT relaxer had given it
    ("na3cl", 2, -2.2535, None),
]


def build_campaign(
    uri: str = "memory://", *, evaluate_round_2: bool = False, seed: bool = True
) -> CampaignRun:
    """Two rounds: round 1 evaluated; round 2 relaxed (evaluated when asked). ``seed``: one
    known Na-Cl crystal in the reference (without it novelty is unjudged)."""
    config = parse_config({
        "name": NAME,
        "chemical_space": {"elements": ["Na", "Cl"], "max_atoms": 4},
        "budget": {"rounds": 2, "candidates_per_round": 4, "relaxations_per_round": 3},
        "store": uri,
        "output": "/nonexistent-output",
    })
    run = CampaignRun(config, store=MatloopStore(uri))
    campaign = run.ensure_campaign()
    campaign.references_ready = True
    campaign.hull_scheme = run.hull_scheme
    run.store.save_campaign(campaign)
    structures = _structures()
    run.store.save_references([
        ReferenceDoc(reference_id=f"element:{el}", potential=run.potential, formula=el,
                     chemsys=el, energy_per_atom=energy,
                     structure=structure_dict(structures[el]), source="elemental")
        for el, energy in (("Na", -1.31), ("Cl", -1.85))
    ])
    run.store.save_references([ReferenceDoc(
        reference_id=SEED_ID, potential=run.potential, formula="NaCl", chemsys="Cl-Na",
        energy_per_atom=-3.2, structure=structure_dict(structures["zincblende"]),
        source="file:known.csv", source_id="zb-1",
    )])
    campaign.seed_reference_ids = [SEED_ID] if seed else []
    run.store.save_campaign(campaign)
    by_round: dict[int, list[str]] = {1: [], 2: []}
    for key, round_, energy, evidence in CANDIDATES:
        structure = structures[key]
        cid = candidate_id(structure)
        by_round[round_].append(cid)
        run.store.add_candidates([CandidateDoc(
            campaign=NAME, candidate_id=cid, round=round_,
            formula=structure.composition.reduced_formula,
            chemsys=structure.composition.chemical_system, nsites=len(structure),
            structure=structure_dict(structure), generator="prototype_substitution",
            status=CandidateStatus.relaxed, selected_round=round_,
        )])
        run.store.save_relaxations([RelaxationDoc(
            campaign=NAME, candidate_id=cid, ok=True, converged=True, energy_per_atom=energy,
            structure=structure_dict(structure), n_steps=10 + len(cid) % 7,
            max_force=0.01 * (1 + len(structure)), potential=evidence and "CP2K PBE"
            or run.potential, round=round_, evidence=evidence,
        )])
    for round_ in (1, 2):
        run.store.save_round(RoundDoc(
            campaign=NAME, round=round_, steps_done=["generate", "screen", "relax"],
            metrics={"proposed": 4, "selected": len(by_round[round_]),
                     "relaxed": len(by_round[round_]), "failed": 0},
        ))
    # round 1 is evaluated before round 2's candidates exist as far as the hull knows
    pending = {cid: (CandidateStatus.selected, None) for cid in by_round[2]}
    run.store.set_status(NAME, pending)
    run.evaluate(1)
    _close(run, 1)
    run.store.set_status(NAME, {cid: (CandidateStatus.relaxed, None) for cid in by_round[2]})
    if evaluate_round_2:  # else round 2 stopped after relaxing: relaxed, not yet evaluated
        run.evaluate(2)
        _close(run, 2)
    return run


def _close(run: CampaignRun, round_: int) -> None:
    """What ``learn`` does to the round, without building generators."""
    doc = run.store.get_round(NAME, round_)
    doc.steps_done.append("learn")
    doc.status = "completed"
    run.store.save_round(doc)
