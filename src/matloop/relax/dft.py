"""DFT verification: atomate2's CP2K makers (Debian's ``cp2k``) and VASP makers.

The ML potential decides which candidates look stable; DFT checks the best few. This module
builds the DFT makers and runs them in-process through jobflow, one candidate at a time,
turning each atomate2 task document into a small :class:`DftOutcome`. DFT energies are kept
beside the ML ones and never enter the ML hull: a CP2K total energy (GTH pseudopotentials)
and a CHGNet energy (MP's GGA / GGA+U scale) are not on one scale.

CP2K needs no set-up by the user. atomate2's CP2K input sets name their basis sets and
pseudopotentials by pymatgen hashes, which pymatgen resolves through a per-element resource
folder normally made with ``pmg config --cp2k``. :func:`configure_cp2k` builds that folder
once from the data files of Debian's ``cp2k-data`` package (``/usr/share/cp2k``; about 30 s,
cached under ``~/.cache/matloop/``) and points pymatgen at it; the matloop CP2K makers call
it before writing their inputs, so it also happens on FireWorks or Dask workers. The CP2K
binary is found on ``PATH`` (``cp2k.psmp``, ``cp2k.ssmp``, ``cp2k``, ``cp2k.popt``) unless
a ``command`` is given (e.g. ``"srun cp2k.psmp"`` on a cluster).

Settings for tiny cells (``fast=True``): atomate2's CP2K defaults are production settings
(spin-polarised, TZVP-MOLOPT basis, k-points at 64 per Å⁻³); a 2-atom silicon cell takes
about 2 minutes on one core with them. ``fast=True`` keeps the basis, pseudopotentials and
PBE and spin polarisation, but uses a coarse k-point grid (single points: 2×2×2
Monkhorst-Pack; cell optimisations: Γ-centred 3×3×3), CP2K's own default integral
thresholds (``EPS_DEFAULT`` 1e-10 and a matching ``EPS_PGF_ORB`` instead of atomate2's
1e-12 / 1e-16, which make small cells spend minutes on real-space grids), loosens the SCF
threshold to 1e-5 and caps geometry optimisation at 30 steps. A single point of 2-atom
silicon then takes about a minute on one busy core. These settings exercise the whole path
(inputs, CP2K, parsing, storage) cheaply; they are too coarse for production numbers. Use
atomate2's defaults, or your own ``input_settings`` (e.g. ``{"cutoff": 400}``) and
``kpoints``, for production.

Cell optimisations run on a full Γ-centred k-point grid and keep the starting structure's
space group (:class:`Cp2kCellOptSetGenerator`): on a shifted Monkhorst-Pack grid diamond
silicon relaxed into a sheared, rhombohedral cell (angles 65.5° instead of 60°), and
without the space group kept, soft cells (bcc sodium, a metal-rich chloride) chased a
spurious shear stress of CP2K's real-space grid until MAX_ITER. Most of a cell
optimisation's time goes into the basis: with
``fast=True`` plus ``input_settings={"basis_and_potential": {"Si": {"basis":
"DZVP-MOLOPT-SR-GTH"}}, "cutoff": 300, "rel_cutoff": 50}``, a stretched, distorted 2-atom
silicon cell relaxes back to diamond (a = 5.50 Å, angles 60 ± 0.1°) in 15 optimiser steps,
about 2.5 minutes on one busy core; with the TZVP basis each step takes about four times
as long. :class:`DftOutcome` reports whether the optimiser met its thresholds
(``relax_converged``; a relaxation that stopped at MAX_ITER is not ``ok``), with the
final forces and stress read from CP2K's output.

Examples
--------
>>> maker = make_dft_maker("cp2k", "static", fast=True)  # doctest: +SKIP
>>> outs = verify_with_dft([("si", si)], maker, job_store)  # doctest: +SKIP
>>> outs[0].ok, outs[0].evidence  # doctest: +SKIP
(True, 'dft-single-point')
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from atomate2.cp2k.jobs.base import BaseCp2kMaker, cp2k_job
from atomate2.cp2k.jobs.core import CellOptMaker as _Cp2kCellOptMaker
from atomate2.cp2k.jobs.core import StaticMaker as _Cp2kStaticMaker
from atomate2.cp2k.sets.core import CellOptSetGenerator as _CellOptSetGenerator
from pydantic import BaseModel, ConfigDict, Field
from pymatgen.core import Structure

from matloop.relax.checks import decode_task_doc, exception_reason, task_succeeded
from matloop.relax.outcome import OutcomeStructure

if TYPE_CHECKING:
    from jobflow import JobStore, Maker, Response

__all__ = [
    "CP2K_COMMANDS",
    "Cp2kCellOptMaker",
    "Cp2kCellOptSetGenerator",
    "Cp2kStaticMaker",
    "DftOutcome",
    "configure_cp2k",
    "cp2k_command",
    "describe_dft_settings",
    "gamma_centred_kpoints",
    "is_molecular_crystal",
    "make_dft_maker",
    "verify_with_dft",
]

log = logging.getLogger("matloop")

#: CP2K executables looked for on PATH, in this order (Debian ships the first and last).
CP2K_COMMANDS: tuple[str, ...] = ("cp2k.psmp", "cp2k.ssmp", "cp2k", "cp2k.popt")

#: Where Debian's cp2k-data package puts basis sets and pseudopotentials.
DEFAULT_CP2K_DATA = "/usr/share/cp2k"

_EVIDENCE = {"relax": "dft-relaxed", "static": "dft-single-point"}
_CONFIGURE_LOCK = threading.Lock()

# Settings for tiny cells (see the module docstring).
# Spin polarisation stays on: atomate2 0.1.5 cannot parse the output of a spin-restricted
# (RKS) CP2K run (``CalculationInput.cleanup_dft`` calls ``.upper()`` on integers).
_FAST_CP2K_INPUT = {
    "eps_default": 1e-10,  # CP2K's own default; atomate2 asks for 1e-12
    "eps_pgf_orb": 1e-5,  # atomate2: 1e-16, which multiplies the real-space grid work
    "eps_scf": 1e-5,
    "activate_motion": {"max_iter": 30},
}
# A single point takes the 2x2x2 Monkhorst-Pack grid (shifted; closer to converged energies
# than a Gamma-centred 2x2x2 or 3x3x3 grid); a cell optimisation needs a grid that keeps the
# lattice symmetry: the Gamma-centred 3x3x3 one (see Cp2kCellOptSetGenerator).
_FAST_KPOINT_GRID = {"static": (2, 2, 2), "relax": (3, 3, 3)}


# -- CP2K set-up ---------------------------------------------------------------------------
def cp2k_command() -> str | None:
    """The CP2K executable on PATH (see :data:`CP2K_COMMANDS`), or None if there is none.

    ``ATOMATE2_CP2K_CMD`` in the environment wins when set.
    """
    if cmd := os.environ.get("ATOMATE2_CP2K_CMD"):
        return cmd
    for name in CP2K_COMMANDS:
        if shutil.which(name):
            return name
    return None


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "matloop"


def configure_cp2k(data_dir: str | Path | None = None) -> Path:
    """Make pymatgen find CP2K basis sets and pseudopotentials; build its folder if needed.

    Parameters
    ----------
    data_dir : str or Path, optional
        CP2K's data folder (``BASIS_MOLOPT_UZH``, ``POTENTIAL_UZH``...). Default:
        ``$MATLOOP_CP2K_DATA_DIR``, else ``/usr/share/cp2k`` (Debian's ``cp2k-data``).

    Returns
    -------
    Path
        The pymatgen resource folder (one YAML file per element), cached under
        ``~/.cache/matloop/cp2k-pymatgen-<hash of the data folder>``.

    Raises
    ------
    FileNotFoundError
        If the CP2K data folder has no basis set files.

    Notes
    -----
    Sets pymatgen's ``PMG_CP2K_DATA_DIR`` and default functional (PBE), basis type
    (DZVP-MOLOPT, used only for elements atomate2 has no default for) and auxiliary basis
    type (pFIT) in this process, unless the user configured them. pymatgen reads a
    ``CP2K_DATA_DIR`` environment variable before its own setting; one that points at a
    folder pymatgen cannot use is removed from this process's environment (CP2K itself does
    not need it: atomate2 writes the basis and potential files next to the input).
    """
    from pymatgen.core import SETTINGS

    source = Path(data_dir or os.environ.get("MATLOOP_CP2K_DATA_DIR") or DEFAULT_CP2K_DATA)
    basis_files = sorted(source.glob("*BASIS*"))
    if not basis_files:
        raise FileNotFoundError(
            f"no CP2K basis set files in {source}; install Debian's cp2k-data package "
            "(apt-get install cp2k-data) or set MATLOOP_CP2K_DATA_DIR"
        )
    fingerprint = hashlib.sha256()
    for path in sorted(source.glob("*BASIS*")) + sorted(source.glob("*POTENTIAL*")):
        stat = path.stat()
        fingerprint.update(f"{path.name}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    target = _cache_root() / f"cp2k-pymatgen-{fingerprint.hexdigest()[:12]}"

    with _CONFIGURE_LOCK:
        if not (target / "Si").is_file():
            _build_pymatgen_cp2k_folder(source, target)
        env_dir = os.environ.get("CP2K_DATA_DIR")
        if env_dir and not (Path(env_dir) / "Si").is_file():
            log.info("ignoring CP2K_DATA_DIR=%s for pymatgen (no element files)", env_dir)
            os.environ.pop("CP2K_DATA_DIR")
        SETTINGS["PMG_CP2K_DATA_DIR"] = str(target)
        SETTINGS.setdefault("PMG_DEFAULT_CP2K_FUNCTIONAL", "PBE")
        SETTINGS.setdefault("PMG_DEFAULT_CP2K_BASIS_TYPE", "DZVP-MOLOPT")
        SETTINGS.setdefault("PMG_DEFAULT_CP2K_AUX_BASIS_TYPE", "pFIT")
    return target


def _build_pymatgen_cp2k_folder(source: Path, target: Path) -> None:
    """Run pymatgen's ``pmg config --cp2k`` conversion into ``target`` (atomically)."""
    from pymatgen.cli.pmg_config import setup_cp2k_data

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    staging.rmdir()  # pymatgen asks before writing into an existing folder
    log.info("building pymatgen's CP2K data folder from %s (once, ~30 s)", source)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            setup_cp2k_data([str(source), str(staging)])
        try:
            staging.rename(target)
        except OSError:  # another process finished first
            if not (target / "Si").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class Cp2kCellOptSetGenerator(_CellOptSetGenerator):
    """atomate2's CP2K cell-optimisation inputs on a full Γ-centred k-point grid.

    A cell optimisation needs a k-point set that keeps the symmetry of the lattice for every
    cell the optimiser visits; otherwise the stress has spurious shear components and the
    optimiser lowers the energy by shearing the cell. Two usual choices fail that:

    - a grid reduced by the symmetry of the *starting* cell (what pymatgen writes for a
      Gamma-centred grid): the weights are fixed, and wrong once the cell or atoms move;
    - a shifted Monkhorst-Pack grid (even divisions): its shift along b1 + b2 + b3 breaks the
      cubic symmetry of face-centred lattices (and the hexagonal one). Measured here:
      diamond silicon relaxed on a 2×2×2 Monkhorst-Pack grid ends rhombohedral, with
      angles of 65.5° instead of 60°, 0.27 eV lower than the symmetric cell.

    So every automatic grid (Gamma or Monkhorst-Pack style, n1×n2×n3 divisions) is written
    as the explicit list of all points of the Γ-centred grid, k and -k merged (time
    reversal), with their multiplicities as weights: valid for every cell, and no more
    points than CP2K's own Monkhorst-Pack grid of the same divisions. Explicit k-point
    lists are used as given.

    The optimiser keeps the space group of the starting structure (CP2K's
    ``KEEP_SPACE_GROUP``: coordinates, forces and stress are symmetrised with spglib), as
    VASP does by default. Without it the real-space grid's error in CP2K's analytical
    stress drives soft cells away: at 300 Ry a cubic bcc sodium cell shows a spurious shear
    stress of about 0.5 GPa (diagonal 2.7 / 2.5 / 1.9 GPa, unchanged by smearing, EPS_PGF_ORB
    or k-points; Γ only gives the same shear), sodium's shear modulus C' is about 0.6 GPa, so
    the cell shears step after step and the optimiser stops at MAX_ITER, unconverged. With
    the space group kept, a cubic cell relaxes its volume only.

    The real-space grids stay those of a reference cell (CP2K's ``CELL_REF``: the starting
    cell, lengths scaled by :attr:`cell_ref_scale`). CP2K otherwise picks new grids whenever
    the cell changes, and at a coarse cutoff the energy jumps with the number of grid points:
    measured here, L1_2 Na3Cl at 300 Ry gained 0.49 eV per cell when its grid went from 54 to
    50 points per axis (a 6 % smaller cell, under a pressure that pointed to shrinking), so
    the optimiser met energies that contradict the stress and never converged.

    A crystal of a molecular element (H2, N2, O2, F2, Cl2, Br2, I2, or a noble gas) keeps its
    cell and relaxes its atoms only (GEO_OPT): PBE without a dispersion correction barely binds
    such crystals, so a cell optimisation expands them step after step (measured: a Cl2
    crystal grew from 57.8 to 93 Å^3 per cell in 10 steps and was still growing). The energy
    of the given (ML-relaxed) packing differs from that of free molecules by the weak
    intermolecular binding.
    """

    #: Lengths of the reference cell for the grids, relative to the starting cell: a little
    #: larger, so a cell that grows during the optimisation keeps at least the nominal cutoff.
    cell_ref_scale: ClassVar[float] = 1.05

    def get_input_set(self, structure=None, prev_dir=None, optional_files=None) -> Any:
        """atomate2's input set, with the space group and the grids kept during the cell
        optimisation."""
        from pymatgen.io.cp2k.inputs import Keyword, Section

        input_set = super().get_input_set(structure, prev_dir, optional_files)
        cp2k = input_set.cp2k_input
        if cp2k["MOTION"].check("CELL_OPT"):
            cp2k["MOTION"]["CELL_OPT"].add(Keyword("KEEP_SPACE_GROUP", True))
            if structure is not None and is_molecular_crystal(structure):
                optimiser = cp2k["MOTION"].subsections.pop("CELL_OPT")
                optimiser.name = "GEO_OPT"
                cp2k["MOTION"].insert(optimiser)
                cp2k["GLOBAL"]["RUN_TYPE"] = Keyword("RUN_TYPE", "GEO_OPT")
        if structure is not None and cp2k.check("FORCE_EVAL/SUBSYS/CELL"):
            matrix = structure.lattice.matrix * self.cell_ref_scale
            cp2k["FORCE_EVAL"]["SUBSYS"]["CELL"].insert(Section(
                "CELL_REF", subsections={},
                keywords={name: Keyword(name, *(float(x) for x in row))
                          for name, row in zip("ABC", matrix, strict=True)},
            ))
        return input_set

    def _get_kpoints(self, structure: Structure, kpoints_updates: dict | None) -> Any:
        from pymatgen.io.vasp import Kpoints

        kpoints = super()._get_kpoints(structure, kpoints_updates)
        automatic = {Kpoints.supported_modes.Gamma, Kpoints.supported_modes.Monkhorst}
        if kpoints is not None and kpoints.style in automatic and len(kpoints.kpts) == 1:
            divisions = tuple(int(k) for k in kpoints.kpts[0])
            if len(divisions) == 1:
                divisions = divisions * 3
            if divisions != (1, 1, 1):
                return gamma_centred_kpoints(divisions)
        return kpoints


def is_molecular_crystal(structure: Structure) -> bool:
    """A crystal of one molecular element (H, N, O, F, Cl, Br, I) or noble gas.

    Examples
    --------
    >>> from pymatgen.core import Lattice
    >>> is_molecular_crystal(Structure(Lattice.cubic(5), ["Cl", "Cl"], [[0, 0, 0], [.4, 0, 0]]))
    True
    >>> is_molecular_crystal(Structure(Lattice.cubic(4), ["Na"], [[0, 0, 0]]))
    False
    """
    from matloop.relax.references import DIMER_BOND_LENGTHS

    molecular = {*DIMER_BOND_LENGTHS, "He", "Ne", "Ar", "Kr", "Xe", "Rn"}
    return len(structure.symbol_set) == 1 and set(structure.symbol_set) <= molecular


def gamma_centred_kpoints(divisions: tuple[int, int, int]) -> Any:
    """All points of a Γ-centred ``n1×n2×n3`` grid as an explicit k-point list.

    k and -k are merged (time reversal, which holds for every cell without spin-orbit
    coupling); the weights are the multiplicities. Valid for every cell shape, unlike a list
    reduced by the symmetry of one cell.

    Parameters
    ----------
    divisions : (int, int, int)
        Grid divisions along the reciprocal lattice vectors.

    Returns
    -------
    pymatgen.io.vasp.Kpoints
        Reciprocal-style (fractional) k-points with weights; its comment records the grid.

    Examples
    --------
    >>> kp = gamma_centred_kpoints((2, 2, 2))
    >>> kp.num_kpts, list(kp.kpts[-1]), kp.comment
    (8, [0.0, 0.0, 0.0], 'Gamma-centred 2x2x2 grid, k and -k merged')
    >>> gamma_centred_kpoints((4, 4, 4)).num_kpts  # of 64 points
    36
    """
    import itertools

    from pymatgen.io.vasp import Kpoints

    grid = tuple(int(k) for k in divisions)
    if len(grid) != 3 or min(grid) < 1:
        raise ValueError(f"k-point divisions must be three positive integers, got {divisions!r}")
    weights: dict[tuple[int, ...], int] = {}
    for index in itertools.product(*(range(n) for n in grid)):
        opposite = tuple(-i % n for i, n in zip(index, grid, strict=True))
        key = min(index, opposite)
        weights[key] = weights.get(key, 0) + 1
    # Γ goes last: pymatgen takes a list that starts at Γ for a Γ-only calculation
    keys = sorted(weights, key=lambda k: (not any(k), k))
    kpts = [
        [((i + n // 2) % n - n // 2) / n for i, n in zip(key, grid, strict=True)] for key in keys
    ]
    return Kpoints(
        comment=f"Gamma-centred {grid[0]}x{grid[1]}x{grid[2]} grid, k and -k merged",
        style=Kpoints.supported_modes.Reciprocal,
        num_kpts=len(kpts),
        kpts=kpts,
        kpts_weights=[float(weights[k]) for k in keys],
    )


class _Cp2kSetupMixin:
    """Configure pymatgen's CP2K data before atomate2 writes the input files."""

    def _configured_make(self, structure: Structure, prev_dir: str | Path | None) -> Response:
        configure_cp2k()
        return BaseCp2kMaker.make.original(self, structure, prev_dir=prev_dir)


@dataclass
class Cp2kStaticMaker(_Cp2kSetupMixin, _Cp2kStaticMaker):
    """atomate2's CP2K ``StaticMaker`` that sets up pymatgen's CP2K data by itself."""

    name: str = "cp2k static"

    @cp2k_job
    def make(self, structure: Structure, prev_dir: str | Path | None = None) -> Response:
        """Run a CP2K single point (energy, forces, stress) of ``structure``."""
        return self._configured_make(structure, prev_dir)


@dataclass
class Cp2kCellOptMaker(_Cp2kSetupMixin, _Cp2kCellOptMaker):
    """atomate2's CP2K ``CellOptMaker`` (ions and cell) that sets up pymatgen's CP2K data."""

    name: str = "cp2k relax"

    @cp2k_job
    def make(self, structure: Structure, prev_dir: str | Path | None = None) -> Response:
        """Relax atomic positions and the cell of ``structure`` with CP2K."""
        return self._configured_make(structure, prev_dir)


# -- makers --------------------------------------------------------------------------------
def make_dft_maker(
    code: Literal["cp2k", "vasp"] = "cp2k",
    kind: Literal["relax", "static"] = "relax",
    *,
    fast: bool = False,
    command: str | None = None,
    kpoints: tuple[int, int, int] | int | None = None,
    input_settings: dict[str, Any] | None = None,
    **maker_kwargs: Any,
) -> Maker:
    """Build the DFT maker of the verification stage.

    Parameters
    ----------
    code : {"cp2k", "vasp"}
        ``"cp2k"``: atomate2's CP2K makers (cell optimisation or single point), run with
        Debian's CP2K. ``"vasp"``: atomate2's VASP ``RelaxMaker`` / ``StaticMaker`` (needs a
        VASP licence, ``VASP_CMD`` and POTCARs configured for atomate2 / pymatgen).
    kind : {"relax", "static"}
        Relax ions and cell, or a single point at the ML-relaxed structure.
    fast : bool
        CP2K only: the cheap settings for tiny cells described in the module docstring.
    command : str, optional
        The command that runs the code (default: CP2K found on PATH; atomate2's
        ``VASP_CMD`` for VASP).
    kpoints : (int, int, int) or int, optional
        A grid, or a reciprocal k-point density (per Å⁻³). CP2K single points: a full
        Monkhorst-Pack grid (contains Γ for odd divisions); CP2K cell optimisations: every
        point of the Γ-centred grid (:func:`gamma_centred_kpoints`), which keeps the
        lattice symmetry; VASP: Gamma-centred.
    input_settings : dict, optional
        Merged over the input set: pymatgen ``DftSet`` keywords for CP2K (``cutoff``,
        ``rel_cutoff``, ``spin_polarized``, ``eps_scf``, ``activate_motion``...), INCAR tags
        for VASP (``{"ENCUT": 520}``).
    **maker_kwargs
        Other fields of the atomate2 maker (``name``, ``run_cp2k_kwargs``...).

    Returns
    -------
    jobflow.Maker
        A maker whose ``make(structure)`` returns one DFT job.

    Raises
    ------
    ValueError
        For an unknown ``code`` or ``kind``.

    Examples
    --------
    >>> maker = make_dft_maker("cp2k", "static", fast=True, command="cp2k.psmp")
    >>> maker.name, maker.run_cp2k_kwargs["cp2k_cmd"]
    ('cp2k static', 'cp2k.psmp')
    >>> make_dft_maker("vasp", "relax").input_set_generator.__class__.__name__
    'RelaxSetGenerator'
    """
    if kind not in _EVIDENCE:
        raise ValueError(f"unknown DFT kind {kind!r}; expected 'relax' or 'static'")
    code_key = str(code).lower()
    if code_key == "cp2k":
        return _cp2k_maker(kind, fast, command, kpoints, input_settings, maker_kwargs)
    if code_key == "vasp":
        return _vasp_maker(kind, command, kpoints, input_settings, maker_kwargs)
    raise ValueError(f"unknown DFT code {code!r}; expected 'cp2k' or 'vasp'")


def _kpoints(kpoints: tuple[int, int, int] | int | None, monkhorst: bool = False) -> Any:
    """User k-point settings for atomate2's generators: a grid or a reciprocal density."""
    from pymatgen.io.vasp import Kpoints

    if kpoints is None:
        return None
    if isinstance(kpoints, int | float):
        return {"reciprocal_density": kpoints}
    grid = tuple(int(k) for k in kpoints)
    if len(grid) != 3 or min(grid) < 1:
        raise ValueError(f"kpoints must be three positive integers, got {kpoints!r}")
    return Kpoints.monkhorst_automatic(grid) if monkhorst else Kpoints.gamma_automatic(grid)


def _cp2k_maker(kind, fast, command, kpoints, input_settings, maker_kwargs) -> Maker:
    from atomate2.cp2k.sets.core import StaticSetGenerator

    settings: dict[str, Any] = {}
    if fast:
        settings.update(_FAST_CP2K_INPUT)
        if kpoints is None:
            kpoints = _FAST_KPOINT_GRID[kind]
    if kind == "static":
        settings.pop("activate_motion", None)
    settings.update(input_settings or {})
    generator_cls = Cp2kCellOptSetGenerator if kind == "relax" else StaticSetGenerator
    # A private copy of atomate2's base settings: its generator updates nested dicts of the
    # shared module-level default in place (a shallow dict() then recursive_update), so one
    # maker's basis would otherwise leak into every later maker of the process.
    config_dict = copy.deepcopy(generator_cls.__dataclass_fields__["config_dict"].default_factory())
    generator_kwargs: dict[str, Any] = {"user_input_settings": settings, "config_dict": config_dict}
    # CP2K single points: a full Monkhorst-Pack grid (contains Gamma for odd divisions);
    # cell optimisations: a full Gamma-centred grid (see Cp2kCellOptSetGenerator)
    if (kp := _kpoints(kpoints, monkhorst=kind != "relax")) is not None:
        generator_kwargs["user_kpoints_settings"] = kp
    run_kwargs = dict(maker_kwargs.pop("run_cp2k_kwargs", {}))
    cmd = command or run_kwargs.get("cp2k_cmd") or cp2k_command() or CP2K_COMMANDS[0]
    run_kwargs["cp2k_cmd"] = cmd
    if kind == "relax" and "handlers" not in run_kwargs:
        run_kwargs["handlers"] = _cell_opt_handlers()
    maker_cls = Cp2kCellOptMaker if kind == "relax" else Cp2kStaticMaker
    return maker_cls(
        input_set_generator=generator_cls(**generator_kwargs),
        run_cp2k_kwargs=run_kwargs,
        **maker_kwargs,
    )


def _cell_opt_handlers() -> list:
    """atomate2's custodian handlers for CP2K, less the one for unconverged relaxations.

    custodian's ``UnconvergedRelaxationErrorHandler`` only knows GEO_OPT: on a cell
    optimisation that reaches MAX_ITER it fails with ``KeyError: 'geo_opt'`` instead of
    restarting. Without it custodian's output validator rejects the unconverged run, and
    :func:`verify_with_dft` says so (``relax_converged=False`` and a reason).
    """
    from atomate2.cp2k.run import _DEFAULT_HANDLERS
    from custodian.cp2k.handlers import UnconvergedRelaxationErrorHandler

    return [h for h in _DEFAULT_HANDLERS if not isinstance(h, UnconvergedRelaxationErrorHandler)]


def _vasp_maker(kind, command, kpoints, input_settings, maker_kwargs) -> Maker:
    from atomate2.vasp.jobs.core import RelaxMaker, StaticMaker
    from atomate2.vasp.sets.core import RelaxSetGenerator, StaticSetGenerator

    generator_cls = RelaxSetGenerator if kind == "relax" else StaticSetGenerator
    generator_kwargs: dict[str, Any] = {"user_incar_settings": dict(input_settings or {})}
    if (kp := _kpoints(kpoints)) is not None:
        generator_kwargs["user_kpoints_settings"] = kp
    run_kwargs = dict(maker_kwargs.pop("run_vasp_kwargs", {}))
    if command:
        run_kwargs["vasp_cmd"] = command
    maker_cls = RelaxMaker if kind == "relax" else StaticMaker
    return maker_cls(
        input_set_generator=generator_cls(**generator_kwargs),
        run_vasp_kwargs=run_kwargs,
        **maker_kwargs,
    )


def maker_code_kind(maker: Maker) -> tuple[str, str]:
    """(code, kind) of a DFT maker built by :func:`make_dft_maker` or atomate2."""
    module = type(maker).__module__
    from atomate2.cp2k.jobs.base import BaseCp2kMaker as _Cp2kBase

    code = "cp2k" if isinstance(maker, _Cp2kBase) else "vasp" if ".vasp." in module else "dft"
    name = type(maker).__name__.lower()
    kind = "static" if "static" in name else "relax"
    return code, kind


def describe_dft_settings(maker: Maker, structure: Structure) -> dict[str, Any]:
    """A short summary of what a DFT maker will compute for ``structure``.

    Generates the input set (no files, no POTCARs) and reads the choices that decide the
    energy: functional, basis / pseudopotentials, cutoffs, k-points, spin.

    Parameters
    ----------
    maker : jobflow.Maker
        A maker from :func:`make_dft_maker` (or an atomate2 CP2K / VASP maker).
    structure : Structure
        The structure to be computed.

    Returns
    -------
    dict
        JSON-friendly; ``{"code", "kind", "maker", "command", ...}``; an ``"error"`` entry
        when the input set could not be generated.
    """
    code, kind = maker_code_kind(maker)
    summary: dict[str, Any] = {"code": code, "kind": kind, "maker": type(maker).__name__}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if code == "cp2k":
                summary["command"] = maker.run_cp2k_kwargs.get("cp2k_cmd")
                configure_cp2k()
                inp = maker.input_set_generator.get_input_set(structure, optional_files=False)
                cp2k = inp.cp2k_input
                summary["functional"] = "PBE"
                per_element = {
                    el: cp2k.basis_and_potential[el] for el in sorted(structure.symbol_set)
                }
                summary["basis"] = {el: _name(v.get("basis")) for el, v in per_element.items()}
                summary["potential"] = {
                    el: _name(v.get("potential")) for el, v in per_element.items()
                }
                summary["cutoff_ry"] = float(cp2k.cutoff)
                summary["rel_cutoff_ry"] = float(cp2k.rel_cutoff)
                summary["spin_polarized"] = bool(cp2k.kwargs.get("spin_polarized", True))
                summary["kpoints"] = _describe_kpoints(cp2k.kpoints)
                summary["run_type"] = str(cp2k["GLOBAL"]["RUN_TYPE"].values[0])
                if summary["run_type"] == "CELL_OPT":  # grids and symmetry change the energy
                    summary["keep_space_group"] = cp2k.check("MOTION/CELL_OPT") and bool(
                        cp2k["MOTION"]["CELL_OPT"].get("KEEP_SPACE_GROUP"))
                    summary["cell_ref_scale"] = (
                        getattr(maker.input_set_generator, "cell_ref_scale", None)
                        if cp2k.check("FORCE_EVAL/SUBSYS/CELL/CELL_REF") else None)
            elif code == "vasp":
                summary["command"] = maker.run_vasp_kwargs.get("vasp_cmd")
                inp = maker.input_set_generator.get_input_set(structure, potcar_spec=True)
                incar = inp.incar
                summary["incar"] = {
                    k: incar[k]
                    for k in ("GGA", "METAGGA", "ENCUT", "ISPIN", "ISIF", "IBRION", "NSW",
                              "EDIFF", "EDIFFG", "KSPACING")
                    if k in incar
                }
                summary["potcar"] = str(inp.potcar).split()
                if inp.kpoints is not None:
                    summary["kpoints"] = _describe_kpoints(inp.kpoints)
    except Exception as exc:  # a summary must never stop a verification
        summary["error"] = f"{type(exc).__name__}: {exc}"
    return summary


def _name(obj: Any) -> str | None:
    return None if obj is None else str(getattr(obj, "name", obj))


def _describe_kpoints(kpoints: Any) -> Any:
    if kpoints is None:
        return None
    style = str(getattr(kpoints, "style", ""))
    if match := re.match(r"Gamma-centred (\d+)x(\d+)x(\d+) grid", kpoints.comment or ""):
        return {"grid": [int(g) for g in match.groups()], "style": "Gamma",
                "n_kpoints": len(kpoints.kpts)}
    if kpoints.kpts and len(kpoints.kpts) == 1 and "reciprocal" not in style.lower():
        return {"grid": [int(k) for k in kpoints.kpts[0]], "style": style.split(".")[-1]}
    return {"n_kpoints": len(kpoints.kpts), "style": style.split(".")[-1]}


# -- running -------------------------------------------------------------------------------
class DftOutcome(BaseModel):
    """What the loop keeps of one DFT verification.

    Examples
    --------
    >>> DftOutcome(candidate_id="x", ok=False, code="cp2k", kind="static",
    ...            evidence="dft-single-point", reason="no cp2k", wall_s=0.0).converged
    False
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    candidate_id: str = Field(description="Id of the candidate that was computed.")
    ok: bool = Field(description="True when the calculation finished and converged.")
    code: str = Field(description="'cp2k' or 'vasp'.")
    kind: str = Field(description="'relax' (ions and cell) or 'static' (single point).")
    evidence: str = Field(description="'dft-relaxed' or 'dft-single-point'.")
    energy: float | None = Field(None, description="Final total energy in eV.")
    energy_per_atom: float | None = Field(None, description="Final energy in eV/atom.")
    structure: OutcomeStructure = Field(None, description="Final (relaxed) structure.")
    converged: bool = Field(False, description="Whether atomate2 marked the task successful.")
    relax_converged: bool | None = Field(
        None,
        description="CP2K relaxations: whether the optimiser met all its thresholds (step, "
        "force, pressure) before MAX_ITER. None when not known (single points, VASP).",
    )
    relax_steps: int | None = Field(None, description="CP2K relaxations: optimiser steps.")
    energy_converged: bool | None = Field(
        None,
        description="CP2K relaxations that stopped at MAX_ITER: True when accepted because "
        "the energy had settled (it changed by at most ``energy_tolerance`` per atom over "
        "the last ``energy_window`` steps; the cell may still drift along a soft direction), "
        "False when it had not. None when the optimiser converged or nothing was checked.",
    )
    energy_drift_per_atom: float | None = Field(
        None, description="CP2K relaxations that stopped at MAX_ITER: how much the energy "
        "changed (max - min, eV/atom) over the last ``energy_window`` steps.",
    )
    initial_energy: float | None = Field(
        None, description="CP2K relaxations: total energy (eV) of the starting structure."
    )
    max_force: float | None = Field(
        None, description="CP2K: largest atomic force (eV/Å) of the final structure."
    )
    stress: list[list[float]] | None = Field(
        None,
        description="CP2K: stress tensor (GPa) of the final structure, CP2K's sign "
        "(trace / 3 is the pressure; negative: the cell wants to shrink), in the frame of "
        "the final structure's lattice.",
    )
    reason: str | None = Field(None, description="Why it failed; None if ok.")
    settings: dict[str, Any] = Field(
        default_factory=dict, description="Summary of the DFT settings (describe_dft_settings)."
    )
    job_uuid: str | None = Field(None, description="uuid of the job whose task document is "
                                 "in the JobStore.")
    wall_s: float = Field(description="Wall-clock seconds spent on this candidate.")



def verify_with_dft(
    items: list[tuple[str, Structure]],
    maker: Maker,
    job_store: JobStore,
    *,
    root_dir: str | Path | None = None,
    log_jobs: bool = False,
    energy_tolerance: float | None = None,
    energy_window: int = 5,
) -> list[DftOutcome]:
    """Run a DFT maker on each structure in-process, one jobflow job at a time.

    Parameters
    ----------
    items : list of (str, Structure)
        Candidate ids and their (ML-relaxed) structures.
    maker : jobflow.Maker
        From :func:`make_dft_maker`.
    job_store : jobflow.JobStore
        Where the atomate2 task documents go (the campaign's job store).
    root_dir : str or Path, optional
        Keep each job's folder (gzipped inputs and outputs) under this folder, in a
        ``<candidate id>-<random>`` folder per candidate; by default they go to a temporary
        folder that is removed afterwards (the task document holds what matters).
    log_jobs : bool
        Let jobflow log each job.
    energy_tolerance : float, optional
        eV/atom. A CP2K relaxation that stops at MAX_ITER is accepted (``ok``, with
        ``energy_converged=True``) when its energy changed by at most this over its last
        ``energy_window`` steps: its final structure and energy come from CP2K's trajectory.
        Layered crystals that PBE without a dispersion correction barely binds drift along
        the stacking axis for many steps while their energy has settled. None (default):
        such a relaxation fails, and its reason says how much the energy still moved.
    energy_window : int
        Optimiser steps over which the energy must have settled.

    Returns
    -------
    list of DftOutcome
        One per item, in order. A failure (CP2K missing, SCF or geometry not converged,
        crash) is an outcome with ``ok=False`` and a ``reason``; it never stops the others.
        CP2K outcomes also carry what CP2K's output says: whether a relaxation met its
        thresholds (``relax_converged``), its steps, the starting energy, and the final
        forces and stress.
    """
    code, kind = maker_code_kind(maker)
    outcomes = []
    with contextlib.ExitStack() as stack:
        if root_dir is None:
            root_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="matloop-dft-"))
        Path(root_dir).mkdir(parents=True, exist_ok=True)
        jobflow_logger = logging.getLogger("jobflow")
        previous = jobflow_logger.level
        if not log_jobs:
            jobflow_logger.setLevel(logging.WARNING)
        try:
            for candidate_id, structure in items:
                start = time.perf_counter()
                settings = describe_dft_settings(maker, structure)
                fields = _run_one(candidate_id, structure, maker, job_store, root_dir, log_jobs,
                                  (energy_tolerance, energy_window))
                outcomes.append(
                    DftOutcome(
                        candidate_id=candidate_id,
                        code=code,
                        kind=kind,
                        evidence=_EVIDENCE[kind],
                        settings=settings,
                        wall_s=time.perf_counter() - start,
                        **fields,
                    )
                )
        finally:
            jobflow_logger.setLevel(previous)
    return outcomes


def _run_one(candidate_id, structure, maker, job_store, root_dir, log_jobs,
             settle=(None, 5)) -> dict[str, Any]:
    from jobflow import run_locally

    is_cp2k = maker_code_kind(maker)[0] == "cp2k"
    # a folder of its own, so that its CP2K output can be read also when the job failed
    safe_id = re.sub(r"[^A-Za-z0-9_.-]", "_", str(candidate_id))[:40] or "candidate"
    job_root = Path(tempfile.mkdtemp(prefix=f"{safe_id}-", dir=root_dir))
    job_uuid = None
    try:
        job = maker.make(structure)
        # not "candidate_id": that key marks ML relaxations (runner.recorded_outcome)
        job.update_metadata({"dft_candidate_id": candidate_id, "matloop_stage": "dft"})
        job_uuid = job.uuid
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            responses = run_locally(
                job,
                store=job_store,
                log=log_jobs,
                create_folders=True,
                root_dir=job_root,
                raise_immediately=True,
            )
        response = responses.get(job_uuid, {})
        doc = response[max(response)].output if response else job.output.resolve(job_store)
        fields = _read_dft_doc(doc)
    except Exception as exc:
        fields = {"ok": False, "reason": exception_reason(exc), "job_uuid": job_uuid}
        if is_cp2k:  # e.g. custodian's validator rejects an unconverged optimisation
            report = _cp2k_run_report(job_root)
            if report.get("relax_converged") is False:
                fields["reason"] = f"{_not_converged_reason(report)} ({fields['reason']})"
            fields.update(report)
            if report.get("relax_converged") is False:
                fields.update(_judge_by_energy(fields, structure, job_root, *settle))
        return fields
    if is_cp2k:
        fields.update(_cp2k_run_report(job_root))
    fields["job_uuid"] = job_uuid
    energy = fields["energy_per_atom"]
    if energy is None or not math.isfinite(energy):
        fields.update(ok=False, energy_per_atom=None, reason="no finite energy in task document")
    elif not fields["converged"]:
        fields.update(ok=False, reason="DFT task not successful (SCF or geometry not converged)")
    elif fields.get("relax_converged") is False:
        fields.update(ok=False, reason=_not_converged_reason(fields))
        fields.update(_judge_by_energy(fields, structure, job_root, *settle))
    else:
        fields["ok"] = True
    return fields


def _not_converged_reason(report: dict[str, Any]) -> str:
    return (
        f"DFT relaxation not converged: the optimiser stopped after {report.get('relax_steps')} "
        "steps (MAX_ITER) without meeting its thresholds"
    )


def _judge_by_energy(fields: dict[str, Any], start: Structure, folder: Path,
                     tolerance: float | None, window: int) -> dict[str, Any]:
    """A relaxation that stopped at MAX_ITER, judged by its energy: accepted when the energy
    of its last ``window`` steps spans at most ``tolerance`` eV/atom and its cell stayed
    inside the reference cell of the grids (beyond it the grids are coarser than the
    cutoff asked for), with the final structure and energy from the trajectory; else still
    failed, its reason saying how much the energy and the cell moved."""
    energies = fields.get("relax_energies") or []
    frames = _cp2k_trajectory(folder)
    if len(energies) <= window or not frames or len(frames) != len(energies) - 1:
        return {"energy_converged": False}  # too short, or the trajectory does not line up
    last = energies[-window - 1:]
    drift = (max(last) - min(last)) / len(start)
    final = frames[-1]
    growth = [b / a for a, b in zip(start.lattice.abc, final.lattice.abc, strict=True)]
    inside = max(growth) <= Cp2kCellOptSetGenerator.cell_ref_scale
    judged = {"energy_drift_per_atom": drift, "energy_converged": False}
    if tolerance is None or drift > tolerance or not inside:
        judged["reason"] = (
            f"{fields.get('reason')}; over its last {window} steps the energy changed "
            f"{1000 * drift:.2f} meV/atom"
            + ("" if tolerance is None else f" (tolerance {1000 * tolerance:g} meV/atom)")
            + ", its cell lengths ended at " + "×".join(f"{g:.2f}" for g in growth)
            + " the starting ones"
            + ("" if inside else " (beyond the grids' reference cell, "
               f"×{Cp2kCellOptSetGenerator.cell_ref_scale:g}; e.g. layers that PBE without "
               "a dispersion correction barely binds drift apart)")
        )
        return judged
    return {**judged, "ok": True, "energy_converged": True, "reason": None,
            "energy": energies[-1], "energy_per_atom": energies[-1] / len(start),
            "structure": final}


def _cp2k_trajectory(folder: Path) -> list[Structure]:
    """The optimiser's structures, one per step, from CP2K's ``<project>-pos-1.xyz`` and
    ``<project>-1.cell`` (gzipped or not) in ``folder`` or its one job folder; empty when
    they are missing or do not line up."""
    import gzip

    def read(pattern: str) -> list[str] | None:
        for d in [folder, *sorted(p for p in Path(folder).glob("job_*") if p.is_dir())]:
            for path in sorted(d.glob(pattern)) + sorted(d.glob(pattern + ".gz")):
                opener = gzip.open if path.suffix == ".gz" else open
                try:
                    with opener(path, "rt") as handle:
                        return handle.read().splitlines()
                except (OSError, EOFError):
                    return None
        return None

    positions, cells = read("*-pos-1.xyz"), read("*-1.cell")
    if not positions or not cells:
        return []
    try:
        lattices = [[float(x) for x in line.split()[2:11]]
                    for line in cells if line.strip() and not line.startswith("#")]
        frames, i = [], 0
        while i < len(positions) and positions[i].strip():
            n = int(positions[i])
            rows = [line.split() for line in positions[i + 2:i + 2 + n]]
            frames.append(([r[0] for r in rows], [[float(x) for x in r[1:4]] for r in rows]))
            i += n + 2
        if len(frames) != len(lattices):
            return []
        return [Structure(lattice=[m[0:3], m[3:6], m[6:9]], species=species, coords=coords,
                          coords_are_cartesian=True)
                for m, (species, coords) in zip(lattices, frames, strict=True)]
    except (ValueError, IndexError) as exc:  # a partly written file: judge nothing
        log.warning("could not read the CP2K trajectory in %s: %s", folder, exc)
        return []


def _read_dft_doc(doc: Any) -> dict[str, Any]:
    """Energy, structure and state of an atomate2 CP2K or VASP task document."""
    doc, final = decode_task_doc(doc)
    energy = doc.output.energy
    per_atom = getattr(doc.output, "energy_per_atom", None)
    if per_atom is None and energy is not None and final is not None:
        per_atom = energy / len(final)
    return {
        "energy": None if energy is None else float(energy),
        "energy_per_atom": None if per_atom is None else float(per_atom),
        "structure": final,
        "converged": task_succeeded(doc),
    }


_HARTREE_EV = 27.211386245988
_HARTREE_PER_BOHR_EV_PER_A = 51.422067476
_CP2K_ENERGY = re.compile(r"ENERGY\| Total FORCE_EVAL \( \w+ \) energy \[a\.u\.\]:\s+(\S+)")
_CP2K_FORCES = re.compile(r"ATOMIC FORCES in \[a\.u\.\](.*?)SUM OF ATOMIC FORCES", re.S)
_CP2K_FORCE_ROW = re.compile(r"^\s*\d+\s+\d+\s+\S+\s+(\S+)\s+(\S+)\s+(\S+)\s*$", re.M)
_CP2K_STRESS = re.compile(
    r"STRESS\| Analytical stress tensor \[GPa\]\s*\n.*?\n"
    r"\s*STRESS\|\s+x\s+(\S+)\s+(\S+)\s+(\S+)\s*\n"
    r"\s*STRESS\|\s+y\s+(\S+)\s+(\S+)\s+(\S+)\s*\n"
    r"\s*STRESS\|\s+z\s+(\S+)\s+(\S+)\s+(\S+)"
)


def _cp2k_run_report(folder: Path) -> dict[str, Any]:
    """What CP2K's output file says beyond atomate2's task document.

    atomate2 marks a task successful when CP2K finished, also when a geometry or cell
    optimisation stopped at MAX_ITER; its forces are in CP2K's atomic units. This reads
    ``cp2k.out`` (gzipped or not) in ``folder`` or in its one job folder: whether the
    optimiser converged, its number of steps, the energy of the starting structure, and the
    final forces (eV/Å) and stress (GPa). Empty when there is no output to read.
    """
    import gzip

    candidates = [folder, *sorted(p for p in Path(folder).glob("job_*") if p.is_dir())]
    text = None
    for path in (d / name for d in candidates for name in ("cp2k.out", "cp2k.out.gz")):
        if path.is_file():
            opener = gzip.open if path.suffix == ".gz" else open
            try:
                with opener(path, "rt", errors="replace") as handle:
                    text = handle.read()
            except (OSError, EOFError) as exc:  # a report must never fail a finished run
                log.warning("could not read %s: %s", path, exc)
            break
    if text is None:
        return {}
    report: dict[str, Any] = {}
    if energies := _CP2K_ENERGY.findall(text):
        report["initial_energy"] = float(energies[0]) * _HARTREE_EV
        report["relax_energies"] = [float(e) * _HARTREE_EV for e in energies]
    if blocks := _CP2K_FORCES.findall(text):
        forces = [[float(x) for x in row] for row in _CP2K_FORCE_ROW.findall(blocks[-1])]
        if forces:
            report["max_force"] = _HARTREE_PER_BOHR_EV_PER_A * max(
                math.sqrt(sum(f * f for f in row)) for row in forces
            )
    if stresses := _CP2K_STRESS.findall(text):
        values = [float(x) for x in stresses[-1]]
        report["stress"] = [values[0:3], values[3:6], values[6:9]]
    if "MAXIMUM NUMBER OF OPTIMIZATION STEPS REACHED" in text:
        report["relax_converged"] = False
    elif "GEOMETRY OPTIMIZATION COMPLETED" in text:
        report["relax_converged"] = True
    if report.get("relax_converged") is not None:
        report["relax_steps"] = len(re.findall(r"OPTIMIZATION STEP:\s+\d+", text))
    else:  # a single point: the energy is the result
        report.pop("initial_energy", None)
        report.pop("relax_energies", None)
    return report
