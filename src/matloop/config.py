"""Campaign configuration: a YAML file validated by pydantic, with clear errors.

Every mistake is reported with the field's dotted path and what was expected, before any
work starts. Relative paths (store folder, output folder, seed files) are taken relative to
the directory ``matloop`` is run from.

Validation is pure: it reads no file and opens no connection, so a configuration stored
with a campaign validates again anywhere. Whether the files it names exist, parse and
can be trusted, and whether the store answers, is checked by :mod:`matloop.preflight`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

#: Longest campaign name (it becomes a folder name and a Prefect flow-run name).
NAME_MAX = 80
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ConfigError(ValueError):
    """A campaign configuration that cannot be used; the message names every problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class ChemicalSpaceConfig(_Strict):
    elements: list[str] = Field(min_length=1, description="Allowed elements, e.g. [Ca, Ti, O]")
    max_atoms: int = Field(12, ge=1, le=200, description="Largest cell accepted")

    @field_validator("elements")
    @classmethod
    def _known_elements(cls, value: list[str]) -> list[str]:
        from pymatgen.core.periodic_table import Element

        unknown = [el for el in value if not Element.is_valid_symbol(el)]
        if unknown:
            raise ValueError(f"unknown element symbol(s): {', '.join(map(str, unknown))}")
        if len(set(value)) != len(value):
            raise ValueError("elements are listed more than once")
        return value


class PropertyWindow(_Strict):
    name: str = Field(description="Property column (from seed data) to aim at, e.g. dir_gap")
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _bounds(self) -> PropertyWindow:
        if self.min is None and self.max is None:
            raise ValueError("a property window needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is larger than max ({self.max})")
        return self


class ObjectiveConfig(_Strict):
    stability_threshold: float = Field(
        0.1, ge=0.0, le=1.0, description="e_above_hull (eV/atom) at or below which a hit counts"
    )
    property: PropertyWindow | None = None
    target_hits: int | None = Field(
        None, ge=1, description="Stop the campaign once this many hits (novel, unique, "
        "within stability_threshold) have been found in all"
    )


#: Generators whose sampler has a policy that ``update: reinforce`` can train.
REINFORCE_GENERATORS = ("crystal_vae", "crystal_cvae")


class GeneratorConfig(_Strict):
    name: str = Field(description="Registry name, e.g. prototype_substitution")
    weight: float = Field(1.0, gt=0, description="Share of each round's proposals")
    settings: dict = Field(default_factory=dict, description="Passed to the generator")
    checkpoint: str | None = Field(None, description="Trained model file for torch generators")
    trust: bool = Field(
        False, description="Load the checkpoint even without a matching <checkpoint>.sha256 "
        "beside it (only for a file you made or checked yourself)",
    )
    update: Literal["finetune", "reinforce", "none"] = Field(
        "finetune",
        description="How a learned generator learns between rounds: reward-weighted "
        "fine-tuning with replay, REINFORCE on its sampling policy, or not at all",
    )
    update_settings: dict = Field(
        default_factory=dict,
        description="For reinforce: steps, lr, kl_weight, baseline_momentum, clip",
    )

    @model_validator(mode="after")
    def _update_mode(self) -> GeneratorConfig:
        if self.update == "reinforce" and self.name not in REINFORCE_GENERATORS:
            raise ValueError(
                f"update: reinforce needs a generator with a sampling policy "
                f"({', '.join(REINFORCE_GENERATORS)}), not {self.name!r}"
            )
        allowed = {"steps", "lr", "kl_weight", "baseline_momentum", "clip"}
        if unknown := set(self.update_settings) - allowed:
            raise ValueError(
                f"unknown update_settings {sorted(unknown)}; known: {', '.join(sorted(allowed))}"
            )
        return self


class ReplayTable(_Strict):
    """A labelled table that answers "relaxations" by lookup (agent benchmarks, no physics).

    ``energy_column`` must be a formation energy per atom relative to the elements (e.g.
    perov-5's ``heat_ref``): the elemental references of the hull then sit at 0 eV/atom.
    """

    path: str = Field(description="CSV (optionally gzipped) with a CIF column")
    energy_column: str = Field(description="Formation energy per atom, eV/atom")
    property_columns: list[str] = Field(
        default_factory=list, description="Other labels reported with each answer, e.g. dir_gap"
    )
    cif_column: str = "cif"
    id_column: str = "material_id"


#: What ``executor_settings`` may hold with ``batched: true``, per executor: the fields of
#: :class:`matloop.relax.cluster.DaskBatchedRelaxer` and
#: :class:`matloop.relax.fireworks_chunks.FireWorksBatchedRelaxer` (a test keeps them equal).
BATCHED_EXECUTOR_SETTINGS: dict[str, tuple[str, ...]] = {
    "dask": ("address", "cluster_class", "cluster_kwargs", "n_workers", "chunk_size", "device",
             "num_threads", "max_attempts", "worker_timeout_s"),
    "fireworks": ("launchpad", "launch", "n_workers", "worker_dir", "worker_env", "timeout_s",
                  "poll_s", "chunk_size", "device", "num_threads"),
}  # fmt: skip


class RelaxerConfig(_Strict):
    potential: Literal["CHGNet", "SevenNet", "replay"] = Field(
        "CHGNet", description="ML potential, or 'replay': answers from relaxer.replay's table"
    )
    replay: ReplayTable | None = Field(
        None, description="The labelled table of potential: replay"
    )
    fmax: float = Field(0.05, gt=0, le=1.0, description="Force convergence, eV/Å")
    steps: int = Field(300, ge=1, le=10000)
    relax_cell: bool = True
    executor: Literal["local", "fireworks", "dask", "jobflow-remote"] = Field(
        "local", description="Where relaxations run (see matloop.relax.executors)"
    )
    executor_settings: dict = Field(
        default_factory=dict, description="Passed to the executor, e.g. {n_workers: 2}"
    )
    batched: bool = Field(
        False,
        description="Relax many candidates together in one torch state, on CUDA when present "
        "(matloop.relax.batched; CHGNet only; in chunks on workers with executor dask or "
        "fireworks, see docs/cluster.md). Same relaxed structures "
        "and energies as one atomate2 job per candidate, faster",
    )
    batch_size: int = Field(
        32, ge=1, le=4096, description="Candidates relaxed together when batched"
    )

    @model_validator(mode="after")
    def _batched_needs_chgnet(self) -> RelaxerConfig:
        if self.batched and self.potential != "CHGNet":
            raise ValueError(
                f"batched: true relaxes with CHGNet only, not potential: {self.potential} "
                "(set batched: false, or potential: CHGNet)"
            )
        if self.batched and self.executor == "jobflow-remote":
            raise ValueError(
                "batched: true runs in this process; in chunks on executor: dask or "
                "fireworks; jobflow-remote runs one job per crystal (set batched: false, or "
                "executor: dask)"
            )
        if self.batched and self.executor in BATCHED_EXECUTOR_SETTINGS:
            known = BATCHED_EXECUTOR_SETTINGS[self.executor]
            for key in self.executor_settings:
                if key not in known:
                    raise ValueError(
                        f"relaxer.executor_settings: unknown setting {key!r} for batched: true "
                        f"on {self.executor}; known: {', '.join(known)}"
                    )
            if {"address", "cluster_class"} <= set(self.executor_settings):
                raise ValueError(
                    "relaxer.executor_settings: give dask either address (a running "
                    "scheduler) or cluster_class (a cluster to start), not both"
                )
        return self

    @model_validator(mode="after")
    def _replay_table(self) -> RelaxerConfig:
        if self.potential == "replay" and self.replay is None:
            raise ValueError(
                "potential: replay needs a table: relaxer.replay: {path, energy_column}"
            )
        if self.potential != "replay" and self.replay is not None:
            raise ValueError(f"relaxer.replay is only used with potential: replay, "
                             f"not {self.potential}")  # fmt: skip
        if self.potential == "replay" and self.executor != "local":
            raise ValueError("potential: replay answers in-process; executor must be local")
        return self


class DftConfig(_Strict):
    """DFT verification of the best ML-stable candidates (energies kept beside, not in,
    the ML hull)."""

    code: Literal["cp2k", "vasp"] = "cp2k"
    top_k: int = Field(
        2, ge=0, le=1000, description="Novel stable candidates verified per round (best first)"
    )
    kind: Literal["relax", "static"] = Field(
        "relax", description="relax: ions and cell; static: single point at the ML structure"
    )
    fast: bool = Field(False, description="Cheap CP2K settings for tiny cells (tests, demos)")
    command: str | None = Field(None, description="Command running the code, e.g. cp2k.psmp")
    kpoints: list[int] | int | None = Field(
        None, description="Gamma-centred grid [n1, n2, n3] or a reciprocal k-point density"
    )
    settings: dict = Field(default_factory=dict, description="Input settings for the DFT maker")
    max_atoms: int = Field(20, ge=1, description="Larger candidates are not verified")
    max_references: int = Field(
        4, ge=0, le=1000,
        description="Known compounds per verified chemical system relaxed with the same DFT "
        "settings for the DFT hull, beside its elemental references (always relaxed): those "
        "on or nearest the ML hull first, then the smallest cells",
    )
    energy_tolerance: float | None = Field(
        None, gt=0, le=0.1,
        description="eV/atom. Accept a CP2K relaxation that stopped at MAX_ITER when its "
        "energy changed by at most this over its last energy_window steps and its cell "
        "stayed inside the grids' reference cell (marked energy_converged). Default: such a "
        "relaxation fails",
    )
    energy_window: int = Field(5, ge=2, le=100, description="Steps energy_tolerance spans")


class BudgetConfig(_Strict):
    rounds: int = Field(3, ge=1, description="Rounds to run per `matloop run`")
    max_rounds: int | None = Field(None, ge=1, description="Stop the campaign after this many")
    candidates_per_round: int = Field(40, ge=1, le=100000)
    relaxations_per_round: int = Field(8, ge=1, le=10000)
    patience: int | None = Field(
        None, ge=1, description="Stop after this many rounds without a new discovery"
    )

    @model_validator(mode="after")
    def _consistent(self) -> BudgetConfig:
        if self.relaxations_per_round > self.candidates_per_round:
            raise ValueError(
                f"relaxations_per_round ({self.relaxations_per_round}) cannot exceed "
                f"candidates_per_round ({self.candidates_per_round})"
            )
        return self


class AcquisitionConfig(_Strict):
    strategy: Literal["ucb", "greedy", "ei", "thompson", "random", "joint"] = Field(
        "ucb",
        description="joint: highest P(stable) x P(property in the objective's window), "
        "see matloop.evaluators.reward",
    )
    beta: float = Field(1.0, ge=0.0, description="Exploration weight for UCB")
    calibrate: bool = Field(
        True, description="Rescale the surrogate's spread by 3-fold cross-validation so about "
        "68 % of errors fall within one standard deviation (see EnsembleSurrogate)",
    )
    ensemble_size: int = Field(8, ge=2, le=64)
    single_point: bool = Field(
        False, description="Start each proposal's predicted e_above_hull from the potential's "
        "single-point energy of it as proposed (one batched CHGNet call for the pool); the "
        "surrogate learns how much relaxing lowers it. CHGNet only",
    )


class AllocationConfig(_Strict):
    """How each round's proposals are shared among the generators.

    ``fixed``: by ``generators[].weight``. ``thompson``: a bandit over generators (see
    :mod:`matloop.evaluators.bandit`): each generator's hits per proposal in earlier rounds
    give a Beta posterior, and each round's shares follow the probability that a generator
    is the best one, above a ``floor`` so that none starves.
    """

    strategy: Literal["fixed", "thompson"] = "fixed"
    floor: float = Field(
        0.1, ge=0.0, le=1.0, description="Smallest share of proposals each generator keeps"
    )


class SeedFile(_Strict):
    path: str
    format: Literal["csv", "extxyz", "ase-db"] | None = Field(
        None, description="Guessed from the suffix when omitted"
    )
    cif_column: str = "cif"
    id_column: str = "material_id"
    max_atoms: int = Field(40, ge=1, description="Larger seed crystals are skipped")


class OptimadeSource(_Strict):
    """An OPTIMADE database to take the space's known crystals from (see
    :mod:`matloop.optimade_source`)."""

    base_url: str = Field(description="e.g. https://optimade.materialsproject.org")
    filter: str | None = Field(
        None, description="OPTIMADE filter AND-ed with the space's, e.g. 'nsites<=12'"
    )
    max_results: int = Field(1000, ge=1, description="Structures taken at most")
    max_atoms: int = Field(40, ge=1, description="Larger crystals are skipped")
    cache: str | None = Field(
        None, description="Cache folder (default $MATLOOP_CACHE/optimade or "
        "~/.cache/matloop/optimade): a cached answer is reused offline"
    )
    refresh: bool = Field(False, description="Ask the database again despite a cached answer")

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {value!r}")
        return value


class SeedConfig(_Strict):
    files: list[SeedFile] = Field(default_factory=list)
    materials_project: bool = Field(
        False, description="Fetch known compounds of the space when MP_API_KEY is set"
    )
    optimade: list[OptimadeSource] = Field(
        default_factory=list, description="OPTIMADE databases: [{base_url, filter}]"
    )


class CampaignConfig(_Strict):
    """A campaign: what to search, how, with what budget, where to keep results."""

    name: str = Field(description="Campaign name: letters, digits, '.', '_' or '-'")
    chemical_space: ChemicalSpaceConfig
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    generators: list[GeneratorConfig] = Field(
        default_factory=lambda: [
            GeneratorConfig(name="prototype_substitution"),
            GeneratorConfig(name="random_symmetric"),
        ],
        min_length=1,
    )
    relaxer: RelaxerConfig = Field(default_factory=RelaxerConfig)
    dft: DftConfig | None = Field(None, description="DFT verification stage; off when absent")
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    acquisition: AcquisitionConfig = Field(default_factory=AcquisitionConfig)
    allocation: AllocationConfig = Field(
        default_factory=AllocationConfig,
        description="Proposals per generator: fixed weights, or a bandit (thompson); "
        "`allocation: fixed` is short for {strategy: fixed}",
    )
    seed_data: SeedConfig = Field(default_factory=SeedConfig)
    store: str = Field(
        "sqlite://./matloop-store.db",
        description="Store URI; may hold ${ENV_VAR} or ${prefect-secret:BLOCK} placeholders",
    )
    output: str = Field("./matloop-output", description="Folder for exported results")
    seed: int = Field(0, description="Random seed: the same seed gives the same campaign")

    @field_validator("allocation", mode="before")
    @classmethod
    def _allocation_shorthand(cls, value: object) -> object:
        return {"strategy": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _allocation_floor(self) -> CampaignConfig:
        floor, n = self.allocation.floor, len(self.generators)
        if self.allocation.strategy != "fixed" and floor * n > 1:
            raise ValueError(
                f"allocation.floor {floor} x {n} generators is more than all proposals; "
                f"use at most {1 / n:.3g}"
            )
        return self

    @model_validator(mode="after")
    def _single_point_potential(self) -> CampaignConfig:
        if self.acquisition.single_point and self.relaxer.potential != "CHGNet":
            raise ValueError(
                "acquisition.single_point needs relaxer.potential: CHGNet (its energies are "
                f"computed with tensors in batch), not {self.relaxer.potential}"
            )
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        rule = ("must start with a letter or digit, use only letters, digits, '.', '_', '-' "
                f"and have at most {NAME_MAX} characters")
        if len(value) > NAME_MAX:
            raise ValueError(f"{rule}; this one has {len(value)} characters")
        if not _NAME.match(value):
            raise ValueError(rule)
        return value

    @field_validator("generators")
    @classmethod
    def _known_generators(cls, value: list[GeneratorConfig]) -> list[GeneratorConfig]:
        from matloop.generators.registry import SAMPLING_SETTINGS, available_generators
        from matloop.generators.training import TORCH_GENERATORS

        known = available_generators()
        for gen in value:
            if gen.name not in known:
                raise ValueError(
                    f"unknown generator {gen.name!r}; known generators: {', '.join(known)}"
                )
            if gen.name in TORCH_GENERATORS and not gen.checkpoint:
                raise ValueError(
                    f"generator {gen.name!r} is a learned model and needs `checkpoint: PATH` "
                    "(train one with `matloop train`)"
                )
            if gen.checkpoint and (bad := sorted(set(gen.settings) - set(SAMPLING_SETTINGS))):
                raise ValueError(
                    f"generator {gen.name!r} loads a trained model: its settings may only "
                    f"change how it samples ({', '.join(SAMPLING_SETTINGS)}), not {bad}"
                )
        return value

    @field_validator("store")
    @classmethod
    def _store_uri(cls, value: str) -> str:
        from matloop.secrets import check_placeholders
        from matloop.store.backends import Backend

        check_placeholders(value)  # ${VAR}, ${prefect-secret:BLOCK}: resolved when opened
        if not value.startswith("${"):
            Backend.from_uri(value)
        return value

    @property
    def output_dir(self) -> Path:
        return Path(self.output).expanduser() / self.name


def _format_errors(source: str, error: ValidationError) -> str:
    lines = [f"{source}: {error.error_count()} problem(s) in the campaign configuration"]
    for err in error.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        message = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        got_text = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
        if len(got_text) > 70:  # a long value is named, not printed whole
            got_text = f" (got {got_text[6:50]}…)"
        if err["type"] == "extra_forbidden":
            message = "unknown field (check the spelling)"
        lines.append(f"  - {where}: {message}{got_text}")
    return "\n".join(lines)


def parse_config(data: object, source: str = "config") -> CampaignConfig:
    """Validate a mapping (e.g. loaded YAML) into a :class:`CampaignConfig`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of fields at the top level")
    try:
        return CampaignConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(source, err)) from None


def load_config(path: str | Path) -> CampaignConfig:
    """Read and validate a campaign YAML file (``yaml.safe_load``: no code is executed)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such configuration file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return parse_config(data, source=str(path))
