"""Every input checked first: one pre-flight before any work.

``matloop run``, ``serve``, ``sample`` and ``train`` call these checks before they start
Prefect, load a model or relax anything, and report every problem together, one line each,
naming the file, field or (redacted) URI and what to do:

* seed files exist, are readable and parse; their crystals are counted per chemical system
  of the space (a space, or a subsystem, without a known crystal is a warning);
* checkpoints match their ``.sha256`` (unless trusted) and load with ``weights_only=True``;
* the replay table exists and has its columns;
* the output folder can be written;
* the store answers (a short timeout for ``mongodb://``).

Problems are values, not exceptions: :func:`preflight` returns them all.

Examples
--------
>>> from matloop.config import parse_config
>>> config = parse_config({"name": "x", "chemical_space": {"elements": ["Na", "Cl"]},
...                        "seed_data": {"files": [{"path": "missing.csv"}]},
...                        "store": "memory://"})
>>> print(preflight(config, check_output=False)[0])  # doctest: +ELLIPSIS
seed_data.files[0].path: missing.csv: no such file; fix the path (relative paths start ...
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from matloop.config import CampaignConfig

#: Seconds to wait for a MongoDB server to answer before calling it unreachable.
STORE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the inputs: where (a field, file or URI) and what to do."""

    where: str
    message: str
    level: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class SeedCount:
    """What the seed files give: crystals per chemical system of the space."""

    per_system: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.per_system.values())


def preflight(
    config: CampaignConfig,
    *,
    trust_checkpoints: bool = False,
    check_output: bool = True,
    check_store: bool = True,
) -> list[Problem]:
    """Every problem with the inputs of ``config``, errors and warnings, in field order.

    ``trust_checkpoints`` (``--trust-checkpoint``) accepts checkpoints without a matching
    ``.sha256`` as ``generators[].trust: true`` does for one.
    """
    from concurrent.futures import ThreadPoolExecutor

    problems: list[Problem] = []
    # the store check mostly waits on the network: it runs while the files are read
    pool = ThreadPoolExecutor(max_workers=1)
    store_check = pool.submit(check_store_reachable, config.store) if check_store else None
    seeds = count_seed_crystals(config)
    problems += seeds.problems
    if not any(p.level == "error" for p in seeds.problems):
        problems += coverage_problems(config, seeds)
    for index, gen in enumerate(config.generators):
        if gen.checkpoint:
            where = f"generators[{index}].checkpoint"
            trust = trust_checkpoints or gen.trust
            problems += check_checkpoint(gen.checkpoint, where, trust=trust, kind=gen.name)
    if config.relaxer.replay is not None:
        problems += check_replay_table(config.relaxer.replay)
    if check_output:
        problems += check_writable_folder(config.output_dir, "output")
    if store_check is not None:
        problems += store_check.result()
    pool.shutdown()
    return problems


# -- seed data ------------------------------------------------------------------------------
_FORMULA_SUM = re.compile(r"_chemical_formula_sum\s+(?:'([^']*)'|\"([^\"]*)\"|(\S+))")
_TOKEN = re.compile(r"([A-Z][a-z]?)(\d*\.?\d*)")


def _cheap_composition(cif: str) -> dict[str, float] | None:
    """Elements and amounts from a CIF's ``_chemical_formula_sum``, without parsing it."""
    found = _FORMULA_SUM.search(cif)
    if not found:
        return None
    text = next(g for g in found.groups() if g is not None)
    amounts: dict[str, float] = {}
    for symbol, number in _TOKEN.findall(text):
        amounts[symbol] = amounts.get(symbol, 0.0) + (float(number) if number else 1.0)
    return amounts or None


def count_seed_crystals(config: CampaignConfig) -> SeedCount:
    """Read every seed file far enough to know it is usable, and count its crystals in the
    chemical space per chemical system (``"Cl-Na"``). Rows outside the space are skipped
    cheaply (a CSV's formula is read from the CIF's ``_chemical_formula_sum``); those
    inside are parsed, as the campaign will parse them."""
    space = config.chemical_space
    counts: dict[str, int] = {}
    result = SeedCount(per_system=counts)
    for index, seed in enumerate(config.seed_data.files):
        where = f"seed_data.files[{index}].path"
        from matloop.data import expand_path

        try:
            path = expand_path(seed.path)
        except ValueError as err:
            result.problems.append(Problem(where, str(err)))
            continue
        found = _seed_file_systems(path, seed, space.elements, where)
        if isinstance(found, Problem):
            result.problems.append(found)
            continue
        systems, bad_rows = found
        for system in systems:
            counts[system] = counts.get(system, 0) + 1
        if bad_rows:
            result.problems.append(Problem(
                where, f"{seed.path}: {len(bad_rows)} crystal(s) of the space could not be "
                f"read and are skipped (first: {bad_rows[0]})", "warning"))
    if config.seed_data.materials_project and not os.environ.get("MP_API_KEY"):
        result.problems.append(Problem(
            "seed_data.materials_project",
            "MP_API_KEY is not set; export your Materials Project API key or set "
            "materials_project: false"))
    return result


def _seed_file_systems(path: Path, seed, elements: list[str], where: str):
    """``(chemical systems of the crystals in the space, unreadable rows)`` or a Problem."""
    if not path.exists():
        return Problem(where, f"{seed.path}: no such file; fix the path (relative paths start "
                       f"from {Path.cwd()})")
    if not path.is_file():
        return Problem(where, f"{seed.path}: is a folder, not a file")
    if not os.access(path, os.R_OK):
        return Problem(where, f"{seed.path}: cannot be read (permission denied)")
    from matloop.data import guess_format

    try:
        fmt = seed.format or guess_format(path)
    except ValueError:
        return Problem(where, f"{seed.path}: cannot tell the format from the name; rename it "
                       "(.csv, .csv.gz, .extxyz, .xyz, .db) or set format: csv|extxyz|ase-db")
    try:
        if fmt == "csv":
            return _csv_systems(path, seed, elements)
        return _ase_systems(path, fmt, seed, elements)
    except _Unusable as err:
        return Problem(where, f"{seed.path}: {err}")
    except Exception as err:  # noqa: BLE001 - any reader error is one line about this file
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        return Problem(where, f"{seed.path}: cannot be read as {fmt} ({message})")


class _Unusable(ValueError):
    pass


def _in_space(amounts: dict[str, float], elements: set[str], max_atoms: int) -> bool:
    return set(amounts) <= elements and sum(amounts.values()) <= max_atoms + 1e-6


def _read_csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a CSV (gzipped when named .gz), with the standard library: pandas
    alone takes seconds to import, and the pre-flight must answer in under ~3 s."""
    import csv
    import gzip
    import io

    csv.field_size_limit(1 << 30)  # CIF texts are long fields
    raw = path.read_bytes()
    if path.name.lower().endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise _Unusable(f"not a readable gzip file ({err})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _Unusable("not a text CSV (it is not UTF-8 text)") from None
    if not text.strip():
        raise _Unusable("the file is empty (no header, no rows)")
    try:
        reader = csv.DictReader(io.StringIO(text))
        rows = list(reader)
    except csv.Error as err:
        raise _Unusable(f"not a readable CSV ({err})") from None
    return list(reader.fieldnames or []), rows


def _csv_systems(path: Path, seed, elements: list[str]):
    import warnings

    try:
        columns, rows = _read_csv_rows(path)
    except _Unusable as err:
        raise _Unusable(f"{err}; give a CSV with a {seed.cif_column!r} column of CIF "
                        "texts") from None
    if seed.cif_column not in columns:
        raise _Unusable(
            f"no column {seed.cif_column!r} with CIF text (columns: "
            f"{', '.join(columns) or 'none'}); set cif_column: NAME")
    wanted = set(elements)
    systems, bad = [], []
    for index, cif in enumerate(row.get(seed.cif_column) or "" for row in rows):
        amounts = _cheap_composition(str(cif))
        if amounts is not None and not _in_space(amounts, wanted, seed.max_atoms):
            continue
        from pymatgen.core import Structure

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                structure = Structure.from_str(str(cif), fmt="cif")
        except Exception as err:  # noqa: BLE001 - pymatgen raises many kinds
            if amounts is not None:  # in the space by its formula, yet unreadable
                bad.append(f"row {index}: {str(err).splitlines()[0] if str(err) else err!r}")
            continue
        composition = structure.composition
        if {el.symbol for el in composition} <= wanted and len(structure) <= seed.max_atoms:
            systems.append(composition.chemical_system)
    return systems, bad


def _ase_systems(path: Path, fmt: str, seed, elements: list[str]):
    if fmt == "ase-db":
        from ase.db import connect

        atoms_list = [row.toatoms() for row in connect(str(path)).select()]
    else:
        from ase.io import read

        atoms_list = read(str(path), index=":", format="extxyz")
    wanted = set(elements)
    systems = []
    for atoms in atoms_list:
        symbols = set(atoms.get_chemical_symbols())
        if symbols <= wanted and len(atoms) <= seed.max_atoms:
            systems.append("-".join(sorted(symbols)))
    return systems, []


def coverage_problems(config: CampaignConfig, seeds: SeedCount) -> list[Problem]:
    """The seed-coverage warning (see :func:`matloop.data.seed_coverage`) as a Problem."""
    from matloop.data import seed_coverage

    if not config.seed_data.files and not config.seed_data.materials_project:
        return [Problem("seed_data", "no seed data: 'novel' means new to this campaign only; "
                        "give known crystals under seed_data to judge novelty against them",
                        "warning")]
    if config.seed_data.materials_project:
        return []  # fetched at run time: counted then
    coverage = seed_coverage(seeds.per_system, list(config.chemical_space.elements))
    return [Problem("seed_data", coverage["warning"], "warning")] if coverage["warning"] else []


# -- checkpoints ------------------------------------------------------------------------------
def check_checkpoint(
    path: str | Path, where: str, *, trust: bool = False, kind: str | None = None
) -> list[Problem]:
    """A checkpoint exists, matches its ``.sha256`` (unless ``trust``), loads with
    ``weights_only=True`` as a matloop checkpoint, and (given ``kind``) holds that model."""
    path = Path(path).expanduser()
    if not path.is_file():
        return [Problem(where, f"{path}: no such file; train one with `matloop train` or fix "
                        "the path")]
    from matloop.generators.checkpoints import CheckpointError, check_checkpoint_hash

    try:
        check_checkpoint_hash(path, trust=trust)  # before torch is even imported
        from matloop.generators.torch_common import load_checkpoint_payload

        payload = load_checkpoint_payload(path)
    except CheckpointError as err:
        return [Problem(where, str(err).removeprefix(f"{path}: "))]
    if kind is not None and payload.get("kind") != kind:
        return [Problem(where, f"{path}: holds a {payload.get('kind')!r} model, not {kind!r}; "
                        "give the generator's name its own checkpoint")]
    return []


# -- replay table ------------------------------------------------------------------------------
def check_replay_table(table) -> list[Problem]:
    from matloop.data import expand_path

    where = "relaxer.replay.path"
    try:
        path = expand_path(table.path)
    except ValueError as err:
        return [Problem(where, str(err))]
    if not path.is_file():
        return [Problem(where, f"{table.path}: no such file; fix the path")]
    try:
        columns = set(_read_csv_rows(path)[0])
    except _Unusable as err:
        return [Problem(where, f"{table.path}: {err}")]
    needed = [table.cif_column, table.energy_column, *table.property_columns]
    if missing := [c for c in needed if c not in columns]:
        return [Problem(where, f"{table.path}: no column(s) {', '.join(missing)} (columns: "
                        f"{', '.join(sorted(columns))})")]
    return []


# -- output folder ------------------------------------------------------------------------------
def check_writable_folder(folder: str | Path, where: str) -> list[Problem]:
    """``folder`` is, or can be made, a folder this process can write into. Nothing is left
    behind: a probe file (or the first missing folder) is removed again."""
    folder = Path(folder).expanduser()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return [Problem(where, f"{folder}: {existing} is a file, not a folder; choose another "
                        "output folder")]
    try:
        if existing == folder:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".matloop-probe-"):
                pass
        else:
            first_missing = folder
            while first_missing.parent != existing:
                first_missing = first_missing.parent
            first_missing.mkdir()
            first_missing.rmdir()
    except OSError as err:
        return [Problem(where, f"{folder}: cannot write there ({err.strerror or err}); choose "
                        "a folder you can write, e.g. --output ./matloop-output")]
    return []


# -- store ----------------------------------------------------------------------------------------
def check_store_reachable(uri: str, timeout_s: float = STORE_TIMEOUT_S) -> list[Problem]:
    """The store answers: an embedded store's folder can be written, a MongoDB server
    answers a ping within ``timeout_s``. The URI is shown with its password hidden."""
    from matloop.secrets import SecretError, resolve
    from matloop.store.backends import Backend, StoreURIError, redact_uri

    where = f"store {redact_uri(uri)}"
    try:
        resolved = resolve(uri)
        backend = Backend.from_uri(resolved)
    except (SecretError, StoreURIError) as err:
        return [Problem("store", str(err))]
    where = f"store {redact_uri(resolved)}"
    if backend.scheme == "memory":
        return []
    if backend.scheme == "monty":
        assert backend.path is not None
        return [Problem(where, p.message) for p in check_writable_folder(backend.path, "store")]
    if backend.scheme == "sqlite":
        assert backend.path is not None
        if backend.path.exists() and not backend.path.is_file():
            return [Problem(where, f"{backend.path} is not a database file; give a file name, "
                            "e.g. sqlite://./matloop-store.db")]
        if backend.path.exists() and not os.access(backend.path, os.R_OK | os.W_OK):
            return [Problem(where, f"{backend.path}: cannot read and write it")]
        return [Problem(where, p.message)
                for p in check_writable_folder(backend.path.parent, "store")]
    if backend.scheme not in ("mongodb", "mongodb+srv"):
        return []  # an engine this check does not know: opening it will tell
    return _ping_mongo(resolved, where, timeout_s)


def _ping_mongo(uri: str, where: str, timeout_s: float) -> list[Problem]:
    from pymongo import MongoClient
    from pymongo.errors import ConfigurationError, OperationFailure, PyMongoError

    ms = int(timeout_s * 1000)
    try:
        client: Any = MongoClient(uri, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms,
                                  socketTimeoutMS=ms)
    except (ConfigurationError, ValueError) as err:
        return [Problem(where, f"not a usable MongoDB URI ({_first_line(err)})")]
    try:
        client.admin.command("ping")
    except OperationFailure as err:
        return [Problem(where, f"the server refused: {_first_line(err)}; check the user "
                        "name, password and database")]
    except PyMongoError:
        return [Problem(where, f"no MongoDB server answered within {timeout_s:g} s; start it, "
                        "or check the host, port and network (or use monty://PATH, the "
                        "embedded store)")]
    finally:
        client.close()
    return []


def _first_line(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", text)


# -- train ------------------------------------------------------------------------------------------
def check_train_output(path: str | Path, force: bool = False) -> list[Problem]:
    """``matloop train -o PATH``: never overwrite a file that is not a matloop checkpoint,
    and a checkpoint only with ``--force``; the folder must be writable."""
    path = Path(path).expanduser()
    where = "--output"
    if path.is_dir():
        return [Problem(where, f"{path} is a folder; give a file name, e.g. {path}/model.pt")]
    if path.exists():
        if not _is_checkpoint(path):
            return [Problem(where, f"{path} exists and is not a matloop checkpoint; it is not "
                            "overwritten: choose another file name")]
        if not force:
            return [Problem(where, f"{path} is an existing checkpoint; pass --force to replace "
                            "it, or choose another file name")]
    return check_writable_folder(path.parent, where)


def _is_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a matloop checkpoint, loading torch only when it must: torch
    writes zip files, and one that matches the ``.sha256`` beside it was written by
    matloop."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    from matloop.generators.checkpoints import CheckpointError, check_checkpoint_hash

    try:
        check_checkpoint_hash(path)
        return True
    except CheckpointError:
        pass
    from matloop.generators.torch_common import load_checkpoint_payload

    try:
        load_checkpoint_payload(path)
    except CheckpointError:
        return False
    return True


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.level == "error"]
