"""Prototype substitution: decorate known structure types with the elements of a space.

The oldest baseline of computational materials discovery: take a structure type that many
real compounds adopt (rock salt, perovskite, spinel, ...) and put the campaign's elements
on its sites, keeping only decorations that make chemical sense. Every learned generator
should beat this at the same relaxation budget.

Templates come from two places:

* a built-in library of common prototypes (:data:`PROTOTYPES`), built in code from a
  space group and Wyckoff representatives (no files, no downloads), and
* known crystals given to :meth:`PrototypeSubstitution.fit`, whose elements are swapped for
  elements of the space with the same sign of oxidation state (ion substitution).

Each template site has a *role* (``"A"``, ``"B"``, ``"X"`` for library prototypes; the
original element for fitted crystals) and each role is a cation, an anion or (in
intermetallic prototypes) a metal. A decoration maps roles to distinct elements of the
space; an ionic decoration must be charge neutral with every anion more electronegative
than every cation (:func:`~matloop.generators.compositions.role_oxidation_states`), which
implies :func:`~matloop.chemistry.smact_valid`. The lattice is then scaled isotropically so
that the tightest contact just reaches the sum of the ions' radii (Shannon radii for ions,
metallic radii for intermetallics, and never closer than 0.75 x the covalent radii).
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
from pymatgen.core import Composition, Element, Lattice, Species, Structure
from pydantic import Field

from matloop.chemistry import smact_valid
from matloop.identity import candidate_id
from matloop.generators.base import ChemicalSpace, Generator, GeneratorSettings
from matloop.generators.compositions import (
    ANION,
    CATION,
    can_be_anion,
    is_alloy_element,
    role_oxidation_states,
)

if TYPE_CHECKING:
    from collections.abc import Collection, Container, Mapping, Sequence

__all__ = [
    "PROTOTYPES",
    "DistinctStructures",
    "Prototype",
    "PrototypeSubstitution",
    "build_prototype",
]

#: Like-charged ions may come closer than the sum of their radii (shared polyhedron edges).
_LIKE_CHARGE_FACTOR = 0.8
#: No two atoms start closer than this times the sum of their covalent radii.
_COVALENT_FACTOR = 0.75


@dataclass(frozen=True)
class Prototype:
    """A structure type given by its space group and one representative per Wyckoff orbit.

    Parameters
    ----------
    name
        Key in :data:`PROTOTYPES` and the ``"prototype"`` recorded on each structure.
    spacegroup
        International number; coordinates are in pymatgen's default setting for it
        (origin choice 1 for Fd-3m, hexagonal axes for rhombohedral groups).
    lattice
        Reference ``(a, b, c, alpha, beta, gamma)``; only its shape matters, the size is
        set from the radii of the decorating elements.
    sites
        ``(role, fractional coordinates)`` for each Wyckoff orbit.
    roles
        :data:`~matloop.generators.compositions.CATION` or ``ANION`` for each role.
    intermetallic
        Whether all-metal decorations are also allowed.
    larger
        Cation roles whose ions must be at least as large as the next one's, in order
        (perovskite: the 12-coordinated A ion is not smaller than the octahedral B ion).
    example
        A real compound of this type, ``{role: element}``, for documentation and tests.
    """

    name: str
    spacegroup: int
    lattice: tuple[float, float, float, float, float, float]
    sites: tuple[tuple[str, tuple[float, float, float]], ...]
    roles: Mapping[str, int]
    intermetallic: bool = False
    larger: tuple[str, ...] = ()
    example: Mapping[str, str] | None = None


def _cubic(a: float) -> tuple[float, float, float, float, float, float]:
    return (a, a, a, 90.0, 90.0, 90.0)


def _hexagonal(a: float, c: float) -> tuple[float, float, float, float, float, float]:
    return (a, a, c, 90.0, 90.0, 120.0)


_AX = {"A": CATION, "X": ANION}
_ABX = {"A": CATION, "B": CATION, "X": ANION}

#: The built-in library, by name. Cells are reduced to primitive cells when decorated.
PROTOTYPES: dict[str, Prototype] = {
    p.name: p
    for p in [
        Prototype(
            "rock_salt", 225, _cubic(5.64),
            (("A", (0, 0, 0)), ("X", (0.5, 0.5, 0.5))), _AX,
            example={"A": "Na", "X": "Cl"},
        ),
        Prototype(
            "cesium_chloride", 221, _cubic(4.12),
            (("A", (0, 0, 0)), ("X", (0.5, 0.5, 0.5))), _AX,
            intermetallic=True, example={"A": "Cs", "X": "Cl"},
        ),
        Prototype(
            "zinc_blende", 216, _cubic(5.41),
            (("A", (0, 0, 0)), ("X", (0.25, 0.25, 0.25))), _AX,
            example={"A": "Zn", "X": "S"},
        ),
        Prototype(
            "wurtzite", 186, _hexagonal(3.25, 5.21),
            (("A", (1 / 3, 2 / 3, 0)), ("X", (1 / 3, 2 / 3, 0.375))), _AX,
            example={"A": "Zn", "X": "O"},
        ),
        Prototype(
            "fluorite", 225, _cubic(5.46),
            (("A", (0, 0, 0)), ("X", (0.25, 0.25, 0.25))), _AX,
            example={"A": "Ca", "X": "F"},
        ),
        Prototype(
            "antifluorite", 225, _cubic(4.62),
            (("A", (0.25, 0.25, 0.25)), ("X", (0, 0, 0))), _AX,
            example={"A": "Li", "X": "O"},
        ),
        Prototype(
            "rutile", 136, (4.59, 4.59, 2.96, 90.0, 90.0, 90.0),
            (("A", (0, 0, 0)), ("X", (0.305, 0.305, 0))), _AX,
            example={"A": "Ti", "X": "O"},
        ),
        Prototype(
            "nickel_arsenide", 194, _hexagonal(3.62, 5.03),
            (("A", (0, 0, 0)), ("X", (1 / 3, 2 / 3, 0.25))), _AX,
            example={"A": "Ni", "X": "As"},
        ),
        Prototype(
            "cadmium_iodide", 164, _hexagonal(4.24, 6.84),
            (("A", (0, 0, 0)), ("X", (1 / 3, 2 / 3, 0.25))), _AX,
            example={"A": "Cd", "X": "I"},
        ),
        Prototype(
            "alpha_nafeo2", 166, _hexagonal(2.82, 14.05),
            (("A", (0, 0, 0.5)), ("B", (0, 0, 0)), ("X", (0, 0, 0.24))), _ABX,
            example={"A": "Li", "B": "Co", "X": "O"},
        ),
        Prototype(
            "perovskite", 221, _cubic(3.905),
            (("A", (0.5, 0.5, 0.5)), ("B", (0, 0, 0)), ("X", (0.5, 0, 0))), _ABX,
            larger=("A", "B"), example={"A": "Sr", "B": "Ti", "X": "O"},
        ),
        Prototype(
            "spinel", 227, _cubic(8.08),
            (("A", (0, 0, 0)), ("B", (0.625, 0.625, 0.625)), ("X", (0.3875,) * 3)),
            _ABX,
            example={"A": "Mg", "B": "Al", "X": "O"},
        ),
        Prototype(
            "corundum", 167, _hexagonal(4.76, 12.99),
            (("A", (0, 0, 0.352)), ("X", (0.306, 0, 0.25))), _AX,
            example={"A": "Al", "X": "O"},
        ),
        Prototype(
            "cu3au_l12", 221, _cubic(3.75),
            (("A", (0, 0.5, 0.5)), ("B", (0, 0, 0))), {"A": CATION, "B": ANION},
            intermetallic=True, example={"A": "Cu", "B": "Au"},
        ),
        Prototype(
            "full_heusler_l21", 225, _cubic(5.95),
            (("A", (0.25, 0.25, 0.25)), ("B", (0, 0, 0)), ("C", (0.5, 0.5, 0.5))),
            {"A": CATION, "B": CATION, "C": ANION},
            intermetallic=True, example={"A": "Cu", "B": "Mn", "C": "Al"},
        ),
        Prototype(
            "a15", 223, _cubic(5.29),
            (("A", (0.25, 0, 0.5)), ("B", (0, 0, 0))), {"A": CATION, "B": ANION},
            intermetallic=True, example={"A": "Nb", "B": "Sn"},
        ),
    ]
}  # fmt: skip


@dataclass(frozen=True)
class _Template:
    """A structure with one role per site, ready to be decorated and scaled."""

    name: str
    source: str
    lattice: np.ndarray
    frac_coords: np.ndarray
    site_roles: tuple[str, ...]
    roles: tuple[str, ...]
    #: CATION / ANION per role, or None when the template only takes all-metal decorations.
    signs: tuple[int, ...] | None
    intermetallic: bool
    #: Shortest distance (Å, in ``lattice``) between each pair of roles, periodic images too.
    role_distances: Mapping[tuple[str, str], float]
    #: Cation roles in order of non-increasing ionic radius (see ``Prototype.larger``).
    larger: tuple[str, ...] = ()
    #: Per role: True takes metals and metalloids only, False non-metals only, None either.
    metal_like: tuple[bool | None, ...] | None = None

    @property
    def counts(self) -> tuple[int, ...]:
        return tuple(self.site_roles.count(r) for r in self.roles)

    def __len__(self) -> int:
        return len(self.site_roles)


def _role_distances(
    structure: Structure, site_roles: Sequence[str]
) -> dict[tuple[str, str], float]:
    """Shortest distance between every pair of roles (ordered both ways), images included."""
    cutoff = 3.0 * (structure.volume / len(structure)) ** (1 / 3)
    centers, points, _, distances = structure.get_neighbor_list(cutoff)
    out: dict[tuple[str, str], float] = {}
    for i, j, d in zip(centers, points, distances, strict=True):
        if d < 1e-6:
            continue
        key = (site_roles[i], site_roles[j])
        if d < out.get(key, np.inf):
            out[key] = out[key[::-1]] = float(d)
    return out


def _template_from_structure(
    structure: Structure,
    site_roles: Sequence[str],
    roles: Sequence[str],
    *,
    name: str,
    source: str,
    signs: Sequence[int] | None,
    intermetallic: bool,
    larger: Sequence[str] = (),
    metal_like: Sequence[bool | None] | None = None,
) -> _Template:
    return _Template(
        name=name,
        source=source,
        lattice=np.array(structure.lattice.matrix),
        frac_coords=np.array(structure.frac_coords),
        site_roles=tuple(site_roles),
        roles=tuple(roles),
        signs=None if signs is None else tuple(signs),
        intermetallic=intermetallic,
        role_distances=_role_distances(structure, site_roles),
        larger=tuple(larger),
        metal_like=None if metal_like is None else tuple(metal_like),
    )


@cache
def _library_template(name: str) -> _Template:
    """The primitive cell of a library prototype, with roles on its sites."""
    proto = PROTOTYPES[name]
    roles = tuple(proto.roles)
    # Distinct placeholder elements mark the roles through pymatgen's symmetry expansion.
    placeholders = dict(zip(roles, ["H", "He", "Li", "Be"], strict=False))
    back = {v: k for k, v in placeholders.items()}
    conventional = Structure.from_spacegroup(
        proto.spacegroup,
        Lattice.from_parameters(*proto.lattice),
        [placeholders[role] for role, _ in proto.sites],
        [coords for _, coords in proto.sites],
    )
    primitive = conventional.get_primitive_structure()
    site_roles = [back[site.specie.symbol] for site in primitive]
    return _template_from_structure(
        primitive,
        site_roles,
        roles,
        name=name,
        source="library",
        signs=[proto.roles[r] for r in roles],
        intermetallic=proto.intermetallic,
        larger=proto.larger,
        # The cations of these structure types are metals or metalloids (no "SO" rock salt).
        metal_like=[True if proto.roles[r] == CATION else None for r in roles],
    )


@lru_cache(maxsize=1024)
def _ionic_radius(symbol: str, oxidation_state: int) -> float:
    """Shannon crystal radius (pymatgen's table); fallbacks where the table has no entry:
    the element's average cationic radius for cations, its van der Waals radius for anions
    (close to the anion radius for O, S, Cl, Br, I, Se)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        radius = Species(symbol, oxidation_state).ionic_radius
        if radius is None:
            el = Element(symbol)
            if oxidation_state > 0:
                radius = el.average_cationic_radius or el.atomic_radius
            else:
                radius = el.van_der_waals_radius or el.atomic_radius
    return float(radius or _covalent_radius(symbol))


@lru_cache(maxsize=256)
def _metallic_radius(symbol: str) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        el = Element(symbol)
        radius = el.metallic_radius or el.atomic_radius or _covalent_radius(symbol)
    return float(radius)


@lru_cache(maxsize=256)
def _covalent_radius(symbol: str) -> float:
    from pymatgen.analysis.molecule_structure_comparator import CovalentRadius

    return float(CovalentRadius.radius[symbol])


def _scale(
    template: _Template, elements: Sequence[str], oxidation_states: Sequence[int] | None
) -> float:
    """Isotropic factor for the template's lattice.

    Ionic decorations: the tightest cation-anion contact reaches the sum of the Shannon
    radii (like-charged pairs may come to 0.8 x their sum). All-metal decorations: the
    volume of close-packed spheres with the metallic radii (4√2 r³ per atom), which copes
    better than contacts with the short chains of A15. Either way no pair is closer than
    0.75 x the sum of covalent radii.
    """
    index = {role: i for i, role in enumerate(template.roles)}
    scale = 0.0
    if oxidation_states is None:
        counts = template.counts
        volume = sum(
            c * 4 * np.sqrt(2) * _metallic_radius(el) ** 3
            for c, el in zip(counts, elements, strict=True)
        )
        scale = (volume / abs(np.linalg.det(template.lattice))) ** (1 / 3)
    else:
        radii = [_ionic_radius(el, ox) for el, ox in zip(elements, oxidation_states, strict=True)]
        for (ra, rb), distance in template.role_distances.items():
            i, j = index[ra], index[rb]
            target = radii[i] + radii[j]
            if oxidation_states[i] * oxidation_states[j] > 0:
                target *= _LIKE_CHARGE_FACTOR
            scale = max(scale, target / distance)
    for (ra, rb), distance in template.role_distances.items():
        i, j = index[ra], index[rb]
        floor = _COVALENT_FACTOR * (_covalent_radius(elements[i]) + _covalent_radius(elements[j]))
        scale = max(scale, floor / distance)
    return scale


def _decorate(
    template: _Template,
    elements: Sequence[str],
    oxidation_states: Sequence[int] | None,
) -> Structure:
    mapping = dict(zip(template.roles, elements, strict=True))
    scale = _scale(template, elements, oxidation_states)
    properties: dict[str, Any] = {
        "prototype": template.name,
        "template": template.source,
        "substitution": mapping,
        "oxidation_states": (
            None
            if oxidation_states is None
            else dict(zip(elements, (int(ox) for ox in oxidation_states), strict=True))
        ),
    }
    return Structure(
        Lattice(template.lattice * scale),
        [mapping[r] for r in template.site_roles],
        template.frac_coords,
        properties=properties,
    )


@lru_cache(maxsize=256)
def _metal_like(symbol: str) -> bool:
    el = Element(symbol)
    return bool(el.is_metal or el.is_metalloid)


def _sizes_ordered(
    template: _Template, elements: Sequence[str], oxidation_states: Sequence[int]
) -> bool:
    index = {role: i for i, role in enumerate(template.roles)}
    radii = [_ionic_radius(elements[index[r]], oxidation_states[index[r]]) for r in template.larger]
    return all(a >= b for a, b in itertools.pairwise(radii))


def _decorations(
    template: _Template, elements: Sequence[str]
) -> list[tuple[tuple[str, ...], tuple[int, ...] | None]]:
    """Every valid ``(elements per role, oxidation states per role)`` for a template."""
    k = len(template.roles)
    out: list[tuple[tuple[str, ...], tuple[int, ...] | None]] = []
    if template.intermetallic:
        metals = [el for el in elements if is_alloy_element(el)]
        out.extend((perm, None) for perm in itertools.permutations(metals, k))
    if template.signs is not None:
        kinds = template.metal_like or (None,) * k
        choices = [
            [
                el
                for el in elements
                if (sign == CATION or can_be_anion(el)) and kind in (None, _metal_like(el))
            ]
            for sign, kind in zip(template.signs, kinds, strict=True)
        ]
        for combo in itertools.product(*choices):
            if len(set(combo)) < k or (
                template.intermetallic and all(map(is_alloy_element, combo))
            ):
                continue
            states = role_oxidation_states(combo, template.counts, template.signs)
            if states is not None and _sizes_ordered(template, combo, states):
                out.append((combo, states))
    return out


def build_prototype(name: str, elements: Mapping[str, str]) -> Structure:
    """Decorate a library prototype with one element per role and scale its cell.

    Parameters
    ----------
    name
        A key of :data:`PROTOTYPES`.
    elements
        ``{role: element}``; ionic roles are checked for charge balance.

    Returns
    -------
    Structure
        The primitive cell, with ``properties["prototype"]`` set.

    Raises
    ------
    ValueError
        For an unknown prototype, missing roles, or a decoration that is not charge
        balanced (and not all-metal in an intermetallic prototype).

    Examples
    --------
    >>> build_prototype("perovskite", {"A": "Sr", "B": "Ti", "X": "O"}).composition.reduced_formula
    'SrTiO3'
    """
    if name not in PROTOTYPES:
        raise ValueError(f"unknown prototype {name!r}; known: {', '.join(PROTOTYPES)}")
    template = _library_template(name)
    if set(elements) != set(template.roles):
        raise ValueError(f"prototype {name!r} has roles {template.roles}, got {sorted(elements)}")
    combo = tuple(elements[r] for r in template.roles)
    for decoration, states in _decorations(template, list(dict.fromkeys(combo))):
        if decoration == combo:
            return _decorate(template, combo, states)
    raise ValueError(f"{dict(elements)} is not a charge-balanced decoration of {name!r}")


def _template_signs(symbols: Sequence[str], counts: Sequence[int]) -> tuple[int, ...]:
    """Cation/anion role of each element of a known crystal.

    Metals are cations; among the non-metals the assignment with the fewest anions that
    balances charge wins. Mixed-valence crystals (Fe3O4) fall back to: the most
    electronegative element is the anion.
    """
    nonmetals = [i for i, s in enumerate(symbols) if can_be_anion(s)]
    options = []
    for n_anions in range(1, len(nonmetals) + 1):
        for anions in itertools.combinations(nonmetals, n_anions):
            signs = tuple(ANION if i in anions else CATION for i in range(len(symbols)))
            if role_oxidation_states(tuple(symbols), tuple(counts), signs) is not None:
                options.append(signs)
        if options:
            return options[0]
    enegs = [Element(s).X for s in symbols]
    anion = int(np.argmax(enegs))
    return tuple(ANION if i == anion else CATION for i in range(len(symbols)))


def _fit_template(structure: Structure, index: int) -> _Template | None:
    """A known crystal as a substitution template, or None when it cannot be one."""
    if not structure.is_ordered or len(structure.composition.elements) < 2:
        return None
    symbols = tuple(sorted(el.symbol for el in structure.composition.elements))
    site_roles = [site.specie.symbol for site in structure]
    counts = tuple(site_roles.count(s) for s in symbols)
    intermetallic = all(is_alloy_element(s) for s in symbols)
    if intermetallic:
        signs = None
    elif not any(can_be_anion(s) for s in symbols):
        return None
    else:
        signs = _template_signs(symbols, counts)
    try:
        symbol = structure.get_space_group_info()[0]
    except Exception:  # spglib can fail on odd cells; the name is only a label
        symbol = "?"
    return _template_from_structure(
        structure,
        site_roles,
        symbols,
        name=f"{structure.composition.reduced_formula}_{symbol}",
        source=f"fit:{index}",
        signs=signs,
        intermetallic=intermetallic,
        # Ion substitution keeps each element's kind: P⁵⁺ of a phosphate stays a non-metal.
        metal_like=[_metal_like(s) for s in symbols],
    )


class DistinctStructures:
    """A growing set of structures, compared with pymatgen's ``StructureMatcher``.

    Structures are matched only against those with the same reduced formula, with the
    matcher's defaults (primitive cells, volumes scaled), so two decorations that differ by
    a symmetry of the template, or by their starting volume, count once.

    Examples
    --------
    >>> seen = DistinctStructures()
    >>> nacl = build_prototype("rock_salt", {"A": "Na", "X": "Cl"})
    >>> seen.add(nacl)
    >>> nacl in seen, len(seen)
    (True, 1)
    """

    def __init__(self) -> None:
        from pymatgen.analysis.structure_matcher import StructureMatcher

        self._matcher = StructureMatcher()
        # per formula: (structure, the cell fit reduces it to, made once; None if that failed)
        self._by_formula: dict[str, list[tuple[Structure, Structure | None]]] = {}

    def __contains__(self, structure: Structure) -> bool:
        same = self._by_formula.get(structure.composition.reduced_formula, [])
        if not same:
            return False
        query = _reduced_or_none(structure)
        for other, reduced in same:
            if query is not None and reduced is not None:
                # reduced once, not on every fit (see NoveltyIndex)
                if self._matcher.fit(query, reduced, skip_structure_reduction=True):
                    return True
            elif self._matcher.fit(structure, other):
                return True
        return False

    def __len__(self) -> int:
        return sum(len(group) for group in self._by_formula.values())

    def add(self, structure: Structure) -> None:
        """Remember ``structure`` (no check: test ``in`` first)."""
        self._by_formula.setdefault(structure.composition.reduced_formula, []).append(
            (structure, _reduced_or_none(structure))
        )


def _reduced_or_none(structure: Structure) -> Structure | None:
    from matloop.identity import reduced_for_matching

    try:
        return reduced_for_matching(structure)
    except Exception:  # noqa: BLE001 - the plain fit is tried (and may fail) as before
        return None


def _key(
    template: _Template, elements: tuple[str, ...], states: tuple[int, ...] | None
) -> tuple[str, str, tuple[str, ...]]:
    """Identity of a candidate across calls (and across refits of the same crystals)."""
    return (template.source, template.name, elements)


def _label(key: tuple[str, str, tuple[str, ...]]) -> str:
    """A candidate's identity as the text stored with it (``properties["proposal"]``)."""
    source, name, elements = key
    return f"{source}:{name}:{'-'.join(elements)}"


class PrototypeSubstitution(Generator):
    """Charge-balanced decorations of prototype structures and of known crystals.

    Parameters
    ----------
    chemical_space
        Allowed elements and cell size: only decorations using these elements, with
        ``min_atoms <= atoms <= max_atoms`` in the primitive cell, are proposed.
    seed
        Seeds the default random generator that orders the candidates.
    prototypes
        Names of :data:`PROTOTYPES` to use (default: all); ``[]`` uses only the
        crystals given to :meth:`fit`.

    Notes
    -----
    Each returned structure carries ``properties["prototype"]`` (library name, or
    ``"<formula>_<space group>"`` of a fitted crystal), ``properties["template"]``
    (``"library"`` or ``"fit:<index>"``), ``properties["substitution"]`` (role or original
    element -> new element) and ``properties["oxidation_states"]`` (``None`` for all-metal
    decorations). ``conditions`` are ignored: this baseline is unconditional.

    Examples
    --------
    >>> gen = PrototypeSubstitution(ChemicalSpace(["Ca", "Ti", "O"], max_atoms=10))
    >>> [s.composition.reduced_formula for s in gen.sample(2)]  # doctest: +SKIP
    ['CaTiO3', 'TiO2']
    """

    name = "prototype_substitution"

    class Settings(GeneratorSettings):
        prototypes: list[str] | None = Field(
            None, description="Prototype names to substitute into (default: all)"
        )

    def __init__(
        self,
        chemical_space: ChemicalSpace,
        seed: int = 0,
        prototypes: Sequence[str] | None = None,
    ) -> None:
        names = list(PROTOTYPES) if prototypes is None else list(prototypes)
        unknown = [p for p in names if p not in PROTOTYPES]
        if unknown:
            raise ValueError(f"unknown prototypes {unknown}; known: {', '.join(PROTOTYPES)}")
        self.chemical_space = chemical_space
        self.seed = seed
        self.prototypes = names
        self._rng = np.random.default_rng(seed)
        self._library = [_library_template(p) for p in names]
        self._fitted: list[_Template] = []
        self._candidates = self._enumerate(self._library)
        self._used: set[tuple[str, str, tuple[str, ...]]] = set()
        self._excluded: set[str] = set()  # proposals of earlier rounds (exclude_proposed)
        self._stored: set[str] = set()  # ids of the campaign's crystals (exclude_stored)
        self._known: Container[Structure] = ()  # the campaign's crystals (exclude_known)
        self._seen = DistinctStructures()

    def _enumerate(
        self, templates: Sequence[_Template], *, skip_identity: bool = False
    ) -> list[tuple[_Template, tuple[str, ...], tuple[int, ...] | None]]:
        space = self.chemical_space
        out = []
        for template in templates:
            if not space.min_atoms <= len(template) <= space.max_atoms:
                continue
            for elements, states in _decorations(template, space.elements):
                if skip_identity and elements == template.roles:
                    continue  # the known crystal itself is not a proposal
                counts = dict(zip(elements, template.counts, strict=True))
                if smact_valid(Composition(counts)):
                    out.append((template, elements, states))
        return out

    @property
    def n_candidates(self) -> int:
        """Number of (template, decoration) pairs, before removing duplicate structures."""
        return len(self._candidates)

    def fit(
        self,
        structures: Sequence[Structure],
        properties: Mapping[str, Sequence[float]] | None = None,
    ) -> None:
        """Use known crystals as extra templates for ion substitution.

        Replaces the crystals of an earlier ``fit``; the library stays. Crystals that are
        disordered, have one element, more elements than the space or more atoms than
        ``max_atoms`` are skipped. ``properties`` is ignored.
        """
        space = self.chemical_space
        self._fitted = []
        for i, structure in enumerate(structures):
            n_elements = len(structure.composition.elements)
            if len(structure) > space.max_atoms or n_elements > len(space.elements):
                continue
            template = _fit_template(structure, i)
            if template is not None:
                self._fitted.append(template)
        self._candidates = self._enumerate(self._library) + self._enumerate(
            self._fitted, skip_identity=True
        )
        self.version += 1

    def sample(
        self,
        n: int,
        conditions: Mapping[str, Any] | None = None,
        rng: np.random.Generator | None = None,
    ) -> list[Structure]:
        """Up to ``n`` distinct decorated templates, in random order.

        Each candidate is offered once: by this generator in an earlier call or round
        (:meth:`exclude_proposed`), or held by the campaign already (:meth:`exclude_stored`),
        it is skipped, and once they run out fewer than ``n`` come back. Each carries its
        identity in ``properties["proposal"]``.
        """
        rng = self._rng if rng is None else rng
        out: list[Structure] = []
        if n <= 0:
            return out
        fresh = [c for c in self._candidates
                 if _key(*c) not in self._used and _label(_key(*c)) not in self._excluded]
        for k in rng.permutation(len(fresh)):
            template, elements, states = fresh[k]
            key = _key(template, elements, states)
            self._used.add(key)
            structure = _decorate(template, elements, states)
            structure.properties["proposal"] = _label(key)
            if self._stored and candidate_id(structure) in self._stored:
                continue  # the same crystal, stored under another template or generator
            if structure in self._seen:
                continue
            self._seen.add(structure)
            if structure in self._known:  # another template gave it, or it is a known crystal
                self.skipped_known += 1
                continue
            out.append(structure.copy())
            if len(out) == n:
                return out
        return out  # every candidate has been proposed: fewer than asked, never a repeat

    def exclude_proposed(self, labels: Collection[str]) -> None:
        """Skip the candidates proposed in earlier rounds: ``sample`` then offers the others,
        and fewer than asked once they run out, rather than repeating stored crystals."""
        self._excluded |= {label for label in labels if label}

    def exclude_stored(self, ids: Collection[str]) -> None:
        """Skip decorations that give a crystal the campaign already holds."""
        self._stored |= set(ids)

    def exclude_known(self, known: Container[Structure]) -> None:
        """Skip decorations that match a crystal the campaign knows (``StructureMatcher``)."""
        self._known = known

    def describe(self) -> dict[str, Any]:
        """Provenance: generator name and version, seed, prototypes and fitted templates."""
        return {
            **super().describe(),
            "seed": self.seed,
            "prototypes": list(self.prototypes),
            "n_fitted_templates": len(self._fitted),
        }
