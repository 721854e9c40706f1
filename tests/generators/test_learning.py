"""Learning changes what a generator proposes: after ``update`` (reward-weighted fine-tuning)
or ``reinforce`` on rewarded crystals, the model's likelihood of those crystals rises against
the untouched model, and its samples move towards them.

Every assertion compares the updated model with an untouched copy of the same checkpoint, so
an update that silently does nothing fails here (checked by hand: with ``_finetune`` or
``reinforce_step`` turned into a no-op, each test below fails).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from matloop.generators.base import Feedback
from matloop.generators.training import generator_class, load_checkpoint

COORDS = np.array([[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
REWARDED = "BaZrO3"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def perovskite(a: str, b: str, rng: np.random.Generator) -> Structure:
    lattice = Lattice.cubic(rng.uniform(3.8, 4.3))
    return Structure(lattice, [a, b, "O", "O", "O"], COORDS + rng.normal(0, 0.01, (5, 3)))


def training_set() -> list[Structure]:
    """Six ABO3 compositions, six crystals each: BaZrO3 is one sixth of the data."""
    rng = np.random.default_rng(0)
    return [perovskite(a, b, rng) for a in ("Sr", "Ca", "Ba") for b in ("Ti", "Zr") for _ in range(6)]


def rewarded_crystals(n: int = 8) -> list[Structure]:
    rng = np.random.default_rng(1)
    return [perovskite("Ba", "Zr", rng) for _ in range(n)]


def reconstruction_nll(gen, structures: list[Structure]) -> float:
    """Mean decoding loss of ``structures`` at their posterior means: the model's negative
    log-likelihood of those crystals, up to constants (lower = more likely)."""
    tensors, kept = gen._encode_structures(structures, np.zeros((len(structures), 0)))
    assert len(kept) == len(structures)
    m = gen.module
    with torch.no_grad():
        mu, _ = m.encode(m.features(tensors["lat"], tensors["cls"], tensors["frac"]), tensors["cond"])
        l_lat, l_cls, l_coord = m.reconstruction_terms(mu, tensors)
    return float((l_lat + l_cls + m.coord_weight * l_coord).mean())


def share_of(samples: list[Structure], formula: str) -> float:
    return float(np.mean([s.composition.reduced_formula == formula for s in samples]))


@pytest.fixture(scope="module")
def crystal_vae_checkpoint(tmp_path_factory):
    torch.set_num_threads(1)
    gen = generator_class("crystal_vae")(epochs=40, hidden=32, latent_dim=8, batch_size=12,
                                         seed=0, snap=False)  # fmt: skip
    gen.fit(training_set())
    path = tmp_path_factory.mktemp("learning") / "vae.pt"
    gen.save(path)
    return path


def test_finetune_raises_the_likelihood_of_rewarded_crystals(crystal_vae_checkpoint):
    untouched, updated = (load_checkpoint(crystal_vae_checkpoint) for _ in range(2))
    rewarded = rewarded_crystals()
    updated.update([Feedback(s, reward=1.0) for s in rewarded])
    before, after = reconstruction_nll(untouched, rewarded), reconstruction_nll(updated, rewarded)
    assert after < 0.95 * before, (before, after)
    # and more than for crystals it was not rewarded for (the replay keeps the rest)
    others = [s for s in training_set() if s.composition.reduced_formula != REWARDED][:12]
    gain_rewarded = before - after
    gain_others = reconstruction_nll(untouched, others) - reconstruction_nll(updated, others)
    assert gain_rewarded > gain_others, (gain_rewarded, gain_others)


def test_finetune_moves_samples_towards_rewarded_crystals(crystal_vae_checkpoint):
    untouched, updated = (load_checkpoint(crystal_vae_checkpoint) for _ in range(2))
    updated.update([Feedback(s, reward=1.0) for s in rewarded_crystals()])
    before = share_of(untouched.sample(200, rng=np.random.default_rng(5)), REWARDED)
    after = share_of(updated.sample(200, rng=np.random.default_rng(5)), REWARDED)
    assert after > before + 0.08, (before, after)


def test_unrewarded_feedback_leaves_the_model_unchanged(crystal_vae_checkpoint):
    untouched, updated = (load_checkpoint(crystal_vae_checkpoint) for _ in range(2))
    updated.update([Feedback(s, reward=0.0) for s in rewarded_crystals()])
    assert updated.version == untouched.version
    for name, module in updated.modules.items():
        for key, value in module.state_dict().items():
            assert torch.equal(value, untouched.modules[name].state_dict()[key]), (name, key)


def test_a_larger_reward_pulls_harder(crystal_vae_checkpoint):
    weak, strong = (load_checkpoint(crystal_vae_checkpoint) for _ in range(2))
    rewarded = rewarded_crystals()
    weak.update([Feedback(s, reward=0.2) for s in rewarded])
    strong.update([Feedback(s, reward=3.0) for s in rewarded])
    assert reconstruction_nll(strong, rewarded) < reconstruction_nll(weak, rewarded)


def test_composition_vae_finetune_moves_samples_towards_the_rewarded_composition():
    gen = generator_class("composition_vae")(epochs=60, lr=5e-3, hidden=32, seed=0,
                                             batch_size=16, finetune_epochs=20)  # fmt: skip
    gen.fit(training_set())
    before = share_of(gen.sample(200, rng=np.random.default_rng(3)), REWARDED)
    gen.update([Feedback(s, reward=1.0) for s in rewarded_crystals()])
    after = share_of(gen.sample(200, rng=np.random.default_rng(3)), REWARDED)
    assert after > before + 0.08, (before, after)


def test_reinforce_raises_the_policy_likelihood_of_rewarded_actions(crystal_vae_checkpoint):
    gen = load_checkpoint(crystal_vae_checkpoint)
    gen.config["prior"] = "aggregate"
    samples = gen.sample(60, rng=np.random.default_rng(0))
    feedback = [Feedback(s, reward=float(s.composition.reduced_formula == REWARDED))
                for s in samples]  # fmt: skip
    assert 0 < sum(f.reward for f in feedback) < len(feedback)
    from matloop.generators.reinforce import LatentPolicy, action_key

    actions = gen.__dict__["_actions"]
    good = torch.stack([actions[action_key(f.structure)][1] for f in feedback if f.reward])
    bad = torch.stack([actions[action_key(f.structure)][1] for f in feedback if not f.reward])
    logs = gen.reinforce(feedback, steps=10, lr=0.1, kl_weight=0.01)
    assert logs["n"] == len(feedback)
    untouched = LatentPolicy(good.shape[1])
    policy = gen.modules["policy"]
    with torch.no_grad():
        gain_good = float(policy.log_prob(good).mean() - untouched.log_prob(good).mean())
        gain_bad = float(policy.log_prob(bad).mean() - untouched.log_prob(bad).mean())
    assert gain_good > 0.1 and gain_good > gain_bad, (gain_good, gain_bad)
    before_gen = load_checkpoint(crystal_vae_checkpoint)
    before_gen.config["prior"] = "aggregate"
    before = share_of(before_gen.sample(200, rng=np.random.default_rng(9)), REWARDED)
    after = share_of(gen.sample(200, rng=np.random.default_rng(9)), REWARDED)
    assert after > before, (before, after)
