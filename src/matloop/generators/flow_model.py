"""Pure torch flow-matching model of crystals: lattice, fractional coordinates, atom types.

The layering follows MatterGen (a pure module that computes a loss and integrates the flow;
the front door in :mod:`matloop.generators.torch_flow`). The denoiser follows DiffCSP's
CSPNet: message passing on the fully connected cell, where an edge sees both atoms, the
lattice and Fourier features of the *fractional difference* of the two atoms. Everything the
network sees is unchanged by translating the atoms, permuting them or rotating the cell, so
the learned flow is periodic, permutation-equivariant and rotation-invariant by construction.

Paths (FlowMM-style, Miller et al. 2024), time ``t`` from noise (0) to data (1):

* fractional coordinates live on the torus: ``x0 ~ U[0, 1)^3``, ``x_t = x0 + t d`` (mod 1)
  with ``d = wrap(x1 - x0)`` the shortest periodic difference, centred (its mean over the
  atoms removed, so the flow does not learn a meaningless translation); target velocity ``d``;
* lattice: six numbers ``log(a / N^(1/3))``, ``log(b / ...)``, ``log(c / ...)``, ``alpha,
  beta, gamma`` standardised over the training set; ``l0 ~ N(0, I)``, straight line;
* atom types: discrete flow matching by masking (Campbell et al. 2024): at time ``t`` each
  atom shows its element with probability ``t`` and a MASK token otherwise; the network
  predicts the element of the masked atoms (cross entropy), and sampling unmasks each masked
  atom with probability ``dt / (1 - t)`` per step, drawing from that prediction with the
  elements outside the campaign's chemical space forbidden.

Tensors are padded: ``types (B, N)`` (0 = padding, 1..K elements, K + 1 = MASK),
``frac (B, N, 3)``, ``lat (B, 6)``, ``cond (B, C)`` standardised properties and ``has_cond
(B,)`` (0 where a crystal's condition is dropped: the model learns the unconditional flow
too, so it samples with or without a property window).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

if TYPE_CHECKING:
    from collections.abc import Mapping

TWO_PI = 2.0 * math.pi

__all__ = ["CrystalFlowModule", "lattice_features", "lattice_params", "wrap"]


def wrap(d: torch.Tensor) -> torch.Tensor:
    """Shortest periodic difference, in ``[-0.5, 0.5)``."""
    return d - torch.floor(d + 0.5)


def lattice_features(params: torch.Tensor, n_atoms: torch.Tensor) -> torch.Tensor:
    """``(B, 6)`` raw features ``log(length / N^(1/3))`` and angles (degrees) of lattice
    parameters ``(a, b, c, alpha, beta, gamma)``; :func:`lattice_params` inverts it."""
    scale = n_atoms.to(params.dtype).clamp_min(1).pow(1.0 / 3.0)[:, None]
    return torch.cat([torch.log(params[:, :3] / scale), params[:, 3:]], dim=1)


def lattice_params(features: torch.Tensor, n_atoms: torch.Tensor) -> torch.Tensor:
    """Lattice parameters from :func:`lattice_features` (angles clamped to 30-150 degrees)."""
    scale = n_atoms.to(features.dtype).clamp_min(1).pow(1.0 / 3.0)[:, None]
    return torch.cat([torch.exp(features[:, :3]) * scale, features[:, 3:].clamp(30, 150)], 1)


def _metric(lat_raw: torch.Tensor) -> torch.Tensor:
    """``(B, 3, 3)`` metric tensor ``L L^T`` of per-atom-volume lattice features."""
    length = torch.exp(lat_raw[:, :3])
    cos = torch.cos(torch.deg2rad(lat_raw[:, 3:].clamp(30, 150)))
    a, b, c = length.unbind(1)
    ca, cb, cg = cos.unbind(1)
    row0 = torch.stack([a * a, a * b * cg, a * c * cb], 1)
    row1 = torch.stack([a * b * cg, b * b, b * c * ca], 1)
    row2 = torch.stack([a * c * cb, b * c * ca, c * c], 1)
    return torch.stack([row0, row1, row2], 1)


def _time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    freqs = torch.exp(torch.linspace(0, math.log(1000.0), dim // 2, device=t.device))
    angle = t[:, None] * freqs[None, :]
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=1)


class _Layer(nn.Module):
    """One CSPNet-style message-passing layer on the fully connected cell."""

    def __init__(self, hidden: int, n_edge: int):
        super().__init__()
        # The first edge linear splits into per-node parts (computed once per atom) and a
        # per-pair part: the same map as on the concatenation, N times cheaper.
        self.src = nn.Linear(hidden, hidden, bias=False)
        self.dst = nn.Linear(hidden, hidden, bias=False)
        self.edge_in = nn.Linear(n_edge, hidden)
        self.edge_out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.node = nn.Sequential(
            nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
        )
        self.norm = nn.LayerNorm(hidden)

    def forward(self, h: torch.Tensor, edge: torch.Tensor, pair_mask: torch.Tensor):
        x = self.norm(h)
        e = self.src(x)[:, :, None, :] + self.dst(x)[:, None, :, :] + self.edge_in(edge)
        e = self.edge_out(e) * pair_mask[..., None]
        m = e.sum(2) / pair_mask.sum(2, keepdim=True).clamp_min(1.0)
        return h + self.node(torch.cat([x, m], dim=-1))


class CrystalFlowModule(nn.Module):
    """The denoiser and the flow-matching loss (module docstring).

    ``forward`` returns ``(coordinate velocity (B, N, 3), lattice velocity (B, 6), type
    logits (B, N, K))``; ``loss(batch, weights)`` returns ``(scalar, logs)`` as
    :func:`~matloop.generators.torch_common.train_loop` expects.
    """

    def __init__(
        self,
        n_elements: int,
        n_cond: int = 0,
        hidden: int = 128,
        layers: int = 4,
        n_freq: int = 8,
        time_dim: int = 32,
        coord_weight: float = 1.0,
        lattice_weight: float = 1.0,
        type_weight: float = 0.5,
        cond_dropout: float = 0.1,
    ):
        super().__init__()
        self.n_elements, self.n_cond, self.n_freq = n_elements, n_cond, n_freq
        self.time_dim = time_dim
        self.coord_weight, self.lattice_weight, self.type_weight = (
            coord_weight,
            lattice_weight,
            type_weight,
        )
        self.cond_dropout = cond_dropout
        self.mask_token = n_elements + 1
        self.embed = nn.Embedding(n_elements + 2, hidden, padding_idx=0)
        n_global = time_dim + 6 + 1 + n_cond + 1
        self.global_in = nn.Sequential(nn.Linear(n_global, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.register_buffer("rbf_centres", torch.linspace(0.5, 6.0, 12))
        n_edge = 3 * 2 * n_freq + 6 + 9 + 12
        self.layers = nn.ModuleList([_Layer(hidden, n_edge) for _ in range(layers)])
        self.out_norm = nn.LayerNorm(hidden)
        self.coord_out = nn.Linear(hidden, 3)
        self.type_out = nn.Linear(hidden, n_elements)
        self.lattice_out = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 6))
        # Standardisation of the lattice features (set by the front door from the data).
        self.register_buffer("lat_mean", torch.zeros(6))
        self.register_buffer("lat_std", torch.ones(6))

    # -- network
    def forward(
        self,
        types: torch.Tensor,
        frac: torch.Tensor,
        lat: torch.Tensor,
        t: torch.Tensor,
        mask: torch.Tensor,
        cond: torch.Tensor | None = None,
        has_cond: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n = types.shape
        maskf = mask.to(frac.dtype)
        n_atoms = maskf.sum(1)
        parts = [_time_embedding(t, self.time_dim), lat, torch.log(n_atoms.clamp_min(1))[:, None]]
        if self.n_cond:
            hc = has_cond if has_cond is not None else torch.zeros(b, device=frac.device)
            c = cond if cond is not None else torch.zeros(b, self.n_cond, device=frac.device)
            parts += [c * hc[:, None], hc[:, None]]
        else:
            parts.append(torch.zeros(b, 1, device=frac.device))
        g = self.global_in(torch.cat(parts, dim=1))
        h = self.embed(types) + g[:, None, :]

        # Edge features: Fourier features of the fractional differences (periodic), the
        # lattice (its metric tensor per unit volume) and the distance of the shortest
        # difference vector under that metric.
        d = frac[:, None, :, :] - frac[:, :, None, :]  # (B, N, N, 3): x_j - x_i
        k = torch.arange(1, self.n_freq + 1, device=frac.device, dtype=frac.dtype)
        ang = TWO_PI * d[..., None] * k
        fourier = torch.cat([torch.sin(ang), torch.cos(ang)], dim=-1).flatten(-2)
        raw = lat * self.lat_std + self.lat_mean
        metric = _metric(raw)  # per-atom-volume lengths: O(1) numbers for any cell size
        dw = wrap(d)
        scale = n_atoms.clamp_min(1).pow(1.0 / 3.0)[:, None, None]
        dist = scale * torch.sqrt(
            torch.einsum("bijk,bkl,bijl->bij", dw, metric, dw).clamp_min(1e-8)
        )  # Å, of the shortest difference vector
        rbf = torch.exp(-((dist[..., None] - self.rbf_centres) ** 2) / 0.5)
        edge = torch.cat(
            [
                fourier,
                lat[:, None, None, :].expand(b, n, n, 6),
                metric.flatten(1)[:, None, None, :].expand(b, n, n, 9) / 4.0,
                rbf,
            ],
            dim=-1,
        )
        pair_mask = maskf[:, :, None] * maskf[:, None, :]
        pair_mask = pair_mask * (1 - torch.eye(n, device=frac.device, dtype=frac.dtype))
        for layer in self.layers:
            h = layer(h, edge, pair_mask)
        h = self.out_norm(h)
        v_coord = self.coord_out(h) * maskf[..., None]
        v_coord = v_coord - _masked_mean(v_coord, maskf)[:, None, :] * maskf[..., None]
        pooled = (h * maskf[..., None]).sum(1) / n_atoms.clamp_min(1)[:, None]
        return v_coord, self.lattice_out(pooled), self.type_out(h)

    # -- training
    def loss(
        self,
        batch: Mapping[str, torch.Tensor],
        weights: torch.Tensor | None = None,
        epoch: int = 0,
        epochs: int = 1,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        types1, frac1, lat1 = batch["types"], batch["frac"], batch["lat"]
        mask = types1 > 0
        maskf = mask.to(frac1.dtype)
        b = len(types1)
        dev = frac1.device
        t = torch.rand(b, device=dev)
        # coordinates: wrapped geodesic from uniform noise, centred
        frac0 = torch.rand_like(frac1)
        d = wrap(frac1 - frac0)
        d = (d - _masked_mean(d, maskf)[:, None, :]) * maskf[..., None]
        frac_t = torch.remainder(frac0 + t[:, None, None] * d, 1.0)
        # lattice: straight line from a standard normal
        lat0 = torch.randn_like(lat1)
        lat_t = (1 - t[:, None]) * lat0 + t[:, None] * lat1
        # types: masked with probability 1 - t
        hidden = (torch.rand(types1.shape, device=dev) > t[:, None]) & mask
        types_t = torch.where(hidden, torch.full_like(types1, self.mask_token), types1)
        cond, has_cond = batch.get("cond"), None
        if self.n_cond:
            has_cond = (torch.rand(b, device=dev) > self.cond_dropout).to(frac1.dtype)
            has_cond = has_cond * batch["has_cond"]
        v_coord, v_lat, logits = self(types_t, frac_t, lat_t, t, mask, cond, has_cond)
        n_atoms = maskf.sum(1).clamp_min(1)
        l_coord = ((v_coord - d) ** 2).sum(-1).mul(maskf).sum(1) / n_atoms
        l_lat = ((v_lat - (lat1 - lat0)) ** 2).mean(1)
        ce = F.cross_entropy(
            logits.reshape(-1, self.n_elements),
            (types1 - 1).clamp_min(0).reshape(-1),
            reduction="none",
        ).reshape(b, -1)
        hiddenf = hidden.to(frac1.dtype)
        l_type = (ce * hiddenf).sum(1) / n_atoms
        per_row = (
            self.coord_weight * l_coord + self.lattice_weight * l_lat + self.type_weight * l_type
        )
        if weights is None:
            loss = per_row.mean()
        else:
            loss = (per_row * weights).sum() / weights.sum().clamp_min(1e-8)
        logs = {"coord": l_coord.mean(), "lattice": l_lat.mean(), "type": l_type.mean()}
        return loss, {k: float(v.detach()) for k, v in logs.items()} | {
            "loss": float(loss.detach())
        }

    # -- sampling
    @torch.no_grad()
    def sample(
        self,
        n_atoms: torch.Tensor,
        *,
        steps: int = 100,
        allowed: torch.Tensor | None = None,
        cond: torch.Tensor | None = None,
        has_cond: torch.Tensor | None = None,
        type_temperature: float = 1.0,
        coord_anneal: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Integrate the flow for crystals of ``n_atoms`` atoms (Euler, ``steps`` steps).

        ``allowed`` (``(K,)`` bool) forbids the other elements. ``coord_anneal`` scales the
        coordinate velocity by ``1 + coord_anneal * t`` (FlowMM's inference anti-annealing:
        atoms settle into sharper sites). Returns ``types (B, N)`` (1..K, 0 = padding),
        ``frac (B, N, 3)`` and standardised lattice features ``(B, 6)``.
        """
        dev = self.lat_mean.device
        b, n = len(n_atoms), int(n_atoms.max())
        mask = torch.arange(n, device=dev)[None, :] < n_atoms.to(dev)[:, None]
        maskf = mask.float()
        frac = torch.rand(b, n, 3, device=dev, generator=generator)
        lat = torch.randn(b, 6, device=dev, generator=generator)
        types = torch.where(mask, self.mask_token, 0).long()
        dt = 1.0 / steps
        for i in range(steps):
            t = torch.full((b,), i * dt, device=dev)
            v_coord, v_lat, logits = self(types, frac, lat, t, mask, cond, has_cond)
            frac = torch.remainder(frac + dt * v_coord * (1 + coord_anneal * i * dt), 1.0)
            lat = lat + dt * v_lat
            if allowed is not None:
                logits = logits.masked_fill(~allowed.to(dev), float("-inf"))
            # unmask each masked atom with probability dt / (1 - t)
            p_reveal = min(1.0, dt / max(1.0 - i * dt, 1e-8))
            reveal = (types == self.mask_token) & (
                torch.rand(types.shape, device=dev, generator=generator) < p_reveal
            )
            if reveal.any():
                probs = torch.softmax(logits[reveal] / max(type_temperature, 1e-4), dim=-1)
                drawn = torch.multinomial(probs, 1, generator=generator).squeeze(1) + 1
                types = types.masked_scatter(reveal, drawn)
        types = torch.where(mask, types, torch.zeros_like(types))
        return types, frac * maskf[..., None], lat


def _masked_mean(x: torch.Tensor, maskf: torch.Tensor) -> torch.Tensor:
    """Mean of ``x (B, N, D)`` over the atoms where ``maskf (B, N)`` is 1."""
    return (x * maskf[..., None]).sum(1) / maskf.sum(1, keepdim=True).clamp_min(1.0)
