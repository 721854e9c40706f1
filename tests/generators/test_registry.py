"""The generator registry: names, lazy imports, clear errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from matloop.generators.base import ChemicalSpace, Generator
from matloop.generators.registry import (
    GENERATOR_PATHS,
    available_generators,
    build_generator,
    generator_class,
)


def test_baselines_are_registered():
    assert {"prototype_substitution", "random_symmetric"} <= set(available_generators())
    assert available_generators() == sorted(GENERATOR_PATHS)


@pytest.mark.parametrize("name", sorted(GENERATOR_PATHS))
def test_each_path_names_a_generator_with_that_name(name):
    cls = generator_class(name)
    assert issubclass(cls, Generator)
    assert cls.name == name


def test_build_generator_passes_seed_and_settings():
    space = ChemicalSpace(["Na", "Cl"], max_atoms=4)
    gen = build_generator("random_symmetric", space, seed=3, max_elements=2)
    assert gen.seed == 3
    assert gen.max_elements == 2
    assert gen.chemical_space is space
    with pytest.raises(TypeError):
        build_generator("prototype_substitution", space, temperature=1.0)


def test_unknown_generator_is_named_with_the_known_ones():
    with pytest.raises(ValueError, match="unknown generator 'diffusion'") as info:
        build_generator("diffusion", ChemicalSpace(["Na", "Cl"]))
    for name in available_generators():
        assert name in str(info.value)


def test_importing_the_registry_is_light():
    code = (
        "import sys, matloop.generators.registry; "
        "print(sorted(m for m in ('torch', 'pyxtal', 'smact') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
