"""The DFT verification stage of a round (``CampaignRun.verify``, called by ``evaluate``).

A stand-in maker (ASE's EMT through the force-field maker) plays the DFT code so the loop's
bookkeeping is tested in seconds; the real CP2K path is tested in tests/relax/test_dft.py.
"""

from __future__ import annotations

import pytest
from pymatgen.core import Lattice, Structure

from matloop.config import ConfigError, parse_config
from matloop.flows.steps import CampaignRun
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


def test_verify_takes_the_best_unverified_stable_novel_candidates() -> None:
    store = MatloopStore("memory://")
    run = CampaignRun(config(), store)
    run._dft_maker = CachedForceFieldRelaxMaker(  # stand-in for CP2K
        force_field_name=EMT, relax_kwargs={"fmax": 0.05, "final_atoms_object_file": None},
        ionic_step_data=None,
    )
    _add(store, "cu-a", fcc("Cu", 3.70), 0.02)
    _add(store, "cu-b", fcc("Cu", 3.65), 0.00)  # best: verified first
    _add(store, "al-c", fcc("Al", 4.10), 0.05, novel=False)  # known: never verified
    _add(store, "al-d", fcc("Al", 4.00), 0.30, stable=False)  # not stable: never verified

    assert run.verify(1) == {"dft_verified": 1, "dft_failed": 0}
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

    assert run.verify(2) == {"dft_verified": 1, "dft_failed": 0}  # the next best
    assert [d.candidate_id for d in store.dft_results("dft-demo")] == ["cu-a", "cu-b"]
    assert run.verify(3) == {"dft_verified": 0, "dft_failed": 0}  # nothing left


def test_verify_is_off_without_a_dft_block() -> None:
    cfg = parse_config({"name": "x", "chemical_space": {"elements": ["Cu"]},
                        "store": "memory://"})
    run = CampaignRun(cfg, MatloopStore("memory://"))
    assert run.dft_maker is None and run.verify(1) == {}
