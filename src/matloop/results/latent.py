"""Latent maps: where the training data, a generator's samples and the campaign's candidates
sit in a learned generator's latent space, projected to 2-D.

Any generator with a latent space qualifies through one small protocol,
:class:`LatentEncoder`: ``encode(structures) -> array (n, d)`` of latent means (one row per
structure; rows of NaN for a structure it cannot encode). The projection is PCA (numpy, by
default) or t-SNE (``method="tsne"``, needs scikit-learn).

Examples
--------
>>> import numpy as np
>>> points = np.random.default_rng(0).normal(size=(20, 5))
>>> project(points).shape
(20, 2)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from pymatgen.core import Structure

    from matloop.store import MatloopStore

log = logging.getLogger("matloop")

__all__ = [
    "COLOR_MODES",
    "LatentEncoder",
    "MapCandidate",
    "campaign_latent_maps",
    "has_latent_space",
    "latent_encoder",
    "latent_map",
    "project",
]

#: What a panel of the map can be coloured by.
COLOR_MODES = ("source", "round", "stability", "property")


@runtime_checkable
class LatentEncoder(Protocol):
    """A generator with a latent space: ``encode`` gives one latent mean per structure."""

    def encode(self, structures: Sequence[Structure]) -> np.ndarray: ...


def has_latent_space(generator: Any) -> bool:
    return latent_encoder(generator) is not None


def latent_encoder(generator: Any) -> LatentEncoder | None:
    """``generator`` itself when it has ``encode(structures)``; an adapter for matloop's
    crystal VAEs (``crystal_vae``, ``crystal_cvae``, ``crystal_latent_opt``: latent means of
    the crystal-matrix encoder); None for generators without a latent space."""
    if callable(getattr(generator, "encode", None)):
        return generator
    module = getattr(generator, "modules", {}).get("vae") if hasattr(generator, "modules") else None
    if module is not None and hasattr(generator, "_encode_structures") and hasattr(
        module, "features"
    ):
        return _CrystalVAEEncoder(generator)
    return None


class _CrystalVAEEncoder:
    """Latent means of a trained crystal VAE; NaN rows for structures it cannot encode."""

    def __init__(self, generator: Any) -> None:
        self.generator = generator
        self.name = getattr(generator, "name", "crystal_vae")

    def encode(self, structures: Sequence[Structure]) -> np.ndarray:
        import torch

        gen = self.generator
        module = gen.modules["vae"]
        n_props = len(gen.config.get("property_columns", []))
        out = np.full((len(structures), module.latent_dim), np.nan)
        if not structures:
            return out
        try:
            tensors, kept = gen._encode_structures(
                list(structures), np.full((len(structures), n_props), np.nan))
        except ValueError:  # none fits the model's elements / size
            return out
        device = next(module.parameters()).device
        with torch.no_grad():
            x = module.features(tensors["lat"].to(device), tensors["cls"].to(device),
                                tensors["frac"].to(device))
            cond = tensors["cond"].to(device) if module.n_cond else None
            mu, _ = module.encode(x, cond)
        out[kept] = mu.cpu().numpy()
        return out


@dataclass
class MapCandidate:
    """A campaign candidate on the map: its proposed structure, round and (when evaluated)
    energy above hull."""

    structure: Structure
    round: int
    e_above_hull: float | None = None
    properties: dict[str, float] = field(default_factory=dict)


def project(latents: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """2-D projection of ``latents`` (n, d): ``"pca"`` or ``"tsne"``."""
    x = np.asarray(latents, dtype=float)
    if x.ndim != 2:
        raise ValueError(f"latents must be a 2-D array (n, d), got shape {x.shape}")
    if x.shape[1] <= 2:
        return np.pad(x, ((0, 0), (0, 2 - x.shape[1])))
    if method == "pca":
        centred = x - x.mean(axis=0)
        _u, _s, vt = np.linalg.svd(centred, full_matrices=False)
        out = centred @ vt[:2].T
        # a sign convention, so the same data always gives the same picture
        signs = np.sign(out[np.argmax(np.abs(out), axis=0), range(2)])
        return out * np.where(signs == 0, 1, signs)
    if method == "tsne":
        try:
            from sklearn.manifold import TSNE
        except ImportError as err:  # pragma: no cover - sklearn is a dependency here
            raise ValueError("method='tsne' needs scikit-learn; use method='pca'") from err
        perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
        return TSNE(n_components=2, perplexity=perplexity, init="pca",
                    random_state=seed).fit_transform(x)
    raise ValueError(f"unknown projection {method!r}; use 'pca' or 'tsne'")


def _encode(encoder: LatentEncoder, structures: Sequence[Structure]) -> np.ndarray:
    if not structures:
        return np.zeros((0, 0))
    z = np.asarray(encoder.encode(list(structures)), dtype=float)
    if z.ndim != 2 or len(z) != len(structures):
        raise ValueError(
            f"encode returned shape {z.shape} for {len(structures)} structures; expected (n, d)"
        )
    return z


def latent_map(
    encoder: LatentEncoder,
    path: str | Path,
    *,
    training: Sequence[Structure] = (),
    samples: Sequence[Structure] = (),
    candidates: Sequence[MapCandidate] = (),
    color_by: Sequence[str] = ("source", "round", "stability"),
    property_name: str | None = None,
    training_properties: Sequence[float] | None = None,
    stability_threshold: float = 0.1,
    method: str = "pca",
    title: str = "",
    seed: int = 0,
) -> Path:
    """Write a PNG with one panel per ``color_by`` mode, all sharing one projection.

    Parameters
    ----------
    encoder
        Anything with ``encode(structures) -> (n, d)`` latent means.
    training, samples, candidates
        The three groups of points; any may be empty.
    color_by
        Panels: ``"source"`` (training grey, samples blue, candidates orange), ``"round"``
        (candidates by the round they were proposed), ``"stability"`` (candidates by energy
        above hull; unevaluated ones hollow), ``"property"`` (training data by
        ``training_properties``, candidates by ``properties[property_name]``).
    method
        ``"pca"`` (default) or ``"tsne"``.

    Returns
    -------
    Path
        The written PNG.
    """
    unknown = [c for c in color_by if c not in COLOR_MODES]
    if unknown:
        raise ValueError(f"unknown color_by {unknown}; choose from {COLOR_MODES}")
    groups = [("training", list(training)), ("samples", list(samples)),
              ("candidates", [c.structure for c in candidates])]
    latents = [_encode(encoder, structures) for _, structures in groups]
    dims = {z.shape[1] for z in latents if len(z)}
    if not dims:
        raise ValueError("nothing to map: no training data, samples or candidates")
    if len(dims) > 1:
        raise ValueError(f"encode returned latents of different sizes {sorted(dims)}")
    (dim,) = dims
    stacked = np.concatenate([z if len(z) else np.zeros((0, dim)) for z in latents])
    finite = np.all(np.isfinite(stacked), axis=1)
    xy = np.full((len(stacked), 2), np.nan)
    if finite.sum() >= 2:
        xy[finite] = project(stacked[finite], method=method, seed=seed)
    n_train, n_samp = len(groups[0][1]), len(groups[1][1])
    at = {"training": slice(0, n_train), "samples": slice(n_train, n_train + n_samp),
          "candidates": slice(n_train + n_samp, len(stacked))}

    from matloop.results.figures import pyplot, save_figure

    plt = pyplot()

    panels = list(color_by)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 4.0), squeeze=False)
    cxy = xy[at["candidates"]]
    for ax, mode in zip(axes[0], panels, strict=True):
        # context: training data and samples, faint
        ax.scatter(*xy[at["training"]].T, s=10, color="0.7", alpha=0.6, label="training data",
                   zorder=1)
        if mode == "source":
            ax.scatter(*xy[at["samples"]].T, s=10, color="tab:blue", alpha=0.5,
                       label="samples", zorder=2)
            ax.scatter(*cxy.T, s=22, color="tab:orange", edgecolors="black", linewidths=0.3,
                       label="candidates", zorder=3)
            ax.set_title("by source", fontsize=10)
        elif mode == "round":
            ax.scatter(*xy[at["samples"]].T, s=8, color="lightsteelblue", alpha=0.4,
                       label="samples", zorder=2)
            rounds = np.array([c.round for c in candidates])
            if len(rounds):
                sc = ax.scatter(*cxy.T, s=24, c=rounds, cmap="plasma", edgecolors="black",
                                linewidths=0.3, zorder=3)
                bar = fig.colorbar(sc, ax=ax, shrink=0.8)
                bar.set_label("round proposed")
                bar.set_ticks(sorted(set(rounds.tolist())))
            ax.set_title("candidates by round", fontsize=10)
        elif mode == "stability":
            ax.scatter(*xy[at["samples"]].T, s=8, color="lightsteelblue", alpha=0.4,
                       label="samples", zorder=2)
            e = np.array([np.nan if c.e_above_hull is None else c.e_above_hull
                          for c in candidates], dtype=float)
            done = np.isfinite(e)
            ax.scatter(*cxy[~done].T, s=20, facecolors="none", edgecolors="0.4",
                       linewidths=0.6, label="not evaluated", zorder=3)
            if done.any():
                sc = ax.scatter(*cxy[done].T, s=26, c=np.clip(e[done], 0, 0.5), cmap="viridis",
                                vmin=0, vmax=0.5, edgecolors="black", linewidths=0.3, zorder=4)
                bar = fig.colorbar(sc, ax=ax, shrink=0.8, extend="max")
                bar.set_label("E above hull (eV/atom)")
                stable = done & (np.nan_to_num(e, nan=np.inf) <= stability_threshold)
                ax.scatter(*cxy[stable].T, s=90, facecolors="none", edgecolors="red",
                           linewidths=1.4, label=f"≤ {stability_threshold} eV/atom", zorder=5)
            ax.set_title("candidates by stability", fontsize=10)
        else:  # property
            values = np.concatenate([
                np.asarray(training_properties if training_properties is not None
                           else [np.nan] * n_train, dtype=float),
                np.full(n_samp, np.nan),
                np.array([c.properties.get(property_name or "", np.nan) for c in candidates],
                         dtype=float),
            ])
            has = np.isfinite(values) & np.all(np.isfinite(xy), axis=1)
            if has.any():
                sc = ax.scatter(*xy[has].T, s=20, c=values[has], cmap="coolwarm", zorder=3,
                                edgecolors="black", linewidths=0.2)
                fig.colorbar(sc, ax=ax, shrink=0.8).set_label(property_name or "property")
            ax.set_title(f"by {property_name or 'property'}", fontsize=10)
        ax.set_xlabel(f"{method.upper()} 1")
        ax.set_ylabel(f"{method.upper()} 2")
        ax.tick_params(labelsize=7)
        handles, names = ax.get_legend_handles_labels()
        if handles:
            ax.legend(fontsize=7, loc="best", framealpha=0.8)
    n_bad = int((~finite).sum())
    counts = (f"{n_train} training, {n_samp} samples, {len(candidates)} candidates"
              + (f"; {n_bad} could not be encoded" if n_bad else ""))
    fig.suptitle(f"{title}  ({counts})" if title else counts, fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, path, dpi=100)


def campaign_latent_maps(
    store: MatloopStore,
    campaign: str,
    generators: Sequence[Any],
    folder: Path,
    *,
    n_samples: int = 100,
    method: str = "pca",
    seed: int = 0,
) -> dict[str, Path]:
    """One map per generator with a latent space: its training data (what it remembers of
    its fit, else the campaign's seed crystals), ``n_samples`` fresh samples and every
    candidate of the campaign. Returns ``{generator name: PNG path}``."""
    from pymatgen.core import Structure

    doc = store.get_campaign(campaign)
    threshold = float(doc.config.get("objective", {}).get("stability_threshold", 0.1))
    evaluations = {e.candidate_id: e for e in store.evaluations(campaign)}
    candidates = [
        MapCandidate(
            Structure.from_dict(c.structure), c.round,
            evaluations[c.candidate_id].e_above_hull if c.candidate_id in evaluations else None,
        )
        for c in store.candidates(campaign)
    ]
    from matloop.results.rows import campaign_potential

    potential = campaign_potential(doc)
    seeds = [Structure.from_dict(r.structure)
             for r in store.references(potential or "", ids=doc.seed_reference_ids)]
    written: dict[str, Path] = {}
    for generator in generators:
        encoder = latent_encoder(generator)
        if encoder is None:
            continue
        name = str(getattr(generator, "name", type(generator).__name__))
        training = list(getattr(generator, "training_structures", None)
                        or getattr(generator, "_replay", None) or seeds)
        try:
            samples = list(generator.sample(n_samples, rng=np.random.default_rng(seed)))
        except Exception as err:  # noqa: BLE001 - a map without samples is still a map
            log.warning("latent map: %s could not sample: %s", name, err)
            samples = []
        try:
            written[name] = latent_map(
                encoder, folder / f"latent_{name}.png", training=training, samples=samples,
                candidates=candidates, stability_threshold=threshold, method=method,
                title=f"{name} latent space", seed=seed,
            )
        except Exception as err:  # noqa: BLE001
            log.warning("latent map of %s failed: %s", name, err)
    return written
