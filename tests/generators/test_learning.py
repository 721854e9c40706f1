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
    pairs = [(a, b) for a in ("Sr", "Ca", "Ba") for b in ("Ti", "Zr")]
    return [perovskite(a, b, rng) for a, b in pairs for _ in range(6)]


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
        x = m.features(tensors["lat"], tensors["cls"], tensors["frac"])
        mu, _ = m.encode(x, tensors["cond"])
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


def test_update_weights_rewarded_crystals_and_mixes_in_the_replay(crystal_vae_checkpoint):
    """The contract of ``update``: rows with reward > 0, weighted by their reward, plus
    ``replay_ratio`` training crystals per rewarded row at weight 1 (so it does not forget)."""
    gen = load_checkpoint(crystal_vae_checkpoint)
    seen = {}

    def record(structures, weights, props):
        seen.update(structures=list(structures), weights=list(weights), props=props)

    gen._finetune = record
    rewarded = rewarded_crystals(3)
    feedback = [Feedback(s, reward=r) for s, r in zip(rewarded, (0.5, 2.0, 1.0), strict=True)]
    gen.update([*feedback, Feedback(rewarded[0], reward=0.0), Feedback(rewarded[1], reward=-1.0)])
    ratio = gen.config.get("replay_ratio", 4)
    assert ratio == 4
    assert seen["weights"] == [0.5, 2.0, 1.0] + [1.0] * (ratio * 3)
    assert seen["structures"][:3] == rewarded
    replay_ids = {id(s) for s in gen._replay}
    assert all(id(s) in replay_ids for s in seen["structures"][3:])
    assert len({id(s) for s in seen["structures"][3:]}) == ratio * 3  # no crystal twice
    assert seen["props"].shape == (3 + ratio * 3, 0)
    assert gen.version == load_checkpoint(crystal_vae_checkpoint).version + 1


def test_weighted_mean_is_the_reward_weighted_average():
    from matloop.generators.torch_common import weighted_mean

    rows = torch.tensor([1.0, 2.0, 4.0])
    assert float(weighted_mean(rows, None)) == pytest.approx(7 / 3)
    assert float(weighted_mean(rows, torch.tensor([1.0, 0.0, 3.0]))) == pytest.approx(13 / 4)
    assert float(weighted_mean(rows, torch.zeros(3))) == 0.0  # no weight: no loss, no NaN


def test_reinforce_defaults_are_the_documented_ones(crystal_vae_checkpoint):
    """A campaign's ``update: reinforce`` without settings learns with the documented
    defaults (10 steps, lr 0.05, KL weight 0.05, baseline momentum 0.8, clip 0.2)."""
    implicit, explicit = (load_checkpoint(crystal_vae_checkpoint) for _ in range(2))
    samples = implicit.sample(20, rng=np.random.default_rng(4))
    feedback = [Feedback(s, reward=float(s.composition.reduced_formula == REWARDED))
                for s in samples]  # fmt: skip
    explicit.sample(20, rng=np.random.default_rng(4))  # the same actions remembered
    implicit.reinforce(feedback)
    implicit.reinforce(feedback)  # twice: the baseline's momentum matters from the second
    documented = {"steps": 10, "lr": 0.05, "kl_weight": 0.05, "baseline_momentum": 0.8,
                  "clip": 0.2}  # fmt: skip
    explicit.reinforce(feedback, **documented)
    explicit.reinforce(feedback, **documented)
    a, b = implicit.modules["policy"].state_dict(), explicit.modules["policy"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(RuntimeError, match="fit or load the generator before a reinforce"):
        generator_class("crystal_vae")().reinforce(feedback)
