"""fit / sample / save / load / update of every torch generator on a tiny data set."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from matloop.generators.base import Feedback
from matloop.generators.torch_common import read_checkpoint
from matloop.generators.training import (
    CONDITIONAL,
    TORCH_GENERATORS,
    generator_class,
    load_checkpoint,
    sample_structures,
    train_model,
)

A_SITE = ["Sr", "Ba", "Ca", "K", "Na"]
B_SITE = ["Ti", "Zr", "Nb", "Ta"]
X_SITE = ["O", "F"]


def tiny_perovskites(n: int = 40, seed: int = 0) -> tuple[list[Structure], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    structures, gaps = [], []
    for _ in range(n):
        a, b, x = rng.choice(A_SITE), rng.choice(B_SITE), rng.choice(X_SITE)
        coords = np.array([[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
        coords = coords + rng.normal(0, 0.01, coords.shape)
        structures.append(Structure(Lattice.cubic(rng.uniform(3.8, 4.3)), [a, b, x, x, x], coords))
        gaps.append(float(rng.uniform(0, 4)))
    return structures, {"dir_gap": np.array(gaps)}


# small models and cells: one torch thread is fastest, and spares the other core
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data():
    return tiny_perovskites()


@pytest.mark.parametrize("kind", sorted(TORCH_GENERATORS))
def test_fit_sample_save_load_update(kind, data, tmp_path):
    structures, props = data
    cls = generator_class(kind)
    columns = ["dir_gap"] if kind in CONDITIONAL else []
    # Composition models need a few more epochs before their argmax counts form a pattern
    # (ABX3) that has a template; still well under a second each.
    extra = {"epochs": 2}
    if kind.startswith("composition"):
        extra = {"epochs": 60, "lr": 1e-3 if kind.endswith("wgan") else 5e-3}
    gen = cls(property_columns=columns, hidden=32, seed=0, batch_size=16, **extra)
    # Two epochs make overlapping atoms: this test is about the interface, so the
    # soundness filter (tested on its own below) is off here.
    gen.config["soundness"] = False
    gen.fit(structures, props if columns else None)
    assert gen.version == 1

    conditions = {"dir_gap": (1.5, 2.5)} if columns else None
    samples = gen.sample(6, conditions, rng=np.random.default_rng(1))
    assert 0 < len(samples) <= 6
    assert all(isinstance(s, Structure) and len(s) >= 1 for s in samples)

    path = tmp_path / f"{kind}.pt"
    sha = gen.save(path)
    assert (tmp_path / f"{kind}.pt.sha256").read_text().split()[0] == sha
    # weights_only load works on the raw file; config is JSON text.
    payload = torch.load(path, weights_only=True)
    assert json.loads(payload["config"])["property_columns"] == columns
    loaded = load_checkpoint(path)
    assert type(loaded) is cls and loaded.checkpoint_sha256 == sha
    again = loaded.sample(6, conditions, rng=np.random.default_rng(1))
    before = gen.sample(6, conditions, rng=np.random.default_rng(1))
    assert [s.composition for s in again] == [s.composition for s in before]

    feedback = [
        Feedback(s, reward=float(i % 2), properties={"dir_gap": 2.0}) for i, s in enumerate(samples)
    ]
    gen.update(feedback)
    assert gen.version == 2
    assert gen.describe()["generator"] == kind
    assert gen.sample(3, conditions, rng=np.random.default_rng(2))


@pytest.mark.parametrize("kind", sorted(TORCH_GENERATORS))
def test_an_untrained_generator_refuses_to_sample(kind):
    gen = generator_class(kind)(hidden=32, seed=0)
    with pytest.raises(RuntimeError, match="fit or load the generator before sampling"):
        gen.sample(2, rng=np.random.default_rng(0))


def test_checkpoint_tampering_detected(data, tmp_path):
    structures, _ = data
    gen = generator_class("crystal_vae")(epochs=1, hidden=16)
    gen.fit(structures)
    path = tmp_path / "vae.pt"
    gen.save(path)
    (tmp_path / "vae.pt.sha256").write_text("0" * 64 + "  vae.pt\n")
    with pytest.raises(ValueError, match="sha256"):
        read_checkpoint(path)


def test_crystal_vae_reconstructs_training_data(data):
    """A short training run already reconstructs most of 40 training perovskites."""
    structures, props = data
    gen = generator_class("crystal_cvae")(
        property_columns=["dir_gap"], epochs=60, hidden=64, seed=0, batch_size=8, beta=0.001
    )
    gen.fit(structures, props)
    rec = gen.reconstruct(structures, props)
    assert (
        sum(
            r is not None and r.composition == s.composition
            for r, s in zip(rec, structures, strict=True)
        )
        >= 25
    )


def test_latent_optimisation_moves_prediction(data):
    structures, _ = data
    # A learnable property (the tiny data's own gaps are random): it grows with the cell edge.
    props = {"dir_gap": np.array([8.0 * (s.lattice.a - 3.8) for s in structures])}
    gen = generator_class("crystal_latent_opt")(property_columns=["dir_gap"], epochs=30, hidden=32)
    gen.fit(structures, props)
    z = gen._draw_latents(32, np.random.default_rng(0), "aggregate", 1.0)
    before = gen.predict_latent(z).detach().numpy()[:, 0]
    after_z = gen.optimise_latents(z, np.array([[3.5, 3.9]]))
    after = gen.predict_latent(after_z).detach().numpy()[:, 0]
    # The optimiser must move every prediction up towards the window.
    assert np.all(after > before)
    assert after.mean() > before.mean() + 0.2


def test_temperature_scales_the_neighbourhood_noise(data):
    """Sampling temperature multiplies the noise around the anchor crystals' latents; the
    config's value is the default and ``sample(temperature=...)`` overrides it."""
    structures, _ = data
    gen = generator_class("crystal_vae")(epochs=2, hidden=16, temperature=0.5)
    gen.fit(structures)
    mu, _ = gen._replay_latents()

    def offsets(t):
        z, idx = gen._draw_latents_idx(64, np.random.default_rng(3), "neighbourhood", t)
        return (z - mu[torch.as_tensor(idx)]).numpy()

    assert np.allclose(offsets(0.0), 0.0)
    assert np.allclose(offsets(0.5), 0.5 * offsets(1.0), atol=1e-5)
    default = gen.sample(8, rng=np.random.default_rng(4))
    explicit = gen.sample(8, rng=np.random.default_rng(4), temperature=0.5)
    assert [s.composition for s in default] == [s.composition for s in explicit]


def test_reconstruction_refinement_lowers_the_decoding_loss(data):
    structures, props = data
    gen = generator_class("crystal_vae")(epochs=20, hidden=32, seed=0, batch_size=8)
    gen.fit(structures)
    tensors, _ = gen._encode_structures(structures, np.zeros((len(structures), 0)))
    tensors.pop("cond")
    m = gen.module
    mu, _ = m.encode(m.features(tensors["lat"], tensors["cls"], tensors["frac"]), None)

    def loss(z):
        lat, cls, coord = m.reconstruction_terms(z, tensors)
        return float((lat + cls + m.coord_weight * coord).mean())

    refined = gen.refine_latents(mu.detach(), tensors, steps=30)
    assert loss(refined) < loss(mu.detach())
    assert all(p.requires_grad for p in m.parameters())  # weights untouched, grads restored

    def matches(rec):
        return sum(
            r is not None and r.composition == s.composition
            for r, s in zip(rec, structures, strict=True)
        )

    assert matches(gen.reconstruct(structures, refine_steps=30)) >= matches(
        gen.reconstruct(structures, refine_steps=0)
    )


def test_cgan_minibatch_std_keeps_the_critic_finite():
    """The minibatch-std input has a finite gradient even when every real column is constant
    across the batch (a collapsed batch)."""
    from matloop.generators.torch_cgan import LatentCGANModule

    torch.manual_seed(0)
    m = LatentCGANModule(latent_dim=8, n_cond=1, noise_dim=4, hidden=16)
    real, cond = torch.zeros(10, 8), torch.randn(10, 1)
    d_loss = m.critic_loss(real, cond)
    d_loss.backward()
    assert torch.isfinite(d_loss)
    assert all(torch.isfinite(p.grad).all() for p in m.critic.parameters())
    g_loss, _ = m.generator_loss(cond)
    assert torch.isfinite(g_loss)
    # The spread input tells a collapsed batch from a spread one.
    same = m.score(torch.zeros(4, 8), torch.zeros(4, 1))
    spread = m.score(torch.randn(4, 8) * 3, torch.zeros(4, 1))
    assert not torch.allclose(same.mean(), spread.mean())


def test_cgan_generates_in_the_autoencoder_latent_space(data):
    structures, props = data
    gen = generator_class("crystal_cgan")(
        property_columns=["dir_gap"],
        epochs=5,
        gan_epochs=3,
        hidden=16,
        batch_size=8,
        latent_dim=8,
    )
    gen.config["soundness"] = False  # 5 epochs: overlapping atoms; the test is about latents
    gen.fit(structures, props)
    assert set(gen.modules) == {"vae", "cgan"} and len(gen.gan_history) == 3
    assert gen.module.n_cond == 0  # the condition enters through the GAN only
    w = gen._whitened_latents(gen._encode_structures(structures, props["dir_gap"][:, None])[0])
    # Whitening by the aggregate posterior: mean 0, unit variance (less for directions the
    # encoder hardly uses, where the 1e-4 regulariser of the covariance dominates).
    var = torch.cov(w.T).diagonal().numpy()
    assert np.allclose(w.mean(0).numpy(), 0, atol=1e-3)
    assert var.max() > 0.5 and np.all(var <= 1.01)
    assert gen.sample(4, {"dir_gap": 2.0}, rng=np.random.default_rng(0))
    assert len(gen.reconstruct(structures[:3], {"dir_gap": props["dir_gap"][:3]})) == 3


def test_composition_wgan_straight_through_one_hots():
    """In training the generator hands the critic exact one-hots that still carry the
    softmax gradient; in evaluation it returns the probabilities."""
    from matloop.generators.torch_composition import CompositionWGANModule

    torch.manual_seed(0)
    m = CompositionWGANModule(
        n_elements=6, n_counts=4, latent_dim=8, hidden=16, straight_through=True
    )
    z = torch.randn(5, 8)
    m.train()
    x = m.generate(z)
    assert torch.allclose(x, x.round(), atol=1e-6)  # one-hots (to float rounding)
    assert torch.allclose(x.sum(-1), torch.ones(5, 6))
    m.critic_loss(torch.zeros(5, 6, 4), None)  # runs with hard fakes
    m.generator_loss(5, None, torch.device("cpu")).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.generator.parameters())
    m.eval()
    probs = m.generate(z)
    assert probs.min() > 0 and torch.equal(probs.argmax(-1), x.argmax(-1))


def test_conditions_are_checked(data):
    structures, props = data
    gen = generator_class("crystal_vae")(epochs=1, hidden=16)
    gen.fit(structures)
    with pytest.raises(ValueError, match="unconditional"):
        gen.sample(2, {"dir_gap": 1.0})
    with pytest.raises(ValueError, match="unknown torch generator"):
        generator_class("nope")


def test_train_model_front_door(data, tmp_path):
    import pandas as pd

    structures, props = data
    csv = tmp_path / "tiny.csv.gz"
    pd.DataFrame(
        {"cif": [s.to(fmt="cif") for s in structures], "dir_gap": props["dir_gap"]}
    ).to_csv(csv)
    gen = train_model(
        "composition_cvae",
        csv,
        property_columns=["dir_gap"],
        epochs=60,
        seed=0,
        device="cpu",
        hidden=32,
        lr=5e-3,
        batch_size=16,
    )
    out = sample_structures(gen, 4, {"dir_gap": 2.0}, rng=0)
    assert out and all(isinstance(s, Structure) for s in out)
    with pytest.raises(ValueError, match="lacks column"):
        train_model("crystal_cvae", csv, property_columns=["band_gap"], epochs=1)


def test_import_is_light():
    import subprocess
    import sys

    code = (
        "import sys, matloop.generators, matloop.generators.training; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
