"""Policy-gradient updates of a latent-variable generator (REINFORCE, baseline, KL penalty).

The crystal VAEs sample ``z = z_mean + L u`` with ``u ~ N(0, I)`` (the Gaussian fitted to the
training latents, :mod:`matloop.generators.torch_crystal`) and decode ``z`` into a crystal.
The **policy** is a learnable diagonal Gaussian over the whitened latent,
``pi(u) = N(mu, diag(sigma^2))``; the **pre-trained policy** is ``N(0, I)``, i.e. the fitted
prior, so a fresh :class:`LatentPolicy` (``mu = 0, log sigma = 0``) samples exactly like the
pre-trained model. The decoder stays frozen: RL moves *where* the model samples, not what a
latent decodes to, which keeps every proposal on the learned manifold of crystals.

One update on a batch of ``(u_i, r_i)`` (the latents that produced evaluated proposals and
their rewards, :func:`matloop.evaluators.reward.reward`) minimises::

    L = -mean_i[(r_i - b) * log pi(u_i)] + kl_weight * KL(pi || N(0, I))

with ``KL = 0.5 * sum(sigma^2 + mu^2 - 1 - 2 log sigma)`` (closed form), ``b`` a moving
average of past mean rewards (``b <- m b + (1 - m) mean(r)``, started at the first batch's
mean), by Adam. The first step is the plain REINFORCE gradient; further ``steps`` on the
same batch weight it by the probability ratio ``pi / pi_old`` clipped to ``1 +- clip`` (as in
PPO), which keeps repeated steps from running away. ``log sigma`` is clamped to ``[-3, 1]``.
The KL term keeps the policy near the pre-trained model, as in RL fine-tuning of language
models.

Which latent produced a proposal: the generator remembers the ``u`` of everything it sampled
in this process (keyed by lattice, species and coordinates); for a proposal it does not
remember (e.g. the campaign resumed in a new process) the encoder's posterior mean, whitened,
stands in. Proposals evaluated rounds after they were sampled were drawn by an earlier policy:
the update treats them as on-policy (a small, accepted bias).

Examples
--------
>>> import torch
>>> policy = LatentPolicy(2)
>>> u = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
>>> logs = reinforce_step(policy, u, torch.tensor([1.0, 0.0]), steps=20, lr=0.05,
...                       kl_weight=0.0)
>>> bool(policy.mu[0] > 0)
True
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from pymatgen.core import Structure

__all__ = ["LatentPolicy", "action_key", "reinforce_step"]

LOG_STD_RANGE = (-3.0, 1.0)


class LatentPolicy(nn.Module):
    """The sampler's policy: a diagonal Gaussian ``N(mu, diag(exp(log_std)^2))`` over the
    whitened latent noise and, for the priors that start from a training crystal
    (``neighbourhood``, ``posterior``), a categorical over those anchor crystals.

    At initialisation it is the pre-trained sampler: ``N(0, I)`` noise and uniform anchors.
    Buffers ``baseline`` and ``n_updates`` travel in the checkpoint with the parameters.
    """

    def __init__(self, dim: int, n_anchors: int = 0):
        super().__init__()
        self.mu = nn.Parameter(torch.zeros(dim))
        self.log_std = nn.Parameter(torch.zeros(dim))
        self.anchor_logits = nn.Parameter(torch.zeros(n_anchors))
        self.register_buffer("baseline", torch.zeros(()))
        self.register_buffer("n_updates", torch.zeros((), dtype=torch.long))

    def transform(self, eps: torch.Tensor) -> torch.Tensor:
        """A policy draw from standard-normal noise ``eps``: ``mu + sigma * eps``."""
        return self.mu + self.log_std.clamp(*LOG_STD_RANGE).exp() * eps

    def log_prob(self, u: torch.Tensor) -> torch.Tensor:
        """``log pi(u)`` per row (the Gaussian part)."""
        log_std = self.log_std.clamp(*LOG_STD_RANGE)
        z = (u - self.mu) / log_std.exp()
        return (-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(dim=-1)

    def anchor_log_probs(self, pool: torch.Tensor) -> torch.Tensor:
        """Log-probabilities over all anchors, ``-inf`` outside ``pool`` (a bool mask)."""
        return torch.log_softmax(self.anchor_logits.masked_fill(~pool, float("-inf")), dim=0)

    def kl_to_prior(self, pool: torch.Tensor | None = None) -> torch.Tensor:
        """``KL(pi || pre-trained)``, closed form: Gaussian vs ``N(0, I)`` plus categorical
        vs uniform over ``pool``."""
        log_std = self.log_std.clamp(*LOG_STD_RANGE)
        kl = 0.5 * ((2 * log_std).exp() + self.mu**2 - 1.0 - 2 * log_std).sum()
        if pool is not None and len(self.anchor_logits):
            logp = self.anchor_log_probs(pool)[pool]
            kl = kl + (logp.exp() * (logp + math.log(int(pool.sum())))).sum()
        return kl


def reinforce_step(
    policy: LatentPolicy,
    u: torch.Tensor,
    rewards: torch.Tensor,
    *,
    anchors: torch.Tensor | None = None,
    pool: torch.Tensor | None = None,
    steps: int = 10,
    lr: float = 0.05,
    kl_weight: float = 0.05,
    baseline_momentum: float = 0.8,
    clip: float = 0.2,
) -> dict[str, float]:
    """One REINFORCE update of ``policy`` on actions ``u`` (B, d) [and ``anchors`` (B,),
    indices into the anchor set, with ``pool`` the bool mask of allowed anchors] with
    ``rewards`` (B,). Returns logs: mean reward, baseline used, final KL, policy loss.
    """
    device = policy.mu.device
    u = u.detach().to(device, torch.float32)
    r = rewards.detach().to(device, torch.float32).reshape(-1)
    if len(r) == 0:
        return {"n": 0}
    use_anchors = anchors is not None and pool is not None and len(policy.anchor_logits) > 0
    if int(policy.n_updates) == 0:
        policy.baseline.fill_(float(r.mean()))
    advantage = r - policy.baseline
    opt = torch.optim.Adam([policy.mu, policy.log_std, policy.anchor_logits], lr=lr)

    def log_prob() -> torch.Tensor:
        logp = policy.log_prob(u)
        return logp + policy.anchor_log_probs(pool)[anchors] if use_anchors else logp

    with torch.no_grad():
        logp_old = log_prob()
    loss = torch.zeros(())
    for _ in range(max(1, steps)):
        # ratio = 1 at the first step: the plain REINFORCE gradient (r - b) grad log pi;
        # later steps on the same batch are clipped (PPO) so they cannot run away.
        ratio = torch.exp(log_prob() - logp_old)
        surrogate = torch.minimum(ratio * advantage, ratio.clamp(1 - clip, 1 + clip) * advantage)
        loss = -surrogate.mean() + kl_weight * policy.kl_to_prior(pool if use_anchors else None)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        used = float(policy.baseline)
        policy.baseline.mul_(baseline_momentum).add_((1 - baseline_momentum) * r.mean())
        policy.n_updates.add_(1)
        kl = float(policy.kl_to_prior(pool if use_anchors else None))
    return {"n": len(r), "mean_reward": float(r.mean()), "baseline": used, "kl": kl,
            "loss": float(loss)}  # fmt: skip


def action_key(structure: Structure) -> tuple:
    """A key that survives the store's round trip (``as_dict`` / ``from_dict``)."""
    lat = np.round(np.asarray(structure.lattice.parameters, dtype=float), 4)
    frac = np.round(np.mod(structure.frac_coords, 1.0), 4) % 1.0
    species = tuple(site.species_string for site in structure)
    return (tuple(lat.tolist()), species, tuple(map(tuple, frac.tolist())))


# ------------------------------------------------------------------ the generator's side
# Used by the crystal VAEs' sampler (torch_crystal.py): without a policy module these are
# the identity / the uniform draw, consuming exactly the random numbers the sampler always
# consumed, so a model that never had an RL update samples exactly as before.

MAX_REMEMBERED = 20000


def policy_noise(gen, eps: torch.Tensor) -> torch.Tensor:
    """The sampler's standard-normal noise moved by the policy (identity without one)."""
    policy = gen.modules.get("policy")
    u = eps if policy is None else policy.transform(eps).detach()
    gen._last_u, gen._last_idx = u, None
    return u


def policy_anchors(gen, pool: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Anchor crystals for the neighbourhood priors: uniform over ``pool`` without a policy
    (the draw the sampler always made), else from the policy's categorical."""
    policy = gen.modules.get("policy")
    if policy is None or len(policy.anchor_logits) != len(gen._replay):
        idx = pool[rng.integers(len(pool), size=n)]
    else:
        with torch.no_grad():
            mask = torch.zeros(len(gen._replay), dtype=torch.bool, device=policy.mu.device)
            mask[torch.as_tensor(pool, device=mask.device)] = True
            p = policy.anchor_log_probs(mask)[torch.as_tensor(pool, device=mask.device)]
            p = p.exp().cpu().double().numpy()
        idx = pool[rng.choice(len(pool), size=n, p=p / p.sum())]
    gen._last_idx = idx
    return idx


def remember_actions(gen, structures) -> None:
    """Key each decoded structure to the action (anchor, whitened noise) that produced it."""
    u, idx = getattr(gen, "_last_u", None), getattr(gen, "_last_idx", None)
    if u is None:
        return
    actions = gen.__dict__.setdefault("_actions", {})
    for i, s in enumerate(structures):
        if s is not None:
            actions[action_key(s)] = (None if idx is None else int(idx[i]), u[i].cpu())
    while len(actions) > MAX_REMEMBERED:
        actions.pop(next(iter(actions)))


@torch.no_grad()
def _encoded_action(gen, structure: Structure):
    """The action recovered from the encoder (posterior mean) for a proposal sampled in
    another process: whitened against the prior's centre (aggregate), or against the
    nearest anchor in latent space (neighbourhood / posterior). None if it cannot encode."""
    columns = gen.config["property_columns"]
    try:
        tensors, _ = gen._encode_structures([structure], np.zeros((1, len(columns))))
    except ValueError:
        return None
    m = gen.module
    t = {k: v.to(gen.device) for k, v in tensors.items()}
    mu, _ = m.encode(m.features(t["lat"], t["cls"], t["frac"]), t["cond"])
    mu = mu[0]
    temperature = float(gen.config.get("temperature", 1.0)) or 1.0
    prior = gen.config.get("prior", "aggregate")
    if prior == "standard":
        return None, mu / temperature
    if prior == "aggregate":
        centre, anchor = m.z_mean, None
    else:
        anchors_mu, anchors_sigma = gen._replay_latents()
        pool = torch.as_tensor(gen._pool_indices(), device=mu.device)
        d = ((anchors_mu[pool] - mu) ** 2).sum(dim=1)
        anchor = int(pool[int(d.argmin())])
        centre = anchors_mu[anchor]
        if prior == "posterior":
            return anchor, (mu - centre) / anchors_sigma[anchor] / temperature
    u = torch.linalg.solve_triangular(m.z_chol, (mu - centre)[:, None], upper=False)[:, 0]
    return anchor, u / temperature


def reinforce_generator(
    gen,
    feedback,
    *,
    steps: int = 10,
    lr: float = 0.05,
    kl_weight: float = 0.05,
    baseline_momentum: float = 0.8,
    clip: float = 0.2,
) -> dict[str, float]:
    """REINFORCE update of a crystal VAE's sampling policy from the loop's feedback.

    Creates the policy (equal to the pre-trained sampler) on first use; the decoder is not
    touched. Feedback whose action is neither remembered nor recoverable is skipped.
    """
    if not gen.modules:
        raise RuntimeError("fit or load the generator before a reinforce update")
    neighbourhood = gen.config.get("prior", "aggregate") in ("neighbourhood", "posterior")
    n_anchors = len(gen._replay) if neighbourhood else 0
    policy = gen.modules.get("policy")
    if policy is None or len(policy.anchor_logits) != n_anchors:
        policy = LatentPolicy(gen.config["latent_dim"], n_anchors).to(gen.device)
        gen.modules["policy"] = policy
    actions = gen.__dict__.get("_actions", {})
    us, anchors, rewards = [], [], []
    for f in feedback:
        action = actions.get(action_key(f.structure)) or _encoded_action(gen, f.structure)
        if action is None or (neighbourhood and action[0] is None):
            continue
        anchors.append(action[0] if neighbourhood else 0)
        us.append(torch.as_tensor(action[1], dtype=torch.float32))
        rewards.append(float(f.reward))
    if not us:
        return {"n": 0}
    pool = None
    if neighbourhood:
        pool = torch.zeros(n_anchors, dtype=torch.bool, device=gen.device)
        pool[torch.as_tensor(gen._pool_indices(), device=gen.device)] = True
    logs = reinforce_step(
        policy,
        torch.stack(us).to(gen.device),
        torch.tensor(rewards),
        anchors=torch.as_tensor(anchors, device=gen.device) if neighbourhood else None,
        pool=pool,
        steps=steps,
        lr=lr,
        kl_weight=kl_weight,
        baseline_momentum=baseline_momentum,
        clip=clip,
    )
    gen.version += 1
    return logs
