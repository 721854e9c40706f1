"""A campaign in one process: its bookkeeping (create, resume, stop) and its rounds.

:class:`CampaignRun` is the front door the CLI, the Prefect flows and the tests use: it
holds a :class:`~matloop.loop.context.RunContext` and runs the steps of
:data:`STEPS` through :func:`~matloop.loop.step.run_step`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from matloop.loop.context import Progress, RunContext
from matloop.loop.evaluate import EvaluateStep
from matloop.loop.generate import GenerateStep
from matloop.loop.learn import LearnStep
from matloop.loop.relax import RelaxStep
from matloop.loop.screen import ScreenStep
from matloop.loop.step import Step, StepResult, run_step
from matloop.loop.verify import VerifyStep
from matloop.store import CampaignDoc, MatloopStore, RoundDoc
from matloop.store.documents import utcnow

if TYPE_CHECKING:
    from matloop.config import CampaignConfig

__all__ = ["ROUND", "STEPS", "CampaignMismatchError", "CampaignRun", "campaign_differences"]

#: The steps of a round, in order.
ROUND: tuple[Step, ...] = (
    GenerateStep(), ScreenStep(), RelaxStep(), EvaluateStep(), VerifyStep(), LearnStep(),
)
STEPS: tuple[str, ...] = tuple(step.name for step in ROUND)
_BY_NAME = {step.name: step for step in ROUND}


class CampaignMismatchError(ValueError):
    """The config names a campaign already in the store but with a different search."""


class CampaignRun:
    """One campaign in one process: :class:`RunContext` plus the campaign's operations.

    Each step is a method (``generate(round_)`` … ``learn(round_)``) returning a
    :class:`~matloop.loop.step.StepResult`; a step the round already records is skipped.
    """

    def __init__(
        self,
        config: CampaignConfig,
        store: MatloopStore | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.context = RunContext(config, store, progress)
        #: the campaign's lease (:class:`matloop.store.lease.CampaignLease`) while a caller
        #: holds it; once another run takes it over, this run stops writing
        self.lease = None

    # what callers read through the run: the context's
    config = property(lambda self: self.context.config)
    name = property(lambda self: self.context.name)
    store = property(lambda self: self.context.store)
    potential = property(lambda self: self.context.potential)
    hull_scheme = property(lambda self: self.context.hull_scheme)
    oracle = property(lambda self: self.context.oracle)

    def references(self):
        """The campaign's hull references (see :meth:`RunContext.references`)."""
        return self.context.references()

    def reference_ids(self) -> list[str]:
        return self.context.reference_ids()

    def load_seed_crystals(self):
        """Seed crystals inside the chemical space, and the problems met reading them."""
        from matloop.loop.references import load_seed_crystals

        return load_seed_crystals(self.context)

    def generators(self):
        """(config, generator) pairs of the campaign (see :meth:`RunContext.generators`)."""
        return self.context.generators()

    @property
    def maker(self):
        return self.context.maker

    @maker.setter
    def maker(self, maker) -> None:
        self.context.maker = maker

    @property
    def relaxer(self):
        return self.context.relaxer

    @property
    def dft_maker(self):
        return self.context.dft_maker

    @dft_maker.setter
    def dft_maker(self, maker) -> None:
        self.context.dft_maker = maker

    @property
    def progress(self) -> Progress:
        return self.context.progress

    @progress.setter
    def progress(self, progress: Progress) -> None:
        self.context.progress = progress

    # -- the steps ---------------------------------------------------------------------
    def step(self, name: str, round_: int) -> StepResult:
        """Run one step of ``round_`` (skipped when the round already records it)."""
        return run_step(_BY_NAME[name], self.context, round_, last=name == STEPS[-1])

    def generate(self, round_: int) -> StepResult:
        return self.step("generate", round_)

    def screen(self, round_: int) -> StepResult:
        return self.step("screen", round_)

    def relax(self, round_: int) -> StepResult:
        return self.step("relax", round_)

    def evaluate(self, round_: int) -> StepResult:
        return self.step("evaluate", round_)

    def verify(self, round_: int) -> StepResult:
        return self.step("verify", round_)

    def learn(self, round_: int) -> StepResult:
        return self.step("learn", round_)

    # the parts of the verify step a benchmark drives one by one (matloop.loop.verify)
    @property
    def dft_label(self) -> str:
        from matloop.loop.verify import dft_label

        return dft_label(self.context)

    def verify_candidates(self, round_: int, chosen) -> tuple[int, int]:
        from matloop.loop.verify import verify_candidates

        return verify_candidates(self.context, round_, chosen)

    def dft_hull(self, round_: int) -> dict[str, Any]:
        from matloop.loop.verify import dft_hull

        return dft_hull(self.context, round_)

    def run_round(self, round_: int | None = None) -> RoundDoc:
        """All steps in order, without Prefect (tests, notebooks)."""
        doc = self.start_round() if round_ is None else self.context.round(round_)
        for name in STEPS:
            self.step(name, doc.round)
        return self.context.round(doc.round)

    # -- campaign bookkeeping ----------------------------------------------------------
    def ensure_campaign(self) -> CampaignDoc:
        """Create the campaign record, or check a stored one searches the same space."""
        store, name = self.store, self.name
        doc = store.get_campaign(name)
        config = self.config.model_dump(mode="json")
        if doc is None:
            doc = CampaignDoc(campaign=name, config=config, status="created")
        else:
            if problem := campaign_differences(doc.config, config):
                raise CampaignMismatchError(
                    f"campaign {name!r} is already in the store with a different {problem}; "
                    "use a new name to search a different space or with another relaxer"
                )
            doc.config = config
        doc.potential = self.potential
        doc.updated_at = utcnow()
        store.save_campaign(doc)
        return doc

    def prepare_references(self) -> StepResult:
        """Relax elemental ground states and seed crystals once; skip what is stored."""
        from matloop.loop.references import prepare_references

        self.ensure_campaign()
        return prepare_references(self.context)

    def current_round(self) -> RoundDoc | None:
        rounds = self.store.rounds(self.name)
        return rounds[-1] if rounds else None

    def start_round(self) -> RoundDoc:
        """The interrupted round if there is one, else a new round."""
        last = self.current_round()
        if last is not None and last.status != "completed":
            self.progress.message(f"resuming round {last.round} after {last.steps_done}")
            return last
        doc = RoundDoc(campaign=self.name, round=(last.round + 1) if last else 1)
        self.store.save_round(doc)
        return doc

    def lease_lost(self) -> bool:
        """Whether another run has taken this campaign's lease over: the campaign is theirs,
        so this run stops before its next step and leaves the campaign record alone."""
        return bool(getattr(self.lease, "lost", False))

    def stop_reason(self) -> str | None:
        """Why the campaign should not start another round, or None."""
        budget = self.config.budget
        rounds = [r for r in self.store.rounds(self.name) if r.status == "completed"]
        if budget.max_rounds is not None and len(rounds) >= budget.max_rounds:
            return f"reached max_rounds ({budget.max_rounds})"
        if budget.patience is not None and len(rounds) >= budget.patience:
            recent = rounds[-budget.patience :]
            if all(r.metrics.get("hits", 0) == 0 for r in recent):
                return f"no new discovery in the last {budget.patience} round(s)"
        target = self.config.objective.target_hits
        if target is not None:
            found = sum(int(r.metrics.get("hits", 0) or 0) for r in rounds)
            if found >= target:
                return f"target reached: {found} hit(s) (target_hits {target})"
        return None

    def finish(self, reason: str | None) -> None:
        campaign = self.store.get_campaign(self.name)
        campaign.status = "stopped" if reason else "paused"
        campaign.stop_reason = reason
        campaign.updated_at = utcnow()
        self.store.save_campaign(campaign)


#: Relaxer settings that change how relaxations run but not their results: where they run,
#: and whether candidates relax together (the batched path agrees with the per-structure
#: one, see tests/relax/test_batched.py), so a campaign may switch them between runs.
NOT_PHYSICS = ("executor", "executor_settings", "batched", "batch_size")


def campaign_differences(stored: dict[str, Any], config: dict[str, Any]) -> str | None:
    """The first search setting (chemical space, relaxer physics) in which a stored
    campaign's config differs from ``config``, described for an error message; else None."""
    for part in ("chemical_space", "relaxer"):
        if physics_settings(part, stored.get(part)) != physics_settings(part, config[part]):
            return f"{part} ({stored.get(part)} vs {config[part]})"
    return None


def physics_settings(part: str, settings: dict | None) -> dict | None:
    """The settings that change results: where and how relaxations run do not.

    A section is first read back through its config model, so a campaign stored before a
    field existed compares with that field's default (e.g. ``relaxer.replay: null``)
    instead of refusing to resume. Validation is pure (it reads no file), so a stored
    section validates again; one that does not is a stored campaign this version cannot
    read, and says so.
    """
    if not isinstance(settings, dict):
        return settings
    from pydantic import ValidationError

    from matloop.config import ChemicalSpaceConfig, RelaxerConfig

    model = {"relaxer": RelaxerConfig, "chemical_space": ChemicalSpaceConfig}[part]
    try:
        settings = model.model_validate(settings).model_dump(mode="json")
    except ValidationError as err:
        raise CampaignMismatchError(
            f"the stored campaign's {part} no longer validates "
            f"({err.errors()[0]['msg']}); use a new campaign name"
        ) from None
    if part != "relaxer":
        return settings
    return {k: v for k, v in settings.items() if k not in NOT_PHYSICS}
