"""Tests for matloop.relax.references: elemental candidates and reference relaxations."""

from __future__ import annotations

import numpy as np
import pytest
from jobflow import JobStore
from maggma.stores import MemoryStore
from pymatgen.core import Lattice, Structure

from matloop.relax.makers import CachedForceFieldRelaxMaker, make_relax_maker
from matloop.relax.references import (
    DIMER_BOND_LENGTHS,
    ElementalReferenceError,
    elemental_candidates,
    relax_elemental_references,
)

EMT = {"@module": "ase.calculators.emt", "@callable": "EMT"}


@pytest.fixture
def job_store() -> JobStore:
    return JobStore(MemoryStore(), additional_stores={"data": MemoryStore()})


@pytest.fixture
def emt() -> CachedForceFieldRelaxMaker:
    return CachedForceFieldRelaxMaker(
        force_field_name=EMT,
        relax_kwargs={"fmax": 0.05, "final_atoms_object_file": None},
        ionic_step_data=None,
        steps=100,
    )


def prototypes(symbol: str) -> list[str]:
    return [s.properties["prototype"] for s in elemental_candidates(symbol)]


def test_simple_lattices_for_metals_and_extras() -> None:
    assert prototypes("Fe") == ["fcc", "bcc", "hcp", "diamond", "sc"]
    assert prototypes("C")[-1] == "graphite"
    assert prototypes("Bi")[-1] == "A7"
    assert prototypes("Se")[-1] == "trigonal-chains"
    assert prototypes("Ar") == ["fcc", "hcp"]
    fe = {s.properties["prototype"]: s for s in elemental_candidates("Fe")}
    for structure in fe.values():
        nearest = structure.get_neighbor_list(4.0)[3].min()
        assert nearest == pytest.approx(2 * 1.26, abs=1e-6)  # metallic radius of Fe


@pytest.mark.parametrize("symbol", sorted(DIMER_BOND_LENGTHS))
def test_molecular_elements_are_packed_dimers(symbol: str) -> None:
    candidates = elemental_candidates(symbol)
    assert [s.properties["prototype"] for s in candidates] == ["dimer-rhombohedral", "Pa-3", "Cmca"]
    bond = DIMER_BOND_LENGTHS[symbol]
    for structure in candidates:
        assert len(structure) <= 8 and {e.symbol for e in structure.composition} == {symbol}
        centres, _, _, distances = structure.get_neighbor_list(6.0)
        # every atom has exactly one partner at the bond length, the rest well beyond it
        assert np.allclose(np.sort(distances)[: len(structure)], bond)
        assert np.bincount(centres[np.isclose(distances, bond)]).tolist() == [1] * len(structure)
        assert np.sort(distances)[len(structure) :].min() > bond + 0.8


def test_all_candidates_are_small_and_sane() -> None:
    for symbol in ["H", "O", "Na", "Cs", "C", "Si", "Fe", "U", "Xe", "I", "Te"]:
        for structure in elemental_candidates(symbol):
            assert 1 <= len(structure) <= 8
            assert structure.get_neighbor_list(0.6)[3].size == 0


def test_references_keep_lowest_energy(job_store: JobStore, emt) -> None:
    seen: list = []
    refs = relax_elemental_references(
        ["Cu", "Al", "Cu"], emt, job_store, progress=lambda d, t: seen.append(t)
    )
    assert list(refs) == ["Cu", "Al"]
    assert set(seen) == {10}
    cu = [d for d in job_store.query({"metadata.candidate_id": {"$regex": "^ref:Cu:"}})]
    energies = [d["output"]["output"]["energy_per_atom"] for d in cu]
    assert len(energies) == 5
    assert refs["Cu"].energy_per_atom == pytest.approx(min(energies))
    assert refs["Cu"].ok and refs["Cu"].candidate_id.startswith("ref:Cu:")


def test_extra_candidates_join_the_competition(job_store: JobStore, emt) -> None:
    h = 3.59 / 2
    extra = Structure(Lattice([[0, h, h], [h, 0, h], [h, h, 0]]), ["Ni"], [[0, 0, 0]])
    refs = relax_elemental_references(["Ni"], emt, job_store, extra={"Ni": [extra]})
    relaxed = {
        d["metadata"]["candidate_id"]: d["output"]["output"]["energy_per_atom"]
        for d in job_store.query({"metadata.candidate_id": {"$regex": "^ref:Ni:"}})
    }
    seed_id = f"ref:Ni:extra-{len(prototypes('Ni'))}"
    # the seed crystal was relaxed beside every prototype, and the lowest of all won
    assert set(relaxed) == {f"ref:Ni:{p}" for p in prototypes("Ni")} | {seed_id}
    assert relaxed[seed_id] is not None
    assert refs["Ni"].energy_per_atom == pytest.approx(min(relaxed.values()))


def test_all_candidates_failing_names_the_element(job_store: JobStore, emt) -> None:
    with pytest.raises(
        ElementalReferenceError, match=r"no reference for Si: all 5 candidates"
    ) as e:
        relax_elemental_references(["Cu", "Si"], emt, job_store)
    assert "No EMT-potential for Si" in str(e.value)


@pytest.mark.slow
def test_chgnet_oxygen_reference_is_a_packed_o2_crystal(job_store: JobStore) -> None:
    refs = relax_elemental_references(["O"], make_relax_maker("CHGNet"), job_store, num_threads=1)
    oxygen = refs["O"]
    assert oxygen.energy_per_atom == pytest.approx(-4.9, abs=0.1)
    assert oxygen.potential == "CHGNet 0.3.0"
    # still molecular: every O keeps one partner near the O2 bond length
    distances = oxygen.structure.get_neighbor_list(1.5)[3]
    assert len(distances) == len(oxygen.structure)
    assert np.allclose(distances, 1.2, atol=0.1)
