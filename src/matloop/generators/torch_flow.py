"""``crystal_flow``: a flow-matching crystal generator with a periodic, equivariant denoiser.

The front door of :class:`~matloop.generators.flow_model.CrystalFlowModule` (the pure torch
model: paths, loss, integration): data to tensors, training with progress, sampling to
``list[Structure]``, checkpoints and ``update: finetune`` between rounds.

* **Atom counts.** ``sample`` draws each crystal's number of atoms from the training data's
  counts (restricted to the campaign's ``min_atoms..max_atoms``), then integrates the flow
  for a cell of that size; any size the data holds is possible, up to ``max_atoms``.
* **Conditions.** With ``property_columns`` the model learns the flow given standardised
  properties (and, by dropping them for 10 % of crystals, without them): ``sample(n,
  {"dir_gap": (1.5, 2.5)})`` draws each crystal's target uniformly in the window.
* **Chemical system.** With a ``chemical_space`` set, elements outside it are forbidden at
  every unmasking step, so every atom is an allowed element.
* **Soundness.** What comes out passes :mod:`matloop.soundness` (covalent-radius distance
  rule at the training data's factor, a training cell size, a CIF that reads back); the
  rest is redrawn (bounded) and counted in ``self.soundness``.
* **Device.** CUDA when present (the campaign's ``gpu`` queue), else CPU.

Examples
--------
>>> gen = CrystalFlowGenerator(epochs=300)                      # doctest: +SKIP
>>> gen.fit(structures)                                         # doctest: +SKIP
>>> crystals = gen.sample(100, rng=np.random.default_rng(0))    # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from matloop.generators.flow_model import CrystalFlowModule, lattice_features, lattice_params
from matloop.generators.torch_common import (
    Standardizer,
    TorchGenerator,
    condition_values,
    properties_matrix,
    report_epoch,
    seed_everything,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from pymatgen.core import Structure

log = logging.getLogger(__name__)

__all__ = ["CrystalFlowGenerator", "FlowSettings"]


class FlowSettings(BaseModel):
    """Settings of ``crystal_flow`` (all with defaults; unknown names are refused)."""

    model_config = ConfigDict(extra="forbid")

    elements: list[str] | None = Field(None, description="Element vocabulary; None: the data's")
    max_atoms: int | None = Field(None, ge=1, description="Largest cell; None: the data's")
    property_columns: list[str] = Field(default_factory=list, description="Conditioning properties")
    hidden: int = Field(128, ge=8, description="Width of the denoiser")
    layers: int = Field(4, ge=1, description="Message-passing layers")
    n_freq: int = Field(8, ge=1, description="Fourier frequencies of fractional differences")
    type_weight: float = Field(0.5, ge=0, description="Weight of the atom-type loss")
    lattice_weight: float = Field(1.0, ge=0, description="Weight of the lattice loss")
    epochs: int = Field(200, ge=0, description="Training epochs")
    batch_size: int = Field(64, ge=1, description="Crystals per batch")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate (cosine-annealed)")
    seed: int = Field(0, description="Random seed of training")
    device: str | None = Field(None, description="cpu, cuda, or None: CUDA when present")
    steps: int = Field(100, ge=1, description="Euler steps of sampling")
    # 5: on Perov-5 (60 epochs) 0.475 of 40 raw draws were sound against 0.30 at 0
    coord_anneal: float = Field(5.0, ge=0, description="Inference anti-annealing of coordinates")
    temperature: float = Field(1.0, gt=0, description="Temperature of atom-type draws")
    finetune_epochs: int = Field(5, ge=0, description="Epochs of each update (fine-tune)")
    finetune_lr: float = Field(3e-4, gt=0, description="Learning rate of fine-tuning")
    replay_size: int = Field(4096, ge=0, description="Training crystals kept for updates")
    replay_ratio: int = Field(4, ge=0, description="Replay crystals per feedback crystal")
    soundness: bool = Field(True, description="Redraw samples that are not physically sound")
    distance_factor: float | None = Field(
        None, gt=0, description="Covalent-radius factor; None: measured on the training data"
    )
    screen_proposals: bool = Field(False, description="Accepted for campaign settings")
    prior: str | None = Field(None, description="Unused (a sampling setting of the VAEs)")


class CrystalFlowGenerator(TorchGenerator):
    """Flow matching over lattice, fractional coordinates and atom types (registry
    ``crystal_flow``); settings: :class:`FlowSettings`."""

    name: ClassVar[str] = "crystal_flow"
    Settings: ClassVar[type[BaseModel]] = FlowSettings  # see Generator.Settings

    def __init__(self, **settings: Any):
        # Fields that fit() fills in (statistics) travel in the config beside the settings.
        stats = {k: settings.pop(k) for k in list(settings) if k in _FITTED}
        super().__init__(**FlowSettings(**settings).model_dump(), **stats)
        self.history: list[dict[str, float]] = []
        self.train_seconds: float | None = None

    @property
    def module(self) -> CrystalFlowModule:
        return self.modules["flow"]  # type: ignore[return-value]

    def _build(self, config: dict[str, Any]) -> None:
        module = CrystalFlowModule(
            n_elements=len(config["elements"]),
            n_cond=len(config["property_columns"]),
            hidden=config["hidden"],
            layers=config["layers"],
            n_freq=config["n_freq"],
            type_weight=config["type_weight"],
            lattice_weight=config["lattice_weight"],
        )
        stats = config["lattice_stats"]
        module.lat_mean.copy_(torch.tensor(stats["mean"], dtype=torch.float32))
        module.lat_std.copy_(torch.tensor(stats["std"], dtype=torch.float32))
        self.modules = {"flow": module.to(self.device)}
        self._prop_std = Standardizer.from_dict(config["property_stats"])

    # -- data
    def _tensors(
        self, structures: Sequence[Structure], props: np.ndarray
    ) -> tuple[dict[str, torch.Tensor], np.ndarray]:
        """Padded tensors of the structures the model can hold, and which those are."""
        index = {el: i + 1 for i, el in enumerate(self.config["elements"])}
        n_max = self.config["max_atoms"]
        kept = [
            i
            for i, s in enumerate(structures)
            if len(s) <= n_max and all(el.symbol in index for el in s.composition.elements)
        ]
        types = np.zeros((len(kept), n_max), dtype=np.int64)
        frac = np.zeros((len(kept), n_max, 3), dtype=np.float32)
        params = np.zeros((len(kept), 6))
        for row, i in enumerate(kept):
            s = structures[i].get_reduced_structure("niggli")
            types[row, : len(s)] = [index[site.specie.symbol] for site in s]
            frac[row, : len(s)] = np.mod(s.frac_coords, 1.0)
            params[row] = s.lattice.parameters
        counts = torch.tensor((types > 0).sum(1))
        raw = lattice_features(torch.tensor(params, dtype=torch.float64), counts).numpy()
        lat = Standardizer.from_dict(self.config["lattice_stats"]).transform(raw)
        props = np.asarray(props, dtype=float).reshape(len(structures), -1)[kept]
        std = self._prop_std.transform(np.nan_to_num(props)) if props.shape[1] else props
        has = ~np.isnan(props).any(axis=1) if props.shape[1] else np.zeros(len(kept))
        return {
            "types": torch.tensor(types),
            "frac": torch.tensor(frac),
            "lat": torch.tensor(lat, dtype=torch.float32),
            "cond": torch.tensor(std, dtype=torch.float32),
            "has_cond": torch.tensor(has, dtype=torch.float32),
        }, np.asarray(kept, dtype=int)

    # -- training
    def fit(
        self,
        structures: Sequence[Structure],
        properties: Mapping[str, Sequence[float]] | None = None,
    ) -> None:
        """Train from scratch on ``structures`` (and the ``property_columns`` properties)."""
        from matloop.representations.composition import elements_of

        if not structures:
            raise ValueError("crystal_flow: no training structures")
        seed_everything(self.config["seed"])
        columns = self.config["property_columns"]
        props = properties_matrix(properties, columns, len(structures))
        if self.config["elements"] is None:
            self.config["elements"] = elements_of(structures)
        if self.config["max_atoms"] is None:
            self.config["max_atoms"] = max(len(s) for s in structures)
        fits = [s for s in structures if len(s) <= self.config["max_atoms"]]
        raw = lattice_features(
            torch.tensor(
                np.array([s.get_reduced_structure("niggli").lattice.parameters for s in fits])
            ),
            torch.tensor([len(s) for s in fits]),
        ).numpy()
        self.config["lattice_stats"] = Standardizer.fit(raw).to_dict()
        self.config["property_stats"] = (
            Standardizer.fit(props).to_dict() if columns else {"mean": [], "std": []}
        )
        self._build(self.config)
        tensors, kept = self._tensors(structures, props)
        if len(kept) < len(structures):
            log.warning("crystal_flow: skipped %d structures", len(structures) - len(kept))
        counts = np.bincount([len(structures[i]) for i in kept])
        self.config["atom_count_weights"] = counts.tolist()
        start = time.perf_counter()
        self.history = self._train(
            tensors, epochs=self.config["epochs"], lr=self.config["lr"], weights=None
        )
        self.train_seconds = time.perf_counter() - start
        self._remember([structures[i] for i in kept], props[kept] if columns else None)
        self.version += 1

    def _train(
        self,
        tensors: Mapping[str, torch.Tensor],
        *,
        epochs: int,
        lr: float,
        weights: torch.Tensor | None,
    ) -> list[dict[str, float]]:
        """AdamW with cosine annealing over batches of similar cell size (little padding)."""
        module = self.module.to(self.device).train()
        opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(epochs, 1), lr / 50)
        n_atoms = (tensors["types"] > 0).sum(1).numpy()
        rng = np.random.default_rng(self.config["seed"] + self.version)
        bs = self.config["batch_size"]
        history = []
        for epoch in range(epochs):
            sums: dict[str, float] = {}
            batches = _size_batches(n_atoms, bs, rng)
            for idx in batches:
                width = int(n_atoms[idx].max())
                batch = {
                    k: (v[idx][:, :width] if k in ("types", "frac") else v[idx]).to(self.device)
                    for k, v in tensors.items()
                }
                w = None if weights is None else weights[idx].to(self.device)
                loss, logs = module.loss(batch, w, epoch=epoch, epochs=epochs)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
                opt.step()
                for k, v in logs.items():
                    sums[k] = sums.get(k, 0.0) + v
            sched.step()
            history.append({k: v / max(len(batches), 1) for k, v in sums.items()})
            report_epoch(epoch + 1, epochs, history[-1])
        module.eval()
        return history

    def _finetune(self, structures, weights, props) -> None:
        tensors, kept = self._tensors(structures, props)
        if not len(kept):
            return
        self._train(
            tensors,
            epochs=self.config["finetune_epochs"],
            lr=self.config["finetune_lr"],
            weights=torch.tensor(np.asarray(weights)[kept], dtype=torch.float32),
        )

    # -- sampling
    def _atom_counts(self, n: int, rng: np.random.Generator) -> np.ndarray:
        weights = np.asarray(self.config["atom_count_weights"], dtype=float)
        sizes = np.arange(len(weights))
        space = getattr(self, "chemical_space", None)
        if space is not None:
            weights = np.where((sizes >= space.min_atoms) & (sizes <= space.max_atoms), weights, 0)
        if weights.sum() <= 0:
            raise ValueError(
                f"crystal_flow: no training cell size fits the chemical space's "
                f"{space.min_atoms}..{space.max_atoms} atoms"
            )
        return rng.choice(sizes, size=n, p=weights / weights.sum())

    def _allowed_mask(self) -> torch.Tensor | None:
        allowed = self._allowed_elements()
        if allowed is None:
            return None
        keep = torch.tensor([el in set(allowed) for el in self.config["elements"]])
        if not keep.any():
            raise ValueError(
                f"crystal_flow: none of the chemical space's elements {allowed} is in the "
                f"model's element set"
            )
        return keep

    def _draw(self, n: int, conditions, rng: np.random.Generator) -> list[Structure | None]:
        from pymatgen.core import Lattice, Structure

        counts = self._atom_counts(n, rng)
        cond = has = None
        columns = self.config["property_columns"]
        if columns:
            asked = {k: v for k, v in (conditions or {}).items() if k != "method"}
            values = condition_values(asked, columns, n, rng, None)
            cond = torch.tensor(self._prop_std.transform(values), dtype=torch.float32)
            has = torch.full((n,), 1.0 if asked else 0.0)
            cond, has = cond.to(self.device), has.to(self.device)
        elif conditions and set(conditions) - {"method"}:
            raise ValueError("crystal_flow was trained without property_columns: no conditions")
        gen = torch.Generator(device=self.device).manual_seed(int(rng.integers(2**62)))
        types, frac, lat = self.module.sample(
            torch.tensor(counts, device=self.device),
            steps=self.config["steps"],
            allowed=self._allowed_mask(),
            cond=cond,
            has_cond=has,
            type_temperature=self.config["temperature"],
            coord_anneal=self.config["coord_anneal"],
            generator=gen,
        )
        raw = lat * self.module.lat_std + self.module.lat_mean
        params = lattice_params(raw.double(), torch.tensor(counts, device=raw.device))
        out: list[Structure | None] = []
        elements = self.config["elements"]
        for t, f, p, c in zip(
            types.cpu().numpy(), frac.cpu().numpy(), params.cpu().numpy(), counts, strict=True
        ):
            try:
                lattice = Lattice.from_parameters(*p)
                out.append(Structure(lattice, [elements[k - 1] for k in t[:c]], f[:c]))
            except (ValueError, ZeroDivisionError):
                out.append(None)
        return out

    def sample(
        self,
        n: int,
        conditions: Mapping[str, Any] | None = None,
        rng: np.random.Generator | None = None,
    ) -> list[Structure]:
        """Up to ``n`` sound crystals; unsound draws are redrawn (up to 10 rounds of
        twice the missing number) and counted in ``self.soundness``."""
        rng = self._sampling_rng(rng)
        self.reset_soundness()
        sound = bool(self.config.get("soundness", True))
        out: list[Structure] = []
        for _ in range(10 if sound else 1):
            need = n - len(out)
            if need <= 0:
                break
            for s in self._draw(2 * need if sound else need, conditions, rng):
                if s is None:
                    self.soundness.add("cell volume is not a lattice")
                elif self._allows(s) and self._sound(s):
                    out.append(s)
        return out[:n]


#: Config entries ``fit`` computes (kept in checkpoints, not user settings).
_FITTED = ("lattice_stats", "property_stats", "atom_counts", "atom_count_weights")


def _size_batches(n_atoms: np.ndarray, batch_size: int, rng: np.random.Generator) -> list:
    """Shuffled batches of crystals of similar size: shuffle, sort chunks of eight batches
    by size, cut, shuffle the batches."""
    order = rng.permutation(len(n_atoms))
    chunk = 8 * batch_size
    batches = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(n_atoms[part], kind="stable")]
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]
