from __future__ import annotations

import pytest
from pymatgen.core import Lattice, Structure

from matloop.data import RowFilter, fetch_materials_project, in_chemical_space, read_structures


def _nacl() -> Structure:
    return Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _write_csv(path, rows):
    import pandas as pd

    pd.DataFrame(rows).to_csv(path, index=False)


def test_csv_reader_reports_every_unreadable_row(tmp_path):
    good = _nacl().to(fmt="cif")
    disordered = Structure(Lattice.cubic(5.6), [{"Na": 0.5, "K": 0.5}, "Cl"],
                           [[0, 0, 0], [0.5, 0.5, 0.5]]).to(fmt="cif")
    path = tmp_path / "seeds.csv.gz"
    _write_csv(path, [
        {"material_id": "good-1", "cif": good, "band_gap": 5.0},
        {"material_id": "broken", "cif": "data_x\n_this is not a cif"},
        {"material_id": "partial", "cif": disordered},
    ])
    report = read_structures(path)
    assert [c.source_id for c in report.crystals] == ["good-1"]
    assert report.crystals[0].properties == {"band_gap": 5.0}
    assert len(report.problems) == 2
    assert any("broken" in p for p in report.problems)
    assert any("partial" in p and "partial occupancies" in p for p in report.problems)
    assert "skipped 2" in report.summary()


def test_a_csv_read_again_is_not_parsed_again(tmp_path, monkeypatch):
    """Campaigns in one process read a seed file once; a changed file is read afresh, and
    every call gets crystals of its own."""
    import os

    calls = []
    from_str = Structure.from_str

    def counting(*args, **kwargs):
        calls.append(1)
        return from_str(*args, **kwargs)

    monkeypatch.setattr(Structure, "from_str", counting)
    path = tmp_path / "seeds.csv"
    _write_csv(path, [{"material_id": f"m{i}", "cif": _nacl().to(fmt="cif"), "band_gap": 5.0}
                      for i in range(3)])
    first = read_structures(path)
    assert len(calls) == 3
    second = read_structures(str(path))
    assert len(calls) == 3  # not parsed again
    assert [c.source_id for c in second.crystals] == ["m0", "m1", "m2"]
    assert [c.structure for c in second.crystals] == [c.structure for c in first.crystals]
    first.crystals[0].structure.replace_species({"Na": "K"})
    first.crystals[0].properties["band_gap"] = 0.0
    third = read_structures(path)
    assert third.crystals[0].structure.composition.reduced_formula == "NaCl"
    assert third.crystals[0].properties == {"band_gap": 5.0}
    assert len(calls) == 3

    _write_csv(path, [{"material_id": "new", "cif": _nacl().to(fmt="cif")}])
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert [c.source_id for c in read_structures(path).crystals] == ["new"]
    assert len(calls) == 4


def test_csv_without_cif_column_is_a_clear_error(tmp_path):
    path = tmp_path / "seeds.csv"
    _write_csv(path, [{"material_id": "x", "structure": "?"}])
    with pytest.raises(ValueError, match="no column 'cif'"):
        read_structures(path)
    with pytest.raises(FileNotFoundError, match="seed data file not found"):
        read_structures(tmp_path / "absent.csv")
    with pytest.raises(ValueError, match="cannot tell the format"):
        (tmp_path / "seeds.json").write_text("{}")
        read_structures(tmp_path / "seeds.json")


def test_extxyz_and_ase_database(tmp_path):
    from ase.db import connect
    from ase.io import write
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = AseAtomsAdaptor.get_atoms(_nacl())
    write(tmp_path / "seeds.extxyz", [atoms, atoms], format="extxyz")
    assert len(read_structures(tmp_path / "seeds.extxyz").crystals) == 2
    with connect(tmp_path / "seeds.db") as db:
        db.write(atoms, energy_tag=1.5)
    (crystal,) = read_structures(tmp_path / "seeds.db").crystals
    assert crystal.structure.composition.reduced_formula == "NaCl"
    assert crystal.properties["energy_tag"] == 1.5


def test_shared_known_crystals_are_readable(shared_data):
    report = read_structures(shared_data / "known_crystals_mp.csv.gz")
    assert len(report.crystals) + len(report.problems) == 2473
    assert len(report.crystals) > 2400
    in_space = [c for c in report.crystals
                if in_chemical_space(c.structure, ["Ti", "O"], max_atoms=24)]
    assert {c.structure.composition.reduced_formula for c in in_space} >= {"TiO2", "O2"}


def test_row_filter_skips_unwanted_rows_unparsed(tmp_path):
    licoo2 = Structure(Lattice.hexagonal(2.8, 14.0), ["Li", "Co", "O", "O"],
                       [[0, 0, 0], [0, 0, 0.5], [0, 0, 0.26], [0, 0, 0.74]]).to(fmt="cif")
    path = tmp_path / "known.csv"
    _write_csv(path, [
        {"material_id": "nacl", "elements": "Cl,Na", "nsites": 2, "cif": _nacl().to(fmt="cif")},
        {"material_id": "licoo2", "elements": "Co,Li,O", "nsites": 4, "cif": licoo2},
        {"material_id": "big", "elements": "Co,Li,O", "nsites": 40, "cif": licoo2},
        {"material_id": "broken-other", "elements": "K,S", "nsites": 3, "cif": "data_x\n?"},
        {"material_id": "broken-ours", "elements": "Li,O", "nsites": 3, "cif": "data_x\n?"},
        {"material_id": "no-columns", "elements": None, "nsites": None, "cif": licoo2},
    ])
    report = read_structures(path, row_filter=RowFilter(frozenset({"Li", "Co", "O"}), 20))
    # the columns skip NaCl, the 40-site row and the broken row of another chemistry;
    # a row without them is parsed (the caller checks what is read)
    assert [c.source_id for c in report.crystals] == ["licoo2", "no-columns"]
    assert len(report.problems) == 1 and "broken-ours" in report.problems[0]
    everything = read_structures(path)
    assert len(everything.crystals) == 4 and len(everything.problems) == 2
    by_size = read_structures(path, row_filter=RowFilter(max_atoms=3, max_elements=2))
    assert [c.source_id for c in by_size.crystals] == ["nacl", "no-columns"]
    # parsed files are remembered per filter: a read after the full one is filtered again
    again = read_structures(path, row_filter=RowFilter(frozenset({"Li", "Co", "O"}), 20))
    assert [c.source_id for c in again.crystals] == ["licoo2", "no-columns"]
    assert len(read_structures(path).crystals) == 4


@pytest.mark.slow
def test_row_filters_read_what_a_full_read_keeps(shared_data):
    """On the shared data, the columns agree with the CIFs: a filtered read gives exactly the
    crystals a full read would keep (the seeds of a space, the templates of ion_substitution)."""
    path = shared_data / "known_crystals_mp.csv.gz"
    full = read_structures(path).crystals
    space = ["Li", "Co", "Mn", "O"]
    seeds = read_structures(path, row_filter=RowFilter(frozenset(space), 20)).crystals
    kept = [c for c in full if in_chemical_space(c.structure, space, 20)]
    assert len(kept) > 10
    assert [c.source_id for c in seeds] == [c.source_id for c in kept]
    assert [c.structure for c in seeds] == [c.structure for c in kept]
    small = read_structures(path, row_filter=RowFilter(max_atoms=8, max_elements=3)).crystals
    kept = [c for c in full if len(c.structure) <= 8 and len(c.structure.composition) <= 3]
    assert [c.source_id for c in small] == [c.source_id for c in kept]


def test_materials_project_fetch_at_its_one_seam(monkeypatch):
    import mp_api.client

    calls = {}

    class FakeSummary:
        def search(self, chemsys, fields):
            calls["chemsys"] = chemsys
            doc = type("Doc", (), {"material_id": "mp-22862", "structure": _nacl(),
                                   "energy_above_hull": 0.0})
            return [doc]

    class FakeRester:
        def __init__(self, api_key, endpoint=None):
            calls["key"] = api_key
            self.materials = type("M", (), {"summary": FakeSummary()})()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(mp_api.client, "MPRester", FakeRester)
    monkeypatch.delenv("MP_API_KEY", raising=False)
    with pytest.raises(RuntimeError, match="MP_API_KEY is not set"):
        fetch_materials_project(["Na", "Cl"])
    monkeypatch.setenv("MP_API_KEY", "k-123")
    report = fetch_materials_project(["Na", "Cl"])
    assert calls["key"] == "k-123"
    assert sorted(calls["chemsys"]) == ["Cl", "Cl-Na", "Na"]
    assert report.crystals[0].source == "materials-project"
    assert report.crystals[0].properties == {"mp_energy_above_hull": 0.0}
