"""Tests for matloop.relax.makers: the cached force-field maker and its factory."""

from __future__ import annotations

import copy
import threading
import warnings

import pytest
from atomate2.forcefields.jobs import ForceFieldRelaxMaker
from atomate2.forcefields.utils import MLFF
from jobflow import JobStore, run_locally
from maggma.stores import MemoryStore
from monty.json import MontyDecoder
from pymatgen.core import Lattice, Structure

import matloop.relax.makers as makers
from matloop.relax.makers import (
    CachedForceFieldRelaxMaker,
    clear_calculator_cache,
    get_calculator,
    make_relax_maker,
    maker_potential,
    potential_version,
)

EMT = {"@module": "ase.calculators.emt", "@callable": "EMT"}


@pytest.fixture
def job_store() -> JobStore:
    return JobStore(MemoryStore(), additional_stores={"data": MemoryStore()})


@pytest.fixture
def cu() -> Structure:
    return Structure(
        Lattice.cubic(3.7), ["Cu"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    )


def test_make_relax_maker_settings() -> None:
    maker = make_relax_maker("CHGNet", fmax=0.02, steps=123, relax_cell=False)
    assert isinstance(maker, CachedForceFieldRelaxMaker)
    assert isinstance(maker, ForceFieldRelaxMaker)
    assert maker.steps == 123
    assert maker.relax_cell is False
    assert maker.relax_kwargs == {"fmax": 0.02, "final_atoms_object_file": None}
    assert maker.store_trajectory == "no"
    assert maker.ionic_step_data is None
    assert maker.calculator_meta == MLFF.CHGNet
    assert maker.calculator_kwargs == {"stress_unit": "eV/A3"}


def test_make_relax_maker_overrides_and_case() -> None:
    maker = make_relax_maker("sevennet", relax_kwargs={"fmax": 0.1}, name="mine", tags=["x"])
    assert maker.calculator_meta == MLFF.SevenNet
    assert maker.relax_kwargs["fmax"] == 0.1
    assert maker.name == "mine"
    assert maker.tags == ["x"]


def test_unknown_potential_names_it_and_lists_known() -> None:
    with pytest.raises(ValueError, match="Unknown potential 'MACE'") as info:
        make_relax_maker("MACE")
    assert "CHGNet" in str(info.value) and "SevenNet" in str(info.value)
    with pytest.raises(ValueError, match="known potentials"):
        potential_version("M3GNet")


def test_potential_version() -> None:
    assert potential_version("CHGNet") == "CHGNet 0.3.0"
    assert potential_version("SevenNet") == "SevenNet 7net-0"
    assert potential_version("CHGNet", {"model": "0.2.0"}) == "CHGNet 0.2.0"
    assert maker_potential(make_relax_maker("CHGNet")) == "CHGNet 0.3.0"
    assert maker_potential(make_relax_maker("SevenNet")) == "SevenNet 7net-0"


def test_maker_serialises_round_trip() -> None:
    maker = make_relax_maker("CHGNet", steps=77)
    back = MontyDecoder().process_decoded(maker.as_dict())
    assert isinstance(back, CachedForceFieldRelaxMaker)
    assert back.steps == 77
    assert back.relax_kwargs == maker.relax_kwargs
    assert back.calculator_meta == maker.calculator_meta
    assert back.calculator_kwargs == maker.calculator_kwargs


def test_calculator_cache_returns_same_object(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(makers, "_CALCULATOR_CACHE", {})
    calc = get_calculator(EMT)
    assert get_calculator(EMT) is calc
    assert get_calculator(EMT, {"asap_cutoff": True}) is not calc
    maker = CachedForceFieldRelaxMaker(force_field_name=EMT)
    assert maker.calculator is calc
    # Kept off the instance, so jobflow's deep copy of the maker never copies a model.
    assert copy.deepcopy(maker).calculator is calc
    assert maker._calculator is None

    other: list = []
    thread = threading.Thread(target=lambda: other.append(get_calculator(EMT)))
    thread.start()
    thread.join()
    assert other[0] is not calc  # one calculator per thread: ASE calculators hold state

    clear_calculator_cache()
    assert get_calculator(EMT) is not calc


def test_chgnet_calculator_is_cached_per_settings() -> None:
    maker = make_relax_maker("CHGNet")
    assert maker.calculator is make_relax_maker("CHGNet", fmax=0.3).calculator
    assert maker.calculator is get_calculator(MLFF.CHGNet, {"stress_unit": "eV/A3"})


def test_jobs_share_one_calculator(
    monkeypatch: pytest.MonkeyPatch, job_store: JobStore, cu: Structure, tmp_path
) -> None:
    from threadpoolctl import threadpool_limits

    monkeypatch.setattr(makers, "_CALCULATOR_CACHE", {})
    calls: list = []
    original = makers.ase_calculator

    def counting(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(makers, "ase_calculator", counting)
    maker = CachedForceFieldRelaxMaker(
        force_field_name=EMT, relax_kwargs={"final_atoms_object_file": None}
    )
    jobs = [maker.make(cu), maker.make(cu.copy())]
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # jobflow's use of monty's cd
        for job in jobs:
            run_locally(job, store=job_store, log=False, ensure_success=True, root_dir=tmp_path)
    assert len(calls) == 1
    doc = job_store.query_one({"uuid": jobs[1].uuid})
    assert doc["output"]["@class"] == "ForceFieldTaskDocument"
    assert doc["output"]["output"]["energy"] == pytest.approx(
        job_store.query_one({"uuid": jobs[0].uuid})["output"]["output"]["energy"]
    )


def test_failed_run_does_not_poison_the_cached_calculator(cu: Structure) -> None:
    from threadpoolctl import threadpool_limits

    maker = CachedForceFieldRelaxMaker(
        force_field_name=EMT, relax_kwargs={"final_atoms_object_file": None}
    )
    si = Structure(Lattice.cubic(5.4), ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    with threadpool_limits(1):
        for _ in range(2):  # EMT is left half-initialised unless the maker resets it
            with pytest.raises(NotImplementedError, match="No EMT-potential for Si"):
                maker.run_ase(si)
        assert maker.run_ase(cu).converged


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:No tensor product accelerator:UserWarning")
@pytest.mark.filterwarnings("ignore:cd is deprecated:FutureWarning")
def test_sevennet_relaxes_offline(job_store: JobStore) -> None:
    """7net-0 ships inside the sevenn wheel: it loads and relaxes without network."""
    import torch
    from threadpoolctl import threadpool_limits

    si = Structure(
        Lattice([[0, 2.8, 2.8], [2.8, 0, 2.8], [2.8, 2.8, 0]]),
        ["Si", "Si"],
        [[0, 0, 0], [0.25, 0.25, 0.25]],
    )
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        maker = make_relax_maker("SevenNet", steps=100)
        job = maker.make(si)
        with threadpool_limits(1):
            responses = run_locally(job, store=job_store, log=False, ensure_success=True)
    finally:
        torch.set_num_threads(previous)
    doc = responses[job.uuid][1].output
    assert doc.forcefield_name == "MLFF.SevenNet"
    assert -5.6 < doc.output.energy_per_atom < -5.2
    a = doc.output.structure.lattice.a * 2**0.5
    assert a == pytest.approx(5.47, rel=0.02)
