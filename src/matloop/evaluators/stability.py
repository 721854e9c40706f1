"""Energy above the convex hull, with every energy on one scale.

CHGNet (and SevenNet) learned the Materials Project's raw GGA / GGA+U energies (MPtrj), so
their energies pass through pymatgen's ``MaterialsProject2020Compatibility`` before they meet
in a hull, as Matbench Discovery does with these models' predictions. Otherwise transition-
metal oxides and fluorides (GGA+U in MP) and the O2 reference (GGA) sit on different scales.

The correction scheme needs to know how MP *would* have run each chemistry. :func:`mp_parameters`
writes the entry parameters MP's own calculations carry:

* ``run_type`` ``"GGA+U"`` when the most electronegative element is O or F and the
  composition contains one of Co, Cr, Fe, Mn, Mo, Ni, V, W (MPRelaxSet's ``LDAUU`` table),
  otherwise ``"GGA"``;
* ``hubbards``: MP's U values for those elements (empty for GGA), and ``is_hubbard``;
* ``potcar_symbols``: MP's POTCAR choice per element (informational; the ML energies did not
  come from VASP, so the POTCAR check is switched off in :data:`MP2020`).

Entries the scheme rejects are never dropped silently: :func:`make_entry` raises
:class:`EntryRejectedError` carrying pymatgen's reason, and the caller records it on the
candidate.

Examples
--------
>>> from pymatgen.core import Composition
>>> e = make_entry(Composition("Li2O"), -4.8, "li2o")
>>> round(e.correction, 3)   # MP2020 oxide correction, -0.687 eV per O
-0.687
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pymatgen.core import Composition, Structure
from pymatgen.entries.computed_entries import ComputedEntry, ComputedStructureEntry

if TYPE_CHECKING:
    from pymatgen.analysis.compatibility import MaterialsProject2020Compatibility
    from pymatgen.analysis.phase_diagram import PhaseDiagram

__all__ = [
    "CORRECTION_NAME",
    "EntryRejectedError",
    "HullResult",
    "MissingReferenceError",
    "compute_hull",
    "formation_energy_per_atom",
    "hull_scheme",
    "make_entry",
    "mp2020_compatibility",
    "mp_parameters",
    "parse_hull_scheme",
    "plot_hull",
]

logger = logging.getLogger(__name__)

#: Name recorded for the correction scheme applied by :func:`make_entry` (``correct=True``).
CORRECTION_NAME = "MP2020"
#: Parameter key :func:`make_entry` uses to record which correction an entry went through.
SCHEME_KEY = "matloop_correction"


class EntryRejectedError(ValueError):
    """The correction scheme refused an entry (pymatgen's reason is in the message)."""


class MissingReferenceError(ValueError):
    """A hull cannot be built because an element has no elemental reference entry."""

    def __init__(self, missing: Sequence[str], entry_ids: Sequence[str] = ()) -> None:
        self.missing = sorted(missing)
        self.entry_ids = list(entry_ids)
        who = ""
        if self.entry_ids:
            more = f" and {len(self.entry_ids) - 5} more" if len(self.entry_ids) > 5 else ""
            who = f" (needed by {', '.join(self.entry_ids[:5])}{more})"
        super().__init__(
            f"no elemental reference entry for {', '.join(self.missing)}{who}: add the relaxed "
            "element(s) to the reference entries"
        )


@lru_cache(maxsize=1)
def mp2020_compatibility() -> MaterialsProject2020Compatibility:
    """The shared ``MaterialsProject2020Compatibility`` (Advanced GGA/GGA+U mixing, no POTCAR
    check since ML-potential energies come without VASP inputs)."""
    from pymatgen.analysis.compatibility import MaterialsProject2020Compatibility

    return MaterialsProject2020Compatibility(compat_type="Advanced", check_potcar=False)


@lru_cache(maxsize=1)
def _mp_settings() -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    from pymatgen.io.vasp.sets import MPRelaxSet

    ldauu = {anion: dict(u) for anion, u in MPRelaxSet.CONFIG["INCAR"]["LDAUU"].items()}
    potcars = dict(MPRelaxSet.CONFIG["POTCAR"])
    return ldauu, potcars


def mp_parameters(composition: Composition) -> dict[str, Any]:
    """Entry parameters that make MP2020 treat ``composition`` as MP would have run it.

    The rule is MPRelaxSet's (and the one ``MaterialsProject2020Compatibility`` checks): U is
    applied when the most electronegative element has a ``LDAUU`` table (O, F), to the
    elements in that table.

    Examples
    --------
    >>> mp_parameters(Composition("Fe2O3"))["hubbards"]
    {'Fe': 5.3}
    >>> mp_parameters(Composition("FeS"))["run_type"]
    'GGA'
    """
    ldauu, potcars = _mp_settings()
    # Same ordering expression as MaterialsProject2020Compatibility.get_adjustments.
    elements = sorted((el for el in composition.elements if composition[el] > 0), key=lambda e: e.X)
    hubbards: dict[str, float] = {}
    if len(elements) > 1:
        table = ldauu.get(elements[-1].symbol, {})
        hubbards = {el.symbol: float(table[el.symbol]) for el in elements if table.get(el.symbol)}
    return {
        "run_type": "GGA+U" if hubbards else "GGA",
        "hubbards": hubbards,
        "is_hubbard": bool(hubbards),
        "potcar_symbols": [
            f"PAW_PBE {potcars[el.symbol]}" for el in elements if el.symbol in potcars
        ],
    }


def make_entry(
    structure_or_composition: Structure | Composition | str,
    energy_per_atom: float,
    entry_id: str,
    *,
    correct: bool = True,
    parameters: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
) -> ComputedStructureEntry | ComputedEntry:
    """Build an entry from an ML-potential (or DFT) energy per atom.

    Parameters
    ----------
    structure_or_composition
        A relaxed ``Structure`` (gives a ``ComputedStructureEntry``; MP2020 then tells oxides
        from peroxides by O–O distances) or a ``Composition`` / formula string (gives a
        ``ComputedEntry``).
    energy_per_atom
        Raw (uncorrected) energy in eV/atom; the total energy is this times the atom count.
    entry_id
        Id recorded on the entry (the candidate id or reference id).
    correct
        Apply ``MaterialsProject2020Compatibility`` (the default, for energies from potentials
        trained on MP data). With False the entry is left uncorrected.
    parameters
        Extra entry parameters; they override the MP-style ones from :func:`mp_parameters`
        (e.g. ``{"run_type": "GGA", "hubbards": {}}`` for an energy genuinely computed
        without U).
    data
        Extra entry data (e.g. ``{"oxide_type": "peroxide"}`` to skip structure analysis).

    Returns
    -------
    ComputedStructureEntry or ComputedEntry
        With ``parameters["matloop_correction"]`` set to ``"MP2020"`` or ``"none"``.

    Raises
    ------
    EntryRejectedError
        When the correction scheme rejects the entry (e.g. a ``run_type`` or U value it does not
        accept); the message carries pymatgen's reason. Nothing is dropped silently.
    ValueError
        For a non-finite energy.
    """
    energy_per_atom = float(energy_per_atom)
    if energy_per_atom != energy_per_atom or abs(energy_per_atom) == float("inf"):
        raise ValueError(f"entry {entry_id}: non-finite energy per atom {energy_per_atom}")
    if isinstance(structure_or_composition, Structure):
        composition = structure_or_composition.composition
    else:
        composition = Composition(structure_or_composition)
    params: dict[str, Any] = mp_parameters(composition) if correct else {}
    params.update(parameters or {})
    if parameters and "hubbards" in parameters and "is_hubbard" not in parameters:
        params["is_hubbard"] = bool(params["hubbards"])
    params[SCHEME_KEY] = CORRECTION_NAME if correct else "none"
    energy = energy_per_atom * composition.num_atoms
    entry: ComputedEntry
    if isinstance(structure_or_composition, Structure):
        entry = ComputedStructureEntry(
            structure_or_composition,
            energy,
            parameters=params,
            data=dict(data or {}),
            entry_id=entry_id,
        )
    else:
        entry = ComputedEntry(
            composition, energy, parameters=params, data=dict(data or {}), entry_id=entry_id
        )
    if not correct:
        return entry
    from pymatgen.analysis.compatibility import CompatibilityError

    try:
        with warnings.catch_warnings():
            # "No structure or oxide_type ..." and oxidation-state guess warnings: expected for
            # composition-only entries, and the applied adjustments are recorded on the entry.
            warnings.simplefilter("ignore", UserWarning)
            processed = mp2020_compatibility().process_entry(entry, on_error="raise")
    except (CompatibilityError, ValueError) as exc:
        reason = str(exc).split(" for {")[0]  # pymatgen appends the whole entry dict
        raise EntryRejectedError(
            f"entry {entry_id} rejected by {CORRECTION_NAME}: {reason}"
        ) from exc
    if processed is None:  # pragma: no cover - on_error="raise" makes this unreachable
        raise EntryRejectedError(f"entry {entry_id} rejected by {CORRECTION_NAME}")
    return processed


def hull_scheme(potential: str, correction: str | None = CORRECTION_NAME) -> str:
    """Name of the energy scale of a hull, recorded with every hull.

    Examples
    --------
    >>> hull_scheme("CHGNet")
    'CHGNet+MP2020'
    >>> hull_scheme("CHGNet", None)
    'CHGNet'
    """
    if not potential:
        raise ValueError("hull_scheme needs the name of the potential (or DFT method)")
    if correction and correction.lower() != "none":
        return f"{potential}+{correction}"
    return potential


def parse_hull_scheme(scheme: str) -> tuple[str, str | None]:
    """(potential, correction or None) of a :func:`hull_scheme` name.

    Examples
    --------
    >>> parse_hull_scheme("CHGNet 0.3.0+MP2020")
    ('CHGNet 0.3.0', 'MP2020')
    >>> parse_hull_scheme("replay:perov_5/val")
    ('replay:perov_5/val', None)
    """
    potential, plus, correction = scheme.rpartition("+")
    return (potential, correction) if plus else (scheme, None)


@dataclass(eq=False)
class HullResult(Mapping[str, float]):
    """Energy above hull (eV/atom) of the candidates, plus what it was computed against.

    A read-only mapping ``candidate id -> e_above_hull``, so it can be stored as the plain dict
    it is; the per-entry dicts also cover the reference entries (their e_above_hull is what a
    surrogate trains on, and a reference pushed off the hull by a candidate shows up there).

    Attributes
    ----------
    e_above_hull
        Entry id -> energy above the hull in eV/atom (0 on the hull), references included.
    formation_energy
        Entry id -> formation energy in eV/atom against the elemental references.
    corrected_energy
        Entry id -> energy per atom after the correction scheme (``entry.energy_per_atom``).
    candidate_ids
        The candidates' ids, in the order given.
    stable_ids
        Ids of every entry on the hull (references included); see ``stable_candidate_ids``.
    phase_diagram
        The ``PhaseDiagram`` built from references + candidates (None when there were none).
    scheme
        The energy scale (see :func:`hull_scheme`), or None when the caller did not give one.
    """

    e_above_hull: dict[str, float]
    formation_energy: dict[str, float] = field(default_factory=dict)
    corrected_energy: dict[str, float] = field(default_factory=dict)
    candidate_ids: list[str] = field(default_factory=list)
    stable_ids: list[str] = field(default_factory=list)
    phase_diagram: PhaseDiagram | None = None
    scheme: str | None = None
    _candidate_set: frozenset[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._candidate_set = frozenset(self.candidate_ids)

    @property
    def stable_candidate_ids(self) -> list[str]:
        """Candidate ids on the hull, in candidate order."""
        stable = set(self.stable_ids)
        return [i for i in self.candidate_ids if i in stable]

    def __getitem__(self, key: str) -> float:
        if key not in self._candidate_set:
            raise KeyError(key)
        return self.e_above_hull[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.candidate_ids)

    def __len__(self) -> int:
        return len(self.candidate_ids)

    def __repr__(self) -> str:
        return (
            f"HullResult({len(self)} candidates, {len(self.stable_candidate_ids)} on hull, "
            f"{len(self.e_above_hull) - len(self)} references, scheme={self.scheme!r})"
        )


def _check_ids(reference_entries: Sequence[ComputedEntry], candidates: Sequence[ComputedEntry]):
    seen: set[str] = set()
    for kind, entries in (("reference", reference_entries), ("candidate", candidates)):
        for entry in entries:
            if entry.entry_id is None:
                formula = entry.composition.reduced_formula
                raise ValueError(f"{kind} entry {formula} has no entry_id")
            if entry.entry_id in seen:
                raise ValueError(f"duplicate entry_id {entry.entry_id!r} ({kind})")
            seen.add(entry.entry_id)


def _check_scale(entries: Sequence[ComputedEntry]) -> None:
    schemes = {e.parameters.get(SCHEME_KEY) for e in entries} - {None}
    if len(schemes) > 1:
        raise ValueError(
            f"entries mix correction schemes {sorted(schemes)}: build every entry of one hull "
            "with the same make_entry(..., correct=...)"
        )


def compute_hull(
    reference_entries: Sequence[ComputedEntry],
    candidate_entries: Sequence[ComputedEntry],
    *,
    scheme: str | None = None,
) -> HullResult:
    """Energy above the hull of every candidate, the candidates being part of the hull.

    Parameters
    ----------
    reference_entries
        Elements and known compounds of the chemical system, computed with the same potential
        and correction as the candidates.
    candidate_entries
        The campaign's relaxed candidates. They join the hull, so a new stable candidate lowers
        it for the others.
    scheme
        Energy-scale label stored on the result (see :func:`hull_scheme`).

    Returns
    -------
    HullResult
        A mapping ``candidate id -> e_above_hull`` (eV/atom); its ``e_above_hull``,
        ``formation_energy`` and ``corrected_energy`` dicts cover the references too.

    Raises
    ------
    MissingReferenceError
        When an element of any entry has no elemental entry (reference or candidate); the
        message names the element(s) and the entries that need them.
    ValueError
        On a missing or repeated ``entry_id`` (all entries must have distinct ids), or when
        entries mix correction schemes.
    """
    from pymatgen.analysis.phase_diagram import PhaseDiagram

    reference_entries = list(reference_entries)
    candidate_entries = list(candidate_entries)
    all_entries = reference_entries + candidate_entries
    if not all_entries:
        return HullResult({}, scheme=scheme)
    _check_ids(reference_entries, candidate_entries)
    _check_scale(all_entries)
    have = {e.elements[0].symbol for e in all_entries if e.composition.is_element}
    needed: dict[str, list[str]] = {}
    for entry in all_entries:
        for el in entry.composition.elements:
            if el.symbol not in have:
                needed.setdefault(el.symbol, []).append(str(entry.entry_id))
    if needed:
        ids = sorted({i for ids in needed.values() for i in ids})
        raise MissingReferenceError(sorted(needed), ids)
    elements = sorted({el for e in all_entries for el in e.composition.elements})
    pd = PhaseDiagram(all_entries, elements=elements)
    stable = set(pd.stable_entries)
    result = HullResult(
        {},
        candidate_ids=[str(e.entry_id) for e in candidate_entries],
        phase_diagram=pd,
        scheme=scheme,
    )
    for entry in all_entries:
        result.e_above_hull[entry.entry_id] = float(pd.get_e_above_hull(entry))
        result.formation_energy[entry.entry_id] = float(pd.get_form_energy_per_atom(entry))
        result.corrected_energy[entry.entry_id] = float(entry.energy_per_atom)
        if entry in stable:
            result.stable_ids.append(entry.entry_id)
    return result


def formation_energy_per_atom(entry: ComputedEntry, phase_diagram: PhaseDiagram) -> float:
    """Formation energy (eV/atom) of ``entry`` against the phase diagram's elemental references."""
    return float(phase_diagram.get_form_energy_per_atom(entry))


def plot_hull(
    phase_diagram: PhaseDiagram,
    path: str | Path,
    highlight_ids: Sequence[str] = (),
    *,
    title: str | None = None,
    show_unstable: float = 0.2,
) -> Path | None:
    """Write a PNG of the convex hull; never raises.

    Binary and ternary systems use pymatgen's ``PDPlotter`` (matplotlib backend). Larger
    systems (or a failed ``PDPlotter``) fall back to a scatter of energy above hull per entry.
    Highlighted entries (by ``entry_id``) are circled in red.

    Parameters
    ----------
    phase_diagram
        E.g. ``compute_hull(...).phase_diagram``.
    path
        Output file (parent folders are created).
    highlight_ids
        Entry ids to mark (e.g. this round's candidates).
    title
        Figure title (e.g. the hull scheme).
    show_unstable
        Entries up to this many eV/atom above the hull are drawn.

    Returns
    -------
    Path or None
        The written file, or None when plotting failed (the reason is logged).
    """
    path = Path(path)
    try:
        import matplotlib

        matplotlib.use("Agg")  # headless: flows run on workers without a display
        import matplotlib.pyplot as plt

        path.parent.mkdir(parents=True, exist_ok=True)
        n_el = len(phase_diagram.elements)
        fig = None
        if 2 <= n_el <= 3:
            try:
                fig = _pdplotter_figure(phase_diagram, set(highlight_ids), show_unstable)
            except Exception as exc:  # noqa: BLE001 - plotting must not crash a round
                logger.warning("PDPlotter failed (%s); falling back to an e_above_hull plot", exc)
        if fig is None:
            fig = _ehull_figure(phase_diagram, set(highlight_ids), show_unstable)
        if title:
            fig.suptitle(title)
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        return path
    except Exception as exc:  # noqa: BLE001
        logger.warning("could not plot the hull to %s: %s", path, exc)
        return None


def _pdplotter_figure(pd: PhaseDiagram, highlight: set[str], show_unstable: float):
    from pymatgen.analysis.phase_diagram import PDPlotter

    plotter = PDPlotter(pd, show_unstable=show_unstable, backend="matplotlib")
    ax = plotter.get_plot(label_unstable=False)
    if highlight:
        _lines, stable, unstable = plotter.pd_plot_data
        points = [c for c, e in stable.items() if e.entry_id in highlight]
        points += [c for e, c in unstable.items() if e.entry_id in highlight]
        if points:
            xs, ys = zip(*[(p[0], p[1]) for p in points], strict=True)
            ax.scatter(xs, ys, s=180, facecolors="none", edgecolors="red", linewidths=2, zorder=10)
    return ax.figure


def _ehull_figure(pd: PhaseDiagram, highlight: set[str], show_unstable: float):
    import matplotlib.pyplot as plt

    rows = []
    for entry in pd.all_entries:
        e_hull = float(pd.get_e_above_hull(entry))
        if e_hull <= show_unstable or entry.entry_id in highlight:
            rows.append((entry.composition.reduced_formula, e_hull, entry.entry_id in highlight))
    rows.sort(key=lambda r: (r[1], r[0]))
    rows = rows[:60]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.25 * len(rows) + 2), 4))
    x = range(len(rows))
    colors = ["red" if h else ("black" if e < 1e-8 else "tab:blue") for _, e, h in rows]
    ax.scatter(list(x), [r[1] for r in rows], c=colors)
    ax.set_xticks(list(x))
    ax.set_xticklabels([r[0] for r in rows], rotation=90, fontsize=7)
    ax.set_ylabel("E above hull (eV/atom)")
    ax.axhline(0.0, color="grey", lw=0.8)
    chemsys = "-".join(sorted(el.symbol for el in pd.elements))
    ax.set_title(f"{chemsys}: {len(pd.all_entries)} entries")
    return fig
