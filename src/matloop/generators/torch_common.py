"""Shared pieces of the torch generators: device, seeding, data, training loop, checkpoints.

Layering (after MatterGen): each ``torch_*`` module holds a pure ``nn.Module`` whose ``loss``
returns a scalar and a dict of logs; :func:`train_loop` runs any such module over a dict of
tensors; the data helpers turn a CSV of CIFs into structures and property arrays; the
:class:`TorchGenerator` base is the front door that turns a trained module into
``list[Structure]`` and owns save / load / update.

Checkpoints hold only what ``torch.load(path, weights_only=True)`` accepts: the generator's
config as a JSON string, ``state_dict`` tensors and a replay sample of the training crystals
as plain tensors (lattice matrices, atomic numbers, fractional coordinates, properties; see
:func:`structures_to_tensors`), so a loaded model can ``update`` without forgetting. ``save``
returns the file's sha256 and writes it beside the file (``<path>.sha256``).
"""

from __future__ import annotations

import json
import math
import warnings
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from matloop.generators.base import Feedback, Generator
from matloop.generators.checkpoints import (  # noqa: F401  re-exported
    CheckpointError,
    check_checkpoint_hash,
    file_sha256,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

    from pymatgen.core import Composition, Structure

CHECKPOINT_FORMAT = 1
#: Closest pair distance of a sampled crystal, as a fraction of its covalent radii sum, for
#: models whose checkpoint predates ``distance_factor`` (``fit`` measures it on the data).
DISTANCE_FACTOR = 0.7


# --------------------------------------------------------------------------- device, seeds


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    """Seed numpy, torch (CPU and CUDA)."""
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def mlp(
    sizes: Sequence[int], act: type[nn.Module] = nn.SiLU, final_act: bool = False
) -> nn.Sequential:
    """A plain multilayer perceptron ``sizes[0] -> ... -> sizes[-1]``."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2 or final_act:
            layers.append(act())
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- data


def read_structures_csv(
    csv_path: str | Path,
    property_columns: Sequence[str] = (),
    limit: int | None = None,
) -> tuple[list[Structure], dict[str, np.ndarray]]:
    """Structures (from the ``cif`` column) and property columns of a (gzipped) CSV."""
    import pandas as pd
    from pymatgen.core import Structure

    frame = pd.read_csv(csv_path, nrows=limit)
    missing = [c for c in ["cif", *property_columns] if c not in frame.columns]
    if missing:
        raise ValueError(f"{csv_path} lacks column(s) {missing}; it has {list(frame.columns)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structures = [Structure.from_str(c, fmt="cif") for c in frame["cif"]]
    props = {c: frame[c].to_numpy(dtype=float) for c in property_columns}
    return structures, props


def split_indices(
    n: int, train_fraction: float = 0.8, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A fixed random split of ``range(n)`` into train and held-out indices."""
    order = np.random.default_rng(seed).permutation(n)
    cut = int(round(train_fraction * n))
    return np.sort(order[:cut]), np.sort(order[cut:])


def properties_matrix(
    properties: Mapping[str, Sequence[float]] | None, columns: Sequence[str], n: int
) -> np.ndarray:
    """``(n, len(columns))`` float array of the named properties (checked for length)."""
    if not columns:
        return np.zeros((n, 0))
    if properties is None:
        raise ValueError(f"this model is conditioned on {list(columns)}: pass properties to fit")
    cols = []
    for c in columns:
        if c not in properties:
            raise ValueError(f"property {c!r} missing; got {list(properties)}")
        v = np.asarray(properties[c], dtype=float)
        if len(v) != n:
            raise ValueError(f"property {c!r} has {len(v)} values for {n} structures")
        cols.append(v)
    return np.stack(cols, axis=1)


def condition_values(
    conditions: Mapping[str, Any] | None,
    columns: Sequence[str],
    n: int,
    rng: np.random.Generator,
    fallback: np.ndarray | None,
) -> np.ndarray:
    """Per-sample condition values ``(n, len(columns))``.

    A condition is a number (used as is) or a ``(low, high)`` window (drawn uniformly in it).
    Columns not named are drawn from ``fallback`` (training rows, resampled jointly).
    """
    out = np.zeros((n, len(columns)))
    # Always consume the same random numbers, whatever the fallback's length, so a loaded
    # model (which has no training rows) reproduces a fitted one's draws for the same rng.
    u = rng.random(n)
    if fallback is not None and len(fallback):
        out[:] = fallback[np.minimum((u * len(fallback)).astype(int), len(fallback) - 1)]
    conditions = dict(conditions or {})
    unknown = set(conditions) - set(columns) - {"method"}
    if unknown:
        raise ValueError(
            f"unknown condition(s) {sorted(unknown)}; this model knows {list(columns)}"
        )
    for j, c in enumerate(columns):
        if c not in conditions:
            continue
        value = conditions[c]
        if isinstance(value, (tuple, list)):
            lo, hi = float(value[0]), float(value[1])
            out[:, j] = rng.uniform(lo, hi, size=n)
        else:
            out[:, j] = float(value)
    return out


class Standardizer:
    """Column means / stds kept as plain lists so they travel in a JSON config."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = np.asarray(mean, dtype=float)
        self.std = np.where(np.asarray(std, dtype=float) > 1e-8, np.asarray(std, dtype=float), 1.0)

    @classmethod
    def fit(cls, x: np.ndarray) -> Standardizer:
        x = np.asarray(x, dtype=float).reshape(len(x), -1)
        if len(x) == 0 or x.shape[1] == 0:
            return cls(np.zeros(x.shape[1]), np.ones(x.shape[1]))
        return cls(x.mean(axis=0), x.std(axis=0))

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=float) - self.mean) / self.std

    def inverse(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=float) * self.std + self.mean

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Sequence[float]]) -> Standardizer:
        return cls(d["mean"], d["std"])


# ------------------------------------------------------------ composition -> structure


class TemplateBank:
    """Turns compositions into structures by decorating training crystals of the same
    stoichiometry pattern (the way composition-only models such as MatGAN hand over to a
    structure step).

    Elements of the new composition replace the template's elements with the same count, in
    order of electronegativity; the cell is scaled to the volume predicted by per-element
    volumes fitted (least squares) on the training crystals.
    """

    def __init__(self, structures: Sequence[Structure], max_templates_per_pattern: int = 50):
        from pymatgen.core import Element

        self.templates: dict[tuple[int, ...], list[Structure]] = {}
        for s in structures:
            pattern = self.pattern(s.composition)
            bucket = self.templates.setdefault(pattern, [])
            if len(bucket) < max_templates_per_pattern:
                bucket.append(s)
        symbols = sorted({el.symbol for s in structures for el in s.composition.elements})
        index = {sym: i for i, sym in enumerate(symbols)}
        a = np.zeros((len(structures), len(symbols)))
        for r, s in enumerate(structures):
            for el, amt in s.composition.get_el_amt_dict().items():
                a[r, index[el]] = amt
        vols = np.array([s.volume for s in structures])
        fitted, *_ = np.linalg.lstsq(a, vols, rcond=None) if len(symbols) else (np.zeros(0),)
        default = float(np.median(vols / a.sum(axis=1))) if len(structures) else 15.0
        self.atomic_volume = {
            sym: float(v) if v > 1.0 else default for sym, v in zip(symbols, fitted, strict=True)
        }
        self._default_volume = default
        self._eneg = {sym: Element(sym).X for sym in symbols}

    @staticmethod
    def pattern(composition: Composition) -> tuple[int, ...]:
        return tuple(sorted(int(round(v)) for v in composition.get_el_amt_dict().values()))

    def volume(self, composition: Composition) -> float:
        return sum(
            amt * self.atomic_volume.get(el, self._default_volume)
            for el, amt in composition.get_el_amt_dict().items()
        )

    def structure(self, composition: Composition, rng: np.random.Generator) -> Structure | None:
        """A decorated template, or ``None`` when no training crystal has the pattern."""
        from pymatgen.core import Element

        bucket = self.templates.get(self.pattern(composition))
        if not bucket:
            return None
        template = bucket[int(rng.integers(len(bucket)))]

        def ordered(amounts: dict[str, float]) -> list[str]:
            return sorted(amounts, key=lambda e: (round(amounts[e]), Element(e).X, e))

        old = ordered(template.composition.get_el_amt_dict())
        new = ordered(composition.get_el_amt_dict())
        mapping = dict(zip(old, new, strict=True))
        s = template.copy()
        s.replace_species({o: n for o, n in mapping.items() if o != n})
        s.scale_lattice(self.volume(composition))
        return s


# --------------------------------------------------------------------------- progress

#: Called after every training epoch as ``(epoch, epochs, logs)`` (1-based epoch), by
#: :func:`train_loop` and the GAN's loop, inside :func:`training_progress`.
_PROGRESS: ContextVar[Callable[[int, int, Mapping[str, float]], None] | None] = ContextVar(
    "matloop_training_progress", default=None
)


@contextmanager
def training_progress(
    callback: Callable[[int, int, Mapping[str, float]], None],
) -> Iterator[None]:
    """Report every training epoch of the torch generators to ``callback`` while inside
    the block (the CLI draws a rich progress bar with it); models need no argument for it.

    >>> seen = []
    >>> with training_progress(lambda e, n, logs: seen.append((e, n))):
    ...     report_epoch(1, 3, {"loss": 0.5})
    >>> seen
    [(1, 3)]
    """
    token = _PROGRESS.set(callback)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def report_epoch(epoch: int, epochs: int, logs: Mapping[str, float]) -> None:
    """Tell the active :func:`training_progress` callback (if any) an epoch has ended."""
    callback = _PROGRESS.get()
    if callback is not None:
        callback(epoch, epochs, logs)


# --------------------------------------------------------------------------- training loop


def train_loop(
    module: nn.Module,
    tensors: Mapping[str, torch.Tensor],
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    device: torch.device | str | None = None,
    weights: torch.Tensor | None = None,
    seed: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    schedule: str | None = None,
) -> list[dict[str, float]]:
    """Minimise ``module.loss(batch, weights)`` over mini-batches of ``tensors``.

    ``tensors`` share their first dimension; each batch is a dict with the same keys.
    ``weights`` (optional, one per row) scale each row's contribution to the loss, which is
    how reward-weighted fine-tuning reuses the same loop. ``schedule="cosine"`` anneals the
    learning rate from ``lr`` to ``lr / 100`` over the epochs (``None``: constant). Returns
    the per-epoch mean logs.
    """
    device = resolve_device(device)
    module.to(device)
    module.train()
    n = len(next(iter(tensors.values())))
    data = {k: v.to(device) for k, v in tensors.items()}
    w = weights.to(device) if weights is not None else None
    opt = optimizer or torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
    if schedule not in (None, "cosine"):
        raise ValueError(f"unknown schedule {schedule!r}; use 'cosine' or None")
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1), eta_min=lr / 100)
        if schedule == "cosine"
        else None
    )
    gen = torch.Generator().manual_seed(seed)
    history: list[dict[str, float]] = []
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen).to(device)
        sums: dict[str, float] = {}
        batches = 0
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            batch = {k: v[idx] for k, v in data.items()}
            loss, logs = module.loss(
                batch, None if w is None else w[idx], epoch=epoch, epochs=epochs
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(module.parameters(), 10.0)
            opt.step()
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            batches += 1
        mean_logs = {k: v / max(batches, 1) for k, v in sums.items()}
        history.append(mean_logs)
        if scheduler is not None:
            scheduler.step()
        if on_epoch is not None:
            on_epoch(epoch, mean_logs)
        report_epoch(epoch + 1, epochs, mean_logs)
    module.eval()
    return history


def weighted_mean(per_row: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``per_row`` losses, weighted when ``weights`` is given."""
    if weights is None:
        return per_row.mean()
    return (per_row * weights).sum() / weights.sum().clamp_min(1e-8)


def kl_annealing(epoch: int, epochs: int, beta: float, warmup_fraction: float = 0.3) -> float:
    """Linear KL warm-up from 0 to ``beta`` over the first part of training."""
    warm = max(1, int(math.ceil(warmup_fraction * epochs)))
    return beta * min(1.0, (epoch + 1) / warm)


# --------------------------------------------------------------------------- checkpoints


def structures_to_tensors(
    structures: Sequence[Structure], props: np.ndarray | None = None
) -> dict[str, torch.Tensor]:
    """Plain tensors of ordered structures: ``lattice (R, 3, 3)``, ``z (R, M)`` (0 pads),
    ``frac (R, M, 3)`` and ``props (R, P)``; :func:`tensors_to_structures` inverts it."""
    n = len(structures)
    m = max((len(s) for s in structures), default=0)
    lattice = np.zeros((n, 3, 3))
    z = np.zeros((n, m), dtype=np.int64)
    frac = np.zeros((n, m, 3))
    for i, s in enumerate(structures):
        lattice[i] = s.lattice.matrix
        z[i, : len(s)] = [site.specie.Z for site in s]
        frac[i, : len(s)] = s.frac_coords
    p = np.zeros((n, 0)) if props is None else np.asarray(props, dtype=float).reshape(n, -1)
    return {
        "lattice": torch.tensor(lattice, dtype=torch.float64),
        "z": torch.tensor(z),
        "frac": torch.tensor(frac, dtype=torch.float64),
        "props": torch.tensor(p, dtype=torch.float64),
    }


def tensors_to_structures(
    tensors: Mapping[str, torch.Tensor],
) -> tuple[list[Structure], np.ndarray]:
    """Structures and the ``(R, P)`` property matrix of :func:`structures_to_tensors`."""
    from pymatgen.core import Lattice, Structure

    lattice = tensors["lattice"].numpy()
    z = tensors["z"].numpy()
    frac = tensors["frac"].numpy()
    out = []
    for i in range(len(lattice)):
        keep = z[i] > 0
        out.append(Structure(Lattice(lattice[i]), [int(v) for v in z[i][keep]], frac[i][keep]))
    return out, tensors["props"].numpy()


def save_checkpoint(
    path: str | Path,
    kind: str,
    config: Mapping[str, Any],
    modules: Mapping[str, nn.Module],
    tensors: Mapping[str, torch.Tensor] | None = None,
) -> str:
    """Write ``{"format", "kind", "config" (JSON text), "state": {name: state_dict},
    "tensors": {name: tensor}}``; return (and write beside the file) its sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "tensors": {k: v.detach().cpu() for k, v in (tensors or {}).items()},
        "format": CHECKPOINT_FORMAT,
        "kind": kind,
        "config": json.dumps(config),
        "state": {
            name: {k: v.detach().cpu() for k, v in m.state_dict().items()}
            for name, m in modules.items()
        },
    }
    torch.save(payload, path)
    sha = file_sha256(path)
    Path(f"{path}.sha256").write_text(f"{sha}  {path.name}\n")
    return sha


def load_checkpoint_payload(path: str | Path) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` of a matloop checkpoint; anything else
    (a pickle with code in it, a text file, another program's model) is one
    :class:`CheckpointError` line, never PyTorch's advice to drop ``weights_only``."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError, ...
        kind = type(err).__name__
        raise CheckpointError(
            f"{path}: not a matloop checkpoint (torch cannot read it as plain tensors: "
            f"{kind}); nothing in it was run. Use a file written by `matloop train`"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(
            f"{path}: not a matloop checkpoint (format {found!r}, expected "
            f"{CHECKPOINT_FORMAT}); use a file written by `matloop train`"
        )
    return payload


def read_checkpoint(
    path: str | Path, with_tensors: bool = False, trust: bool = False
) -> tuple[str, dict[str, Any], dict[str, dict[str, torch.Tensor]], str]:
    """``(kind, config, states, sha256)`` of a checkpoint, read with ``weights_only=True``;
    ``with_tensors=True`` appends the dict of extra tensors (the replay sample).

    Raises :class:`CheckpointError` (a ``ValueError``) when the ``<path>.sha256`` sidecar is
    missing or disagrees with the file (unless ``trust``), or the file is not a matloop
    checkpoint.
    """
    path = Path(path)
    sha = check_checkpoint_hash(path, trust=trust)
    payload = load_checkpoint_payload(path)
    out = (payload["kind"], json.loads(payload["config"]), payload["state"], sha)
    if with_tensors:
        return (*out, dict(payload.get("tensors") or {}))  # type: ignore[return-value]
    return out


# --------------------------------------------------------------------------- front-door base


class TorchGenerator(Generator):
    """Base for the learned generators: config dict + named modules + training data replay.

    Subclasses implement ``_build(config)`` (create modules from a config), ``fit``,
    ``sample`` and ``_finetune(structures, weights)``.

    ``chemical_space`` (a :class:`~matloop.generators.base.ChemicalSpace`, set by the
    campaign when it loads a checkpoint) restricts what ``sample`` returns: species outside
    ``chemical_space.elements`` are masked out at decoding and cells outside
    ``min_atoms..max_atoms`` are redrawn. ``None`` (the default): no restriction.

    The replay sample (up to ``replay_size`` training crystals, all of them by default for
    data sets of that size) is saved in the checkpoint, so ``update`` after ``load`` mixes
    the same training crystals into fine-tuning as ``update`` after ``fit``.
    """

    learns: ClassVar[frozenset[str]] = frozenset({"finetune"})

    name: ClassVar[str] = "torch"

    def __init__(self, **config: Any):
        config.setdefault("replay_size", 4096)
        self.config: dict[str, Any] = dict(config)
        self.modules: dict[str, nn.Module] = {}
        self.checkpoint_sha256: str | None = None
        self.version = 0
        self.chemical_space: Any = None
        self._replay: list[Structure] = []
        self._replay_props: np.ndarray | None = None
        self.soundness: Any = None

    @property
    def device(self) -> torch.device:
        return resolve_device(self.config.get("device"))

    # -- persistence
    def save(self, path: str | Path) -> str:
        """Write a ``weights_only`` checkpoint; returns its sha256."""
        if not self.modules:
            raise RuntimeError(f"{type(self).__name__} is not trained: nothing to save")
        config = dict(self.config, version=self.version)
        tensors = None
        if self._replay:
            replay = {
                f"replay_{k}": v
                for k, v in structures_to_tensors(self._replay, self._replay_props).items()
            }
            tensors = replay | {"replay_has_props": torch.tensor(self._replay_props is not None)}
        self.checkpoint_sha256 = save_checkpoint(path, self.name, config, self.modules, tensors)
        return self.checkpoint_sha256

    @classmethod
    def load(
        cls, path: str | Path, device: str | None = None, trust: bool = False
    ) -> TorchGenerator:
        kind, config, states, sha, tensors = read_checkpoint(path, with_tensors=True,
                                                             trust=trust)
        if kind != cls.name:
            raise ValueError(f"{path} holds a {kind!r} checkpoint, not {cls.name!r}")
        version = int(config.pop("version", 0))
        if device is not None:
            config["device"] = device
        gen = cls(**config)
        gen._build(gen.config)
        for name, state in states.items():
            if name == "policy" and name not in gen.modules:  # an RL-updated sampler
                from matloop.generators.reinforce import LatentPolicy

                gen.modules[name] = LatentPolicy(len(state["mu"]), len(state["anchor_logits"]))
            gen.modules[name].load_state_dict(state)
            gen.modules[name].to(gen.device).eval()
        gen.version = version
        gen.checkpoint_sha256 = sha
        if "replay_z" in tensors:
            structures, props = tensors_to_structures(
                {k: tensors[f"replay_{k}"] for k in ("lattice", "z", "frac", "props")}
            )
            has_props = bool(tensors.get("replay_has_props", torch.tensor(False)))
            gen._replay, gen._replay_props = structures, props if has_props else None
            gen._after_load()
        return gen

    def _after_load(self) -> None:
        """Hook run after a checkpoint with a replay sample is loaded (default: nothing)."""

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["checkpoint_sha256"] = self.checkpoint_sha256
        d["property_columns"] = list(self.config.get("property_columns", []))
        return d

    # -- learning from the loop
    def update(self, feedback: Sequence[Feedback]) -> None:
        """Reward-weighted fine-tuning: rows weighted by ``max(reward, 0)``, mixed with a
        replay sample of the training data (weight 1) so the model does not forget."""
        if not self.modules:
            raise RuntimeError("fit or load the generator before update")
        kept = [f for f in feedback if f.reward > 0]
        if not kept:
            return
        structures = [f.structure for f in kept]
        weights = [float(f.reward) for f in kept]
        columns = list(self.config.get("property_columns", []))
        props = [[f.properties.get(c, np.nan) for c in columns] for f in kept]
        rng = np.random.default_rng(self.config.get("seed", 0) + self.version + 1)
        n_replay = min(len(self._replay), int(self.config.get("replay_ratio", 4)) * len(kept))
        if n_replay:
            idx = rng.choice(len(self._replay), size=n_replay, replace=False)
            structures += [self._replay[i] for i in idx]
            weights += [1.0] * n_replay
            if self._replay_props is not None:
                props += self._replay_props[idx].tolist()
        props_arr = np.asarray(props, dtype=float).reshape(len(structures), len(columns))
        self._finetune(structures, np.asarray(weights), props_arr)
        self.version += 1

    def _remember(self, structures: Sequence[Structure], props: np.ndarray | None) -> None:
        """Keep (a seeded random subset of at most ``replay_size``) training crystals, and
        the cell sizes of all of them (``atom_counts``, for the soundness check)."""
        from matloop.soundness import atom_counts_of, data_distance_factor

        structures = list(structures)
        self.config["atom_counts"] = atom_counts_of(structures)
        if self.config.get("distance_factor") is None:
            self.config["distance_factor"] = data_distance_factor(structures)
        size = int(self.config.get("replay_size", 4096))
        idx = np.arange(len(structures))
        if len(structures) > size:
            rng = np.random.default_rng(self.config.get("seed", 0))
            idx = np.sort(rng.choice(len(structures), size=size, replace=False))
        self._replay = [structures[i] for i in idx]
        self._replay_props = None if props is None else np.asarray(props)[idx]

    # -- sampling
    def _sampling_rng(self, rng: np.random.Generator | None) -> np.random.Generator:
        """``rng`` (a fresh one when None) for a ``sample``; refused before ``fit``/``load``."""
        if not self.modules:
            raise RuntimeError("fit or load the generator before sampling")
        return rng or np.random.default_rng()

    # -- physically sound output
    def _sound(self, structure: Structure) -> bool:
        """True when ``structure`` passes :func:`matloop.soundness.unsound_reason` (pairs
        beyond ``distance_factor`` x covalent radii sums, measured on the training data at
        ``fit`` by :func:`~matloop.soundness.data_distance_factor`; a training cell size; a
        CIF that reads back); counted in ``self.soundness``. ``soundness: false`` in the config
        switches the check off (benchmarks measuring the raw model)."""
        from matloop.soundness import SoundnessTally, unsound_reason

        if not hasattr(self, "soundness") or self.soundness is None:
            self.soundness = SoundnessTally()
        if not self.config.get("soundness", True):
            return self.soundness.add(None)
        counts = self.config.get("atom_counts")
        if counts is None and self._replay:  # a checkpoint written before atom_counts
            counts = sorted({len(s) for s in self._replay})
        reason = unsound_reason(
            structure,
            factor=float(self.config.get("distance_factor") or DISTANCE_FACTOR),
            atom_counts=None if counts is None else set(counts),
        )
        return self.soundness.add(reason)

    def reset_soundness(self) -> None:
        """Start a new tally of kept and redrawn samples (``self.soundness``)."""
        from matloop.soundness import SoundnessTally

        self.soundness = SoundnessTally()

    # -- the campaign's chemical space
    def _allowed_elements(self) -> list[str] | None:
        """Elements of ``chemical_space`` (``None`` when unrestricted)."""
        space = getattr(self, "chemical_space", None)
        return None if space is None else list(space.elements)

    def _allows(self, structure: Structure) -> bool:
        space = getattr(self, "chemical_space", None)
        return space is None or space.allows(structure)

    # -- to implement
    def _build(self, config: dict[str, Any]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _finetune(
        self, structures: Sequence[Structure], weights: np.ndarray, props: np.ndarray
    ) -> None:  # pragma: no cover - abstract
        raise NotImplementedError
