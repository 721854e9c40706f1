"""The DFT verification step of a round (:mod:`matloop.loop.verify`).

A stand-in maker (ASE's EMT through the force-field maker) plays the DFT code so the loop's
bookkeeping is tested in seconds; one slow test runs a real CP2K cell relaxation of a
2-atom silicon cell through the same stage (Debian's cp2k; skipped where it is missing).
"""

from __future__ import annotations

import pytest
from pymatgen.core import Lattice, Structure

from matloop.config import ConfigError, parse_config
from matloop.loop import CampaignRun
from matloop.loop.verify import dft_label, verify_round
from matloop.relax.dft import cp2k_command
from matloop.relax.makers import CachedForceFieldRelaxMaker
from matloop.store import EvaluationDoc, MatloopStore, RelaxationDoc

EMT = {"@module": "ase.calculators.emt", "@callable": "EMT"}


def fcc(symbol: str, a: float) -> Structure:
    h = a / 2
    return Structure(Lattice([[0, h, h], [h, 0, h], [h, h, 0]]), [symbol], [[0, 0, 0]])


def config(**dft):
    return parse_config({
        "name": "dft-demo",
        "chemical_space": {"elements": ["Cu", "Al"], "max_atoms": 4},
        "dft": {"code": "cp2k", "top_k": 1, "kind": "relax", **dft},
        "store": "memory://",
    })


def test_dft_config_block() -> None:
    cfg = config(fast=True, kpoints=[2, 2, 2])
    assert cfg.dft.code == "cp2k" and cfg.dft.top_k == 1 and cfg.dft.fast
    assert parse_config({"name": "x", "chemical_space": {"elements": ["Cu"]}}).dft is None
    with pytest.raises(ConfigError, match="dft.code"):
        config(code="abinit")


def test_dft_maker_follows_the_config() -> None:
    run = CampaignRun(config(kind="static", fast=True, command="cp2k.ssmp"),
                      MatloopStore("memory://"))
    maker = run.dft_maker
    assert type(maker).__name__ == "Cp2kStaticMaker"
    assert maker.run_cp2k_kwargs["cp2k_cmd"] == "cp2k.ssmp"
    # relaxations stopped at MAX_ITER fail unless the campaign accepts settled energies
    assert run.context.dft_relaxer.energy_tolerance is None
    settled = CampaignRun(config(fast=True, energy_tolerance=0.001, energy_window=4),
                          MatloopStore("memory://")).context.dft_relaxer
    assert (settled.energy_tolerance, settled.energy_window) == (0.001, 4)
    with pytest.raises(ConfigError, match="dft.energy_tolerance"):
        config(energy_tolerance=0.5)  # 500 meV/atom settles nothing


def _add(store: MatloopStore, cid: str, structure: Structure, e_hull: float, *,
         stable: bool = True, novel: bool = True) -> None:
    store.save_relaxations([RelaxationDoc(
        campaign="dft-demo", candidate_id=cid, ok=True, converged=True, energy_per_atom=-3.0,
        structure=structure.as_dict(), potential="CHGNet 0.3.0", round=1,
    )])
    store.save_evaluations([EvaluationDoc(
        campaign="dft-demo", candidate_id=cid, round=1, formula=structure.reduced_formula,
        energy_per_atom=-3.0, e_above_hull=e_hull, is_stable=stable, is_novel=novel,
        is_unique=True, hull_scheme="CHGNet 0.3.0 + MP2020", hull_version=1,
    )])


def _counts(metrics: dict) -> tuple[int, int]:
    return metrics["dft_verified"], metrics["dft_failed"]


def test_verify_takes_the_best_unverified_stable_novel_candidates() -> None:
    store = MatloopStore("memory://")
    run = CampaignRun(config(), store)
    run.dft_maker = CachedForceFieldRelaxMaker(  # stand-in for CP2K
        force_field_name=EMT, relax_kwargs={"fmax": 0.05, "final_atoms_object_file": None},
        ionic_step_data=None,
    )
    _add(store, "cu-a", fcc("Cu", 3.70), 0.02)
    _add(store, "cu-b", fcc("Cu", 3.65), 0.00)  # best: verified first
    _add(store, "al-c", fcc("Al", 4.10), 0.05, novel=False)  # known: never verified
    _add(store, "al-d", fcc("Al", 4.00), 0.30, stable=False)  # not stable: never verified

    assert _counts(verify_round(run.context, 1)) == (1, 0)
    (doc,) = store.dft_results("dft-demo")
    assert doc.candidate_id == "cu-b" and doc.ok and doc.round == 1
    assert doc.evidence == "dft-relaxed"
    assert doc.ml_energy_per_atom == -3.0 and doc.ml_e_above_hull == 0.0
    assert doc.ml_potential == "CHGNet 0.3.0"
    assert doc.energy_per_atom == pytest.approx(-0.0057, abs=0.01)  # EMT Cu, not the ML -3.0
    assert doc.matches_ml_structure and 0.9 < doc.volume_ratio < 1.1
    # the ML evaluation is untouched: DFT energies never enter the ML hull
    evaluation = {e.candidate_id: e for e in store.evaluations("dft-demo")}["cu-b"]
    assert evaluation.energy_per_atom == -3.0 and evaluation.evidence == "mlip-relaxed"

    assert _counts(verify_round(run.context, 2)) == (1, 0)  # the next best
    assert [d.candidate_id for d in store.dft_results("dft-demo")] == ["cu-a", "cu-b"]
    assert _counts(verify_round(run.context, 3)) == (0, 0)  # nothing left


def test_verify_is_off_without_a_dft_block() -> None:
    cfg = parse_config({"name": "x", "chemical_space": {"elements": ["Cu"]},
                        "store": "memory://"})
    run = CampaignRun(cfg, MatloopStore("memory://"))
    assert run.dft_maker is None and verify_round(run.context, 1) == {}


needs_cp2k = pytest.mark.skipif(
    cp2k_command() is None, reason="CP2K is not installed (apt-get install cp2k cp2k-data)"
)

#: CP2K's default MAX_FORCE (4.5e-4 hartree/bohr) in eV/Å.
CP2K_MAX_FORCE = 4.5e-4 * 51.422


def diamond_si(a: float = 5.47) -> Structure:
    """Primitive diamond silicon with conventional lattice constant ``a`` (PBE: 5.47 Å)."""
    h = a / 4
    lattice = Lattice([[0, 2 * h, 2 * h], [2 * h, 0, 2 * h], [2 * h, 2 * h, 0]])
    return Structure(lattice, ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]])


@pytest.mark.slow
@needs_cp2k
def test_verify_relaxes_a_candidate_with_real_cp2k(monkeypatch) -> None:
    """A real CP2K cell relaxation (ions and cell) through the campaign's verify step.

    About 2.5 minutes on one busy core: DZVP-MOLOPT-SR basis, 300 Ry cutoff, the fast
    settings' Gamma-centred 3x3x3 k-point grid, CP2K's default optimiser thresholds.
    """
    import numpy as np
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    import matloop.relax.dft as dft

    # one OpenMP thread: two on a busy 2-core machine made CP2K 3 to 6 times slower here
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    outcomes = []  # what verify_with_dft returned, to look beyond the stored DftDoc
    real_verify = dft.verify_with_dft

    def verify_and_keep(*args, **kwargs):
        outcomes.extend(result := real_verify(*args, **kwargs))
        return result

    monkeypatch.setattr(dft, "verify_with_dft", verify_and_keep)

    # The "ML-relaxed" candidate: diamond silicon stretched by 2.5 % with one atom moved
    # 0.054 Å off its site; DFT has to pull it back to diamond at the DFT lattice constant.
    ideal = diamond_si()
    start = ideal.copy()
    start.apply_strain(0.025)
    start.translate_sites([1], [0.03, 0.02, -0.04], frac_coords=False)
    assert SpacegroupAnalyzer(start, symprec=0.02).get_space_group_number() != 227

    cfg = parse_config({
        "name": "dft-demo",
        "chemical_space": {"elements": ["Si"], "max_atoms": 4},
        "dft": {
            "code": "cp2k", "kind": "relax", "top_k": 1, "fast": True,
            "settings": {
                "basis_and_potential": {"Si": {"basis": "DZVP-MOLOPT-SR-GTH"}},
                "cutoff": 300, "rel_cutoff": 50,
            },
        },
        "store": "memory://",
    })
    store = MatloopStore("memory://")
    run = CampaignRun(cfg, store)
    _add(store, "si-2", start, 0.0)
    assert _counts(verify_round(run.context, 1)) == (1, 0)

    (out,) = outcomes
    assert out.ok, out.reason
    # CP2K's cell optimiser met all its thresholds (steps, forces, pressure) before MAX_ITER
    assert out.relax_converged and 2 <= out.relax_steps < 30
    assert out.max_force < CP2K_MAX_FORCE
    stress = np.asarray(out.stress)  # GPa; the starting cell is under ~3 GPa of tension
    assert abs(np.trace(stress) / 3) < 0.01  # CP2K's pressure tolerance: 100 bar
    assert np.abs(np.linalg.eigvalsh(stress)).max() < 0.5  # shear left: ~0.25 GPa
    # the energy went down from the starting structure
    assert out.energy < out.initial_energy - 0.02
    # diamond stays diamond: no shear, both atoms back on their sites, PBE lattice constant
    final = out.structure
    assert final.lattice.angles == pytest.approx((60.0, 60.0, 60.0), abs=0.5)
    assert final.lattice.abc == pytest.approx([final.lattice.a] * 3, abs=0.01)
    assert SpacegroupAnalyzer(final, symprec=0.02).get_space_group_number() == 227
    assert StructureMatcher(ltol=0.02, stol=0.05, angle_tol=0.5, scale=True).fit(final, ideal)
    assert (4 * final.volume) ** (1 / 3) == pytest.approx(5.47, abs=0.06)

    # stored beside the ML result, which stays as it was
    (doc,) = store.dft_results("dft-demo")
    assert doc.candidate_id == "si-2" and doc.ok and doc.converged
    assert doc.code == "cp2k" and doc.kind == "relax" and doc.evidence == "dft-relaxed"
    assert doc.energy_per_atom == pytest.approx(out.energy_per_atom)
    assert -108.0 < doc.energy_per_atom < -106.0  # CP2K total energy (GTH), not the ML scale
    assert doc.ml_energy_per_atom == -3.0 and doc.ml_potential == "CHGNet 0.3.0"
    assert doc.matches_ml_structure and 0.90 < doc.volume_ratio < 0.97  # shrank the stretch
    assert Structure.from_dict(doc.structure).volume == pytest.approx(final.volume)
    assert doc.settings["run_type"] == "CELL_OPT"
    assert doc.settings["basis"] == {"Si": "DZVP-MOLOPT-SR-GTH"}
    assert doc.settings["cutoff_ry"] == 300
    assert doc.settings["kpoints"] == {"grid": [3, 3, 3], "style": "Gamma", "n_kpoints": 14}
    task = store.job_store().query_one({"uuid": doc.job_uuid})
    assert task["output"]["@class"] == "TaskDocument"
    assert task["metadata"]["dft_candidate_id"] == "si-2"
    (evaluation,) = store.evaluations("dft-demo")
    assert evaluation.energy_per_atom == -3.0 and evaluation.evidence == "mlip-relaxed"


def test_verify_builds_a_dft_hull_and_gives_verdicts(tmp_path) -> None:
    """The DFT hull with a stand-in DFT code (EMT): the elemental references are relaxed
    with the same maker, a candidate on the DFT hull is confirmed, one far above it refuted,
    and the exported references.csv rebuilds the DFT hull within 1 meV/atom."""
    from matloop.results.export import export_campaign, recompute_hull
    from matloop.store import ReferenceDoc

    store = MatloopStore("memory://")
    run = CampaignRun(config(top_k=5, max_references=2), store)
    run.dft_maker = CachedForceFieldRelaxMaker(  # stand-in for CP2K
        force_field_name=EMT, relax_kwargs={"fmax": 0.02, "final_atoms_object_file": None},
        ionic_step_data=None,
    )
    campaign = run.ensure_campaign()
    campaign.references_ready, campaign.hull_scheme = True, run.hull_scheme
    campaign.reference_e_above_hull = {"element:Cu": 0.0, "element:Al": 0.0}
    store.save_campaign(campaign)
    store.save_references([
        ReferenceDoc(reference_id=f"element:{el}", potential=run.potential, formula=el,
                     chemsys=el, energy_per_atom=-3.0, structure=fcc(el, a).as_dict(),
                     source="elemental")
        for el, a in (("Cu", 3.61), ("Al", 4.05))
    ])
    simple_cubic = Structure(Lattice.cubic(2.4), ["Cu"], [[0, 0, 0]])
    _add(store, "cu-fcc", fcc("Cu", 3.70), 0.00)  # relaxes onto the Cu reference: on the hull
    _add(store, "cu-sc", simple_cubic, 0.01)  # simple cubic copper: far above fcc

    metrics = verify_round(run.context, 1)
    assert metrics["dft_verified"] == 2 and metrics["dft_references"] == 1  # Cu only
    assert metrics["dft_confirmed"] == 1 and metrics["dft_refuted"] == 1
    (ref,) = store.references(dft_label(run.context))
    assert ref.reference_id == "element:Cu" and ref.energy_per_atom == pytest.approx(
        -0.0057, abs=0.01)  # EMT's energy, not the ML reference's -3.0
    assert ref.settings and ref.evidence == "dft-relaxed"
    results = {d.candidate_id: d for d in store.dft_results("dft-demo")}
    assert results["cu-fcc"].verdict == "confirmed"
    assert results["cu-fcc"].dft_e_above_hull == pytest.approx(0.0, abs=1e-3)
    assert results["cu-sc"].verdict == "refuted" and results["cu-sc"].dft_e_above_hull > 0.1
    assert results["cu-sc"].dft_reference_ids == ["element:Cu"]
    # the ML evaluations are untouched; the references are relaxed once
    assert {e.candidate_id: e.e_above_hull for e in store.evaluations("dft-demo")} == {
        "cu-fcc": 0.0, "cu-sc": 0.01}
    assert verify_round(run.context, 2)["dft_references"] == 1

    out = export_campaign(store, "dft-demo", tmp_path)
    _pd, e_hull = recompute_hull(out / "references.csv", hull="dft")
    assert set(e_hull) == {"element:Cu", "cu-fcc", "cu-sc"}
    for cid, doc in results.items():
        assert abs(e_hull[cid] - doc.dft_e_above_hull) < 1e-3
    summary = (out / "summary.json").read_text()
    assert '"dft_refuted": 1' in summary and '"dft_confirmed": 1' in summary
    assert "refuted by DFT" in (out / "report.html").read_text()


def test_a_round_verified_inside_evaluate_is_not_verified_again() -> None:
    """Rounds stored when evaluate ran the DFT verification (before verify was a step of its
    own) carry its metrics; resuming one runs no second verification."""
    from matloop.store import RoundDoc

    store = MatloopStore("memory://")
    run = CampaignRun(config(), store)
    run.dft_maker = CachedForceFieldRelaxMaker(
        force_field_name=EMT, relax_kwargs={"fmax": 0.05, "final_atoms_object_file": None},
        ionic_step_data=None,
    )
    _add(store, "cu-b", fcc("Cu", 3.65), 0.00)
    store.save_round(RoundDoc(campaign="dft-demo", round=1,
                              steps_done=["generate", "screen", "relax", "evaluate"],
                              metrics={"dft_verified": 0, "dft_failed": 0}))
    assert run.verify(1).counts == {} and store.dft_results("dft-demo") == []
    assert run.store.get_round("dft-demo", 1).steps_done[-1] == "verify"
    store.save_round(RoundDoc(campaign="dft-demo", round=2,
                              steps_done=["generate", "screen", "relax", "evaluate"]))
    assert _counts(run.verify(2).counts) == (1, 0)
    assert run.verify(2).skipped  # recorded: a second call does nothing


def test_a_failed_dft_reference_is_tried_a_bounded_number_of_times() -> None:
    """A DFT reference that fails is recorded on the campaign and tried again at most
    REFERENCE_ATTEMPTS times in all (not once per round); a candidate whose DFT run failed
    gets the verdict 'failed' and is never counted as confirmed."""
    from dataclasses import dataclass

    from matloop.loop.verify import REFERENCE_ATTEMPTS
    from matloop.results.report import campaign_summary
    from matloop.store import ReferenceDoc

    tried: list[str] = []

    @dataclass
    class FailsOnCuAl(CachedForceFieldRelaxMaker):
        """The EMT stand-in, failing (as an unconverged SCF would) for CuAl cells."""

        def make(self, structure, prev_dir=None):
            tried.append(structure.reduced_formula)
            if structure.reduced_formula == "AlCu":
                raise RuntimeError("SCF not converged (stand-in failure)")
            return super().make(structure, prev_dir)

    store = MatloopStore("memory://")
    run = CampaignRun(config(top_k=5, max_references=1), store)
    run.dft_maker = FailsOnCuAl(
        force_field_name=EMT, relax_kwargs={"fmax": 0.05, "final_atoms_object_file": None},
        ionic_step_data=None,
    )
    campaign = run.ensure_campaign()
    campaign.references_ready, campaign.hull_scheme = True, run.hull_scheme
    campaign.seed_reference_ids = ["seed:b2"]
    campaign.reference_e_above_hull = {"element:Cu": 0.0, "element:Al": 0.0, "seed:b2": 0.0}
    store.save_campaign(campaign)
    b2 = Structure(Lattice.cubic(2.95), ["Cu", "Al"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    store.save_references([
        ReferenceDoc(reference_id=f"element:{el}", potential=run.potential, formula=el,
                     chemsys=el, energy_per_atom=-3.0, structure=fcc(el, a).as_dict(),
                     source="elemental")
        for el, a in (("Cu", 3.61), ("Al", 4.05))
    ] + [ReferenceDoc(reference_id="seed:b2", potential=run.potential, formula="AlCu",
                      chemsys="Al-Cu", energy_per_atom=-3.2, structure=b2.as_dict(),
                      source="file:known.csv", source_id="b2")])
    l12 = Structure(Lattice.cubic(3.70), ["Al", "Cu", "Cu", "Cu"],
                    [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    _add(store, "cu3al", l12, 0.00)
    _add(store, "cual", b2, 0.01)  # its DFT run fails

    metrics = verify_round(run.context, 1)
    assert (metrics["dft_verified"], metrics["dft_failed"]) == (1, 1)
    assert metrics["dft_references"] == 2 and metrics["dft_references_failed"] == 1
    assert tried.count("AlCu") == 2  # the candidate, then the reference
    failure = store.get_campaign("dft-demo").dft_reference_failures["seed:b2"]
    assert failure["attempts"] == 1 and "stand-in failure" in failure["reason"]
    assert failure["potential"] == dft_label(run.context) and failure["round"] == 1

    for round_ in range(2, REFERENCE_ATTEMPTS + 3):
        metrics = verify_round(run.context, round_)
        assert metrics["dft_verified"] == metrics["dft_failed"] == 0  # never a candidate again
        gave_up = round_ > REFERENCE_ATTEMPTS
        assert metrics["dft_references_failed"] == (0 if gave_up else 1)
        assert metrics["dft_references_given_up"] == (1 if gave_up else 0)
    # the failed candidate once, the reference REFERENCE_ATTEMPTS times, however many rounds
    assert tried.count("AlCu") == 1 + REFERENCE_ATTEMPTS
    assert store.get_campaign("dft-demo").dft_reference_failures["seed:b2"]["attempts"] == (
        REFERENCE_ATTEMPTS)

    # the hull of the elements still judges the verified candidate; the failed one is
    # 'failed', never 'confirmed', in the verify metrics and in the campaign summary
    results = {d.candidate_id: d for d in store.dft_results("dft-demo")}
    assert results["cual"].verdict == "failed" and results["cual"].dft_e_above_hull is None
    assert results["cu3al"].verdict in {"confirmed", "refuted"}
    assert metrics["dft_confirmed"] + metrics["dft_refuted"] == 1
    summary = campaign_summary(store, "dft-demo")
    assert summary["dft_verified"] == 1
    assert summary["dft_confirmed"] == (results["cu3al"].verdict == "confirmed")

    # other DFT settings: a new label, so the reference is tried afresh
    run2 = CampaignRun(config(top_k=5, max_references=1, kpoints=[2, 2, 2]), store)
    run2.dft_maker = run.dft_maker
    assert dft_label(run2.context) != dft_label(run.context)
    assert verify_round(run2.context, 9)["dft_references_failed"] == 1


def _na_cl_structures() -> dict[str, Structure]:
    from matloop.relax.references import elemental_candidates

    # Lattice constants near the equilibrium of these coarse settings (300 Ry leaves the
    # stress of sodium's semicore states unconverged: rock salt at 5.87 Å instead of PBE's
    # 5.70, bcc sodium at 4.53 Å instead of 4.20), so each reference takes a few steps.
    rocksalt = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.87), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    ).get_primitive_structure()
    strained = rocksalt.copy()
    strained.apply_strain(0.02)
    chlorine = next(s for s in elemental_candidates("Cl")
                    if s.properties["prototype"] == "dimer-rhombohedral")
    chlorine.properties = {}
    return {
        # bcc sodium, primitive (1 atom), a = 4.53 Å
        "Na": Structure(Lattice([[-2.265, 2.265, 2.265], [2.265, -2.265, 2.265],
                                 [2.265, 2.265, -2.265]]), ["Na"], [[0, 0, 0]]),
        "Cl": chlorine,
        "rocksalt": rocksalt,
        "strained": strained,  # a rock-salt candidate: relaxes onto the reference, on the hull
        # atomic chlorine: fcc, one atom per cell at the volume per atom of solid Cl2 (no
        # Cl-Cl bond, 3.4 Å between atoms), so about half the Cl2 bond energy (~1.2 eV/atom)
        # above the hull. (L1_2 Na3Cl, tried first, came out within 0.1 eV/atom of the hull
        # at these coarse settings: not a clear case.)
        "atomic-cl": Structure(Lattice([[0, 2.435, 2.435], [2.435, 0, 2.435], [2.435, 2.435, 0]]),
                               ["Cl"], [[0, 0, 0]]),
    }


@pytest.mark.slow
@needs_cp2k
def test_a_real_cp2k_dft_hull_of_na_cl(monkeypatch, tmp_path) -> None:
    """Real CP2K: Na, Cl2 and rock-salt NaCl relaxed as DFT references, rock-salt NaCl
    confirmed and atomic (fcc) chlorine refuted on the DFT hull; the export rebuilds it within
    1 meV.

    Five tiny CP2K relaxations (1 or 2 atoms, DZVP-MOLOPT-SR basis, 300 Ry, Gamma 2x2x2;
    cells keep their space group and grids, chlorine keeps its cell), 3 to 8 optimiser steps
    each. Measured: 218 s of CPU in all (one core), 8.1 min of wall time on the shared 2-core
    machine at load average 4 to 9 (with 4-atom Na3Cl as the unstable candidate: 267 s, 11 to
    14 min at load 6 to 12). Before the space group and the grids were kept, bcc Na and Na3Cl
    never converged (a spurious shear stress; energy jumps when CP2K re-gridded), and the Cl2
    cell expanded step after step: the test failed after 20 minutes and more.
    """
    from matloop.results.export import export_campaign, recompute_hull
    from matloop.store import ReferenceDoc

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cfg = parse_config({
        "name": "dft-na-cl",
        "chemical_space": {"elements": ["Na", "Cl"], "max_atoms": 4},
        "dft": {
            "code": "cp2k", "kind": "relax", "top_k": 2, "fast": True, "max_references": 1,
            "kpoints": [2, 2, 2],
            "settings": {
                "basis_and_potential": {el: {"basis": "DZVP-MOLOPT-SR-GTH"}
                                        for el in ("Na", "Cl")},
                "cutoff": 300, "rel_cutoff": 50,
            },
        },
        "store": "memory://",
    })
    store = MatloopStore("memory://")
    run = CampaignRun(cfg, store)
    s = _na_cl_structures()
    campaign = run.ensure_campaign()
    campaign.references_ready, campaign.hull_scheme = True, run.hull_scheme
    campaign.seed_reference_ids = ["seed:file:known.csv:rs"]
    campaign.reference_e_above_hull = {"element:Na": 0.0, "element:Cl": 0.0,
                                       "seed:file:known.csv:rs": 0.0}
    store.save_campaign(campaign)
    store.save_references([
        ReferenceDoc(reference_id=f"element:{el}", potential=run.potential, formula=el,
                     chemsys=el, energy_per_atom=-2.0, structure=s[el].as_dict(),
                     source="elemental")
        for el in ("Na", "Cl")
    ] + [ReferenceDoc(reference_id="seed:file:known.csv:rs", potential=run.potential,
                      formula="NaCl", chemsys="Cl-Na", energy_per_atom=-3.7,
                      structure=s["rocksalt"].as_dict(), source="file:known.csv",
                      source_id="rs")])
    _add_to(store, "dft-na-cl", "nacl-rs", s["strained"], 0.0)
    _add_to(store, "dft-na-cl", "atomic-cl", s["atomic-cl"], 0.05)  # the ML called it stable

    metrics = verify_round(run.context, 1)
    assert (metrics["dft_verified"], metrics["dft_failed"]) == (2, 0), metrics
    assert metrics["dft_references"] == 3 and metrics["dft_references_failed"] == 0
    refs = {r.reference_id: r for r in store.references(dft_label(run.context))}
    assert set(refs) == {"element:Na", "element:Cl", "seed:file:known.csv:rs"}
    assert all(r.evidence == "dft-relaxed" and r.settings["cutoff_ry"] == 300
               for r in refs.values())
    results = {d.candidate_id: d for d in store.dft_results("dft-na-cl")}
    rocksalt, atomic = results["nacl-rs"], results["atomic-cl"]
    # The candidate is the reference crystal strained by 2 %: it relaxes onto it, but on the
    # real-space grids of its own (strained) starting cell (CELL_REF), and at 300 Ry the grid
    # moves the energy: measured 15 meV/atom above the reference, well within the 0.1 eV/atom
    # threshold.
    assert rocksalt.verdict == "confirmed" and abs(rocksalt.dft_e_above_hull) < 0.03
    assert atomic.verdict == "refuted" and atomic.dft_e_above_hull > 0.5
    assert rocksalt.dft_hull_version == atomic.dft_hull_version is not None
    # NaCl binds: its DFT formation energy is strongly negative (PBE: about -1.9 eV/atom)
    e_nacl = refs["seed:file:known.csv:rs"].energy_per_atom
    e_el = (refs["element:Na"].energy_per_atom + refs["element:Cl"].energy_per_atom) / 2
    assert -2.5 < e_nacl - e_el < -1.3

    out = export_campaign(store, "dft-na-cl", tmp_path)
    _pd, e_hull = recompute_hull(out / "references.csv", hull="dft")
    for cid, doc in results.items():
        assert abs(e_hull[cid] - doc.dft_e_above_hull) < 1e-3  # 1 meV/atom
    summary = (out / "summary.json").read_text()
    assert '"dft_confirmed": 1' in summary and '"dft_refuted": 1' in summary


def _add_to(store, campaign, cid, structure, e_hull) -> None:
    store.save_relaxations([RelaxationDoc(
        campaign=campaign, candidate_id=cid, ok=True, converged=True, energy_per_atom=-3.0,
        structure=structure.as_dict(), potential="CHGNet 0.3.0", round=1,
    )])
    store.save_evaluations([EvaluationDoc(
        campaign=campaign, candidate_id=cid, round=1, formula=structure.reduced_formula,
        energy_per_atom=-3.0, e_above_hull=e_hull, is_stable=True, is_novel=True,
        is_unique=True, novelty="novel", hull_scheme="CHGNet 0.3.0", hull_version=1,
    )])
