"""Gaussian-kernel voxel images of a cell's contents (iMatGen style), with peak-finding decode.

Each element gets one channel over a ``grid**3`` sampling of the (Niggli-reduced) cell; every
atom adds ``exp(-d**2 / (2 sigma**2))`` where ``d`` is the minimum-image Cartesian distance from
the voxel to the atom. The lattice parameters travel beside the image (iMatGen keeps a second
image for the cell; a 6-vector is the same information).

Decoding finds local maxima above ``threshold`` in each channel (periodic 3x3x3 neighbourhood)
and refines each peak to sub-voxel precision with a parabola through the log intensities along
each axis, which is exact for an isolated Gaussian in an orthogonal cell.

Examples
--------
>>> from pymatgen.core import Lattice, Structure
>>> s = Structure(Lattice.cubic(4.0), ["Sr", "Ti", "O", "O", "O"],
...               [[0, 0, 0], [.5, .5, .5], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]])
>>> enc = VoxelEncoder(["O", "Ti", "Sr"], grid=24)
>>> image, params = enc.encode(s)
>>> image.shape
(3, 24, 24, 24)
>>> enc.decode(image, params).composition.reduced_formula
'SrTiO3'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pymatgen.core import Structure


@dataclass
class VoxelEncoder:
    """Per-element Gaussian density images on a ``grid**3`` fractional grid.

    Parameters
    ----------
    elements
        One channel per element, in this order.
    grid
        Voxels along each cell axis.
    sigma
        Gaussian width in Å.
    threshold
        Minimum peak height (an isolated atom peaks near 1) accepted as a site when decoding.
    """

    elements: Sequence[str]
    grid: int = 24
    sigma: float = 0.35
    threshold: float = 0.5

    def __post_init__(self) -> None:
        self.elements = list(self.elements)
        self._index = {s: i for i, s in enumerate(self.elements)}
        axis = np.arange(self.grid) / self.grid
        self._grid_frac = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(
            -1, 3
        )

    def encode(self, structure: Structure) -> tuple[np.ndarray, np.ndarray]:
        """``(image (n_elements, grid, grid, grid) float32, lattice_params (6,))``."""
        reduced = structure.get_reduced_structure("niggli")
        matrix = reduced.lattice.matrix
        image = np.zeros((len(self.elements), self.grid**3), dtype=np.float64)
        for site in reduced:
            symbol = site.specie.symbol
            if symbol not in self._index:
                raise ValueError(f"element {symbol} has no channel in this encoder")
            d_frac = self._grid_frac - np.mod(site.frac_coords, 1.0)
            d_frac -= np.round(d_frac)
            d2 = np.sum((d_frac @ matrix) ** 2, axis=1)
            image[self._index[symbol]] += np.exp(-d2 / (2 * self.sigma**2))
        shape = (len(self.elements), self.grid, self.grid, self.grid)
        params = np.array(reduced.lattice.parameters, dtype=float)
        return image.reshape(shape).astype(np.float32), params

    def find_peaks(self, channel: np.ndarray) -> np.ndarray:
        """Fractional coordinates ``(n_peaks, 3)`` of the local maxima of one channel."""
        from scipy.ndimage import maximum_filter

        channel = np.asarray(channel, dtype=float)
        is_peak = (channel == maximum_filter(channel, size=3, mode="wrap")) & (
            channel > self.threshold
        )
        g = self.grid
        coords = []
        for idx in np.argwhere(is_peak):
            pos = idx.astype(float)
            centre = np.log(max(channel[tuple(idx)], 1e-12))
            for axis in range(3):
                lo, hi = idx.copy(), idx.copy()
                lo[axis] = (lo[axis] - 1) % g
                hi[axis] = (hi[axis] + 1) % g
                v_lo = np.log(max(channel[tuple(lo)], 1e-12))
                v_hi = np.log(max(channel[tuple(hi)], 1e-12))
                curvature = v_lo - 2 * centre + v_hi
                if curvature < 0:
                    pos[axis] += float(np.clip(0.5 * (v_lo - v_hi) / curvature, -0.5, 0.5))
            coords.append(np.mod(pos / g, 1.0))
        return np.array(coords).reshape(-1, 3)

    def decode(self, image: np.ndarray, lattice_params: np.ndarray) -> Structure:
        """Structure with one site per peak of each element channel."""
        from pymatgen.core import Lattice, Structure

        species: list[str] = []
        coords: list[np.ndarray] = []
        for i, symbol in enumerate(self.elements):
            peaks = self.find_peaks(image[i])
            species += [symbol] * len(peaks)
            coords += list(peaks)
        if not species:
            raise ValueError("no peak above the threshold: nothing to decode")
        lattice = Lattice.from_parameters(*(float(v) for v in lattice_params))
        return Structure(lattice, species, np.array(coords))
