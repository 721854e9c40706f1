"""How many crystals a batch may hold: sized by graph size and the device's free memory.

CHGNet's memory grows with its graph: atoms, directed edges (pairs within 6 Å) and angles
(pairs of bonds within 3 Å that share an atom). A batch is filled while the sum of these
*graph elements* stays within a budget, as TorchSim's in-flight autobatcher fills by a size
metric. On a GPU the budget comes from the free device memory and the bytes one element
took in the batches seen so far (measured with ``torch.cuda.max_memory_allocated``); on a
CPU it is whatever the caller configures (no limit by default).

A crystal about to join has no graph yet: :func:`estimated_elements` guesses its size from
its density; once in the batch its real size counts.

Examples
--------
>>> budget = MemoryBudget(device="cpu", max_elements=200_000)
>>> budget.admits(current=150_000, joining=60_000, crystals=12)
False
>>> budget.admits(current=0, joining=600_000, crystals=0)  # an empty batch takes anything
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["MemoryBudget", "estimated_elements"]

#: bytes per graph element assumed on a GPU before the first batch is measured: generous,
#: so the first batch fits; measured values replace it.
_FIRST_GUESS_BYTES = 32_768


def estimated_elements(n_atoms: int, volume: float, cutoff: float = 6.0,
                       bond_cutoff: float = 3.0) -> int:  # fmt: skip
    """Atoms + directed edges + angles CHGNet's graph of a crystal will have, from its
    density (a uniform-density estimate; real crystals come within a factor of ~2).

    >>> estimated_elements(2, 45.0)  # rock salt's primitive cell: 2 atoms in 45 Å³
    122
    """
    density = n_atoms / max(volume, 1e-9)
    edges = n_atoms * density * 4.0 / 3.0 * math.pi * cutoff**3
    bonds = density * 4.0 / 3.0 * math.pi * bond_cutoff**3  # per atom
    angles = n_atoms * bonds * max(bonds - 1.0, 0.0)
    return int(n_atoms + edges + angles)


@dataclass
class MemoryBudget:
    """The graph elements a batch may hold on ``device``.

    Parameters
    ----------
    device : str
        ``"cuda"``, ``"cuda:1"``, ``"cpu"``...
    max_elements : int or None
        A fixed budget; None on a GPU: sized from free memory, None on a CPU: no limit.
    memory_fraction : float
        Share of the free GPU memory (when the relaxation starts) the batch may fill.
    """

    device: str
    max_elements: int | None = None
    memory_fraction: float = 0.7
    bytes_per_element: float | None = None  # measured on a GPU
    _free_bytes: int | None = field(default=None, repr=False)

    @property
    def on_gpu(self) -> bool:
        return str(self.device).startswith("cuda")

    def limit(self) -> int | None:
        """Most graph elements in a batch now (None: no limit)."""
        if self.max_elements is not None or not self.on_gpu:
            return self.max_elements
        import torch

        if self._free_bytes is None:
            free, _ = torch.cuda.mem_get_info(torch.device(self.device))
            self._free_bytes = int(free)
        per = self.bytes_per_element or _FIRST_GUESS_BYTES
        return int(self._free_bytes * self.memory_fraction / per)

    def admits(self, current: int, joining: int, crystals: int) -> bool:
        """Whether a crystal of ``joining`` elements may join ``crystals`` crystals that
        hold ``current`` elements (an empty batch always takes one)."""
        if crystals == 0:
            return True
        limit = self.limit()
        return limit is None or current + joining <= limit

    def start_measuring(self) -> None:
        """Reset the GPU's peak-memory counter before a model call."""
        if self.on_gpu:
            import torch

            torch.cuda.reset_peak_memory_stats(torch.device(self.device))
            self._baseline = torch.cuda.memory_allocated(torch.device(self.device))

    def measured(self, elements: int) -> None:
        """After a model call on ``elements`` graph elements: learn the bytes per element
        (the largest seen, so the budget only shrinks towards what really fits)."""
        if not self.on_gpu or elements < 1_000:  # tiny batches say little about the slope
            return
        import torch

        peak = torch.cuda.max_memory_allocated(torch.device(self.device)) - self._baseline
        per = peak / elements
        if self.bytes_per_element is None or per > self.bytes_per_element:
            self.bytes_per_element = per
