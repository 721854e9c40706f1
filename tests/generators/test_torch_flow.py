"""crystal_flow: symmetries of the denoiser, the flow-matching loss, and the Generator API."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from pymatgen.core import Lattice, Structure

from matloop.generators.base import ChemicalSpace, Feedback
from matloop.generators.flow_model import CrystalFlowModule, wrap
from matloop.generators.torch_flow import CrystalFlowGenerator
from matloop.generators.training import load_checkpoint
from matloop.soundness import unsound_reason  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def rock_salts(n: int = 24, seed: int = 0):
    """NaCl-type and CsCl-type cells (8 and 2 atoms) of a few salts, with a 'gap'."""
    rng = np.random.default_rng(seed)
    pairs = [("Na", "Cl"), ("K", "Cl"), ("Na", "F"), ("K", "Br")]
    out, gaps = [], []
    for i in range(n):
        a, x = pairs[i % len(pairs)]
        if i % 2:
            s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.6 + 0.3 * rng.random()),
                                          [a, x], [[0, 0, 0], [0.5, 0.5, 0.5]])
            s = s.get_primitive_structure() * (1, 1, 2)  # 4 atoms
        else:
            s = Structure(Lattice.cubic(3.4 + 0.3 * rng.random()), [a, x],
                          [[0, 0, 0], [0.5, 0.5, 0.5]])
        out.append(s)
        gaps.append(float(rng.uniform(0, 6)))
    return out, {"gap": np.array(gaps)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    structures, props = rock_salts()
    gen = CrystalFlowGenerator(property_columns=["gap"], hidden=32, layers=2, epochs=40,
                               batch_size=8, steps=20, seed=0)
    gen.fit(structures, props)
    path = tmp_path_factory.mktemp("flow") / "flow.pt"
    gen.save(path)
    return gen, path


def random_batch(b=3, n=5, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    types = torch.randint(1, k + 1, (b, n), generator=g)
    types[0, 3:] = 0  # a smaller cell, padded
    frac = torch.rand(b, n, 3, generator=g)
    lat = torch.randn(b, 6, generator=g)
    return types, frac, lat, torch.rand(b, generator=g), types > 0


def test_denoiser_is_periodic_translation_and_permutation_equivariant():
    torch.manual_seed(0)
    m = CrystalFlowModule(n_elements=4, hidden=16, layers=2).eval()
    types, frac, lat, t, mask = random_batch()
    v, vl, logits = m(types, frac, lat, t, mask)
    # periodic: whole lattice vectors added to coordinates change nothing
    v2, vl2, l2 = m(types, frac + torch.randint(-2, 3, frac.shape).float(), lat, t, mask)
    assert torch.allclose(v, v2, atol=1e-4) and torch.allclose(vl, vl2, atol=1e-4)
    # translation: shifting every atom by one vector changes nothing
    shifted = torch.remainder(frac + torch.tensor([0.31, -0.12, 0.77]), 1.0)
    v3, vl3, l3 = m(types, shifted, lat, t, mask)
    assert torch.allclose(v, v3, atol=1e-4) and torch.allclose(logits, l3, atol=1e-4)
    # permutation: permuting atoms permutes the outputs
    perm = torch.tensor([4, 2, 0, 1, 3])
    b = 1  # a full cell (row 0 is padded)
    v4, vl4, l4 = m(types[b:b + 1, perm], frac[b:b + 1, perm], lat[b:b + 1], t[b:b + 1],
                    mask[b:b + 1, perm])
    assert torch.allclose(v[b, perm], v4[0], atol=1e-4)
    assert torch.allclose(logits[b, perm], l4[0], atol=1e-4)
    assert torch.allclose(vl[b], vl4[0], atol=1e-4)
    # padding: padded atoms do not change the real ones, and get no velocity
    assert torch.all(v[0, 3:] == 0)
    v5, _, _ = m(types[:1, :3], frac[:1, :3], lat[:1], t[:1], mask[:1, :3])
    assert torch.allclose(v[0, :3], v5[0], atol=1e-4)


def test_wrap_is_the_shortest_periodic_difference():
    d = torch.tensor([0.9, -0.9, 0.49, 0.51, -0.5])
    assert torch.allclose(wrap(d), torch.tensor([-0.1, 0.1, 0.49, -0.49, -0.5]), atol=1e-6)


@pytest.mark.slow  # shares a 40-epoch training (~40 s idle, minutes under load)
def test_training_lowers_the_flow_matching_loss(trained):
    gen, _ = trained
    first, last = gen.history[0]["loss"], np.mean([h["loss"] for h in gen.history[-5:]])
    assert last < 0.8 * first


@pytest.mark.slow  # shares a 40-epoch training (~40 s idle, minutes under load)
def test_samples_are_sound_sized_like_the_data_and_in_the_chemical_space(trained):
    gen, _ = trained
    samples = gen.sample(12, rng=np.random.default_rng(0))
    assert samples  # a 40-epoch model on 24 salts makes some sound cells
    assert gen.soundness.kept >= len(samples)
    for s in samples:
        assert unsound_reason(s, factor=gen.config["distance_factor"]) is None
        assert len(s) in (2, 4)
    gen.chemical_space = ChemicalSpace(["K", "Cl", "Br"], max_atoms=2)
    try:
        inside = gen.sample(6, rng=np.random.default_rng(1))
    finally:
        gen.chemical_space = None
    for s in inside:
        assert {e.symbol for e in s.composition.elements} <= {"K", "Cl", "Br"} and len(s) == 2


@pytest.mark.slow  # shares a 40-epoch training (~40 s idle, minutes under load)
def test_property_window_and_unconditional_sampling_both_run(trained):
    gen, _ = trained
    assert isinstance(gen.sample(3, {"gap": (1.0, 2.0)}, rng=np.random.default_rng(0)), list)
    with pytest.raises(ValueError, match="unknown condition"):
        gen.sample(3, {"density": 1.0})


@pytest.mark.slow  # shares a 40-epoch training (~40 s idle, minutes under load)
def test_checkpoint_round_trip_and_finetune(trained):
    gen, path = trained
    loaded = load_checkpoint(path)
    assert isinstance(loaded, CrystalFlowGenerator)
    a = gen.sample(4, rng=np.random.default_rng(5))
    b = loaded.sample(4, rng=np.random.default_rng(5))
    assert [s.composition for s in a] == [s.composition for s in b]
    before = {k: v.clone() for k, v in loaded.module.state_dict().items()}
    loaded.update([Feedback(s, reward=1.0, properties={"gap": 1.5}) for s in b[:2]])
    assert loaded.version == gen.version + 1
    after = loaded.module.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_settings_are_typed():
    with pytest.raises(ValidationError):
        CrystalFlowGenerator(hidden="wide")
    with pytest.raises(ValidationError):
        CrystalFlowGenerator(no_such_setting=1)
