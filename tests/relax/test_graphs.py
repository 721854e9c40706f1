"""Tests for matloop.relax.graphs: CHGNet's graphs built with tensors, and Verlet reuse.

The graphs must be exactly those of CHGNet's own ``CrystalGraphConverter`` (same directed
pairs and images within 6 Å, same undirected pairing, same angles within 3 Å), reused lists
must give the pairs a fresh list gives, and the model's energies, forces and stresses from
them must equal CHGNet's own path on real crystals.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from matloop.relax import batched
from matloop.relax.graphs import (
    ATOM_CUTOFF,
    NeighbourListError,
    VerletLists,
    build_graphs,
    neighbour_pairs,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def crystals(shared_data: Path) -> list[Structure]:
    """Twelve real crystals of at most 12 sites, every other one strained and rattled, plus
    a tiny cell whose atoms neighbour their own images many times over."""
    import pandas as pd

    frame = pd.read_csv(shared_data / "known_crystals_mp.csv.gz",
                        usecols=["material_id", "nsites", "cif"])  # fmt: skip
    rows = frame[frame["nsites"] <= 12].sort_values("material_id").sample(12, random_state=5)
    rng = np.random.default_rng(11)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k, cif in enumerate(rows["cif"]):
            structure = Structure.from_str(cif, fmt="cif")
            if k % 2:
                structure.apply_strain(rng.normal(0, 0.05, 3).tolist())
                for site in range(len(structure)):
                    structure.translate_sites([site], rng.normal(0, 0.08, 3),
                                              frac_coords=False, to_unit_cell=False)  # fmt: skip
            out.append(structure)
    out.append(Structure(Lattice.cubic(2.3), ["Fe"], [[0.1, 0.95, 1.7]]))  # coords unwrapped
    return out


def _tensors(structures: list[Structure]):
    import torch

    frac = torch.tensor(np.concatenate([s.frac_coords for s in structures]))
    cells = torch.tensor(np.stack([s.lattice.matrix for s in structures]))
    counts = torch.tensor([len(s) for s in structures])
    crystal_of = torch.repeat_interleave(torch.arange(len(structures)), counts)
    return frac, cells, crystal_of


def _directed(i, j, image, crystal_of, b, start) -> list[tuple[int, ...]]:
    """Crystal ``b``'s directed pairs (i, j, image) from canonical pairs, sorted."""
    sel = (crystal_of[i] == b).numpy()
    ii, jj = i.numpy()[sel] - start, j.numpy()[sel] - start
    img = np.rint(image.numpy()[sel]).astype(int)
    pairs = [(a, c, *x) for a, c, x in zip(ii, jj, img, strict=True)]
    pairs += [(c, a, *(-x)) for a, c, x in zip(ii, jj, img, strict=True)]
    return sorted(tuple(int(v) for v in p) for p in pairs)


def _pymatgen_pairs(structure: Structure) -> list[tuple[int, ...]]:
    c, n, img, _ = structure.get_neighbor_list(r=ATOM_CUTOFF, sites=structure.sites,
                                               numerical_tol=1e-8)  # fmt: skip
    return sorted((int(a), int(b), *map(int, x)) for a, b, x in zip(c, n, img, strict=True))


def test_pairs_equal_pymatgens_neighbour_list(crystals) -> None:
    import torch

    frac, cells, crystal_of = _tensors(crystals)
    i, j, image = neighbour_pairs(frac, cells, crystal_of, torch.arange(len(crystals)),
                                  ATOM_CUTOFF)  # fmt: skip
    start = 0
    for b, structure in enumerate(crystals):
        assert _directed(i, j, image, crystal_of, b, start) == _pymatgen_pairs(structure), b
        start += len(structure)
    assert (i[crystal_of[i] == len(crystals) - 1] == j[crystal_of[i] == len(crystals) - 1]).all()


def test_graphs_equal_chgnets_converter(crystals) -> None:
    """Same directed edges, same undirected pairing, same angles as CrystalGraphConverter."""
    import torch
    from chgnet.graph import CrystalGraphConverter

    converter = CrystalGraphConverter(atom_graph_cutoff=6, bond_graph_cutoff=3,
                                      on_isolated_atoms="ignore")
    frac, cells, crystal_of = _tensors(crystals)
    i, j, image = neighbour_pairs(frac, cells, crystal_of, torch.arange(len(crystals)),
                                  ATOM_CUTOFF)  # fmt: skip
    vec = torch.einsum("pa,pab->pb", frac[j] + image - frac[i], cells[crystal_of[i]])
    ours = build_graphs(i, j, image, vec, crystal_of, len(frac))
    start = 0
    for b, structure in enumerate(crystals):
        theirs = converter(structure)
        key = [(int(a), int(c), *map(int, np.rint(x)))
               for (a, c), x in zip(theirs.atom_graph.tolist(), theirs.neighbor_image.numpy(),
                                    strict=True)]  # fmt: skip
        their_undirected = {frozenset((key[d], key[e])) for d, e in
                            _partners(theirs.directed2undirected.tolist())}  # fmt: skip
        their_angles = sorted((c, key[d1], key[d2]) for c, _, d1, _, d2 in
                              theirs.bond_graph.tolist())  # fmt: skip

        mine_edges = (ours.crystal == b).nonzero().flatten().tolist()
        my_key = {d: (int(ours.src[d]) - start, int(ours.dst[d]) - start,
                      *map(int, np.rint(ours.image[d].numpy()))) for d in mine_edges}  # fmt: skip
        assert sorted(my_key.values()) == sorted(key), b
        d2u = ours.directed2undirected.tolist()
        my_undirected = {frozenset((my_key[d], my_key[e])) for d, e in
                         _partners({d: d2u[d] for d in mine_edges})}  # fmt: skip
        assert my_undirected == their_undirected, b
        my_angles = sorted((c - start, my_key[d1], my_key[d2]) for c, _, d1, _, d2 in
                           ours.angles.tolist() if d1 in my_key)  # fmt: skip
        assert my_angles == their_angles, b
        assert len(their_angles) > 0 or b == len(crystals) - 1
        start += len(structure)


def _partners(d2u) -> list[tuple[int, int]]:
    """Pairs of directed edges that share an undirected edge."""
    items = d2u.items() if isinstance(d2u, dict) else enumerate(d2u)
    groups: dict[int, list[int]] = {}
    for d, u in items:
        groups.setdefault(u, []).append(d)
    assert all(len(g) == 2 for g in groups.values())
    return [tuple(g) for g in groups.values()]


def test_reused_lists_give_the_pairs_of_fresh_ones(crystals) -> None:
    """Strain and rattle the batch step by step: the reused lists' pairs equal fresh lists'
    pairs every time, most steps reuse, and a large change forces a rebuild."""
    import torch

    frac0, cells0, crystal_of = _tensors(crystals)
    lists = VerletLists(cutoff=ATOM_CUTOFF, skin=1.0)
    rng = np.random.default_rng(2)
    rebuilds = []
    n = len(crystals)
    for step in range(12):
        strain = torch.tensor(rng.normal(0, 0.001 * step, (n, 3, 3)))
        cells = cells0 @ (torch.eye(3) + strain)
        shift = torch.tensor(rng.normal(0, 0.003 * step, frac0.shape))
        frac = frac0 + shift
        if step == 11:  # one crystal jumps: its list must be rebuilt
            frac[crystal_of == 0] += 0.3
        before = lists.rebuilds
        i, j, image, vec = lists.update(frac, cells, crystal_of)
        rebuilds.append(lists.rebuilds - before)
        fi, fj, fimg = neighbour_pairs(frac, cells, crystal_of, torch.arange(n), ATOM_CUTOFF)
        start = 0
        for b, structure in enumerate(crystals):
            assert _directed(i, j, image, crystal_of, b, start) == _directed(
                fi, fj, fimg, crystal_of, b, start), (step, b)  # fmt: skip
            start += len(structure)
        expected = torch.einsum("pa,pab->pb", frac[j] + image - frac[i], cells[crystal_of[i]])
        assert torch.allclose(vec, expected)
    assert rebuilds[0] == n  # all new
    assert sum(rebuilds[1:6]) < n  # small changes: mostly reused
    assert rebuilds[-1] >= 1


def test_lists_follow_crystals_that_leave_and_join(crystals) -> None:
    import torch

    frac, cells, crystal_of = _tensors(crystals[:6])
    lists = VerletLists()
    lists.update(frac, cells, crystal_of)
    keep = torch.tensor([True, False, True, False, True, True])
    lists.keep(keep, crystal_of)
    atom_keep = keep[crystal_of]
    kept = [s for s, k in zip(crystals[:6], keep.tolist(), strict=True) if k]
    joined = [*kept, crystals[7]]
    frac2, cells2, crystal_of2 = _tensors(joined)
    i, j, image, _ = lists.update(frac2, cells2, crystal_of2)
    assert lists.rebuilds == 6 + 1  # only the newcomer was listed
    assert torch.equal(frac2[: int(atom_keep.sum())], frac[atom_keep])
    fi, fj, fimg = neighbour_pairs(frac2, cells2, crystal_of2, torch.arange(len(joined)),
                                   ATOM_CUTOFF)  # fmt: skip
    start = 0
    for b, structure in enumerate(joined):
        assert _directed(i, j, image, crystal_of2, b, start) == _directed(
            fi, fj, fimg, crystal_of2, b, start)  # fmt: skip
        start += len(structure)


def test_a_collapsed_cell_is_named() -> None:
    import torch

    good = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    flat = Structure(Lattice([[4, 0, 0], [0, 4, 0], [0, 0, 1e-4]]), ["Na"], [[0, 0, 0]])
    frac, cells, crystal_of = _tensors([good, flat])
    with pytest.raises(NeighbourListError, match="cell collapsed") as info:
        neighbour_pairs(frac, cells, crystal_of, torch.arange(2), ATOM_CUTOFF)
    assert info.value.rows == [1]


def test_model_answers_equal_chgnets_own_path(crystals) -> None:
    """Energies, forces and stresses from our graphs equal CHGNet's forward pass on its
    own converter's graphs (float32 noise only)."""
    import torch

    model = batched._load_chgnet("cpu")
    batch = batched._Batch(torch.device("cpu"))
    for k, structure in enumerate(crystals):
        batch.add(k, structure, 0.0)
    cells, _ = batch.cells_and_positions(batch.deformation())
    energy, forces, stress, errors = batched._predict(model, batch, cells)
    assert errors == [None] * len(crystals)

    graphs = [model.graph_converter(s) for s in crystals]
    reference = model(graphs, task="efs")
    assert np.allclose(energy.numpy(), reference["e"].detach().numpy(), atol=1e-5, rtol=0)
    their_forces = torch.cat([f.detach() for f in reference["f"]]).numpy()
    # float32 sums: merely reordering our own edges moves some forces by ~4e-4 eV/Å
    worst = np.abs(forces.numpy() - their_forces).max()
    assert worst < 1e-3, worst
    assert np.median(np.abs(forces.numpy() - their_forces)) < 1e-5
    # CHGNet reports GPa; ours is eV/Å³ with ASE's sign, symmetrised
    their_stress = torch.stack([s.detach() for s in reference["s"]]).numpy() / 160.21766208
    their_stress = 0.5 * (their_stress + their_stress.transpose(0, 2, 1))
    assert np.allclose(stress.numpy(), their_stress, atol=1e-5, rtol=0)
    assert np.abs(their_forces).max() > 0.5  # the rattled crystals do feel forces


def test_a_crystal_whose_list_cannot_be_built_fails_alone(crystals) -> None:
    """Mid-relaxation a cell collapses: that crystal gets the reason, the others their
    usual answers."""
    import torch

    model = batched._load_chgnet("cpu")
    batch = batched._Batch(torch.device("cpu"))
    for k, structure in enumerate(crystals[:3]):
        batch.add(k, structure, 0.0)
    cells, _ = batch.cells_and_positions(batch.deformation())
    before, _, _, _ = batched._predict(model, batch, cells)
    flat = cells.clone()
    flat[1, 2] *= 1e-5
    energy, forces, _, errors = batched._predict(model, batch, flat)
    assert errors[0] is None and errors[2] is None
    assert errors[1].startswith("neighbour list: cell collapsed")
    assert energy[0] == pytest.approx(float(before[0]), abs=1e-6)
    assert energy[2] == pytest.approx(float(before[2]), abs=1e-6)
    assert torch.isfinite(forces).all()
