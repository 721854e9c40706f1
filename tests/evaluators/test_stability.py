from __future__ import annotations

import math

import pytest
from pymatgen.core import Composition, Lattice, Structure

from matloop.evaluators.stability import (
    EntryRejectedError,
    HullResult,
    MissingReferenceError,
    compute_hull,
    formation_energy_per_atom,
    hull_scheme,
    make_entry,
    mp_parameters,
    plot_hull,
)

# Hand-chosen Li-O energies (eV/atom, uncorrected) with known answers:
# Li -1.9, O -4.9; Li2O formation -2.0 eV/atom (on the hull); Li2O2 formation -1.4 eV/atom,
# whose hull point between Li2O (x_O = 1/3, -2.0) and O (x_O = 1, 0) is -1.5 -> 0.1 above.
E_LI, E_O = -1.9, -4.9
E_LI2O = (2 * E_LI + E_O) / 3 - 2.0
E_LI2O2 = (E_LI + E_O) / 2 - 1.4


def _refs(correct: bool = False):
    return [
        make_entry(Composition("Li"), E_LI, "ref-Li", correct=correct),
        make_entry(Composition("O2"), E_O, "ref-O", correct=correct),
    ]


def _li2o_structure() -> Structure:
    """Conventional antifluorite Li2O cell (Li8O4)."""
    o = [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]
    li = [[x, y, z] for x in (0.25, 0.75) for y in (0.25, 0.75) for z in (0.25, 0.75)]
    return Structure(Lattice.cubic(4.61), ["Li"] * 8 + ["O"] * 4, li + o)


def test_hull_known_answers():
    cands = [
        make_entry(Composition("Li2O"), E_LI2O, "c-li2o", correct=False),
        make_entry(Composition("Li2O2"), E_LI2O2, "c-li2o2", correct=False),
    ]
    result = compute_hull(_refs(), cands, scheme=hull_scheme("Hand", None))
    assert isinstance(result, HullResult)
    assert set(result) == {"c-li2o", "c-li2o2"}
    assert result["c-li2o"] == pytest.approx(0.0, abs=1e-8)
    assert result["c-li2o2"] == pytest.approx(0.1, abs=1e-8)
    assert result.stable_candidate_ids == ["c-li2o"]
    assert set(result.stable_ids) == {"ref-Li", "ref-O", "c-li2o"}
    assert len(result) == 2 and dict(result) == {k: result[k] for k in ("c-li2o", "c-li2o2")}
    with pytest.raises(KeyError):
        result["ref-Li"]  # the mapping is over candidates ...
    assert result.e_above_hull["ref-Li"] == 0.0  # ... the per-entry dicts cover references
    assert result.corrected_energy["c-li2o2"] == pytest.approx(E_LI2O2)
    assert result.formation_energy["c-li2o"] == pytest.approx(-2.0)
    assert formation_energy_per_atom(cands[1], result.phase_diagram) == pytest.approx(-1.4)
    assert result.scheme == "Hand"


def test_new_stable_candidate_lowers_the_hull():
    li2o = make_entry(Composition("Li2O"), E_LI2O, "ref-li2o", correct=False)
    lio2 = make_entry(Composition("LiO2"), (E_LI + 2 * E_O) / 3 - 1.0, "c-lio2", correct=False)
    alone = compute_hull([*_refs(), li2o], [lio2])
    assert alone["c-lio2"] == pytest.approx(0.0, abs=1e-8)  # exactly on the Li2O-O tie line
    # A stable peroxide (-1.6 eV/atom, below the -1.5 tie line) joins the hull and lifts LiO2
    # to 1.6/1.5 - 1 = 0.0667 eV/atom above it.
    li2o2 = make_entry(Composition("Li2O2"), (E_LI + E_O) / 2 - 1.6, "c-li2o2", correct=False)
    both = compute_hull([*_refs(), li2o], [li2o2, lio2])
    assert both["c-li2o2"] == pytest.approx(0.0, abs=1e-8)
    assert both.e_above_hull["ref-li2o"] == pytest.approx(0.0, abs=1e-8)
    assert both["c-lio2"] == pytest.approx(1.6 * (1 / 3) / 0.5 - 1.0, abs=1e-6)


def test_missing_elemental_reference_is_named():
    cand = make_entry(Composition("LiMnO2"), -6.0, "c-1", correct=False)
    with pytest.raises(MissingReferenceError, match=r"Mn.*c-1") as info:
        compute_hull(_refs(), [cand])
    assert info.value.missing == ["Mn"]


def test_mixed_correction_schemes_refused():
    cand = make_entry(Composition("Li2O"), E_LI2O, "c", correct=True)
    with pytest.raises(ValueError, match="mix correction schemes"):
        compute_hull(_refs(correct=False), [cand])


def test_duplicate_ids_refused():
    a = make_entry(Composition("Li2O"), E_LI2O, "same", correct=False)
    b = make_entry(Composition("Li2O2"), E_LI2O2, "same", correct=False)
    with pytest.raises(ValueError, match="duplicate"):
        compute_hull(_refs(), [a, b])
    clash = make_entry(Composition("Li2O"), E_LI2O, "ref-Li", correct=False)
    with pytest.raises(ValueError, match="duplicate entry_id 'ref-Li'"):
        compute_hull(_refs(), [clash])


def test_references_only_hull():
    li2o = make_entry(Composition("Li2O"), E_LI2O, "ref-li2o", correct=False)
    result = compute_hull([*_refs(), li2o], [])
    assert len(result) == 0
    assert result.e_above_hull["ref-li2o"] == pytest.approx(0.0, abs=1e-8)
    assert len(compute_hull([], [])) == 0


def test_mp2020_oxide_correction_applied():
    entry = make_entry(_li2o_structure(), -4.8, "li2o")  # conventional cell: Li8O4
    assert entry.uncorrected_energy == pytest.approx(-4.8 * 12)
    assert entry.correction == pytest.approx(-0.687 * 4, abs=1e-6)
    assert entry.energy_per_atom == pytest.approx(-4.8 - 0.687 * 4 / 12)
    names = [adj.name for adj in entry.energy_adjustments]
    assert names == ["MP2020 anion correction (oxide)"]
    # Elements are never corrected.
    assert make_entry(Composition("O2"), E_O, "o2").correction == 0.0


def test_mp2020_gga_u_for_transition_metal_oxide():
    params = mp_parameters(Composition("Fe2O3"))
    assert params["run_type"] == "GGA+U"
    assert params["hubbards"] == {"Fe": 5.3}
    assert params["is_hubbard"] is True
    entry = make_entry(Composition("Fe2O3"), -6.8, "fe2o3")
    # 3 O x oxide (-0.687) + 2 Fe x GGA/GGA+U mixing (-2.256)
    assert entry.correction == pytest.approx(3 * -0.687 + 2 * -2.256, abs=1e-6)
    assert mp_parameters(Composition("FeS"))["run_type"] == "GGA"
    assert mp_parameters(Composition("Fe"))["hubbards"] == {}


def test_rejected_entry_raises_with_reason():
    with pytest.raises(EntryRejectedError, match="Invalid U value.*Fe"):
        make_entry(Composition("Fe2O3"), -6.8, "bad", parameters={"hubbards": {}})


def test_non_finite_energy_refused():
    with pytest.raises(ValueError, match="non-finite"):
        make_entry(Composition("Li2O"), math.nan, "nan")


def test_corrected_hull_consistent():
    refs = _refs(correct=True)
    cand = make_entry(_li2o_structure(), E_LI2O, "c-li2o")
    result = compute_hull(refs, [cand], scheme=hull_scheme("CHGNet"))
    assert result.scheme == "CHGNet+MP2020"
    # Oxide correction lowers the formation energy by 0.687 eV per O = 0.229 eV/atom.
    assert result.formation_energy["c-li2o"] == pytest.approx(-2.0 - 0.687 / 3, abs=1e-6)


def test_plot_hull_binary_and_fallback(tmp_path):
    cands = [
        make_entry(Composition("Li2O"), E_LI2O, "c-li2o", correct=False),
        make_entry(Composition("Li2O2"), E_LI2O2, "c-li2o2", correct=False),
    ]
    pd = compute_hull(_refs(), cands).phase_diagram
    out = plot_hull(pd, tmp_path / "binary.png", highlight_ids=["c-li2o2"], title="test")
    assert out is not None and out.read_bytes()[:4] == b"\x89PNG"

    refs = [
        make_entry(Composition(el), -3.0, f"ref-{el}", correct=False)
        for el in ("Li", "Mn", "P", "O")
    ]
    quat = [make_entry(Composition("LiMnPO4"), -5.0, "c-q", correct=False)]
    pd4 = compute_hull(refs, quat).phase_diagram
    out4 = plot_hull(pd4, tmp_path / "quaternary.png", highlight_ids=["c-q"])
    assert out4 is not None and out4.stat().st_size > 1000


def test_plot_hull_never_raises(tmp_path):
    assert plot_hull(object(), tmp_path / "x.png") is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("formula", "hubbards", "potcars"),
    [
        ("FeO", {"Fe": 5.3}, ["Fe_pv", "O"]),  # one atom of each: still an oxide with U
        ("LiFeO2", {"Fe": 5.3}, ["Li_sv", "Fe_pv", "O"]),  # U from the most electronegative
        ("FeS", {}, ["Fe_pv", "S"]),
    ],
)
def test_mp_parameters_follow_mprelaxset(formula, hubbards, potcars):
    params = mp_parameters(Composition(formula))
    assert params["hubbards"] == hubbards and params["is_hubbard"] is bool(hubbards)
    assert params["potcar_symbols"] == [f"PAW_PBE {p}" for p in potcars]


def test_a_reference_is_not_a_candidate_key():
    result = compute_hull(_refs(), [make_entry(Composition("Li2O"), E_LI2O, "c1", correct=False)])
    assert list(result) == ["c1"] and result["c1"] == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(KeyError, match="ref-li"):
        result["ref-li"]


def test_given_hubbards_set_is_hubbard_unless_given_too():
    with_u = make_entry(Composition("Fe2O3"), -6.8, "u", parameters={"hubbards": {"Fe": 5.3}})
    assert with_u.parameters["is_hubbard"] is True and with_u.correction < 0
    plain = make_entry(Composition("FeS"), -5.0, "s", parameters={"hubbards": {}})
    assert plain.parameters["is_hubbard"] is False
    kept = make_entry(Composition("FeS"), -5.0, "k", parameters={"hubbards": {}, "is_hubbard": False})
    assert kept.parameters["is_hubbard"] is False
    raw = make_entry(Composition("FeS"), -5.0, "r", correct=False)
    assert raw.parameters == {"matloop_correction": "none"} and raw.correction == 0.0
