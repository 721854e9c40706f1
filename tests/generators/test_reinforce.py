"""REINFORCE updates of the crystal VAE's sampling policy raise a synthetic reward."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from matloop.generators.base import Feedback
from matloop.generators.reinforce import LatentPolicy, action_key, reinforce_step
from matloop.generators.training import generator_class, load_checkpoint

A_SITE = ["Sr", "Ba", "Ca"]
B_SITE = ["Ti", "Zr"]


def perovskites(n: int = 36, seed: int = 0) -> list[Structure]:
    rng = np.random.default_rng(seed)
    out = []
    coords = np.array([[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    for i in range(n):
        a, b = A_SITE[i % 3], B_SITE[(i // 3) % 2]
        lattice = Lattice.cubic(rng.uniform(3.8, 4.3))
        out.append(Structure(lattice, [a, b, "O", "O", "O"], coords + rng.normal(0, 0.01, (5, 3))))
    return out


def has_ba(structure: Structure) -> float:
    """The synthetic reward: 1 for a crystal with barium, else 0."""
    return float(any(el.symbol == "Ba" for el in structure.composition.elements))


# small models and cells: one torch thread is fastest, and spares the other core
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)
    gen = generator_class("crystal_vae")(epochs=40, hidden=32, latent_dim=8, batch_size=12,
                                         seed=0, snap=False)  # fmt: skip
    gen.fit(perovskites())
    return gen


def mean_reward(gen, seed: int, n: int = 60) -> float:
    samples = gen.sample(n, rng=np.random.default_rng(seed))
    return float(np.mean([has_ba(s) for s in samples]))


def test_policy_starts_as_the_pretrained_sampler():
    policy = LatentPolicy(4, n_anchors=3)
    eps = torch.randn(5, 4)
    assert torch.equal(policy.transform(eps), eps)
    assert float(policy.kl_to_prior(torch.ones(3, dtype=torch.bool))) == pytest.approx(0.0)


def test_reinforce_step_moves_towards_rewarded_actions():
    torch.manual_seed(0)
    policy = LatentPolicy(2)
    u = torch.randn(200, 2)
    rewards = (u[:, 0] > 0).float()  # reward for a positive first coordinate
    logs = reinforce_step(policy, u, rewards, steps=30, lr=0.05, kl_weight=0.0)
    assert float(policy.mu[0]) > 0.3 and abs(float(policy.mu[1])) < 0.2
    assert logs["baseline"] == pytest.approx(float(rewards.mean()))
    # the KL penalty holds the policy back towards N(0, I)
    held = LatentPolicy(2)
    reinforce_step(held, u, rewards, steps=30, lr=0.05, kl_weight=5.0)
    assert 0 < float(held.mu[0]) < float(policy.mu[0])


@pytest.mark.parametrize("prior", ["neighbourhood", "aggregate"])
def test_reinforce_rounds_raise_mean_reward(trained, prior, tmp_path):
    path = tmp_path / "base.pt"
    trained.save(path)
    gen = load_checkpoint(path)
    gen.config["prior"] = prior
    before = mean_reward(gen, seed=100)
    for round_ in range(6):  # sample, reward, update: the loop in miniature
        samples = gen.sample(40, rng=np.random.default_rng(round_))
        feedback = [Feedback(structure=s, reward=has_ba(s)) for s in samples]
        logs = gen.reinforce(feedback, steps=10, lr=0.1, kl_weight=0.01)
        assert logs["n"] == len(samples)
    after = mean_reward(gen, seed=100)
    assert after > before + 0.15, (before, after)
    # the policy travels in the checkpoint
    gen.save(tmp_path / "rl.pt")
    again = load_checkpoint(tmp_path / "rl.pt")
    again.config["prior"] = prior
    assert mean_reward(again, seed=100) == pytest.approx(after)


def test_actions_are_recovered_by_the_encoder_after_a_restart(trained):
    gen = trained
    samples = gen.sample(10, rng=np.random.default_rng(7))
    remembered = gen.__dict__.get("_actions", {})
    assert all(action_key(s) in remembered for s in samples)
    from matloop.generators.reinforce import _encoded_action

    anchor, u = _encoded_action(gen, samples[0])
    assert anchor is not None and u.shape == (8,) and torch.isfinite(u).all()


def test_unupdated_sampler_is_unchanged(trained):
    a = trained.sample(5, rng=np.random.default_rng(3))
    b = trained.sample(5, rng=np.random.default_rng(3))
    assert [s.composition for s in a] == [s.composition for s in b]
    assert "policy" not in trained.modules


def test_policy_densities_match_torch_distributions():
    policy = LatentPolicy(3, n_anchors=4)
    with torch.no_grad():
        policy.mu.copy_(torch.tensor([0.5, -1.0, 0.2]))
        policy.log_std.copy_(torch.tensor([0.3, -0.5, 2.0]))  # 2.0: clamped to 1.0
        policy.anchor_logits.copy_(torch.tensor([1.0, 0.0, -1.0, 3.0]))
    std = torch.tensor([0.3, -0.5, 1.0]).exp()
    normal = torch.distributions.Normal(policy.mu.detach(), std)
    u = torch.tensor([[0.1, 0.2, 0.3], [-1.0, 0.0, 2.0]])
    assert torch.allclose(policy.log_prob(u), normal.log_prob(u).sum(-1))
    eps = torch.tensor([[1.0, -2.0, 0.5]])
    assert torch.allclose(policy.transform(eps), policy.mu + std * eps)
    pool = torch.tensor([True, True, False, True])
    expected = torch.log_softmax(torch.tensor([1.0, 0.0, 3.0]), 0)
    logp = policy.anchor_log_probs(pool)
    assert torch.allclose(logp[pool], expected) and torch.isinf(logp[2])
    prior = torch.distributions.Normal(torch.zeros(3), torch.ones(3))
    kl_gauss = torch.distributions.kl_divergence(normal, prior).sum()
    kl_cat = (expected.exp() * (expected + math.log(3))).sum()
    assert float(policy.kl_to_prior()) == pytest.approx(float(kl_gauss), rel=1e-5)
    assert float(policy.kl_to_prior(pool)) == pytest.approx(float(kl_gauss + kl_cat), rel=1e-5)


def test_the_baseline_is_a_moving_average_of_rewards():
    policy = LatentPolicy(2)
    u = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    first = reinforce_step(policy, u, torch.tensor([1.0, 0.0, 1.0, 0.0]), steps=1,
                           baseline_momentum=0.8)  # fmt: skip
    assert first["baseline"] == pytest.approx(0.5) and int(policy.n_updates) == 1
    assert float(policy.baseline) == pytest.approx(0.5)  # 0.8 * 0.5 + 0.2 * 0.5
    second = reinforce_step(policy, u, torch.tensor([1.0, 1.0, 1.0, 1.0]), steps=1,
                            baseline_momentum=0.8)  # fmt: skip
    assert second["baseline"] == pytest.approx(0.5)  # the old one, not reset to 1.0
    assert float(policy.baseline) == pytest.approx(0.8 * 0.5 + 0.2 * 1.0)
    assert second["mean_reward"] == pytest.approx(1.0) and second["n"] == 4
    assert reinforce_step(policy, u[:0], torch.zeros(0)) == {"n": 0}


def test_clipping_bounds_repeated_steps_on_one_batch():
    u = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    rewards = (u[:, 0] > 0).float()
    moved = {}
    for clip in (0.05, 10.0):
        policy = LatentPolicy(2)
        reinforce_step(policy, u, rewards, steps=40, lr=0.1, kl_weight=0.0, clip=clip)
        moved[clip] = float(policy.mu[0])
    assert 0 < moved[0.05] < moved[10.0]


def test_reinforce_step_defaults_are_the_documented_ones():
    """Called without settings, one update uses the documented ones (10 steps, lr 0.05, KL
    weight 0.05, baseline momentum 0.8, clip 0.2): three batches with different rewards, so
    the baseline's momentum and the clipping of repeated steps both shape the result."""
    u = torch.randn(32, 2, generator=torch.Generator().manual_seed(2))
    batches = [(u[:, 0] > 0).float(), (u[:, 1] > 0).float(), torch.ones(32)]
    implicit, explicit = LatentPolicy(2), LatentPolicy(2)
    documented = {"steps": 10, "lr": 0.05, "kl_weight": 0.05, "baseline_momentum": 0.8,
                  "clip": 0.2}  # fmt: skip
    for rewards in batches:
        reinforce_step(implicit, u, rewards)
        reinforce_step(explicit, u, rewards, **documented)
    a, b = implicit.state_dict(), explicit.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_reinforce_step_learns_the_anchor_choice_only_given_anchors_and_pool():
    u = torch.randn(40, 2, generator=torch.Generator().manual_seed(3))
    anchors = torch.arange(40) % 4
    rewards = (anchors == 1).float()
    pool = torch.tensor([True, True, True, False])
    settings = {"steps": 10, "lr": 0.1, "kl_weight": 0.05}
    policy = LatentPolicy(2, n_anchors=4)
    reinforce_step(policy, u, rewards, anchors=anchors % 3, pool=pool, **settings)
    logits = policy.anchor_logits.detach()
    assert float(logits[1]) > max(float(logits[0]), float(logits[2])) + 0.1
    assert float(logits[3]) == 0.0  # outside the pool: never drawn, never learned
    # without anchors or pool, or for a policy without an anchor choice, only the
    # Gaussian learns, exactly as it does alone
    alone = LatentPolicy(2)
    reinforce_step(alone, u, rewards, **settings)
    for given in ({"anchors": anchors % 3}, {"pool": pool}):
        other = LatentPolicy(2, n_anchors=4)
        reinforce_step(other, u, rewards, **given, **settings)
        assert torch.equal(other.anchor_logits.detach(), torch.zeros(4)), given
        assert torch.equal(other.mu, alone.mu) and torch.equal(other.log_std, alone.log_std)
    plain = LatentPolicy(2)
    reinforce_step(plain, u, rewards, anchors=anchors % 3, pool=pool, **settings)
    assert torch.equal(plain.mu, alone.mu) and torch.equal(plain.log_std, alone.log_std)


def test_reinforce_step_takes_double_actions_and_integer_rewards():
    """Actions and rewards are cast to float32: a float64 batch with 0/1 integer rewards
    teaches the policy exactly what the float32 batch does."""
    u = torch.randn(16, 2, generator=torch.Generator().manual_seed(4))
    rewards = u[:, 0] > 0
    single, double = LatentPolicy(2), LatentPolicy(2)
    reinforce_step(single, u, rewards.float())
    reinforce_step(double, u.double(), rewards.long())
    a, b = single.state_dict(), double.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_one_step_is_one_plain_reinforce_step_and_the_logs_say_what_happened():
    u = torch.randn(16, 2, generator=torch.Generator().manual_seed(5))
    rewards = (u[:, 0] > 0).float()
    one, two = LatentPolicy(2), LatentPolicy(2)
    logs = reinforce_step(one, u, rewards, steps=1, lr=0.05, kl_weight=0.1)
    reinforce_step(two, u, rewards, steps=2, lr=0.05, kl_weight=0.1)
    assert not torch.equal(one.mu, two.mu)
    assert set(logs) == {"n", "mean_reward", "baseline", "kl", "loss"}
    assert logs["kl"] == pytest.approx(float(one.kl_to_prior()))
    anchored = LatentPolicy(2, n_anchors=3)
    pool = torch.tensor([True, True, False])
    logs = reinforce_step(anchored, u, rewards, anchors=torch.arange(16) % 2, pool=pool,
                          steps=3, lr=0.1, kl_weight=0.5)  # fmt: skip
    assert logs["kl"] == pytest.approx(float(anchored.kl_to_prior(pool)))
    assert logs["kl"] > float(anchored.kl_to_prior()) + 1e-6  # the anchors' part counts


def reference_update(policy, u, rewards, anchors, pool, *, steps, lr, kl_weight, clip):
    """The update of the module docstring written out with torch.distributions (baseline =
    the batch mean, as at a policy's first update): PPO-clipped REINFORCE plus the KL to
    N(0, I) and to the uniform choice over ``pool``, by Adam."""
    mu, log_std, logits = (p.detach().clone().requires_grad_() for p in
                           (policy.mu, policy.log_std, policy.anchor_logits))  # fmt: skip
    opt = torch.optim.Adam([mu, log_std, logits], lr=lr)
    advantage = rewards - rewards.mean()

    def parts():
        normal = torch.distributions.Normal(mu, log_std.clamp(-3.0, 1.0).exp())
        choice = torch.distributions.Categorical(logits=logits[pool])
        index = torch.cumsum(pool.long(), 0)[anchors] - 1  # anchor -> position in the pool
        logp = normal.log_prob(u).sum(-1) + choice.log_prob(index)
        prior = torch.distributions.Normal(torch.zeros(2), torch.ones(2))
        uniform = torch.distributions.Categorical(logits=torch.zeros(int(pool.sum())))
        kl = (torch.distributions.kl_divergence(normal, prior).sum()
              + torch.distributions.kl_divergence(choice, uniform))  # fmt: skip
        return logp, kl

    with torch.no_grad():
        old = parts()[0]
    for _ in range(steps):
        logp, kl = parts()
        ratio = torch.exp(logp - old)
        clipped = torch.clamp(ratio, 1 - clip, 1 + clip)
        loss = -torch.minimum(ratio * advantage, clipped * advantage).mean() + kl_weight * kl
        opt.zero_grad()
        loss.backward()
        opt.step()
    return mu.detach(), log_std.detach(), logits.detach()


def test_reinforce_step_is_the_documented_update():
    """Against an independent rendering of the docstring's formula: clipping (both sides,
    at 1 +- clip), the KL of both parts and the anchors' log-probabilities all shape it."""
    u = torch.randn(24, 2, generator=torch.Generator().manual_seed(6)) * 1.5
    anchors = torch.arange(24) % 3
    rewards = ((u[:, 0] > 0) & (anchors != 1)).float() - 0.5 * (anchors == 2).float()
    pool = torch.tensor([True, True, True, False])
    settings = {"steps": 12, "lr": 0.2, "kl_weight": 0.3, "clip": 0.1}
    policy = LatentPolicy(2, n_anchors=4)
    reinforce_step(policy, u, rewards, anchors=anchors, pool=pool, **settings)
    mu, log_std, logits = reference_update(LatentPolicy(2, n_anchors=4), u, rewards, anchors,
                                           pool, **settings)  # fmt: skip
    assert torch.allclose(policy.mu, mu, atol=1e-5), (policy.mu, mu)
    assert torch.allclose(policy.log_std, log_std, atol=1e-5)
    assert torch.allclose(policy.anchor_logits[:3], logits[:3], atol=1e-5)
