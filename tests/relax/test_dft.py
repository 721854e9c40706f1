"""Tests for matloop.relax.dft: DFT makers, input generation and the verification runner.

The real CP2K single point (a 2-atom silicon cell, through ``verify_with_dft``) is slow and
skips where Debian's cp2k is not installed; the real CP2K cell relaxation runs through the
campaign's verify step in tests/flows/test_dft_verify.py. VASP is never run, only its inputs
are written.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from jobflow import JobStore
from maggma.stores import MemoryStore
from pymatgen.core import Lattice, Structure

from matloop.relax.dft import (
    DEFAULT_CP2K_DATA,
    Cp2kCellOptMaker,
    Cp2kStaticMaker,
    DftOutcome,
    configure_cp2k,
    cp2k_command,
    describe_dft_settings,
    gamma_centred_kpoints,
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
    # a cell optimisation gets a Gamma-centred grid, a single point a Monkhorst-Pack one
    assert list(relax.input_set_generator.user_kpoints_settings.kpts[0]) == [3, 3, 3]
    assert "Gamma" in str(relax.input_set_generator.user_kpoints_settings.style)
    assert static.input_set_generator.user_input_settings == {"cutoff": 300}
    assert list(static.input_set_generator.user_kpoints_settings.kpts[0]) == [2, 2, 2]
    assert "Monkhorst" in str(static.input_set_generator.user_kpoints_settings.style)


def _closed_under_point_group(kpts: list, structure: Structure) -> bool:
    """Whether a k-point set (fractional, k ~ -k ~ k + G) maps onto itself under every
    rotation of the structure's point group."""
    import numpy as np
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    def key(k):
        k = np.round(np.asarray(k, dtype=float) % 1.0, 6) % 1.0
        return min(tuple(k), tuple(np.round(-k % 1.0, 6) % 1.0))

    points = {key(k) for k in kpts}
    recip = structure.lattice.reciprocal_lattice.matrix
    for op in SpacegroupAnalyzer(structure).get_point_group_operations(cartesian=True):
        rotated = np.asarray(kpts, dtype=float) @ recip @ op.rotation_matrix.T
        if {key(k) for k in rotated @ np.linalg.inv(recip)} != points:
            return False
    return True


def test_cell_optimisation_kpoints_keep_the_lattice_symmetry() -> None:
    # The shifted 2x2x2 Monkhorst-Pack grid is not symmetric for a face-centred lattice:
    # CP2K relaxed diamond silicon on it into a rhombohedral cell (65.5 degree angles).

    si = silicon()
    shifted = [[x, y, z] for x in (-0.25, 0.25) for y in (-0.25, 0.25) for z in (-0.25, 0.25)]
    assert not _closed_under_point_group(shifted, si)
    for divisions, n_points in (((2, 2, 2), 8), ((3, 3, 3), 14), ((4, 4, 4), 36)):
        kp = gamma_centred_kpoints(divisions)
        assert kp.num_kpts == len(kp.kpts) == n_points
        assert sum(kp.kpts_weights) == divisions[0] ** 3
        assert _closed_under_point_group(kp.kpts, si)
    assert any(gamma_centred_kpoints((3, 3, 3)).kpts[0])  # Gamma is not first...
    assert not any(gamma_centred_kpoints((3, 3, 3)).kpts[-1])  # ...but last


needs_cp2k_data = pytest.mark.skipif(
    not os.environ.get("MATLOOP_CP2K_DATA_DIR")
    and not any(Path(DEFAULT_CP2K_DATA).glob("*BASIS*")),
    reason="CP2K's data files are not installed (apt-get install cp2k-data)",
)


@needs_cp2k_data
def test_relax_maker_writes_an_explicit_gamma_centred_grid() -> None:
    from pymatgen.io.vasp import Kpoints

    si = silicon()
    configure_cp2k()  # pymatgen's CP2K data (built once from cp2k-data, ~30 s)
    # whatever grid style was asked for: a grid or a k-point density
    for kpoints in ((4, 4, 4), 64):
        maker = make_dft_maker("cp2k", "relax", fast=True, kpoints=kpoints)
        cp2k = maker.input_set_generator.get_input_set(si, optional_files=False).cp2k_input
        section = cp2k["FORCE_EVAL"]["DFT"]["KPOINTS"]
        assert section["SCHEME"].values[0] == "GENERAL"
        assert cp2k.kpoints.style == Kpoints.supported_modes.Reciprocal
        assert _closed_under_point_group(cp2k.kpoints.kpts, si)
    summary = describe_dft_settings(make_dft_maker("cp2k", "relax", fast=True), si)
    assert summary["kpoints"] == {"grid": [3, 3, 3], "style": "Gamma", "n_kpoints": 14}
    assert summary["run_type"] == "CELL_OPT"


@needs_cp2k_data
def test_cell_optimisation_keeps_the_space_group_and_the_grids() -> None:
    """Both guard soft and metallic cells at coarse settings (Cp2kCellOptSetGenerator): the
    space group symmetrises the stress, and a fixed reference cell keeps the real-space grids
    (and so the energy) from jumping when the cell changes."""
    import numpy as np

    si = silicon()
    configure_cp2k()
    maker = make_dft_maker("cp2k", "relax", fast=True, kpoints=(2, 2, 2))
    cp2k = maker.input_set_generator.get_input_set(si, optional_files=False).cp2k_input
    assert cp2k["MOTION"]["CELL_OPT"]["KEEP_SPACE_GROUP"].values[0] is True
    ref = cp2k["FORCE_EVAL"]["SUBSYS"]["CELL"]["CELL_REF"]
    matrix = np.array([ref[name].values for name in "ABC"], dtype=float)
    assert np.allclose(matrix, 1.05 * si.lattice.matrix)
    text = str(cp2k)
    assert "&CELL_REF" in text and "KEEP_SPACE_GROUP" in text
    summary = describe_dft_settings(maker, si)
    assert summary["keep_space_group"] is True and summary["cell_ref_scale"] == 1.05
    # a molecular crystal keeps its cell (PBE barely binds it): ions only
    chlorine = Structure(Lattice.cubic(5.0), ["Cl", "Cl"], [[0, 0, 0], [0.4, 0, 0]])
    cp2k = maker.input_set_generator.get_input_set(chlorine, optional_files=False).cp2k_input
    assert cp2k["GLOBAL"]["RUN_TYPE"].values[0] == "GEO_OPT"
    assert not cp2k["MOTION"].check("CELL_OPT") and cp2k["MOTION"].check("GEO_OPT")
    assert cp2k["MOTION"]["GEO_OPT"]["MAX_ITER"].values[0] == 30
    assert describe_dft_settings(maker, chlorine)["run_type"] == "GEO_OPT"
    # a single point has no optimiser to constrain
    static = make_dft_maker("cp2k", "static", fast=True)
    text = str(static.input_set_generator.get_input_set(si, optional_files=False).cp2k_input)
    assert "CELL_REF" not in text and "KEEP_SPACE_GROUP" not in text


_CP2K_OUT = """\
 ENERGY| Total FORCE_EVAL ( QS ) energy [a.u.]:               -7.848942193859739
 ATOMIC FORCES in [a.u.]

 # Atom   Kind   Element          X              Y              Z
      1      1      Si         -0.00329860    -0.00004265     0.01386219
      2      1      Si          0.00329869     0.00004265    -0.01386261
 SUM OF ATOMIC FORCES          0.00000009     0.00000000    -0.00000042     0.00000043
 OPTIMIZATION STEP:      1
 OPTIMIZATION STEP:      2
 ENERGY| Total FORCE_EVAL ( QS ) energy [a.u.]:               -7.850796397885032
 ATOMIC FORCES in [a.u.]

 # Atom   Kind   Element          X              Y              Z
      1      1      Si          0.00030000     0.00000000     0.00040000
      2      1      Si         -0.00030000     0.00000000    -0.00040000
 SUM OF ATOMIC FORCES          0.00000000     0.00000000     0.00000000     0.00000000

 STRESS| Analytical stress tensor [GPa]
 STRESS|                        x                   y                   z
 STRESS|      x        1.89241070324E-02  -1.23408681696E-01  -8.70423633260E-02
 STRESS|      y       -1.23408681696E-01  -1.76287934034E-02   1.12380357257E-01
 STRESS|      z       -8.70423633260E-02   1.12380357257E-01   7.97823732346E-03
 STRESS| 1/3 Trace                                             3.09118365084E-03
"""


@needs_cp2k_data
def test_one_makers_settings_never_leak_into_the_next() -> None:
    # atomate2's CP2K generator updates its shared default settings in place; each maker
    # must work on its own copy, or the basis asked for here would stick to later makers
    si = silicon()
    configure_cp2k()
    default = describe_dft_settings(make_dft_maker("cp2k", "static", fast=True), si)["basis"]
    special = {"basis_and_potential": {"Si": {"basis": "DZVP-MOLOPT-SR-GTH"}}}
    relax = make_dft_maker("cp2k", "relax", fast=True, input_settings=special)
    assert describe_dft_settings(relax, si)["basis"] == {"Si": "DZVP-MOLOPT-SR-GTH"} != default
    later = describe_dft_settings(make_dft_maker("cp2k", "static", fast=True), si)["basis"]
    assert later == default


def test_cp2k_output_report(tmp_path) -> None:
    import gzip

    from matloop.relax.dft import _cp2k_run_report

    assert _cp2k_run_report(tmp_path) == {}  # no output file: nothing known
    (tmp_path / "cp2k.out").write_text(_CP2K_OUT)
    single_point = _cp2k_run_report(tmp_path)
    assert "relax_converged" not in single_point and "initial_energy" not in single_point
    assert single_point["max_force"] == pytest.approx(5e-4 * 51.422, rel=1e-3)  # eV/A
    assert single_point["stress"][0] == pytest.approx([0.0189241, -0.1234087, -0.0870424])

    # atomate2 gzips its job folder (job_<time>-<n>) when the job is done
    (tmp_path / "cp2k.out").unlink()
    job_dir = tmp_path / "job_2026-01-01-00-00-00-000000-12345"
    job_dir.mkdir()
    with gzip.open(job_dir / "cp2k.out.gz", "wt") as handle:
        handle.write(_CP2K_OUT + " *** GEOMETRY OPTIMIZATION COMPLETED ***\n")
    relaxed = _cp2k_run_report(tmp_path)
    assert relaxed["relax_converged"] and relaxed["relax_steps"] == 2
    assert relaxed["initial_energy"] == pytest.approx(-7.848942193859739 * 27.211386)
    with gzip.open(job_dir / "cp2k.out.gz", "wt") as handle:
        handle.write(_CP2K_OUT + " *** MAXIMUM NUMBER OF OPTIMIZATION STEPS REACHED ***\n")
    assert _cp2k_run_report(tmp_path)["relax_converged"] is False


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
    # custodian's relaxation handler knows only GEO_OPT (KeyError on a CELL_OPT)
    handlers = [type(h).__name__ for h in again.run_cp2k_kwargs["handlers"]]
    assert "UnconvergedScfErrorHandler" in handlers
    assert "UnconvergedRelaxationErrorHandler" not in handlers


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


def test_vasp_without_potcars_fails_with_its_reason(job_store: JobStore) -> None:
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
def test_real_cp2k_single_point_of_silicon(job_store: JobStore, tmp_path, monkeypatch) -> None:
    # ~1 minute on one core (plus ~30 s once to build pymatgen's CP2K data folder). One
    # OpenMP thread: with two on a busy 2-core machine the same run took 2 to 7 minutes.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    maker = make_dft_maker("cp2k", "static", fast=True)
    # a failed job marks only its candidate: uranium has no basis set in CP2K's fast
    # settings, and silicon after it still runs
    uranium = Structure(Lattice.cubic(3.0), ["U"], [[0, 0, 0]])
    bad, out = verify_with_dft([("u-1", uranium), ("si-2", silicon())], maker, job_store,
                               root_dir=tmp_path)  # fmt: skip
    assert [bad.candidate_id, out.candidate_id] == ["u-1", "si-2"]
    assert not bad.ok and bad.energy_per_atom is None and "basis" in bad.reason, bad.reason
    assert out.ok, out.reason
    assert out.converged and out.evidence == "dft-single-point" and out.code == "cp2k"
    # CP2K total energy with GTH pseudopotentials: about -107 eV/atom for silicon
    assert -108.0 < out.energy_per_atom < -106.0
    assert out.energy == pytest.approx(2 * out.energy_per_atom)
    assert out.settings["basis"] == {"Si": "TZVP-MOLOPT-PBE-GTH-q4"}
    assert out.settings["potential"] == {"Si": "GTH-PBE-q4"}
    assert out.settings["run_type"] == "ENERGY_FORCE"
    assert out.settings["kpoints"]["grid"] == [2, 2, 2]
    # read from CP2K's output: no optimiser, final forces (eV/A) and stress (GPa)
    assert out.relax_converged is None and out.initial_energy is None
    assert out.max_force is not None and len(out.stress) == 3
    doc = job_store.query_one({"uuid": out.job_uuid})
    assert doc["metadata"]["dft_candidate_id"] == "si-2"
    assert doc["output"]["@class"] == "TaskDocument"
    assert any(tmp_path.rglob("cp2k.out*"))  # the job folder was kept where asked


# The real CP2K cell relaxation runs through the campaign's verify step:
# tests/flows/test_dft_verify.py::test_verify_relaxes_a_candidate_with_real_cp2k


def test_real_cp2k_relaxation_stopped_at_max_iter_is_judged_by_its_energy(
    job_store: JobStore, tmp_path, monkeypatch
) -> None:
    # ~1 minute on one core: 3 optimiser steps of a stretched 2-atom silicon cell, which
    # needs about 15 to converge, so CP2K stops at MAX_ITER
    from matloop.relax.dft import _cp2k_run_report, _judge_by_energy

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    settings = {"basis_and_potential": {"Si": {"basis": "DZVP-MOLOPT-SR-GTH"}},
                "cutoff": 300, "rel_cutoff": 50, "activate_motion": {"max_iter": 3}}
    maker = make_dft_maker("cp2k", "relax", fast=True, kpoints=(2, 2, 2),
                           input_settings=settings)
    stretched = silicon(2.85)
    (out,) = verify_with_dft([("si", stretched)], maker, job_store, root_dir=tmp_path,
                             energy_tolerance=0.1, energy_window=2)
    assert out.relax_converged is False and out.relax_steps == 3
    # its energy moved by less than 0.1 eV/atom over the last 2 steps: accepted, flagged
    assert out.ok and out.energy_converged, out.reason
    assert 0 < out.energy_drift_per_atom <= 0.1
    assert -107.0 < out.energy_per_atom < -105.0  # GTH-PBE, the small DZVP-MOLOPT-SR basis
    assert out.energy_per_atom < out.initial_energy / 2  # lower than where it started
    assert out.structure.volume < stretched.volume  # from CP2K's trajectory: it shrank
    assert out.evidence == "dft-relaxed"

    # the same run judged with a tolerance it does not meet, or none: failed, saying why
    (job_root,) = tmp_path.glob("si-*")  # the candidate's own folder
    report = {**_cp2k_run_report(job_root), "reason": "stopped at MAX_ITER"}
    for tolerance in (1e-6, None):
        judged = _judge_by_energy(report, stretched, job_root, tolerance, 2)
        assert judged["energy_converged"] is False and "ok" not in judged
        assert "meV/atom" in judged["reason"] and "cell lengths ended at" in judged["reason"]
