"""The "Extending matloop" examples of the README run as written: a new relaxer and a new
generator, each one class plus one registry line."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
from pymatgen.core import Lattice, Structure

README = Path(__file__).resolve().parents[1] / "README.md"


def _examples() -> list[str]:
    text = README.read_text()
    section = text[text.index("## Extending matloop"):]
    section = section[: section.find("\n## ", 1)] if "\n## " in section[1:] else section
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def _run(code: str, name: str) -> types.ModuleType:
    """Execute an example as the module ``name`` (its registry line names the module)."""
    module = types.ModuleType(name)
    sys.modules[name] = module
    exec(compile(code, f"README:{name}", "exec"), module.__dict__)
    return module


@pytest.fixture
def examples(monkeypatch):
    from matloop.generators import registry
    from matloop.relax import relaxer

    monkeypatch.setattr(relaxer, "RELAXERS", dict(relaxer.RELAXERS))
    monkeypatch.setattr(registry, "GENERATOR_PATHS", dict(registry.GENERATOR_PATHS))
    found = _examples()
    assert len(found) == 2, "the README should show one relaxer and one generator"
    yield found
    for name in ("readme_relaxer", "readme_generator"):
        sys.modules.pop(name, None)


def test_the_relaxer_example_relaxes_through_build_relaxer(examples):
    from matloop.config import ChemicalSpaceConfig
    from matloop.relax.relaxer import Relaxer, build_relaxer

    _run(examples[0], "readme_relaxer")
    relaxer = build_relaxer(SimpleNamespace(kind="emt"),
                            ChemicalSpaceConfig(elements=["Cu"], max_atoms=2))
    assert isinstance(relaxer, Relaxer) and relaxer.potential == "EMT"
    cu = Structure(Lattice.cubic(3.6), ["Cu"] * 4,
                   [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    small = Structure(Lattice.cubic(2.6), ["Cu"], [[0, 0, 0]])
    big, ok = relaxer.relax([("big", cu), ("small", small)])
    assert not big.ok and big.reason == "too many atoms (4 > 2)"  # the shared pre-check
    assert ok.ok and ok.converged and ok.candidate_id == "small"
    assert 0.0 < ok.energy_per_atom < 1.0  # EMT Cu, squeezed a little


def test_the_generator_example_is_built_from_the_registry_and_samples(examples):
    from matloop.config import parse_config
    from matloop.generators.base import ChemicalSpace
    from matloop.generators.registry import build_generator

    _run(examples[1], "readme_generator")
    generator = build_generator("rock_salt", ChemicalSpace(["Na", "K", "Cl"]), seed=3)
    structures = generator.sample(4)
    assert len(structures) == 4 and generator.learns == frozenset()
    for structure in structures:
        assert len(structure) == 8 and structure.composition.reduced_formula.count("Na") <= 1
    with pytest.raises(TypeError, match="lattice"):  # its typed settings are checked
        build_generator("rock_salt", ChemicalSpace(["Na", "Cl"]), lattice="big")
    config = parse_config({"name": "x", "chemical_space": {"elements": ["Na", "Cl"]},
                           "generators": [{"name": "rock_salt"}], "store": "memory://"})
    assert config.generators[0].name == "rock_salt"  # campaign files may name it
