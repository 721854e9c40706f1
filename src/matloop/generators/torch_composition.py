"""Composition generators: VAE, conditional VAE and WGAN-GP (MatGAN's idea).

All three work on the one-hot count matrix of
:class:`matloop.representations.composition.CompositionEncoder` (row = element, column =
count 0..max_count) and decode by argmax per row. A composition becomes a crystal through a
:class:`~matloop.generators.torch_common.TemplateBank`: a training crystal with the same
stoichiometry pattern, re-decorated by electronegativity order and rescaled to the volume of
fitted per-element volumes. Compositions with no template pattern, no atoms or more than
``max_atoms`` atoms are dropped and redrawn.

Registry names: ``composition_vae``, ``composition_cvae`` and ``composition_wgan``.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from matloop.generators.torch_common import (
    Standardizer,
    TemplateBank,
    TorchGenerator,
    condition_values,
    kl_annealing,
    mlp,
    properties_matrix,
    resolve_device,
    seed_everything,
    train_loop,
    weighted_mean,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from pymatgen.core import Composition, Structure

log = logging.getLogger(__name__)


class CompositionVAEModule(nn.Module):
    """(C)VAE over one-hot count matrices; batch keys ``x`` (B, E, K+1) and ``cond`` (B, C)."""

    def __init__(
        self,
        n_elements: int,
        n_counts: int,
        n_cond: int = 0,
        latent_dim: int = 16,
        hidden: int = 256,
        beta: float = 0.05,
        embed_dim: int = 16,
    ):
        super().__init__()
        self.n_elements, self.n_counts, self.n_cond = n_elements, n_counts, n_cond
        self.latent_dim, self.beta = latent_dim, beta
        # Per-element embeddings scaled by count: the encoder sees sum-of-elements style input.
        self.encoder = mlp([n_elements * n_counts + n_cond, hidden, hidden, 2 * latent_dim])
        self.decoder = mlp([latent_dim + n_cond, hidden, hidden, n_elements * n_counts])
        self.register_buffer("z_mean", torch.zeros(latent_dim))
        self.register_buffer("z_chol", torch.eye(latent_dim))

    def encode(
        self, x: torch.Tensor, cond: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = x.flatten(1)
        if self.n_cond:
            h = torch.cat([h, cond], dim=1)
        mu, logvar = self.encoder(h).chunk(2, dim=1)
        return mu, logvar.clamp(-12, 6)

    def decode(self, z: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        h = z if not self.n_cond else torch.cat([z, cond], dim=1)
        return self.decoder(h).reshape(len(z), self.n_elements, self.n_counts)

    def loss(
        self,
        batch: Mapping[str, torch.Tensor],
        weights: torch.Tensor | None = None,
        epoch: int = 0,
        epochs: int = 1,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        x, cond = batch["x"], batch.get("cond")
        mu, logvar = self.encode(x, cond)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        logits = self.decode(z, cond)
        rec = F.cross_entropy(logits.transpose(1, 2), x.argmax(dim=-1), reduction="none").sum(dim=1)
        kl = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(dim=1)
        loss = weighted_mean(rec + kl_annealing(epoch, epochs, self.beta) * kl, weights)
        logs = {"rec": rec.mean(), "kl": kl.mean(), "loss": loss}
        return loss, {k: float(v.detach()) for k, v in logs.items()}


class CompositionWGANModule(nn.Module):
    """WGAN-GP: generator ``z -> softmax count matrix``; critic on flattened matrices."""

    def __init__(
        self,
        n_elements: int,
        n_counts: int,
        n_cond: int = 0,
        latent_dim: int = 32,
        hidden: int = 256,
        gp_weight: float = 10.0,
        straight_through: bool = False,
    ):
        super().__init__()
        self.n_elements, self.n_counts, self.n_cond = n_elements, n_counts, n_cond
        self.latent_dim, self.gp_weight = latent_dim, gp_weight
        self.straight_through = straight_through
        self.generator = mlp([latent_dim + n_cond, hidden, hidden, n_elements * n_counts])
        self.critic = mlp([n_elements * n_counts + n_cond, hidden, hidden, 1], act=nn.LeakyReLU)

    def generate(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = z if not self.n_cond else torch.cat([z, cond], dim=1)
        logits = self.generator(h).reshape(len(z), self.n_elements, self.n_counts)
        probs = torch.softmax(logits, dim=-1)
        if self.straight_through and self.training:
            # One-hot of the argmax forward, softmax gradient backward: the critic sees
            # one-hots like the real data's and cannot judge by softness alone.
            hard = F.one_hot(probs.argmax(dim=-1), self.n_counts).to(probs.dtype)
            probs = hard + probs - probs.detach()
        return probs

    def score(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = x.flatten(1)
        if self.n_cond:
            h = torch.cat([h, cond], dim=1)
        return self.critic(h).squeeze(1)

    def critic_loss(
        self, real: torch.Tensor, cond: torch.Tensor | None, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        z = torch.randn(len(real), self.latent_dim, device=real.device)
        fake = self.generate(z, cond).detach()
        eps = torch.rand(len(real), 1, 1, device=real.device)
        mix = (eps * real + (1 - eps) * fake).requires_grad_(True)
        grad = torch.autograd.grad(self.score(mix, cond).sum(), mix, create_graph=True)[0]
        gp = ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
        return (
            self.score(fake, cond).mean()
            - weighted_mean(self.score(real, cond), weights)
            + (self.gp_weight * gp)
        )

    def generator_loss(
        self, n: int, cond: torch.Tensor | None, device: torch.device
    ) -> torch.Tensor:
        z = torch.randn(n, self.latent_dim, device=device)
        return -self.score(self.generate(z, cond), cond).mean()


def train_wgan(
    module: CompositionWGANModule,
    x: torch.Tensor,
    cond: torch.Tensor | None,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    device: torch.device,
    seed: int,
    n_critic: int = 5,
    weights: torch.Tensor | None = None,
) -> list[dict[str, float]]:
    """WGAN-GP training: ``n_critic`` critic steps per generator step."""
    module.to(device).train()
    x = x.to(device)
    cond = None if cond is None else cond.to(device)
    w = None if weights is None else weights.to(device)
    opt_g = torch.optim.Adam(module.generator.parameters(), lr=lr, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(module.critic.parameters(), lr=lr, betas=(0.5, 0.9))
    gen = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen).to(device)
        d_sum, g_sum, steps = 0.0, 0.0, 0
        for i, start in enumerate(range(0, len(x), batch_size)):
            idx = perm[start : start + batch_size]
            c = None if cond is None else cond[idx]
            d_loss = module.critic_loss(x[idx], c, None if w is None else w[idx])
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            d_sum += float(d_loss)
            if i % n_critic == 0:
                g_loss = module.generator_loss(len(idx), c, device)
                opt_g.zero_grad(set_to_none=True)
                g_loss.backward()
                opt_g.step()
                g_sum += float(g_loss)
                steps += 1
        history.append({"critic": d_sum / max(1, i + 1), "generator": g_sum / max(1, steps)})
    module.eval()
    return history


class _CompositionGenerator(TorchGenerator):
    """Shared front door of the composition models (encoding, templates, sampling)."""

    conditional: ClassVar[bool] = False

    def __init__(
        self,
        elements: Sequence[str] | None = None,
        max_count: int = 8,
        max_atoms: int = 20,
        property_columns: Sequence[str] = (),
        latent_dim: int = 16,
        hidden: int = 256,
        epochs: int = 200,
        batch_size: int = 128,
        lr: float = 1e-3,
        seed: int = 0,
        device: str | None = None,
        finetune_epochs: int = 5,
        finetune_lr: float = 3e-4,
        templates_per_pattern: int = 20,
        **extra: Any,
    ):
        super().__init__(
            elements=None if elements is None else list(elements),
            max_count=max_count,
            max_atoms=max_atoms,
            property_columns=list(property_columns),
            latent_dim=latent_dim,
            hidden=hidden,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            device=device,
            finetune_epochs=finetune_epochs,
            finetune_lr=finetune_lr,
            templates_per_pattern=templates_per_pattern,
            **extra,
        )
        self.train_seconds: float | None = None
        self._bank: TemplateBank | None = None

    @property
    def encoder(self):
        from matloop.representations.composition import CompositionEncoder

        return CompositionEncoder(
            self.config["elements"],
            max_count=self.config["max_count"],
            max_atoms=self.config["max_atoms"],
        )

    def _tensors(
        self, structures: Sequence[Structure], props: np.ndarray
    ) -> tuple[dict, np.ndarray]:
        enc = self.encoder
        xs, kept = [], []
        for i, s in enumerate(structures):
            try:
                xs.append(enc.encode_onehot(s.composition))
            except ValueError:
                continue
            kept.append(i)
        if not kept:
            raise ValueError("no composition fits the model's element set / max_count")
        kept_arr = np.asarray(kept)
        cond = self._prop_std.transform(props[kept_arr]) if props.shape[1] else props[kept_arr]
        return {
            "x": torch.tensor(np.array(xs), dtype=torch.float32),
            "cond": torch.tensor(np.nan_to_num(cond), dtype=torch.float32),
        }, kept_arr

    def _prepare(
        self, structures: Sequence[Structure], properties
    ) -> tuple[dict, np.ndarray, np.ndarray]:
        from matloop.representations.composition import elements_of

        seed_everything(self.config["seed"])
        columns = self.config["property_columns"]
        if self.conditional and not columns:
            raise ValueError(f"{self.name} needs property_columns")
        props = properties_matrix(properties, columns if self.conditional else [], len(structures))
        if self.config["elements"] is None:
            self.config["elements"] = elements_of(structures)
        self.config["property_stats"] = (
            Standardizer.fit(props).to_dict() if self.conditional else {"mean": [], "std": []}
        )
        per = self.config["templates_per_pattern"]
        bank = TemplateBank(structures, max_templates_per_pattern=per)
        self.config["templates"] = [t.as_dict() for ts in bank.templates.values() for t in ts]
        self.config["atomic_volume"] = bank.atomic_volume
        self._build(self.config)
        tensors, kept = self._tensors(structures, props)
        return tensors, kept, props

    def _build_bank(self, config: dict[str, Any]) -> None:
        from pymatgen.core import Structure

        templates = [Structure.from_dict(d) for d in config["templates"]]
        bank = TemplateBank(templates, max_templates_per_pattern=len(templates) or 1)
        bank.atomic_volume.update(config["atomic_volume"])
        self._bank = bank
        self._prop_std = Standardizer.from_dict(config["property_stats"])

    def _cond(self, n: int, conditions, rng) -> torch.Tensor | None:
        if not self.conditional:
            if conditions:
                raise ValueError(f"{self.name} is unconditional; it takes no conditions")
            return None
        fallback = (
            self._replay_props if self._replay_props is not None else self._prop_std.mean[None, :]
        )
        values = condition_values(conditions, self.config["property_columns"], n, rng, fallback)
        return torch.tensor(
            self._prop_std.transform(values), dtype=torch.float32, device=self.device
        )

    def _draw(self, n: int, cond: torch.Tensor | None, rng: np.random.Generator) -> np.ndarray:
        """``(n, E, K+1)`` probabilities or logits; subclasses implement."""
        raise NotImplementedError

    def sample_compositions(
        self,
        n: int,
        conditions: Mapping[str, Any] | None = None,
        rng: np.random.Generator | None = None,
    ) -> list[Composition]:
        """``n`` decoded compositions (empty or over-sized ones dropped)."""
        rng = self._sampling_rng(rng)
        out = []
        with torch.no_grad():
            mats = self._draw(n, self._cond(n, conditions, rng), rng)
        allowed = self._allowed_elements()
        if allowed is not None:
            # Elements outside the campaign's chemical space get count 0.
            outside = [i for i, el in enumerate(self.config["elements"]) if el not in allowed]
            mats = np.array(mats, copy=True)
            mats[:, outside, 0] = np.inf
        enc = self.encoder
        for m in mats:
            comp = enc.decode_onehot(m)
            if 0 < comp.num_atoms <= self.config["max_atoms"]:
                out.append(comp)
        return out

    def sample(
        self,
        n: int,
        conditions: Mapping[str, Any] | None = None,
        rng: np.random.Generator | None = None,
    ) -> list[Structure]:
        """Crystals for sampled compositions (template decoration); up to 10 rounds of redraws.

        A decorated template that is not physically sound (:mod:`matloop.soundness`) is
        redrawn, like one outside the chemical space.

        With a ``chemical_space`` set, elements outside it are given count 0 at decoding and
        crystals outside its cell-size bounds are redrawn."""
        rng = rng or np.random.default_rng()
        self.reset_soundness()
        out: list[Structure] = []
        for _ in range(10):
            need = n - len(out)
            if need <= 0:
                break
            for comp in self.sample_compositions(max(need, 16), conditions, rng):
                s = self._bank.structure(comp, rng)
                if s is not None and self._allows(s) and self._sound(s):
                    out.append(s)
        return out[:n]

    def _finetune(self, structures, weights, props) -> None:
        tensors, kept = self._tensors(
            structures, props if self.conditional else np.zeros((len(structures), 0))
        )
        self._train(
            tensors,
            epochs=self.config["finetune_epochs"],
            lr=self.config["finetune_lr"],
            weights=torch.tensor(weights[kept], dtype=torch.float32),
        )

    def _train(self, tensors, epochs, lr, weights=None) -> list[dict[str, float]]:
        raise NotImplementedError

    def fit(
        self,
        structures: Sequence[Structure],
        properties: Mapping[str, Sequence[float]] | None = None,
    ) -> None:
        """Train from scratch on the compositions of ``structures``."""
        tensors, kept, props = self._prepare(structures, properties)
        start = time.perf_counter()
        self.history = self._train(tensors, epochs=self.config["epochs"], lr=self.config["lr"])
        self.train_seconds = time.perf_counter() - start
        self._remember([structures[i] for i in kept], props[kept] if self.conditional else None)
        self.version += 1


class CompositionVAEGenerator(_CompositionGenerator):
    """Composition VAE (registry ``composition_vae``); samples from the aggregate posterior."""

    name: ClassVar[str] = "composition_vae"

    def __init__(self, *args: Any, beta: float = 0.05, **kwargs: Any):
        super().__init__(*args, beta=beta, **kwargs)

    def _build(self, config: dict[str, Any]) -> None:
        self._build_bank(config)
        n_cols = len(config["property_columns"]) if self.conditional else 0
        self.modules = {
            "vae": CompositionVAEModule(
                len(config["elements"]),
                config["max_count"] + 1,
                n_cols,
                config["latent_dim"],
                config["hidden"],
                config["beta"],
            ).to(self.device)
        }

    def _train(self, tensors, epochs, lr, weights=None):
        m = self.modules["vae"]
        hist = train_loop(
            m,
            tensors,
            epochs=epochs,
            batch_size=self.config["batch_size"],
            lr=lr,
            device=self.device,
            weights=weights,
            seed=self.config["seed"] + self.version,
        )
        with torch.no_grad():
            mu, _ = m.encode(tensors["x"].to(self.device), tensors["cond"].to(self.device))
            m.z_mean.copy_(mu.mean(0))
            m.z_chol.copy_(
                torch.linalg.cholesky(
                    torch.cov(mu.T) + 1e-4 * torch.eye(m.latent_dim, device=mu.device)
                )
            )
        return hist

    def _draw(self, n, cond, rng):
        m = self.modules["vae"]
        eps = torch.tensor(
            rng.standard_normal((n, m.latent_dim)), dtype=torch.float32, device=self.device
        )
        return m.decode(m.z_mean + eps @ m.z_chol.T, cond).cpu().numpy()


class CompositionCVAEGenerator(CompositionVAEGenerator):
    """Composition conditional VAE (registry ``composition_cvae``)."""

    name: ClassVar[str] = "composition_cvae"
    conditional: ClassVar[bool] = True


class CompositionWGANGenerator(_CompositionGenerator):
    """Composition WGAN-GP after MatGAN (registry ``composition_wgan``).

    ``update`` weights the critic's real term by the rewards, which pulls the generator
    towards the rewarded compositions.

    ``straight_through`` (default): in training the critic sees the generator's argmax
    one-hots (softmax gradient backward), as it sees one-hots for real compositions. With
    softmax probabilities it judges by softness alone; measured on perov-5 (2,000 samples),
    the decodable share rose from 0.50 to 0.74, compositional validity from 0.48 to 0.70
    and composition COV-R from 0.22 to 0.65.
    """

    name: ClassVar[str] = "composition_wgan"

    def __init__(
        self,
        *args: Any,
        latent_dim: int = 32,
        lr: float = 2e-4,
        n_critic: int = 5,
        gp_weight: float = 10.0,
        straight_through: bool = True,
        **kwargs: Any,
    ):
        super().__init__(
            *args,
            latent_dim=latent_dim,
            lr=lr,
            n_critic=n_critic,
            gp_weight=gp_weight,
            straight_through=straight_through,
            **kwargs,
        )

    def _build(self, config: dict[str, Any]) -> None:
        self._build_bank(config)
        self.modules = {
            "wgan": CompositionWGANModule(
                len(config["elements"]),
                config["max_count"] + 1,
                0,
                config["latent_dim"],
                config["hidden"],
                config["gp_weight"],
                straight_through=config.get("straight_through", False),
            ).to(self.device)
        }

    def _train(self, tensors, epochs, lr, weights=None):
        return train_wgan(
            self.modules["wgan"],
            tensors["x"],
            None,
            epochs=epochs,
            batch_size=self.config["batch_size"],
            lr=lr,
            device=resolve_device(self.config["device"]),
            seed=self.config["seed"] + self.version,
            n_critic=self.config["n_critic"],
            weights=weights,
        )

    def _draw(self, n, cond, rng):
        m = self.modules["wgan"]
        z = torch.tensor(
            rng.standard_normal((n, m.latent_dim)), dtype=torch.float32, device=self.device
        )
        return m.generate(z).cpu().numpy()
