"""Tests for matloop.relax.dft: DFT makers, input generation and the verification runner.

The real CP2K run (a 2-atom silicon cell, relaxed through ``verify_with_dft``) is slow and
skips where Debian's cp2k is not installed; VASP is never run, only its inputs are written.
"""

from __future__ import annotations

import os

import pytest
from jobflow import JobStore
from maggma.stores import MemoryStore
from pymatgen.core import Lattice, Structure

from matloop.relax.dft import (
    Cp2kCellOptMaker,
    Cp2kStaticMaker,
    DftOutcome,
    cp2k_command,
    make_dft_maker,
    verify_with_dft,
)


def silicon(half: float = 2.73) -> Structure:
    """Primitive diamond silicon; ``half`` is a / 2 (2.73 Å near the PBE minimum)."""
    lattice = Lattice([[0, half, half], [half, 0, half], [half, half, 0]])
    return Structure(lattice, ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]])


@pytest.fixture
def job_store() -> JobStore:
    return JobStore(MemoryStore(), additional_stores={"data": MemoryStore()})


def test_cp2k_makers_by_kind_with_fast_settings() -> None:
    relax = make_dft_maker("cp2k", "relax", fast=True, command="my-cp2k")
    static = make_dft_maker("CP2K", "static", kpoints=(2, 2, 2), input_settings={"cutoff": 300})
    assert isinstance(relax, Cp2kCellOptMaker) and isinstance(static, Cp2kStaticMaker)
    assert relax.run_cp2k_kwargs["cp2k_cmd"] == "my-cp2k"
    settings = relax.input_set_generator.user_input_settings
    assert settings["eps_default"] == 1e-10 and settings["activate_motion"]["max_iter"] == 30
    assert list(relax.input_set_generator.user_kpoints_settings.kpts[0]) == [2, 2, 2]
    assert "Monkhorst" in str(relax.input_set_generator.user_kpoints_settings.style)
    assert static.input_set_generator.user_input_settings == {"cutoff": 300}
    assert list(static.input_set_generator.user_kpoints_settings.kpts[0]) == [2, 2, 2]


def test_unknown_code_or_kind_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown DFT code 'abinit'"):
        make_dft_maker("abinit")
    with pytest.raises(ValueError, match="unknown DFT kind 'md'"):
        make_dft_maker("cp2k", "md")


def test_dft_makers_serialise_for_remote_executors() -> None:
    from monty.json import MontyDecoder, jsanitize

    maker = make_dft_maker("cp2k", "relax", fast=True)
    again = MontyDecoder().process_decoded(jsanitize(maker.as_dict(), strict=True))
    assert isinstance(again, Cp2kCellOptMaker)
    assert again.input_set_generator.user_input_settings == (
        maker.input_set_generator.user_input_settings
    )


def test_vasp_relax_inputs_are_written_without_potcars(tmp_path) -> None:
    from atomate2.vasp.jobs.core import RelaxMaker

    maker = make_dft_maker("vasp", "relax", kpoints=(4, 4, 4), input_settings={"ENCUT": 400})
    assert isinstance(maker, RelaxMaker)
    input_set = maker.input_set_generator.get_input_set(silicon(), potcar_spec=True)
    input_set.write_input(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"INCAR", "POSCAR", "KPOINTS", "POTCAR.spec"}
    assert not (tmp_path / "POTCAR").exists()
    incar = input_set.incar
    assert incar["ENCUT"] == 400 and incar["ISIF"] == 3 and incar["IBRION"] == 2
    assert incar["NSW"] > 0 and "EDIFFG" in incar
    assert (tmp_path / "POTCAR.spec").read_text().split() == ["Si"]
    assert list(input_set.kpoints.kpts[0]) == [4, 4, 4]


def test_vasp_static_inputs() -> None:
    maker = make_dft_maker("vasp", "static")
    incar = maker.input_set_generator.get_input_set(silicon(), potcar_spec=True).incar
    assert incar["NSW"] == 0 and incar.get("IBRION", -1) == -1


def test_a_failed_dft_job_marks_only_its_candidate(job_store: JobStore) -> None:
    # No POTCARs (and no VASP) here: the job fails while writing its inputs.
    maker = make_dft_maker("vasp", "static")
    outs = verify_with_dft([("a", silicon()), ("b", silicon(2.8))], maker, job_store)
    assert [o.candidate_id for o in outs] == ["a", "b"]
    for out in outs:
        assert isinstance(out, DftOutcome)
        assert not out.ok and out.energy_per_atom is None
        assert "PSP" in out.reason or "POTCAR" in out.reason
        assert out.code == "vasp" and out.evidence == "dft-single-point"
        assert out.settings["incar"]["NSW"] == 0
        assert out.settings["potcar"] == ["Si"]


needs_cp2k = pytest.mark.skipif(
    cp2k_command() is None, reason="CP2K is not installed (apt-get install cp2k cp2k-data)"
)


@pytest.mark.slow
@needs_cp2k
def test_real_cp2k_single_point_of_silicon(job_store: JobStore, tmp_path) -> None:
    # ~1 minute on one core (plus ~30 s once to build pymatgen's CP2K data folder)
    maker = make_dft_maker("cp2k", "static", fast=True)
    (out,) = verify_with_dft([("si-2", silicon())], maker, job_store, root_dir=tmp_path)
    assert out.ok, out.reason
    assert out.converged and out.evidence == "dft-single-point" and out.code == "cp2k"
    # CP2K total energy with GTH pseudopotentials: about -107 eV/atom for silicon
    assert -108.0 < out.energy_per_atom < -106.0
    assert out.energy == pytest.approx(2 * out.energy_per_atom)
    assert out.settings["basis"] == {"Si": "TZVP-MOLOPT-PBE-GTH-q4"}
    assert out.settings["potential"] == {"Si": "GTH-PBE-q4"}
    assert out.settings["run_type"] == "ENERGY_FORCE"
    assert out.settings["kpoints"]["grid"] == [2, 2, 2]
    doc = job_store.query_one({"uuid": out.job_uuid})
    assert doc["metadata"]["dft_candidate_id"] == "si-2"
    assert doc["output"]["@class"] == "TaskDocument"
    assert any(tmp_path.rglob("cp2k.out*"))  # the job folder was kept where asked


@pytest.mark.slow
@needs_cp2k
@pytest.mark.skipif(
    not os.environ.get("MATLOOP_CP2K_RELAX_TEST"),
    reason="a CP2K cell optimisation takes several minutes; set MATLOOP_CP2K_RELAX_TEST=1",
)
def test_real_cp2k_cell_relaxation_of_silicon(job_store: JobStore) -> None:
    start = silicon(2.75)
    maker = make_dft_maker("cp2k", "relax", fast=True)
    (out,) = verify_with_dft([("si-2", start)], maker, job_store)
    assert out.ok, out.reason
    assert out.evidence == "dft-relaxed" and out.settings["run_type"] == "CELL_OPT"
    assert -108.0 < out.energy_per_atom < -106.0
    assert 0.85 < out.structure.volume / start.volume < 1.15
