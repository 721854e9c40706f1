"""Learning changes what a generator proposes: after ``update`` (reward-weighted fine-tuning)
or ``reinforce`` on rewarded crystals, the model's likelihood of those crystals rises against
the untouched model, and its samples move towards them.

Every assertion compares the updated model with an untouched copy of the same checkpoint, so
an update that silently does nothing fails here (checked by hand: with ``_finetune`` or
``reinforce_step`` turned into a no-op, each test below fails).
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

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


@functools.cache
def trained_checkpoint(name: str) -> tuple[tuple[str, bytes], ...]:
    """A small model of ``name`` fitted to :func:`training_set`: the files its ``save``
    writes (the checkpoint and its ``.sha256`` sidecar), as (name, bytes).

    Cached per process: the mutation run (``benchmarks/mutation.py``) forks one test session
    per mutant from a parent that already ran these tests, so the children load this
    checkpoint instead of training again. The learning under test (``update``,
    ``reinforce``) always runs in the test itself.
    """
    torch.set_num_threads(1)
    settings = {
        "crystal_vae": {"epochs": 40, "hidden": 32, "latent_dim": 8, "batch_size": 12,
                        "seed": 0, "snap": False},
        "composition_vae": {"epochs": 60, "lr": 5e-3, "hidden": 32, "seed": 0,
                            "batch_size": 16, "finetune_epochs": 20},
    }[name]  # fmt: skip
    gen = generator_class(name)(**settings)
    gen.fit(training_set())
    with tempfile.TemporaryDirectory() as tmp:
        gen.save(Path(tmp) / "model.pt")
        return tuple((f.name, f.read_bytes()) for f in sorted(Path(tmp).iterdir()))


def write_checkpoint(name: str, folder: Path) -> Path:
    """The cached checkpoint of ``name`` written into ``folder``; its path."""
    for file_name, data in trained_checkpoint(name):
        (folder / file_name).write_bytes(data)
    return folder / "model.pt"


def loaded(path: Path):
    """The checkpoint at ``path`` with the soundness filter off: these tests count where the
    model samples, and the filter's CIF round trip would be most of their time."""
    gen = load_checkpoint(path)
    gen.config["soundness"] = False
    return gen


@pytest.fixture(scope="module")
def crystal_vae_checkpoint(tmp_path_factory):
    return write_checkpoint("crystal_vae", tmp_path_factory.mktemp("learning"))


def test_finetune_raises_the_likelihood_of_rewarded_crystals(crystal_vae_checkpoint):
    untouched, updated = (loaded(crystal_vae_checkpoint) for _ in range(2))
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
    untouched, updated = (loaded(crystal_vae_checkpoint) for _ in range(2))
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
    # the same draws of the VAE's noise for both, so only the rewards differ
    torch.manual_seed(0)
    weak.update([Feedback(s, reward=0.2) for s in rewarded])
    torch.manual_seed(0)
    strong.update([Feedback(s, reward=3.0) for s in rewarded])
    # measured: 3.6 vs 4.5 with the rewards as weights; without them, within 0.1 of each other
    assert reconstruction_nll(strong, rewarded) < reconstruction_nll(weak, rewarded) - 0.3


def test_composition_vae_finetune_moves_samples_towards_the_rewarded_composition(tmp_path):
    gen = loaded(write_checkpoint("composition_vae", tmp_path))
    before = share_of(gen.sample(200, rng=np.random.default_rng(3)), REWARDED)
    gen.update([Feedback(s, reward=1.0) for s in rewarded_crystals()])
    after = share_of(gen.sample(200, rng=np.random.default_rng(3)), REWARDED)
    assert after > before + 0.08, (before, after)


def test_reinforce_raises_the_policy_likelihood_of_rewarded_actions(crystal_vae_checkpoint):
    gen = loaded(crystal_vae_checkpoint)
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
    before_gen = loaded(crystal_vae_checkpoint)
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


def test_update_of_a_conditional_model_trains_on_each_rows_own_properties(
    crystal_vae_checkpoint,
):
    """With ``property_columns`` (a conditional model), ``update`` hands training each
    rewarded row's evaluated properties (NaN where one was not evaluated) and each replayed
    crystal's own remembered properties; ``replay_ratio`` sets the replay share, and the
    replay sample is the seeded stream ``seed + version + 1`` (reproducible, new each
    version)."""
    gen = load_checkpoint(crystal_vae_checkpoint)
    gen.config.update(property_columns=["gap", "e_form"], replay_ratio=2, seed=7)
    n_replay = len(gen._replay)
    gen._replay_props = np.column_stack([np.arange(n_replay) + 0.5, -np.arange(n_replay)])
    seen = {}

    def record(structures, weights, props):
        seen.update(structures=list(structures), weights=list(weights), props=props)

    gen._finetune = record
    rewarded = rewarded_crystals(2)
    gen.update([Feedback(rewarded[0], reward=1.0, properties={"gap": 1.8, "e_form": -2.0}),
                Feedback(rewarded[1], reward=3.0, properties={"gap": 2.2})])  # fmt: skip
    props = seen["props"]
    assert props.shape == (2 + 2 * 2, 2)
    assert props[0].tolist() == [1.8, -2.0]
    assert props[1, 0] == 2.2 and np.isnan(props[1, 1])
    assert seen["weights"] == [1.0, 3.0, 1.0, 1.0, 1.0, 1.0]
    expected = np.random.default_rng(7 + gen.version - 1 + 1).choice(n_replay, 4, replace=False)
    position = {id(s): i for i, s in enumerate(gen._replay)}
    chosen = [position[id(s)] for s in seen["structures"][2:]]
    assert chosen == expected.tolist()
    assert props[2:].tolist() == gen._replay_props[chosen].tolist()


def test_weighted_mean_is_the_reward_weighted_average():
    from matloop.generators.torch_common import weighted_mean

    rows = torch.tensor([1.0, 2.0, 4.0])
    assert float(weighted_mean(rows, None)) == pytest.approx(7 / 3)
    assert float(weighted_mean(rows, torch.tensor([1.0, 0.0, 3.0]))) == pytest.approx(13 / 4)
    assert float(weighted_mean(rows, torch.zeros(3))) == 0.0  # no weight: no loss, no NaN


DOCUMENTED = {"steps": 10, "lr": 0.05, "kl_weight": 0.05, "baseline_momentum": 0.8, "clip": 0.2}


def reward_batches(samples: list[Structure]) -> list[list[Feedback]]:
    """Three batches of feedback on the same samples with different rewards, so that the
    baseline's momentum (from the second batch) and the clipping both shape the policy."""
    has = [lambda s, el=el: float(el in s.composition) for el in ("Ba", "Zr", "Sr")]
    return [[Feedback(s, reward=r(s)) for s in samples] for r in has]


def policy_after(gen, batches: list[list[Feedback]], **settings) -> dict[str, torch.Tensor]:
    for feedback in batches:
        gen.reinforce(feedback, **settings)
    return gen.modules["policy"].state_dict()


def test_reinforce_defaults_are_the_documented_ones(crystal_vae_checkpoint):
    """A campaign's ``update: reinforce`` without settings learns with the documented
    defaults (10 steps, lr 0.05, KL weight 0.05, baseline momentum 0.8, clip 0.2), and
    each setting given reaches the update."""
    gens = [loaded(crystal_vae_checkpoint) for _ in range(2 + len(DOCUMENTED))]
    samples = gens[0].sample(30, rng=np.random.default_rng(4))
    for gen in gens[1:]:  # the same actions remembered, as if each had sampled them
        gen.__dict__["_actions"] = dict(gens[0].__dict__["_actions"])
    batches = reward_batches(samples)
    implicit = policy_after(gens[0], batches)
    explicit = policy_after(gens[1], batches, **DOCUMENTED)
    assert all(torch.equal(implicit[k], explicit[k]) for k in implicit)
    changed = {"steps": 3, "lr": 0.2, "kl_weight": 1.0, "baseline_momentum": 0.3, "clip": 0.05}
    for gen, key in zip(gens[2:], DOCUMENTED, strict=True):
        other = policy_after(gen, batches, **{**DOCUMENTED, key: changed[key]})
        assert not all(torch.equal(implicit[k], other[k]) for k in implicit), key
    with pytest.raises(RuntimeError, match=r"^fit or load the generator before a reinforce update$"):
        generator_class("crystal_vae")().reinforce(batches[0])


def test_reinforce_keeps_learning_in_one_policy(crystal_vae_checkpoint):
    """Each update continues the policy (it is not rebuilt), counts one model version, and
    under the aggregate prior has no anchor choice to learn."""
    gen = loaded(crystal_vae_checkpoint)
    gen.config["prior"] = "aggregate"
    batches = reward_batches(gen.sample(20, rng=np.random.default_rng(6)))
    version = gen.version
    gen.reinforce(batches[0])
    policy = gen.modules["policy"]
    gen.reinforce(batches[1])
    assert gen.modules["policy"] is policy and int(policy.n_updates) == 2
    assert gen.version == version + 2
    assert len(policy.anchor_logits) == 0
    assert gen.reinforce([]) == {"n": 0} and gen.version == version + 2


@pytest.mark.parametrize("prior", ["neighbourhood", "posterior"])
def test_reinforce_favours_the_anchors_of_rewarded_crystals(crystal_vae_checkpoint, prior):
    """The priors that start from a training crystal learn which ones to start from."""
    from matloop.generators.reinforce import action_key

    gen = loaded(crystal_vae_checkpoint)
    gen.config["prior"] = prior
    samples = gen.sample(60, rng=np.random.default_rng(0))
    feedback = [Feedback(s, reward=float("Ba" in s.composition)) for s in samples]
    anchors = torch.tensor([gen.__dict__["_actions"][action_key(s)][0] for s in samples])
    rewarded = torch.tensor([f.reward > 0 for f in feedback])
    assert 0 < int(rewarded.sum()) < len(samples)
    logs = gen.reinforce(feedback, steps=10, lr=0.1, kl_weight=0.01)
    assert logs["n"] == len(feedback)
    policy = gen.modules["policy"]
    assert len(policy.anchor_logits) == len(gen._replay)
    logits = policy.anchor_logits.detach()
    good = torch.unique(anchors[rewarded])
    bad = torch.tensor([a for a in torch.unique(anchors[~rewarded]) if a not in good])
    assert float(logits[good].mean()) > float(logits[bad].mean()) + 0.1


def test_reinforce_without_a_remembered_anchor_skips_it(crystal_vae_checkpoint):
    """Proposals sampled under the aggregate prior carry no anchor: after a switch to the
    neighbourhood prior they cannot teach the anchor choice, and are skipped."""
    gen = loaded(crystal_vae_checkpoint)
    gen.config["prior"] = "aggregate"
    batches = reward_batches(gen.sample(10, rng=np.random.default_rng(2)))
    gen.config["prior"] = "neighbourhood"
    assert gen.reinforce(batches[0]) == {"n": 0}


def test_reinforce_recovers_forgotten_actions_with_the_encoder(crystal_vae_checkpoint):
    """A model that did not sample the proposals (a resumed campaign) recovers their actions
    with its encoder and learns from them; a crystal it cannot encode is skipped."""
    sampler, fresh, before = (loaded(crystal_vae_checkpoint) for _ in range(3))
    for gen in (sampler, fresh, before):
        gen.config["prior"] = "aggregate"
    samples = sampler.sample(60, rng=np.random.default_rng(0))
    feedback = [Feedback(s, reward=float(s.composition.reduced_formula == REWARDED))
                for s in samples]  # fmt: skip
    alien = Structure(Lattice.cubic(5.0), ["Xe", "Xe"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    logs = fresh.reinforce([Feedback(alien, reward=1.0), *feedback], steps=10, lr=0.1,
                           kl_weight=0.01)  # fmt: skip
    assert logs["n"] == len(feedback)
    share_before = share_of(before.sample(200, rng=np.random.default_rng(9)), REWARDED)
    share_after = share_of(fresh.sample(200, rng=np.random.default_rng(9)), REWARDED)
    assert share_after > share_before, (share_before, share_after)


class Offset(torch.nn.Module):
    """The smallest module ``train_loop`` trains: one number fitted to ``y`` by a (weighted)
    squared error, deterministic, so two runs agree bit for bit."""

    def __init__(self):
        super().__init__()
        self.b = torch.nn.Parameter(torch.zeros(()))

    def loss(self, batch, weights, epoch, epochs):
        from matloop.generators.torch_common import weighted_mean

        loss = weighted_mean((batch["y"] - self.b) ** 2, weights)
        return loss, {"loss": float(loss)}


def offset_rows(n: int = 200) -> dict[str, torch.Tensor]:
    """Targets +1 on even rows and -1 on odd rows, in a shuffled-looking order."""
    y = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0) + 0.01 * torch.arange(n) / n
    return {"y": y}


def test_train_loop_uses_the_row_weights():
    from matloop.generators.torch_common import train_loop

    rows = offset_rows()
    even = (torch.arange(200) % 2 == 0).float()
    plain, weighted = Offset(), Offset()
    train_loop(plain, rows, epochs=30, lr=0.05)
    train_loop(weighted, rows, epochs=30, lr=0.05, weights=even)
    assert abs(float(plain.b)) < 0.2 and float(weighted.b) > 0.8


def test_train_loop_defaults_are_the_documented_ones():
    """batch size 128, lr 1e-3, no weight decay, seed 0: 200 rows make two batches of
    different sizes, so each setting shows in the result."""
    from matloop.generators.torch_common import train_loop

    implicit, explicit = Offset(), Offset()
    history = train_loop(implicit, offset_rows(), epochs=3)
    train_loop(explicit, offset_rows(), epochs=3, batch_size=128, lr=1e-3, weight_decay=0.0,
               seed=0)  # fmt: skip
    assert torch.equal(implicit.b, explicit.b) and float(implicit.b) != 0.0
    assert len(history) == 3 and set(history[0]) == {"loss"}
    for changed in ({"batch_size": 100}, {"lr": 2e-3}, {"weight_decay": 1.0}, {"seed": 1}):
        other = Offset()
        with torch.no_grad():
            other.b.fill_(0.5)  # weight decay needs a parameter away from zero to act on
        again = Offset()
        with torch.no_grad():
            again.b.fill_(0.5)
        train_loop(other, offset_rows(), epochs=3, **changed)
        train_loop(again, offset_rows(), epochs=3)
        assert not torch.equal(other.b, again.b), changed


def test_train_loop_cosine_schedule_anneals_to_a_hundredth():
    import math

    from matloop.generators.torch_common import train_loop

    model = Offset()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    train_loop(model, offset_rows(), epochs=4, lr=0.1, optimizer=opt, schedule="cosine",
               on_epoch=lambda epoch, logs: seen.append(opt.param_groups[0]["lr"]))  # fmt: skip
    low = 0.1 / 100
    expected = [low + (0.1 - low) * (1 + math.cos(math.pi * e / 4)) / 2 for e in (1, 2, 3, 4)]
    assert seen == pytest.approx(expected)
    constant = torch.optim.SGD(Offset().parameters(), lr=0.1)
    train_loop(Offset(), offset_rows(), epochs=2, optimizer=constant)
    assert constant.param_groups[0]["lr"] == 0.1
    with pytest.raises(ValueError, match=r"^unknown schedule 'linear'; use 'cosine' or None$"):
        train_loop(Offset(), offset_rows(), epochs=1, schedule="linear")


def test_weighted_mean_with_weights_summing_below_one():
    from matloop.generators.torch_common import weighted_mean

    rows = torch.tensor([1.0, 2.0, 4.0])
    assert float(weighted_mean(rows, torch.tensor([0.1, 0.1, 0.2]))) == pytest.approx(2.75)


def test_train_loop_steps_once_per_batch_and_learns_from_a_single_row():
    from matloop.generators.torch_common import train_loop

    model = Offset()
    train_loop(model, {"y": torch.ones(200)}, epochs=1, batch_size=128,
               optimizer=torch.optim.SGD(model.parameters(), lr=0.1))  # fmt: skip
    assert float(model.b) == pytest.approx(0.36)  # two SGD steps on (1 - b)^2: 0.2, then 0.36
    single = Offset()
    train_loop(single, {"y": torch.ones(1)}, epochs=1,
               optimizer=torch.optim.SGD(single.parameters(), lr=0.1))  # fmt: skip
    assert float(single.b) == pytest.approx(0.2)
