from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from matloop.evaluators.generation_metrics import (
    COV_CUTOFFS,
    composition_validity,
    coverage,
    coverage_from_fingerprints,
    distribution_metrics,
    reconstruction_metrics,
    structure_validity,
    validity_rates,
    wasserstein,
)


def perovskite(a: float = 3.9, a_site: str = "Sr", b_site: str = "Ti") -> Structure:
    return Structure(
        Lattice.cubic(a),
        [a_site, b_site, "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )


def test_structure_validity_close_atoms():
    assert structure_validity(perovskite())
    close = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.06, 0, 0]])  # 0.3 Å
    assert not structure_validity(close)
    # Distances are minimum image: 0.3 Å across the cell boundary also counts.
    wrapped = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0.02, 0, 0], [0.96, 0, 0]])
    assert not structure_validity(wrapped)
    tiny = Structure(Lattice.cubic(0.4), ["Na"], [[0, 0, 0]])
    assert not structure_validity(tiny)


def test_composition_validity():
    assert composition_validity(perovskite())
    assert not composition_validity(
        Structure(Lattice.cubic(4), ["K", "F", "F"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0]])
    )
    rates = validity_rates([perovskite(), None])
    assert rates == {"struct_valid": 0.5, "comp_valid": 0.5, "valid": 0.5}


def test_wasserstein_identical_is_zero():
    xs = [perovskite(3.8), perovskite(4.0, "Ba")]
    d = distribution_metrics(xs, xs, [1.0, 2.0], [1.0, 2.0])
    assert d["wdist_density"] == pytest.approx(0.0)
    assert d["wdist_num_elems"] == pytest.approx(0.0)
    assert d["wdist_prop"] == pytest.approx(0.0)
    assert wasserstein([0.0], [1.0]) == pytest.approx(1.0)


def test_reconstruction_metrics():
    truth = [perovskite(), perovskite(4.0, "Ba")]
    pred = [perovskite().copy(), None]
    pred[0].perturb(0.05)
    r = reconstruction_metrics(pred, truth)
    assert r["match_rate"] == 0.5
    assert 0 < r["rms_dist"] < 0.1


def test_coverage_from_fingerprints_known_answer():
    ref_s = [np.zeros(3), np.ones(3)]
    ref_c = np.array([[0.0, 0.0], [10.0, 10.0]])
    gen_s = [np.zeros(3) + 0.01, None, np.full(3, 5.0)]
    gen_c = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    from matloop.evaluators.generation_metrics import CompScaler

    cov = coverage_from_fingerprints(
        gen_s, gen_c, ref_s, ref_c, 0.2, 1.0, CompScaler(np.zeros(2), np.ones(2))
    )
    assert cov["cov_recall"] == 0.5  # the first reference is covered, the second is not
    assert cov["cov_precision"] == pytest.approx(1 / 3)  # the None counts in the denominator


def test_coverage_of_set_against_itself_is_full():
    xs = [perovskite(3.9), perovskite(4.1, "Ba", "Zr"), perovskite(3.8, "Ca", "Ti")]
    cov = coverage(xs, xs, **{f"{k}_cutoff": v for k, v in COV_CUTOFFS["perov_5"].items()})
    assert cov["cov_recall"] == 1.0
    assert cov["cov_precision"] == 1.0


def test_composition_coverage_known_answer():
    from matloop.evaluators.generation_metrics import CompScaler, composition_coverage

    ref_c = np.array([[0.0, 0.0], [10.0, 10.0]])
    gen_c = np.array([[0.5, 0.0], [0.0, 0.5], [-20.0, 0.0]])
    cov = composition_coverage(gen_c, ref_c, 1.0, CompScaler(np.zeros(2), np.ones(2)))
    assert cov["cov_recall_comp"] == 0.5  # only the first reference has a close sample
    assert cov["cov_precision_comp"] == pytest.approx(2 / 3)  # the far sample is imprecise
    assert cov["amcd_precision_comp"] == pytest.approx((0.5 + 0.5 + 20.0) / 3)
    empty = composition_coverage(np.zeros((0, 2)), ref_c, 1.0)
    assert empty["cov_recall_comp"] == 0.0
