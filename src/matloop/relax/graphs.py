"""CHGNet's graphs for a whole batch of crystals, built with torch ops on the model's device.

CHGNet's own path (``CrystalGraphConverter`` then ``BatchedGraph.from_graphs``) builds a
pymatgen neighbour list and a Python graph for every crystal at every step. Here the same
three graphs come from tensors, for all crystals at once, and the neighbour lists are reused
across steps while they stay valid (a Verlet skin).

What CHGNet needs (read from ``chgnet/graph/converter.py``, ``graph.py`` and
``model/model.py``):

- **atom graph**: every directed pair ``(i, j, S)`` with ``|x_j + S L - x_i| <= 6 Å``
  (``S`` the integer image of ``j``; ``i == j`` with ``S != 0`` counts, a pair closer than
  1e-8 Å does not, as in pymatgen's ``get_neighbor_list``). Each pair and its reverse
  ``(j, i, -S)`` form one *undirected* edge; ``directed2undirected`` maps one to the other
  and ``undirected2directed`` picks one direction of each.
- **bond graph** (the line graph): for every directed edge ``d1`` from atom ``c`` of length
  ``<= 3 Å`` and every other directed edge ``d2`` from ``c`` of length ``< 3 Å``, one angle
  ``(c, u(d1), d1, u(d2), d2)``.
- The model is a sum over edges and angles, so the order of rows does not matter: only which
  pairs there are. :func:`chgnet_inputs` turns them into the ``BatchedGraph`` that
  ``CHGNet._compute`` consumes, with positions and strains as autograd leaves for forces and
  stress.

Neighbour lists (:class:`VerletLists`) hold, per crystal, every pair within ``cutoff + skin``
of a reference geometry. A crystal's list is rebuilt only when it may have become incomplete:
when ``cutoff + 2 max|displacement| > (cutoff + skin)(1 - |strain|)`` (the strain
``L_ref^-1 L - 1`` in Frobenius norm). Otherwise each step keeps the listed pairs whose actual
distance is within the cut-off, which are then exactly the pairs of a fresh list
(``tests/relax/test_graphs.py`` checks this on strained and rattled cells).

Pairs are kept once, as *canonical* undirected pairs: ``i < j``, or ``i == j`` with the image
lexicographically positive; the reverse direction is added when the graph is built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "ATOM_CUTOFF",
    "BOND_CUTOFF",
    "CrystalGraphs",
    "NeighbourListError",
    "VerletLists",
    "build_graphs",
    "chgnet_inputs",
    "neighbour_pairs",
]

#: CHGNet's cut-offs in Å (``CrystalGraphConverter`` defaults, those of its packaged model).
ATOM_CUTOFF = 6.0
BOND_CUTOFF = 3.0
#: pymatgen's ``numerical_tol``: closer pairs are the atom itself and are left out.
_SELF_TOL = 1e-8
#: candidate pairs examined at once while building lists (bounds the memory of a rebuild).
_CHUNK = 1 << 22
#: most candidate pairs one crystal may need, and most neighbours an atom may expect (at
#: its crystal's density; a dense solid has ~150 within 7 Å): beyond, its cell has collapsed.
_MAX_CANDIDATES_PER_CRYSTAL = 20_000_000
_MAX_NEIGHBOURS_PER_ATOM = 2_000


class NeighbourListError(ValueError):
    """A crystal's neighbour list cannot be built (its cell collapsed, or is not finite)."""

    def __init__(self, rows: list[int], reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.rows = rows
        self.reasons = reasons


# -- neighbour lists ----------------------------------------------------------------------------
def neighbour_pairs(
    frac: torch.Tensor,
    cells: torch.Tensor,
    crystal_of: torch.Tensor,
    rows: torch.Tensor,
    cutoff: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every canonical pair within ``cutoff`` of the crystals ``rows``, by brute force over
    the periodic images that can hold a neighbour.

    Parameters
    ----------
    frac : (atoms, 3) float64
        Fractional coordinates of every atom of the batch (any values: not wrapped).
    cells : (crystals, 3, 3) float64
        Cells, rows are lattice vectors.
    crystal_of : (atoms,) long
        Crystal row of each atom; a crystal's atoms are contiguous.
    rows : (k,) long
        The crystals to list.
    cutoff : float
        Distance in Å.

    Returns
    -------
    i, j : (pairs,) long
        Atom indices (into ``frac``) of each canonical pair.
    image : (pairs, 3) float64
        Integer image of ``j`` relative to the given (unwrapped) coordinates: the pair's
        vector is ``(frac[j] + image - frac[i]) @ cell``.

    Raises
    ------
    NeighbourListError
        Naming the rows whose cell is not finite or so collapsed that an atom would have
        over 2,000 neighbours, or the search examine over 20 million candidates.
    """
    import torch

    device = frac.device
    n_crystals = cells.shape[0]
    counts = torch.bincount(crystal_of, minlength=n_crystals)
    starts = torch.cumsum(counts, 0) - counts
    cell = cells[rows]
    atom_bad = torch.zeros(n_crystals, dtype=torch.long, device=device).index_add_(
        0, crystal_of, (~torch.isfinite(frac).all(dim=1)).long()
    )
    finite = torch.isfinite(cell).all(dim=(1, 2)) & (atom_bad[rows] == 0)
    safe_cell = torch.where(finite[:, None, None], cell, torch.eye(3, dtype=cell.dtype,
                                                                    device=device))
    volume = torch.linalg.det(safe_cell).abs()
    # reach in lattice units along each axis: cutoff / (interplanar spacing)
    inv = torch.linalg.inv(torch.where((volume > 1e-6)[:, None, None], safe_cell,
                                       torch.eye(3, dtype=cell.dtype, device=device)))
    reach = cutoff * inv.norm(dim=1)  # columns of L^-1 are the reciprocal vectors / 2π
    n_img = torch.floor(reach).long() + 1  # wrapped differences lie in (-1, 1)
    n_atoms = counts[rows]
    span = 2 * n_img + 1
    n_images = span.prod(dim=1)
    candidates = n_atoms * n_atoms * n_images
    expected = n_atoms / volume * (4.0 / 3.0 * math.pi * cutoff**3)
    bad = ~finite | (volume <= 1e-6) | (candidates > _MAX_CANDIDATES_PER_CRYSTAL)
    bad |= expected > _MAX_NEIGHBOURS_PER_ATOM
    if bool(bad.any()):
        bad_rows = rows[bad].tolist()
        reasons = []
        for _row, ok_finite in zip(bad_rows, finite[bad].tolist(), strict=True):
            reasons.append("neighbour list: cell or positions are not finite" if not ok_finite
                           else "neighbour list: cell collapsed (too many periodic images "
                           f"within {cutoff:g} Å)")  # fmt: skip
        raise NeighbourListError(bad_rows, reasons)

    wrapped_shift = torch.floor(frac)  # frac = wrapped + shift, wrapped in [0, 1)
    wrapped = frac - wrapped_shift
    out_i, out_j, out_img = [], [], []
    # chunks of whole crystals, each with at most _CHUNK candidates (one crystal may exceed)
    order = candidates.tolist()
    lo = 0
    while lo < len(order):
        hi, total = lo, 0
        while hi < len(order) and (hi == lo or total + order[hi] <= _CHUNK):
            total += order[hi]
            hi += 1
        sel = slice(lo, hi)
        lo = hi
        c = candidates[sel]
        local_row = torch.repeat_interleave(torch.arange(c.shape[0], device=device), c)
        first = torch.cumsum(c, 0) - c
        k = torch.arange(int(c.sum()), device=device) - first[local_row]
        m = n_images[sel][local_row]
        n = n_atoms[sel][local_row]
        s = k % m
        rest = torch.div(k, m, rounding_mode="floor")
        jl = rest % n
        il = torch.div(rest, n, rounding_mode="floor")
        sp = span[sel][local_row]
        s2 = s % sp[:, 2]
        s1 = torch.div(s, sp[:, 2], rounding_mode="floor") % sp[:, 1]
        s0 = torch.div(s, sp[:, 1] * sp[:, 2], rounding_mode="floor")
        ni = n_img[sel][local_row]
        img = torch.stack([s0 - ni[:, 0], s1 - ni[:, 1], s2 - ni[:, 2]], dim=1)
        positive = (img[:, 0] > 0) | ((img[:, 0] == 0) & (
            (img[:, 1] > 0) | ((img[:, 1] == 0) & (img[:, 2] > 0))))  # fmt: skip
        canonical = (il < jl) | ((il == jl) & positive)
        base = starts[rows[sel]][local_row]
        gi, gj = (il + base)[canonical], (jl + base)[canonical]
        img = img[canonical].to(frac.dtype)
        crystal = rows[sel][local_row][canonical]
        vec = torch.einsum("pa,pab->pb", wrapped[gj] + img - wrapped[gi], cells[crystal])
        dist = vec.norm(dim=1)
        near = (dist <= cutoff) & (dist > _SELF_TOL)
        gi, gj = gi[near], gj[near]
        # back to the caller's unwrapped coordinates
        img = img[near] + wrapped_shift[gi] - wrapped_shift[gj]
        out_i.append(gi)
        out_j.append(gj)
        out_img.append(img)
    if not out_i:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty, torch.zeros((0, 3), dtype=frac.dtype, device=device)
    return torch.cat(out_i), torch.cat(out_j), torch.cat(out_img)


class VerletLists:
    """Neighbour lists of a batch of crystals, kept across steps with a Verlet skin.

    Call :meth:`update` each step with the current geometry: it rebuilds the lists of the
    crystals that are new or may have become incomplete, and returns every canonical pair
    within ``cutoff`` now. :meth:`keep` follows the batch when crystals leave; crystals that
    join get their list at the next :meth:`update` (rows beyond the known ones are new).

    Parameters
    ----------
    cutoff : float
        The model's neighbour cut-off in Å.
    skin : float
        Extra reach of the stored lists in Å: larger means fewer rebuilds and more pairs to
        filter each step.

    Examples
    --------
    >>> lists = VerletLists(cutoff=6.0, skin=1.0)
    >>> i, j, image, vec = lists.update(frac, cells, crystal_of)  # doctest: +SKIP
    """

    def __init__(self, cutoff: float = ATOM_CUTOFF, skin: float = 1.0) -> None:
        import torch

        self.cutoff = cutoff
        self.skin = skin
        self.i = torch.zeros(0, dtype=torch.long)
        self.j = torch.zeros(0, dtype=torch.long)
        self.image = torch.zeros((0, 3), dtype=torch.float64)
        self.ref_frac = torch.zeros((0, 3), dtype=torch.float64)
        self.ref_cell = torch.zeros((0, 3, 3), dtype=torch.float64)
        self.n_crystals = 0
        self.rebuilds = 0  # crystal lists built so far (new crystals included)

    def keep(self, mask: torch.Tensor, crystal_of: torch.Tensor) -> None:
        """Drop the crystals whose ``mask`` entry is False (``crystal_of``: before)."""
        import torch

        n = self.n_crystals
        if n == 0:
            return
        atom_mask = mask[crystal_of]
        new_atom = torch.cumsum(atom_mask.long(), 0) - 1  # old atom -> new atom
        pair_keep = atom_mask[self.i]
        self.i, self.j = new_atom[self.i[pair_keep]], new_atom[self.j[pair_keep]]
        self.image = self.image[pair_keep]
        self.ref_frac = self.ref_frac[atom_mask[: self.ref_frac.shape[0]]]
        self.ref_cell = self.ref_cell[mask[:n]]
        self.n_crystals = int(self.ref_cell.shape[0])

    def stale(self, frac: torch.Tensor, cells: torch.Tensor,
              crystal_of: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """Which listed crystals may miss a pair within the cut-off now (bool per row).

        A pair outside ``cutoff + skin`` at the reference geometry is now at least
        ``(cutoff + skin)(1 - |strain|) - 2 max|displacement|`` long, so the list stays
        complete while that exceeds ``cutoff``.
        """
        import torch

        n, n_atoms = self.n_crystals, self.ref_frac.shape[0]
        owner = crystal_of[:n_atoms]
        move = torch.einsum("na,nab->nb", frac[:n_atoms] - self.ref_frac, cells[owner]).norm(dim=1)
        max_move = torch.zeros(n, dtype=frac.dtype, device=frac.device).scatter_reduce(
            0, owner, move, reduce="amax"
        )
        strain = torch.linalg.solve(self.ref_cell, cells[:n]) - torch.eye(
            3, dtype=cells.dtype, device=cells.device
        )
        shrink = 1.0 - torch.linalg.matrix_norm(strain)
        stale = self.cutoff + 2.0 * max_move > (self.cutoff + self.skin) * shrink
        return stale | ~torch.isfinite(max_move) | ~torch.isfinite(shrink)

    def update(
        self, frac: torch.Tensor, cells: torch.Tensor, crystal_of: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rebuild stale or new lists, then the canonical pairs within ``cutoff`` now.

        Crystals are the rows of ``cells``; rows beyond those listed so far are new, and
        their atoms come after the listed ones. Returns ``i``, ``j``, ``image`` (as
        :func:`neighbour_pairs`) and the pair vectors ``(frac[j] + image - frac[i]) @ cell``
        (float64). Raises :class:`NeighbourListError` naming the crystals whose list cannot
        be built; nothing is changed then.
        """
        import torch

        device = frac.device
        if self.i.device != device:
            for name in ("i", "j", "image", "ref_frac", "ref_cell"):
                setattr(self, name, getattr(self, name).to(device))
        n, n_total = self.n_crystals, cells.shape[0]
        stale = torch.ones(n_total, dtype=torch.bool, device=device)
        if n:
            stale[:n] = self.stale(frac, cells, crystal_of)
        rows = stale.nonzero().flatten()
        if len(rows):
            i, j, image = neighbour_pairs(frac, cells, crystal_of, rows,
                                          self.cutoff + self.skin)  # fmt: skip
            old = ~stale[crystal_of[self.i]]
            self.i = torch.cat([self.i[old], i])
            self.j = torch.cat([self.j[old], j])
            self.image = torch.cat([self.image[old], image])
            ref_frac, ref_cell = frac.detach().clone(), cells.detach().clone()
            if n:  # lists still valid keep the geometry they were built at
                n_atoms = self.ref_frac.shape[0]
                valid = ~stale[:n]
                ref_cell[:n][valid] = self.ref_cell[valid]
                atom_valid = valid[crystal_of[:n_atoms]]
                ref_frac[:n_atoms][atom_valid] = self.ref_frac[atom_valid]
            self.ref_frac, self.ref_cell = ref_frac, ref_cell
            self.n_crystals = n_total
            self.rebuilds += len(rows)
        vec = torch.einsum("pa,pab->pb", frac[self.j] + self.image - frac[self.i],
                           cells[crystal_of[self.i]])  # fmt: skip
        dist = vec.norm(dim=1)
        near = (dist <= self.cutoff) & (dist > _SELF_TOL)
        return self.i[near], self.j[near], self.image[near], vec[near]


# -- CHGNet's graphs ----------------------------------------------------------------------------
@dataclass
class CrystalGraphs:
    """CHGNet's atom graph and line graph of a batch, as index tensors.

    Directed edge ``d`` runs from atom ``src[d]`` to the image ``image[d]`` of atom
    ``dst[d]``; edges ``d`` and ``d + U`` are the two directions of undirected edge ``d``
    (``U`` undirected edges). ``angles`` rows are ``(center, u1, d1, u2, d2)`` as in
    CHGNet's ``bond_graph``.
    """

    src: torch.Tensor  # (2U,) long
    dst: torch.Tensor  # (2U,) long
    image: torch.Tensor  # (2U, 3) float64
    crystal: torch.Tensor  # (2U,) long: crystal row of each directed edge
    angles: torch.Tensor  # (A, 5) long
    n_undirected: int

    @property
    def directed2undirected(self) -> torch.Tensor:
        import torch

        u = torch.arange(self.n_undirected, device=self.src.device)
        return torch.cat([u, u])

    @property
    def undirected2directed(self) -> torch.Tensor:
        import torch

        return torch.arange(self.n_undirected, device=self.src.device)


def build_graphs(
    i: torch.Tensor,
    j: torch.Tensor,
    image: torch.Tensor,
    vec: torch.Tensor,
    crystal_of: torch.Tensor,
    n_atoms: int,
    bond_cutoff: float = BOND_CUTOFF,
) -> CrystalGraphs:
    """CHGNet's atom graph and line graph from canonical pairs within the atom cut-off.

    ``vec`` are the pairs' vectors (float64, for the bond cut-off test, as CHGNet tests
    pymatgen's float64 distances). Every directed edge of length ``<= bond_cutoff`` pairs
    with every other directed edge of length ``< bond_cutoff`` from the same atom.
    """
    import torch

    device = i.device
    n_u = int(i.shape[0])
    src, dst = torch.cat([i, j]), torch.cat([j, i])
    dist = vec.norm(dim=1).repeat(2)
    first = (dist <= bond_cutoff).nonzero().flatten()  # may be d1
    # directed edges of the bond graph, grouped by their centre atom
    center = src[first]
    order = torch.argsort(center, stable=True)
    first, center = first[order], center[order]
    per_atom = torch.bincount(center, minlength=n_atoms)
    group_start = torch.cumsum(per_atom, 0) - per_atom
    size = per_atom[center]  # group size of each bond-graph edge
    # each edge a (position p in the sorted list) pairs with every edge b of its group
    a = torch.repeat_interleave(torch.arange(len(first), device=device), size)
    block = torch.cumsum(size, 0) - size
    b = group_start[center][a] + torch.arange(len(a), device=device) - block[a]
    d1, d2 = first[a], first[b]
    keep = (d1 != d2) & (dist[d2] < bond_cutoff)
    d1, d2 = d1[keep], d2[keep]
    u1, u2 = d1 % max(n_u, 1), d2 % max(n_u, 1)
    angles = torch.stack([src[d1], u1, d1, u2, d2], dim=1)
    return CrystalGraphs(
        src=src,
        dst=dst,
        image=torch.cat([image, -image]),
        crystal=crystal_of[src],
        angles=angles,
        n_undirected=n_u,
    )


def chgnet_inputs(
    model: Any,
    graphs: CrystalGraphs,
    atomic_numbers: torch.Tensor,
    frac: torch.Tensor,
    cells: torch.Tensor,
    crystal_of: torch.Tensor,
) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """The ``BatchedGraph`` that ``CHGNet._compute`` consumes, with its autograd leaves.

    Does what ``BatchedGraph.from_graphs`` does for a list of ``CrystalGraph`` (float32,
    the lattice strained by ``1 + strain`` so that the stress is ``dE/dstrain / V``), for
    the whole batch at once.

    Returns
    -------
    batched : chgnet.model.model.BatchedGraph
    positions : (atoms, 3)
        Cartesian positions: forces are ``-dE/dpositions``.
    strain : (crystals, 3, 3)
        Zero strains: stresses are ``dE/dstrain / volumes``, with ``batched.volumes``.
    """
    import torch
    from chgnet.model.model import BatchedGraph

    dtype = torch.float32
    n_crystals = cells.shape[0]
    strain = torch.zeros((n_crystals, 3, 3), dtype=dtype, device=cells.device,
                         requires_grad=True)  # fmt: skip
    eye = torch.eye(3, dtype=dtype, device=cells.device)
    lattice = cells.to(dtype) @ (eye + strain)
    positions = torch.einsum("na,nab->nb", frac.to(dtype), lattice[crystal_of])
    volumes = torch.linalg.cross(lattice[:, 1], lattice[:, 2]).mul(lattice[:, 0]).sum(dim=1)

    # bond vectors of every directed edge, as CHGNet's BondEncoder computes them
    neighbour = positions[graphs.dst] + torch.einsum(
        "ea,eab->eb", graphs.image.to(dtype), lattice[graphs.crystal]
    )
    bond_vectors = positions[graphs.src] - neighbour
    lengths = bond_vectors.norm(dim=1)
    bond_vectors = bond_vectors / lengths[:, None]
    undirected = lengths[: graphs.n_undirected]
    encoder = model.bond_basis_expansion
    bond_bases_ag = encoder.rbf_expansion_ag(undirected)
    bond_bases_bg = encoder.rbf_expansion_bg(undirected)
    angles = graphs.angles
    if len(angles):
        angle_bases = model.angle_basis_expansion(bond_vectors[angles[:, 2]],
                                                  bond_vectors[angles[:, 4]])  # fmt: skip
        bond_graph = angles[:, [0, 1, 3]].to(torch.int32)
    else:
        angle_bases = torch.tensor([], device=cells.device)
        bond_graph = torch.tensor([], device=cells.device)
    batched = BatchedGraph(
        atomic_numbers=atomic_numbers,
        bond_bases_ag=bond_bases_ag,
        bond_bases_bg=bond_bases_bg,
        angle_bases=angle_bases,
        batched_atom_graph=torch.stack([graphs.src, graphs.dst], dim=1).to(torch.int32),
        batched_bond_graph=bond_graph,
        atom_owners=crystal_of.to(torch.int32),
        directed2undirected=graphs.directed2undirected.to(torch.int32),
        atom_positions=[positions],
        strains=[strain],
        volumes=volumes.detach(),
    )
    return batched, positions, strain
