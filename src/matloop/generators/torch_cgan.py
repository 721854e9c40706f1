"""Conditional WGAN-GP on the crystal matrix with a property predictor in the loop.

The CCDCGAN / DING idea: a generator ``G(z, c)`` proposes crystals for a condition ``c``, a
critic ``D(x, c)`` judges them against real crystals with the same condition, and a
predictor (constraint network) ``P(x)``, trained on the real crystals, scores the property of
what ``G`` makes; ``G`` minimises ``-D(G(z, c), c) + lambda * |P(G(z, c)) - c|^2``, so the
predictor pulls samples towards the asked property beyond what the critic enforces.

Crystals are presented to both networks as standardised lattice features, per-slot species
probabilities (one-hots for real crystals, softmax for generated ones) and ``(cos, sin)`` of
the fractional coordinates, the features of :mod:`matloop.generators.torch_crystal`.

Registry name: ``crystal_cgan``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from matloop.generators.torch_common import mlp, seed_everything
from matloop.generators.torch_crystal import TWO_PI, CrystalCVAEGenerator

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from pymatgen.core import Structure


class CrystalCGANModule(nn.Module):
    """Generator, critic and predictor over flattened crystal features."""

    def __init__(
        self,
        n_slots: int,
        n_classes: int,
        n_cond: int,
        latent_dim: int = 32,
        hidden: int = 256,
        gp_weight: float = 10.0,
        pred_weight: float = 1.0,
    ):
        super().__init__()
        self.n_slots, self.n_classes, self.n_cond = n_slots, n_classes, n_cond
        self.latent_dim, self.gp_weight, self.pred_weight = latent_dim, gp_weight, pred_weight
        n_x = 6 + n_slots * (n_classes + 6)
        self.generator = mlp([latent_dim + n_cond, hidden, hidden, hidden, n_x])
        self.critic = mlp([n_x + n_cond, hidden, hidden, 1], act=nn.LeakyReLU)
        self.predictor = mlp([n_x, hidden, hidden // 2, n_cond])

    def real_features(
        self, lat: torch.Tensor, cls: torch.Tensor, frac: torch.Tensor
    ) -> torch.Tensor:
        onehot = F.one_hot(cls, self.n_classes).float()
        ang = TWO_PI * frac
        sincos = torch.cat([torch.cos(ang), torch.sin(ang)], dim=-1)
        return torch.cat([lat, onehot.flatten(1), sincos.flatten(1)], dim=1)

    def generate(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Generated features: lattice, softmax species, unit ``(cos, sin)`` per coordinate."""
        out = self.generator(torch.cat([z, cond], dim=1))
        b, n, k = len(z), self.n_slots, self.n_classes
        lat = out[:, :6]
        probs = torch.softmax(out[:, 6 : 6 + n * k].reshape(b, n, k), dim=-1)
        vec = out[:, 6 + n * k :].reshape(b, n, 3, 2)
        vec = vec / vec.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        sincos = torch.cat([vec[..., 0], vec[..., 1]], dim=-1)  # (cos x, cos y, cos z, sin ...)
        return torch.cat([lat, probs.flatten(1), sincos.flatten(1)], dim=1)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(lat, species probabilities, frac)`` of feature rows."""
        b, n, k = len(x), self.n_slots, self.n_classes
        probs = x[:, 6 : 6 + n * k].reshape(b, n, k)
        sincos = x[:, 6 + n * k :].reshape(b, n, 6)
        frac = torch.remainder(torch.atan2(sincos[..., 3:], sincos[..., :3]) / TWO_PI, 1.0)
        return x[:, :6], probs, frac

    def score(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.critic(torch.cat([x, cond], dim=1)).squeeze(1)

    def critic_loss(self, real: torch.Tensor, cond: torch.Tensor, weights: torch.Tensor | None):
        z = torch.randn(len(real), self.latent_dim, device=real.device)
        fake = self.generate(z, cond).detach()
        eps = torch.rand(len(real), 1, device=real.device)
        mix = (eps * real + (1 - eps) * fake).requires_grad_(True)
        grad = torch.autograd.grad(self.score(mix, cond).sum(), mix, create_graph=True)[0]
        gp = ((grad.norm(dim=1) - 1) ** 2).mean()
        real_score = self.score(real, cond)
        real_term = (
            real_score.mean()
            if weights is None
            else ((real_score * weights).sum() / weights.sum().clamp_min(1e-8))
        )
        return self.score(fake, cond).mean() - real_term + self.gp_weight * gp

    def predictor_loss(self, real: torch.Tensor, prop: torch.Tensor) -> torch.Tensor:
        known = ~torch.isnan(prop)
        err = torch.where(
            known, self.predictor(real) - torch.nan_to_num(prop), torch.zeros_like(prop)
        )
        return (err**2).sum(dim=1).mean()

    def generator_loss(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.randn(len(cond), self.latent_dim, device=cond.device)
        fake = self.generate(z, cond)
        adv = -self.score(fake, cond).mean()
        pred = ((self.predictor(fake) - cond) ** 2).sum(dim=1).mean()
        return adv + self.pred_weight * pred, pred


class CrystalCGANGenerator(CrystalCVAEGenerator):
    """Conditional WGAN-GP with a predictor (constraint) network (registry ``crystal_cgan``).

    Shares the crystal-matrix features and the sampling front door of the crystal CVAE;
    ``conditions`` ask for a value or a ``(low, high)`` window per property.
    """

    name: ClassVar[str] = "crystal_cgan"

    def __init__(
        self,
        *args: Any,
        lr: float = 2e-4,
        epochs: int = 200,
        n_critic: int = 5,
        gp_weight: float = 10.0,
        pred_weight: float = 1.0,
        **kwargs: Any,
    ):
        super().__init__(*args, lr=lr, epochs=epochs, **kwargs)
        self.config.update(n_critic=n_critic, gp_weight=gp_weight, pred_weight=pred_weight)

    @property
    def module(self) -> CrystalCGANModule:  # type: ignore[override]
        return self.modules["cgan"]  # type: ignore[return-value]

    def _build(self, config: dict[str, Any]) -> None:
        from matloop.generators.torch_common import Standardizer

        self.modules = {
            "cgan": CrystalCGANModule(
                config["max_atoms"],
                len(config["elements"]) + 1,
                len(config["property_columns"]),
                config["latent_dim"],
                config["hidden"],
                config["gp_weight"],
                config["pred_weight"],
            ).to(self.device)
        }
        self._lat_std = Standardizer.from_dict(config["lattice_stats"])
        self._prop_std = Standardizer.from_dict(config["property_stats"])

    def _fit_aggregate_posterior(self, tensors) -> None:  # no latent posterior in a GAN
        return None

    def _train(
        self,
        tensors: Mapping[str, torch.Tensor],
        epochs: int,
        lr: float,
        weights: torch.Tensor | None = None,
        seed: int = 0,
    ) -> list[dict[str, float]]:
        m = self.module.train()
        dev = self.device
        real = m.real_features(*(tensors[k].to(dev) for k in ("lat", "cls", "frac")))
        cond, prop = tensors["cond"].to(dev), tensors["prop"].to(dev)
        w = None if weights is None else weights.to(dev)
        opt_g = torch.optim.Adam(m.generator.parameters(), lr=lr, betas=(0.5, 0.9))
        opt_d = torch.optim.Adam(m.critic.parameters(), lr=lr, betas=(0.5, 0.9))
        opt_p = torch.optim.Adam(m.predictor.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(seed)
        bs, history = self.config["batch_size"], []
        for _ in range(epochs):
            perm = torch.randperm(len(real), generator=gen).to(dev)
            logs = {"critic": 0.0, "generator": 0.0, "predictor": 0.0, "pred_gap": 0.0}
            steps = 0
            for i, start in enumerate(range(0, len(real), bs)):
                idx = perm[start : start + bs]
                d_loss = m.critic_loss(real[idx], cond[idx], None if w is None else w[idx])
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
                p_loss = m.predictor_loss(real[idx], prop[idx])
                opt_p.zero_grad(set_to_none=True)
                p_loss.backward()
                opt_p.step()
                logs["critic"] += float(d_loss)
                logs["predictor"] += float(p_loss)
                if i % self.config["n_critic"] == 0:
                    g_loss, gap = m.generator_loss(cond[idx])
                    opt_g.zero_grad(set_to_none=True)
                    g_loss.backward()
                    opt_g.step()
                    logs["generator"] += float(g_loss)
                    logs["pred_gap"] += float(gap)
                    steps += 1
            n_batches = i + 1
            history.append(
                {
                    "critic": logs["critic"] / n_batches,
                    "predictor": logs["predictor"] / n_batches,
                    "generator": logs["generator"] / max(steps, 1),
                    "pred_gap": logs["pred_gap"] / max(steps, 1),
                }
            )
        m.eval()
        return history

    def fit(
        self,
        structures: Sequence[Structure],
        properties: Mapping[str, Sequence[float]] | None = None,
    ) -> None:
        """Train critic, predictor and generator from scratch."""
        from matloop.generators.torch_common import Standardizer, properties_matrix
        from matloop.representations.composition import elements_of

        seed_everything(self.config["seed"])
        columns = self.config["property_columns"]
        if not columns:
            raise ValueError("crystal_cgan needs property_columns")
        props = properties_matrix(properties, columns, len(structures))
        if self.config["elements"] is None:
            self.config["elements"] = elements_of(structures)
        if self.config["max_atoms"] is None:
            self.config["max_atoms"] = max(len(s) for s in structures)
        params = [
            s.get_reduced_structure("niggli").lattice.parameters
            for s in structures
            if len(s) <= self.config["max_atoms"]
        ]
        self.config["lattice_stats"] = Standardizer.fit(
            self._lattice_features(np.array(params))
        ).to_dict()
        self.config["property_stats"] = Standardizer.fit(props).to_dict()
        self._build(self.config)
        tensors, kept = self._encode_structures(structures, props)
        start = time.perf_counter()
        self.history = self._train(
            tensors, self.config["epochs"], self.config["lr"], seed=self.config["seed"]
        )
        self.train_seconds = time.perf_counter() - start
        self._remember([structures[i] for i in kept], props[kept])
        self.version += 1

    def _finetune(self, structures, weights, props) -> None:
        tensors, kept = self._encode_structures(structures, props)
        self._train(
            tensors,
            self.config["finetune_epochs"],
            self.config["finetune_lr"],
            weights=torch.tensor(weights[kept], dtype=torch.float32),
            seed=self.version,
        )

    @torch.no_grad()
    def _sample_batch(self, n, conditions, rng, prior, temperature) -> list[Structure | None]:
        from matloop.generators.torch_common import condition_values

        fallback = (
            self._replay_props if self._replay_props is not None else self._prop_std.mean[None, :]
        )
        values = condition_values(conditions, self.config["property_columns"], n, rng, fallback)
        cond = torch.tensor(
            self._prop_std.transform(values), dtype=torch.float32, device=self.device
        )
        z = (
            torch.tensor(
                rng.standard_normal((n, self.module.latent_dim)),
                dtype=torch.float32,
                device=self.device,
            )
            * temperature
        )
        lat, probs, frac = self.module.split(self.module.generate(z, cond))
        params = self._lat_std.inverse(lat.cpu().numpy())
        params = np.concatenate([np.exp(params[:, :3]), params[:, 3:]], axis=1)
        classes = self._masked_logits(probs).argmax(dim=-1).cpu().numpy()
        frac_np = frac.cpu().numpy()
        return [
            self._safe_decode(p, c, f) for p, c, f in zip(params, classes, frac_np, strict=True)
        ]

    def reconstruct(self, structures, properties=None):
        raise NotImplementedError("a GAN has no encoder: reconstruction is not defined")
