"""The replay oracle answers from its table: by row (agents) and by structure (relaxer)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from matloop.relax.replay import ReplayOracle


def table() -> ReplayOracle:
    nacl = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    kcl = Structure(Lattice.cubic(6.29), ["K", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    csc = Structure(Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    labels = {"heat": [-2.1, -2.2, np.nan], "gap": [5.0, 6.0, 5.5]}
    return ReplayOracle(["a", "b", "c"], [nacl, kcl, csc], labels, name="toy")


def test_query_by_row_records_the_budget():
    oracle = table()
    assert oracle.query([1, 0])["heat"].tolist() == [-2.2, -2.1]
    oracle.query([0, 2])
    assert oracle.queried == [1, 0, 2] and oracle.n_queries == 3
    with pytest.raises(IndexError):
        oracle.query([3])


def test_lookup_and_relax_outcome():
    oracle = table()
    moved = oracle.structures[0].copy()
    moved.scale_lattice(moved.volume * 1.05)  # a slightly different cell still matches
    moved.translate_sites([0, 1], [0.1, 0.1, 0.1])
    assert oracle.lookup(moved) == 0
    out = oracle.relax_outcome("c1", moved, "heat")
    assert out.ok and out.energy_per_atom == -2.1 and out.potential == "replay:toy"
    assert out.structure.volume == pytest.approx(oracle.structures[0].volume)
    li = Structure(Lattice.cubic(4.0), ["Li", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert oracle.relax_outcome("c2", li, "heat").reason == "not in the replay table"
    assert not oracle.relax_outcome("c3", oracle.structures[2], "heat").ok  # NaN label


def test_from_csv(tmp_path):
    rows = ["material_id,cif,heat_ref"]
    for i, s in enumerate(table().structures):
        cif = s.to(fmt="cif").replace('"', '""')
        rows.append(f'{i},"{cif}",{-float(i)}')
    path = tmp_path / "t.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(rows) + "\n")
    oracle = ReplayOracle.from_csv(path, ["heat_ref"])
    assert len(oracle) == 3 and oracle.name == "t" and oracle.ids == ["0", "1", "2"]
    assert oracle.lookup(table().structures[1]) == 1
    with pytest.raises(ValueError, match="missing column"):
        ReplayOracle.from_csv(path, ["dir_gap"])


def test_perov5_rows_answer_with_their_labels(shared_data):
    oracle = ReplayOracle.from_csv(shared_data / "perov_5" / "val.csv.gz",
                                   ["heat_ref", "dir_gap"], limit=5)  # fmt: skip
    assert len(oracle) == 5
    row = oracle.lookup(oracle.structures[3].copy())
    assert row == 3
    out = oracle.relax_outcome("x", oracle.structures[3], "heat_ref")
    assert out.energy_per_atom == pytest.approx(oracle.properties["heat_ref"][3])


def test_the_shipped_replay_campaign_names_its_table_through_a_variable(shared_data, monkeypatch):
    """deployments/campaigns/replay-perov5.yaml points at no machine's folder: its table is
    found through ${MATLOOP_SHARED_DATA}, and an unset variable is named in the error."""
    from matloop.config import load_config
    from matloop.relax.replay import cached_oracle

    path = Path(__file__).resolve().parents[2] / "deployments/campaigns/replay-perov5.yaml"
    config = load_config(path)
    table_path = config.relaxer.replay.path
    assert "${MATLOOP_SHARED_DATA}" in table_path and "shared" not in table_path.replace(
        "MATLOOP_SHARED_DATA", ""
    )
    monkeypatch.delenv("MATLOOP_SHARED_DATA", raising=False)
    with pytest.raises(ValueError, match="environment variable not set"):
        cached_oracle(table_path, ())
    monkeypatch.setenv("MATLOOP_SHARED_DATA", str(shared_data))
    oracle = cached_oracle(table_path, ())
    assert len(oracle.structures) > 1000  # perov-5's validation split
    from matloop.preflight import check_replay_table

    assert check_replay_table(config.relaxer.replay) == []  # preflight expands it too
    monkeypatch.delenv("MATLOOP_SHARED_DATA")
    (problem,) = check_replay_table(config.relaxer.replay)
    assert "environment variable not set" in problem.message
