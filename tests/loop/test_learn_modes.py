"""The learn step updates a learned generator as its config says: fine-tune, REINFORCE or
not at all (memory store, a tiny crystal VAE, evaluations written directly: no relaxation)."""

from __future__ import annotations

import numpy as np
import pytest

import torch
from pymatgen.core import Lattice, Structure

from matloop.config import parse_config
from matloop.loop import CampaignRun
from matloop.generators.training import generator_class, load_checkpoint
from matloop.store import CandidateStatus, EvaluationDoc


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    coords = np.array([[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    structures = [
        Structure(Lattice.cubic(rng.uniform(3.8, 4.3)), [a, b, "O", "O", "O"], coords)
        for a in ("Sr", "Ba", "Ca") for b in ("Ti", "Zr") for _ in range(4)
    ]
    gen = generator_class("crystal_vae")(epochs=20, hidden=32, latent_dim=8, batch_size=12)
    gen.fit(structures)
    path = tmp_path_factory.mktemp("ckpt") / "vae.pt"
    gen.save(path)
    return str(path)


def run_one_round(checkpoint: str, mode: str) -> tuple[CampaignRun, dict]:
    torch.manual_seed(0)  # the same draws whichever test runs first
    config = parse_config({
        "name": f"learn-{mode}",
        "chemical_space": {"elements": ["Sr", "Ba", "Ca", "Ti", "Zr", "O"], "max_atoms": 5},
        "generators": [{"name": "crystal_vae", "checkpoint": checkpoint, "update": mode,
                        "update_settings": {"steps": 3} if mode == "reinforce" else {}}],
        "budget": {"candidates_per_round": 12, "relaxations_per_round": 4},
        "store": "memory://",
    })
    run = CampaignRun(config)
    run.ensure_campaign()
    run.start_round()
    run.generate(1)
    cands = run.store.candidates(run.name)
    assert len(cands) >= 6
    labelled, rejected = cands[: len(cands) // 2], cands[len(cands) // 2 :]
    run.store.save_evaluations([
        EvaluationDoc(
            campaign=run.name, candidate_id=c.candidate_id, round=1, formula=c.formula,
            energy_per_atom=-5.0, e_above_hull=0.0 if i % 2 == 0 else 0.4,
            e_above_hull_at_round=0.0, is_stable=i % 2 == 0, is_novel=True,
            is_unique=True, hull_scheme="test", hull_version=1,
        )
        # every other one stable: which formulas the sampler draws is not this test's concern
        for i, c in enumerate(labelled)
    ])
    run.store.set_status(run.name, {c.candidate_id: (CandidateStatus.evaluated, None)
                                    for c in labelled}, round_=1)  # fmt: skip
    run.store.set_status(run.name, {c.candidate_id: (CandidateStatus.rejected, "test")
                                    for c in rejected}, round_=1)  # fmt: skip
    return run, run.learn(1).counts


def test_reinforce_mode_updates_the_policy_and_stores_it(checkpoint):
    run, counts = run_one_round(checkpoint, "reinforce")
    n = len(run.store.candidates(run.name))
    assert counts["generators_updated"] == ["crystal_vae"]
    assert counts["reinforce"]["crystal_vae"]["n"] == n  # evaluated and rejected proposals
    assert 0.0 <= counts["mean_reward_per_proposal"]["crystal_vae"] <= 1.0
    (model,) = run.store.models(run.name, name="crystal_vae")
    assert model.version == 1
    fresh = CampaignRun(run.config, store=run.store)  # a new process resumes from the store
    (_, generator), = fresh.generators()
    assert "policy" in generator.modules and int(generator.modules["policy"].n_updates) == 1


def decoding_loss(gen, structures) -> float:
    """Mean decoding loss at the posterior means: lower = the model finds them likelier."""
    tensors, _ = gen._encode_structures(structures, np.zeros((len(structures), 0)))
    m = gen.module
    with torch.no_grad():
        mu, _ = m.encode(m.features(tensors["lat"], tensors["cls"], tensors["frac"]), None)
        l_lat, l_cls, l_coord = m.reconstruction_terms(mu, tensors)
    return float((l_lat + l_cls + m.coord_weight * l_coord).mean())


def test_finetune_mode_updates_the_decoder(checkpoint):
    run, counts = run_one_round(checkpoint, "finetune")
    assert counts["generators_updated"] == ["crystal_vae"] and "reinforce" not in counts
    (_, generator), = run.generators()
    assert "policy" not in generator.modules
    # the rewarded (stable) proposals became likelier than under the checkpoint
    stable = {e.candidate_id for e in run.store.evaluations(run.name) if e.is_stable}
    rewarded = [Structure.from_dict(c.structure) for c in run.store.candidates(run.name)
                if c.candidate_id in stable]
    assert rewarded, "the round should have rewarded some proposals"
    before = decoding_loss(load_checkpoint(checkpoint), rewarded)
    assert decoding_loss(generator, rewarded) < 0.97 * before


def test_none_mode_keeps_the_generator(checkpoint):
    run, counts = run_one_round(checkpoint, "none")
    assert counts["generators_updated"] == []
    assert run.store.models(run.name, name="crystal_vae") == []
