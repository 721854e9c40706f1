"""The five steps of a round as plain functions over the store (no Prefect here).

``CampaignRun`` holds what a campaign needs in one process (its config, the store, the
generators, the relax maker) and exposes one method per step. Every step reads its inputs
from the store and writes its results back before returning, and records itself in the
round's ``steps_done``, so an interrupted round resumes at the step it had reached and no
candidate is relaxed twice. Prefect tasks in :mod:`matloop.flows.campaign` wrap these
methods; tests call them directly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from matloop.store import (
    CampaignDoc,
    CandidateDoc,
    CandidateStatus,
    EvaluationDoc,
    MatloopStore,
    ReferenceDoc,
    RelaxationDoc,
    RoundDoc,
)
from matloop.store.documents import utcnow

if TYPE_CHECKING:
    from pymatgen.core import Structure

    from matloop.config import CampaignConfig
    from matloop.generators.base import Generator

log = logging.getLogger("matloop")

STEPS = ("generate", "screen", "relax", "evaluate", "learn")
#: Fewer labelled crystals than this and the surrogate is not trusted: selection is random.
MIN_TRAINING_POINTS = 6
#: Seconds between looks at the store while other workers finish relaxations they claimed.
CLAIM_POLL_S = 2.0


class CampaignMismatchError(ValueError):
    """The config names a campaign already in the store but with a different search."""


@dataclass
class Progress:
    """Callbacks the CLI (rich) or Prefect (artifacts) hook into; all optional."""

    message: Callable[[str], None] = lambda text: log.info(text)
    relax_started: Callable[[int], None] = lambda total: None
    relax_advanced: Callable[[int, int, str], None] = lambda done, total, cid: None


@dataclass
class StepResult:
    step: str
    round: int
    counts: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False


def _structure(d: dict) -> Structure:
    from pymatgen.core import Structure

    return Structure.from_dict(d)


def _structure_dict(structure: Structure) -> dict:
    from monty.json import jsanitize

    clean = structure.copy()
    clean.properties = {}
    return jsanitize(clean.as_dict(), strict=False)


class CampaignRun:
    """One campaign in one process: its config, its store, its generators and relaxer."""

    def __init__(
        self,
        config: CampaignConfig,
        store: MatloopStore | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.store = store or MatloopStore(config.store)
        self.progress = progress or Progress()
        self._generators: list[tuple[Any, Generator]] | None = None
        self._maker = None
        self._batched_relaxer = None

    # -- campaign bookkeeping ----------------------------------------------------------------
    def ensure_campaign(self) -> CampaignDoc:
        """Create the campaign record, or check a stored one searches the same space."""
        doc = self.store.get_campaign(self.name)
        config = self.config.model_dump(mode="json")
        if doc is None:
            doc = CampaignDoc(campaign=self.name, config=config, status="created")
        else:
            for part in ("chemical_space", "relaxer"):
                if _physics(part, doc.config.get(part)) != _physics(part, config[part]):
                    raise CampaignMismatchError(
                        f"campaign {self.name!r} is already in the store with a different "
                        f"{part} ({doc.config.get(part)} vs {config[part]}); use a new name "
                        "to search a different space or with another relaxer"
                    )
            doc.config = config
        doc.updated_at = utcnow()
        self.store.save_campaign(doc)
        return doc

    @property
    def potential(self) -> str:
        from matloop.relax.makers import relaxer_potential

        return relaxer_potential(self.config.relaxer.model_dump())

    @property
    def replaying(self) -> bool:
        """A replay campaign: "relaxations" are answered from a labelled table."""
        return self.config.relaxer.potential == "replay"

    @property
    def oracle(self):
        """The replay table (:class:`matloop.relax.replay.ReplayOracle`), parsed once."""
        from matloop.relax.replay import cached_oracle

        table = self.config.relaxer.replay
        return cached_oracle(table.path, (table.energy_column, *table.property_columns),
                             cif_column=table.cif_column, id_column=table.id_column)  # fmt: skip

    def _replay(self, items: list[tuple[str, Structure]]) -> list:
        """Outcomes answered by the replay table, one per (id, structure)."""
        column, oracle = self.config.relaxer.replay.energy_column, self.oracle
        return [oracle.relax_outcome(cid, structure, column) for cid, structure in items]

    @property
    def hull_scheme(self) -> str:
        from matloop.evaluators.stability import hull_scheme

        return hull_scheme(self.potential, "MP2020" if self.corrects_energies else None)

    @property
    def corrects_energies(self) -> bool:
        """Whether entries pass through MP2020 (see ``relax.makers.NEEDS_MP2020_CORRECTION``)."""
        from matloop.relax.makers import needs_mp2020_correction

        return needs_mp2020_correction(self.config.relaxer.potential)

    def rng(self, round_: int, stream: int) -> np.random.Generator:
        """Per-round, per-purpose random streams: a resumed round draws the same numbers."""
        return np.random.default_rng([self.config.seed, round_, stream])

    @property
    def maker(self):
        if self._maker is None:
            from matloop.relax.makers import make_relax_maker

            relaxer = self.config.relaxer
            self._maker = make_relax_maker(
                relaxer.potential,
                fmax=relaxer.fmax,
                steps=relaxer.steps,
                relax_cell=relaxer.relax_cell,
            )
        return self._maker

    @property
    def batched_relaxer(self):
        """The :class:`~matloop.relax.batched.BatchedRelaxer` of ``relaxer.batched`` configs.

        It gives the same structures and energies as :attr:`maker`'s one-job-per-candidate
        path (tests/relax/test_batched.py), so its outcomes carry the same potential name.
        """
        if self._batched_relaxer is None:
            from matloop.relax.batched import BatchedRelaxer

            relaxer = self.config.relaxer
            self._batched_relaxer = BatchedRelaxer(
                fmax=relaxer.fmax,
                steps=relaxer.steps,
                relax_cell=relaxer.relax_cell,
                batch_size=relaxer.batch_size,
            )
        return self._batched_relaxer

    def generators(self) -> list[tuple[Any, Generator]]:
        """(config, generator) pairs, fitted on the seed crystals once per process."""
        if self._generators is None:
            from matloop.generators.base import ChemicalSpace
            from matloop.generators.registry import build_generator, load_generator

            space = ChemicalSpace(
                elements=list(self.config.chemical_space.elements),
                max_atoms=self.config.chemical_space.max_atoms,
            )
            seeds = [
                _structure(ref.structure)
                for ref in self.references()
                if ref.source != "elemental"
            ]
            pairs = []
            for index, gen_config in enumerate(self.config.generators):
                stored = self.store.models(self.name, name=gen_config.name)
                if stored:  # the campaign's own latest version, fine-tuned by earlier rounds
                    generator = self._load_stored_model(stored[-1], space, gen_config.settings)
                elif gen_config.checkpoint:
                    generator = load_generator(gen_config.name, gen_config.checkpoint, space,
                                               gen_config.settings, trust=gen_config.trust)
                else:
                    generator = build_generator(
                        gen_config.name,
                        space,
                        seed=self.config.seed + index,
                        **gen_config.settings,
                    )
                    if seeds:
                        generator.fit(seeds)
                pairs.append((gen_config, generator))
            self._generators = pairs
        return self._generators

    def _load_stored_model(self, doc, space, settings=None) -> Generator:
        """A generator checkpoint from the store, refused if its bytes fail the hash."""
        import tempfile
        from pathlib import Path

        from matloop.generators.registry import load_generator

        data = self.store.load_model_bytes(doc)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"{doc.name}-v{doc.version}.pt"
            path.write_bytes(data)
            # the store checked these bytes against the sha256 it recorded
            generator = load_generator(doc.name, str(path), space, settings, trust=True)
        generator.version = doc.version
        return generator

    def _store_model(self, name: str, generator: Generator, round_: int) -> None:
        """Keep the generator's state after ``update`` as version ``round_`` in the store."""
        import tempfile
        from pathlib import Path

        from matloop.store import ModelDoc

        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "model.pt"
            generator.save(path)
            data = path.read_bytes()
        generator.version = round_
        self.store.save_model(
            ModelDoc(campaign=self.name, name=name, version=round_, kind=generator.name,
                     sha256=""),
            data,
        )

    # -- references ---------------------------------------------------------------------
    def reference_ids(self) -> list[str]:
        campaign = self.store.get_campaign(self.name)
        ids = [f"element:{el}" for el in self.config.chemical_space.elements]
        if campaign is not None:
            ids += campaign.seed_reference_ids
        return ids

    def references(self) -> list[ReferenceDoc]:
        return self.store.references(self.potential, ids=self.reference_ids())

    def prepare_references(self) -> StepResult:
        """Relax elemental ground states and seed crystals once; skip what is stored."""
        from matloop.relax.references import relax_elemental_references
        from matloop.relax.runner import relax_structures

        campaign = self.ensure_campaign()
        result = StepResult("references", 0)
        if campaign.references_ready:
            result.skipped = True
            return result
        elements = list(self.config.chemical_space.elements)
        stored = {ref.reference_id for ref in self.store.references(self.potential)}
        missing = [el for el in elements if f"element:{el}" not in stored]
        if missing and self.replaying:
            # the table holds formation energies: every element sits at 0 eV/atom
            from pymatgen.core import Lattice
            from pymatgen.core import Structure as _Structure

            self.store.save_references([
                ReferenceDoc(
                    reference_id=f"element:{el}", potential=self.potential, formula=el,
                    chemsys=el, energy_per_atom=0.0, source="elemental",
                    structure=_structure_dict(_Structure(Lattice.cubic(3.0), [el], [[0, 0, 0]])),
                )
                for el in missing
            ])
        elif missing:
            self.progress.message(f"loading {self.config.relaxer.potential}, then relaxing "
                                  f"elemental references for {', '.join(missing)}")
            outcomes = relax_elemental_references(missing, self.maker, self.store.job_store())
            self.store.save_references(
                [
                    ReferenceDoc(
                        reference_id=f"element:{el}",
                        potential=self.potential,
                        formula=el,
                        chemsys=el,
                        energy_per_atom=float(out.energy_per_atom),
                        structure=_structure_dict(out.structure),
                        source="elemental",
                    )
                    for el, out in outcomes.items()
                ]
            )
        seeds, problems = self.load_seed_crystals()
        seed_ids = [f"seed:{seed.source}:{seed.source_id}" for seed in seeds]
        todo = [(rid, s) for rid, s in zip(seed_ids, seeds, strict=True) if rid not in stored]
        if todo:
            self.progress.message(f"relaxing {len(todo)} seed crystal(s) as hull references")
            self.progress.relax_started(len(todo))
            failed = 0
            for done, (rid, seed) in enumerate(todo, start=1):
                if self.replaying:
                    (out,) = self._replay([(rid, seed.structure)])
                else:
                    (out,) = relax_structures([(rid, seed.structure)], self.maker,
                                              self.store.job_store())
                self.progress.relax_advanced(done, len(todo), rid)
                if not out.ok:
                    failed += 1
                    problems.append(f"seed {seed.source_id} did not relax: {out.reason}")
                    continue
                self.store.save_references(
                    [
                        ReferenceDoc(
                            reference_id=rid,
                            potential=self.potential,
                            formula=out.structure.composition.reduced_formula,
                            chemsys=out.structure.composition.chemical_system,
                            energy_per_atom=float(out.energy_per_atom),
                            structure=_structure_dict(out.structure),
                            source=seed.source,
                            source_id=seed.source_id,
                            retrieved_at=seed.retrieved_at,
                            properties=seed.properties,
                        )
                    ]
                )
        for problem in problems:
            self.progress.message(f"seed data: {problem}")
        stored = {ref.reference_id for ref in self.store.references(self.potential)}
        campaign = self.store.get_campaign(self.name)
        campaign.seed_reference_ids = [rid for rid in seed_ids if rid in stored]
        from matloop.data import count_by_system

        campaign.seed_systems = count_by_system(
            seed.structure for rid, seed in zip(seed_ids, seeds, strict=True) if rid in stored)
        campaign.references_ready = True
        campaign.hull_scheme = self.hull_scheme
        self.store.save_campaign(campaign)
        result.counts = {
            "elements": len(elements),
            "seeds": len(campaign.seed_reference_ids),
            "problems": len(problems),
        }
        return result

    def load_seed_crystals(self):
        """Seed crystals inside the chemical space, plus a list of problems met reading."""
        from matloop.data import fetch_materials_project, in_chemical_space, read_structures

        space = self.config.chemical_space
        crystals, problems = [], []
        for seed_file in self.config.seed_data.files:
            report = read_structures(
                seed_file.path, seed_file.format, seed_file.cif_column, seed_file.id_column
            )
            problems += report.problems
            crystals += [
                c
                for c in report.crystals
                if in_chemical_space(c.structure, space.elements, seed_file.max_atoms)
            ]
        if self.config.seed_data.materials_project:
            report = fetch_materials_project(space.elements)
            crystals += [
                c for c in report.crystals if in_chemical_space(c.structure, space.elements, 40)
            ]
        for source in self.config.seed_data.optimade:
            from matloop.optimade_source import fetch_optimade

            report = fetch_optimade(source.base_url, source.filter, list(space.elements),
                                    cache_dir=source.cache, refresh=source.refresh,
                                    max_results=source.max_results)  # fmt: skip
            problems += report.problems
            crystals += [c for c in report.crystals
                         if in_chemical_space(c.structure, space.elements, source.max_atoms)]
        return crystals, problems

    # -- rounds ------------------------------------------------------------------------
    def current_round(self) -> RoundDoc | None:
        rounds = self.store.rounds(self.name)
        return rounds[-1] if rounds else None

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

    def start_round(self) -> RoundDoc:
        """The interrupted round if there is one, else a new round."""
        last = self.current_round()
        if last is not None and last.status != "completed":
            self.progress.message(f"resuming round {last.round} after {last.steps_done}")
            return last
        doc = RoundDoc(campaign=self.name, round=(last.round + 1) if last else 1)
        self.store.save_round(doc)
        return doc

    def _round(self, round_: int) -> RoundDoc:
        doc = self.store.get_round(self.name, round_)
        if doc is None:
            raise KeyError(f"round {round_} of {self.name!r} is not in the store")
        return doc

    def _finish_step(self, round_: int, step: str, counts: dict[str, Any]) -> StepResult:
        doc = self._round(round_)
        if step not in doc.steps_done:
            doc.steps_done.append(step)
        doc.metrics.update(counts)
        if step == STEPS[-1]:
            doc.status = "completed"
            doc.completed_at = utcnow()
        self.store.save_round(doc)
        return StepResult(step, round_, counts)

    def _already(self, round_: int, step: str) -> StepResult | None:
        doc = self._round(round_)
        if step in doc.steps_done:
            return StepResult(step, round_, doc.metrics, skipped=True)
        return None

    # -- 1. generate ---------------------------------------------------------------------------
    def generate(self, round_: int) -> StepResult:
        """Ask each generator for its share of proposals; store the new ones as proposed."""
        if done := self._already(round_, "generate"):
            return done
        from matloop.identity import candidate_id

        total = self.config.budget.candidates_per_round
        # Generators start each round from what the store holds (their stored versions and
        # the seeds), never from state left in this process, so a resumed round proposes
        # exactly what an uninterrupted one would have.
        self._generators = None
        pairs = self.generators()
        weights = np.array([cfg.weight for cfg, _ in pairs], dtype=float)
        shares = np.floor(total * weights / weights.sum()).astype(int)
        shares[: total - shares.sum()] += 1
        repeats, by_generator = 0, {}
        # Candidates of this round already stored were written by an attempt of this step
        # that was interrupted: proposed again now, they count as new, not as repeats
        # (otherwise the redo would ask the generators for replacements).
        earlier = {c.candidate_id for c in self.store.candidates(self.name, round_=round_)}
        for index, ((cfg, generator), share) in enumerate(zip(pairs, shares, strict=True)):
            rng = self.rng(round_, 100 + index)
            wanted, new_ids = int(share), []
            for _attempt in range(3):
                if wanted <= len(new_ids):
                    break
                try:
                    structures = generator.sample(wanted - len(new_ids), rng=rng)
                except Exception as err:  # one broken generator must not end the round
                    log.exception("generator %s failed", cfg.name)
                    self.progress.message(f"round {round_}: generator {cfg.name} failed: {err}")
                    break
                docs = [self._candidate_doc(s, round_, generator, candidate_id) for s in structures]
                docs = [d for d in docs if d is not None]
                again = list(dict.fromkeys(
                    d.candidate_id for d in docs if d.candidate_id in earlier
                ))
                earlier -= set(again)
                fresh, existing = self.store.add_candidates(
                    [d for d in docs if d.candidate_id not in again]
                )
                new_ids += again + fresh
                repeats += len(existing)
                if not structures:
                    break
        # counted from the store, so a generate step redone after a crash counts the same
        for cand in self.store.candidates(self.name, round_=round_):
            by_generator[cand.generator] = by_generator.get(cand.generator, 0) + 1
        new_total = sum(by_generator.values())
        self.progress.message(
            f"round {round_}: generated {new_total} new candidate(s) "
            f"({', '.join(f'{k}: {v}' for k, v in by_generator.items())}); "
            f"{repeats} repeat proposal(s) of stored crystals"
        )
        return self._finish_step(
            round_, "generate",
            {"proposed": new_total, "repeat_proposals": repeats, "proposed_by": by_generator},
        )

    def _candidate_doc(self, structure, round_, generator, id_fn) -> CandidateDoc | None:
        try:
            problem = _unanalysable(structure)
            cid = id_fn(structure) if problem is None else None
        except Exception as err:  # a generator produced something pymatgen cannot analyse
            problem = f"{type(err).__name__}: {err}"
        try:
            comp = structure.composition
            props = dict(structure.properties or {})
        except Exception as err:
            log.warning("skipping a proposal from %s that is not a crystal: %s",
                        generator.name, err)
            return None
        history = [{"status": "proposed", "round": round_}]
        extra: dict[str, Any] = {}
        if problem is not None:
            # Kept as a rejected record (its id a hash of its raw form) so the bad proposal
            # shows up with its reason; it never reaches screening or relaxation.
            reason = f"unanalysable proposal: {problem}"
            log.warning("rejected a proposal from %s: %s", generator.name, reason)
            cid = _raw_id(structure)
            history.append({"status": "rejected", "round": round_, "reason": reason})
            extra = {"status": CandidateStatus.rejected, "reason": reason}
        return CandidateDoc(
            **extra,
            campaign=self.name,
            candidate_id=cid,
            round=round_,
            formula=comp.reduced_formula,
            chemsys=comp.chemical_system,
            nsites=len(structure),
            structure=_structure_dict(structure),
            generator=generator.name,
            generator_version=getattr(generator, "version", 0),
            prototype=props.get("prototype") or props.get("template"),
            conditions=props.get("conditions") or {},
            history=history,
        )

    # -- 2. screen -----------------------------------------------------------------------
    def screen(self, round_: int) -> StepResult:
        """Reject invalid and duplicate proposals, then pick what to relax with the
        surrogate and the acquisition function."""
        if done := self._already(round_, "screen"):
            return done
        from matloop.evaluators.novelty import NoveltyIndex
        from matloop.evaluators.validity import screen_structure

        space = self.config.chemical_space
        half_done = {
            c.candidate_id: (CandidateStatus.proposed, "screen redone after an interruption")
            for c in self.store.candidates(self.name, status=CandidateStatus.selected)
            if c.selected_round == round_
        }
        if half_done:  # an earlier attempt of this step stopped midway: choose afresh
            self.store.set_status(self.name, half_done, round_=round_,
                                  fields={cid: {"selected_round": None} for cid in half_done})
        pool = self.store.candidates(self.name, status=CandidateStatus.proposed)
        # rejected earlier in this round (unanalysable at generation, or by that interrupted
        # attempt): not screened again, but counted as this round's
        rejected_before = sum(
            any(h.status == CandidateStatus.rejected and h.round == round_ for h in c.history)
            for c in self.store.candidates(self.name, status=CandidateStatus.rejected)
        )
        rejections: dict[str, tuple[CandidateStatus, str | None]] = {}
        known = NoveltyIndex()
        for ref in self.references():
            if ref.source != "elemental":
                known.add(ref.reference_id, _structure(ref.structure))
        for cand in self.store.candidates(
            self.name,
            status=[CandidateStatus.selected, CandidateStatus.relaxed, CandidateStatus.evaluated,
                    CandidateStatus.relaxing, CandidateStatus.failed],
        ):
            known.add(cand.candidate_id, _structure(cand.structure))
        valid: list[tuple[CandidateDoc, Structure]] = []
        for cand in pool:
            structure = _structure(cand.structure)
            check = screen_structure(
                structure, allowed_elements=space.elements, max_atoms=space.max_atoms
            )
            if not check.valid:
                rejections[cand.candidate_id] = (CandidateStatus.rejected, check.reason)
                continue
            if (match := known.match(structure)) is not None:
                rejections[cand.candidate_id] = (
                    CandidateStatus.rejected, f"duplicate of {match} (StructureMatcher)"
                )
                continue
            known.add(cand.candidate_id, structure)
            valid.append((cand, structure))
        if rejections:
            self.store.set_status(self.name, rejections, round_=round_)

        k = min(self.config.budget.relaxations_per_round, len(valid))
        chosen, predictions, acquired = self._acquire(round_, valid, k)
        updates = {
            valid[i][0].candidate_id: (CandidateStatus.selected, None) for i in chosen
        }
        fields = {
            cand.candidate_id: {
                "predicted_e_above_hull": float(predictions[0][i]),
                "predicted_std": float(predictions[1][i]),
                "acquisition_score": float(predictions[2][i]),
                **({"selected_round": round_} if i in set(chosen) else {}),
            }
            for i, (cand, _) in enumerate(valid)
        }
        self.store.set_status(self.name, updates, round_=round_, fields=fields)
        # the rest stay 'proposed' in the pool for later rounds, with updated predictions
        rest = {
            cand.candidate_id: (CandidateStatus.proposed, "waiting in the pool")
            for i, (cand, _) in enumerate(valid) if i not in set(chosen)
        }
        if rest:
            self.store.set_status(self.name, rest, round_=round_, fields=fields)
        screened, rejected = len(pool) + rejected_before, len(rejections) + rejected_before
        self.progress.message(
            f"round {round_}: screened {screened} — rejected {rejected}, "
            f"selected {len(chosen)} by {acquired['acquisition']}, {len(rest)} left in the pool"
        )
        return self._finish_step(
            round_, "screen",
            {"screened": screened, "rejected": rejected, "selected": len(chosen),
             "pool": len(rest), **acquired},
        )

    def training_set(self) -> tuple[list[Structure], np.ndarray]:
        """Every labelled crystal: evaluated candidates (as proposed, the domain the
        surrogate predicts on) and the hull references, with their e_above_hull."""
        structures, targets = [], []
        evaluations = {e.candidate_id: e for e in self.store.evaluations(self.name)}
        for cand in self.store.candidates(self.name, ids=list(evaluations)):
            structures.append(_structure(cand.structure))
            targets.append(evaluations[cand.candidate_id].e_above_hull)
        reference_hull = self.store.get_campaign(self.name).reference_e_above_hull
        for ref in self.references():
            if ref.reference_id in reference_hull:
                structures.append(_structure(ref.structure))
                targets.append(reference_hull[ref.reference_id])
        return structures, np.asarray(targets, dtype=float)

    def _acquire(self, round_, valid, k):
        """(chosen indices, (mean, std, score) per candidate, the round's acquisition
        metrics: how it chose and, with a surrogate, its spread's calibration factor)."""
        from matloop.evaluators.acquisition import best_k, select

        n = len(valid)
        if n == 0:
            return [], (np.zeros(0), np.zeros(0), np.zeros(0)), {"acquisition": "none"}
        acq = self.config.acquisition
        rng = self.rng(round_, 1)
        structures, targets = self.training_set()
        if len(targets) < MIN_TRAINING_POINTS:
            chosen = select(np.zeros(n), np.ones(n), k, strategy="random", rng=rng)
            nan = np.full(n, np.nan)
            return (list(map(int, chosen)), (nan, nan, nan),
                    {"acquisition": "random (too few labels yet)"})
        from matloop.evaluators.features import featurize
        from matloop.evaluators.surrogate import EnsembleSurrogate

        surrogate = EnsembleSurrogate(n_members=acq.ensemble_size, seed=self.config.seed + round_,
                                      calibrate=acq.calibrate)  # fmt: skip
        surrogate.fit(featurize(structures), targets)
        fitted = {"surrogate_std_scale": surrogate.std_scale}
        features = featurize([s for _, s in valid])
        mean, std = surrogate.predict(features)
        if acq.strategy == "joint":
            score, label = self._joint_scores(mean, std, features, round_)
            chosen = best_k(score, k, tie_break=mean)
            return list(map(int, chosen)), (mean, std, score), {"acquisition": label, **fitted}
        best = float(np.min(targets)) if len(targets) else None
        chosen = select(mean, std, k, strategy=acq.strategy, beta=acq.beta, rng=rng, best=best)
        score = mean - acq.beta * std
        return list(map(int, chosen)), (mean, std, score), {"acquisition": acq.strategy, **fitted}

    def _joint_scores(self, e_mean, e_std, features, round_):
        """``-P(stable) * P(property in window)`` per candidate (see
        :func:`matloop.evaluators.reward.multiobjective_scores`). The property comes from a
        second ensemble fitted on every known value of it: seed crystals' columns and what
        the relaxer reported (a replay table). Too few values: stability alone."""
        from matloop.evaluators.reward import multiobjective_scores

        objective = self.config.objective
        window = objective.property
        p_mean = p_std = None
        if window is not None:
            structures, values = self.property_labels(window.name)
            if len(values) >= MIN_TRAINING_POINTS:
                from matloop.evaluators.features import featurize
                from matloop.evaluators.surrogate import EnsembleSurrogate

                model = EnsembleSurrogate(n_members=self.config.acquisition.ensemble_size,
                                          seed=self.config.seed + round_ + 7919,
                                          calibrate=self.config.acquisition.calibrate)  # fmt: skip
                model.fit(featurize(structures), values)
                p_mean, p_std = model.predict(features)
        score = multiobjective_scores(
            e_mean, e_std, objective.stability_threshold, p_mean, p_std,
            (window.min, window.max) if window is not None else None,
        )
        if window is None:
            return score, "joint (stability only: no property window)"
        if p_mean is None:
            return score, f"joint (stability only: too few {window.name} values yet)"
        return score, f"joint (stability x {window.name} window)"

    def property_labels(self, name: str) -> tuple[list[Structure], np.ndarray]:
        """Every known value of property ``name``: evaluated candidates (as proposed) whose
        relaxer reported it, and seed crystals that carry it."""
        structures, values = [], []
        evaluations = {e.candidate_id: e for e in self.store.evaluations(self.name)
                       if np.isfinite(e.properties.get(name, np.nan))}  # fmt: skip
        for cand in self.store.candidates(self.name, ids=list(evaluations)):
            structures.append(_structure(cand.structure))
            values.append(evaluations[cand.candidate_id].properties[name])
        for ref in self.references():
            value = (ref.properties or {}).get(name)
            if value is not None and np.isfinite(value):
                structures.append(_structure(ref.structure))
                values.append(float(value))
        return structures, np.asarray(values, dtype=float)

    # -- 3. relax ----------------------------------------------------------------------
    def relax(self, round_: int) -> StepResult:
        """Relax every selected candidate, storing each result as soon as it is known."""
        if done := self._already(round_, "relax"):
            return done
        from matloop.relax.runner import recorded_outcome, relax_structures

        # Work is claimed one candidate at a time, atomically, so several workers can share
        # a round and a crashed worker's claims are taken over. Claims this process left
        # behind (a failed task attempt being retried) come first.
        me = self.store.worker_id()
        mine = [
            c for c in self.store.candidates(self.name, status=CandidateStatus.relaxing)
            if c.claimed_by == me
        ]
        total = len(mine) + self.store.count(
            "candidates", {"campaign": self.name, "status": CandidateStatus.selected.value}
        )
        self.progress.relax_started(total)
        relaxer = self.config.relaxer
        executor, batch_size = None, 1
        if relaxer.executor != "local":
            # Dask / FireWorks / jobflow-remote fan a batch out: claim all there is.
            from matloop.relax.executors import make_executor

            executor = make_executor(relaxer.executor,
                                     max_atoms=self.config.chemical_space.max_atoms,
                                     **relaxer.executor_settings)
            batch_size = max(total, 1)
        elif relaxer.batched:  # one claim per batch of candidates relaxed together
            batch_size = relaxer.batch_size
        done_count = 0
        while True:
            batch = []
            while len(batch) < batch_size:
                cand = mine.pop() if mine else self.store.claim_candidate(self.name, round_)
                if cand is None:
                    break
                batch.append(cand)
            if not batch:
                # Nothing left to claim, but other workers may still be relaxing what they
                # took: the step is done once every claim is settled. (A dead worker's claim
                # is taken over by claim_candidate: same host at once, else after the lease.)
                if not self.store.count("candidates", {
                    "campaign": self.name, "status": CandidateStatus.relaxing.value
                }):
                    break
                time.sleep(CLAIM_POLL_S)
                continue
            todo = []
            for cand in batch:
                done_before = self.store.relaxations(self.name, ids=[cand.candidate_id])
                if done_before:  # relaxed, then interrupted before its status was written
                    ok = done_before[0].ok
                    status = CandidateStatus.relaxed if ok else CandidateStatus.failed
                    self.store.set_status(
                        self.name, {cand.candidate_id: (status, done_before[0].reason)},
                        round_=round_,
                    )
                    continue
                structure = _structure(cand.structure)
                out = recorded_outcome(
                    cand.candidate_id, structure, self.store.job_store(), self.potential
                )
                if out is None:
                    todo.append((cand.candidate_id, structure))
                else:
                    self._save_outcome(out, round_)
            if todo:
                job_store = self.store.job_store()
                # renewed while relaxing: a relaxation longer than the lease is not taken over
                renewal = self.store.keep_claims(self.name, [cid for cid, _ in todo])
                if self.replaying:
                    outcomes = self._replay(todo)
                elif relaxer.batched:
                    outcomes = self.batched_relaxer.relax(
                        todo, max_atoms=self.config.chemical_space.max_atoms
                    )
                elif executor is None:
                    outcomes = relax_structures(todo, self.maker, job_store,
                                                max_atoms=self.config.chemical_space.max_atoms)
                else:
                    outcomes = executor.run(todo, self.maker, job_store)
                renewal.stop()
                for out in outcomes:
                    self._save_outcome(out, round_)
                    done_count += 1
                    self.progress.relax_advanced(done_count, max(total, done_count),
                                                 out.candidate_id)
        # counted from the store: includes work done before a crash or by other workers
        results = [r for r in self.store.relaxations(self.name) if r.round == round_]
        relaxed = sum(r.ok for r in results)
        failed = len(results) - relaxed
        self.progress.message(f"round {round_}: relaxed {relaxed}, failed {failed}")
        return self._finish_step(round_, "relax", {"relaxed": relaxed, "failed": failed})

    def _save_outcome(self, out, round_: int) -> None:
        """Store one relaxation outcome, then move its candidate to relaxed or failed."""
        self.store.save_relaxations([
            RelaxationDoc(
                campaign=self.name,
                candidate_id=out.candidate_id,
                ok=out.ok,
                converged=out.converged,
                energy_per_atom=out.energy_per_atom,
                structure=_structure_dict(out.structure) if out.structure is not None else None,
                n_steps=out.n_steps,
                max_force=out.max_force,
                potential=self.potential,
                job_uuid=out.job_uuid,
                wall_s=out.wall_s,
                reason=out.reason,
                round=round_,
                properties=out.properties,
                worker=out.worker,
            )
        ])
        status = CandidateStatus.relaxed if out.ok else CandidateStatus.failed
        self.store.set_status(self.name, {out.candidate_id: (status, out.reason)}, round_=round_)

    # -- 4. evaluate -------------------------------------------------------------------
    def evaluate(self, round_: int) -> StepResult:
        """Hull, novelty and uniqueness for the newly relaxed; refresh e_above_hull of all."""
        if done := self._already(round_, "evaluate"):
            return done
        from matloop.evaluators.evidence import evidence_for_potential, reference_set_version
        from matloop.evaluators.novelty import NoveltyIndex, ReferenceCoverage, judge_novelty
        from matloop.evaluators.stability import EntryRejectedError, compute_hull, make_entry

        threshold = self.config.objective.stability_threshold
        references = self.references()
        relaxations = {r.candidate_id: r for r in self.store.relaxations(self.name) if r.ok}
        candidates = {
            c.candidate_id: c
            for c in self.store.candidates(
                self.name, status=[CandidateStatus.relaxed, CandidateStatus.evaluated]
            )
        }
        ref_entries = [
            make_entry(_structure(r.structure), r.energy_per_atom, r.reference_id,
                       correct=self.corrects_energies)
            for r in references
        ]
        cand_entries, rejected = [], {}
        for cid in candidates:
            if cid not in relaxations:
                continue
            try:
                cand_entries.append(make_entry(
                    _structure(relaxations[cid].structure), relaxations[cid].energy_per_atom, cid,
                    correct=self.corrects_energies,
                ))
            except EntryRejectedError as err:  # e.g. a chemistry MP2020 cannot correct
                rejected[cid] = (CandidateStatus.failed, f"energy correction rejected: {err}")
        if rejected:
            self.store.set_status(self.name, rejected, round_=round_)
            for cid in rejected:
                relaxations.pop(cid)
        hull = compute_hull(ref_entries, cand_entries)
        hull_entries = ref_entries + cand_entries
        version = reference_set_version(
            [(e.entry_id, e.composition.formula.replace(" ", ""), e.uncorrected_energy_per_atom)
             for e in hull_entries],
            self.hull_scheme,
        )
        relaxer = self.config.relaxer
        settings = {"fmax": relaxer.fmax, "steps": relaxer.steps, "relax_cell": relaxer.relax_cell}
        campaign = self.store.get_campaign(self.name)
        campaign.reference_e_above_hull = {
            r.reference_id: hull.e_above_hull[r.reference_id] for r in references
        }
        self.store.save_campaign(campaign)

        known = NoveltyIndex()
        for ref in references:
            known.add(ref.reference_id, _structure(ref.structure))
        coverage = ReferenceCoverage.from_crystals(
            (ref.source, ref.chemsys) for ref in references if ref.source != "elemental"
        )
        previous = {e.candidate_id: e for e in self.store.evaluations(self.name)}
        seen = NoveltyIndex()
        docs, fresh = [], []
        for cid in sorted(candidates, key=lambda c: (candidates[c].round, c)):
            if cid not in relaxations:
                continue
            cand, relax = candidates[cid], relaxations[cid]
            structure = _structure(relax.structure)
            e_hull = float(hull.e_above_hull[cid])
            if cid in previous and previous[cid].round != round_:
                # judged in an earlier round: only its place against the newer hull changes
                # (one evaluated in this round is judged afresh, so a redo after a crash
                # counts exactly as the first attempt would have)
                doc = previous[cid]
                doc.e_above_hull = e_hull
                doc.is_stable = e_hull <= threshold
                doc.hull_version = round_
                doc.formation_energy_per_atom = hull.formation_energy.get(cid)
                doc.updated_at = utcnow()
            else:
                duplicate = known.match(structure)
                earlier = seen.match(structure)
                novelty, novelty_reference = judge_novelty(duplicate, cand.chemsys, coverage)
                doc = EvaluationDoc(
                    campaign=self.name,
                    candidate_id=cid,
                    round=round_,
                    formula=cand.formula,
                    energy_per_atom=relax.energy_per_atom,
                    corrected_energy_per_atom=hull.corrected_energy.get(cid),
                    formation_energy_per_atom=hull.formation_energy.get(cid),
                    e_above_hull=e_hull,
                    e_above_hull_at_round=e_hull,
                    is_stable=e_hull <= threshold,
                    is_novel=novelty == "novel",
                    is_unique=earlier is None,
                    duplicate_of=duplicate or earlier,
                    novelty=novelty.value,
                    novelty_reference=novelty_reference,
                    spacegroup=_spacegroup(structure),
                    hull_scheme=self.hull_scheme,
                    hull_version=round_,
                )
                fresh.append(doc)
            doc.properties = {**doc.properties, **relax.properties}
            # how sure: how the energy was obtained, how well it converged, which hull
            doc.potential = relax.potential or self.potential
            doc.evidence = relax.evidence or evidence_for_potential(doc.potential)
            doc.settings = settings
            doc.converged, doc.max_force, doc.n_steps = (
                relax.converged, relax.max_force, relax.n_steps
            )
            doc.reference_set_version = version
            doc.n_hull_entries = len(hull_entries)
            seen.add(cid, structure)
            docs.append(doc)
        self.store.save_evaluations(docs)
        self.store.set_status(
            self.name,
            {d.candidate_id: (CandidateStatus.evaluated, None) for d in fresh},
            round_=round_,
        )
        hits = [d for d in fresh if d.is_stable and d.is_novel and d.is_unique]
        attempted = self._round(round_).metrics.get("relaxed", 0) + self._round(
            round_
        ).metrics.get("failed", 0)
        counts = {
            "evaluated": len(fresh),
            "stable": sum(d.is_stable for d in fresh),
            "on_hull": sum(d.e_above_hull <= 1e-6 for d in fresh),
            "novel": sum(d.is_novel for d in fresh),
            "unjudged": sum(d.novelty == "unjudged" for d in fresh),
            "unique": sum(d.is_unique for d in fresh),
            "hits": len(hits),
            # stable, unique, not a known crystal, but nothing of its system to compare with
            "stable_novelty_unknown": sum(
                d.is_stable and d.is_unique and d.novelty == "unjudged" for d in fresh
            ),
            "hit_rate": len(hits) / attempted if attempted else 0.0,
            "best_e_above_hull": min((d.e_above_hull for d in fresh), default=None),
            "hull_scheme": self.hull_scheme,
            "reference_set_version": version,
        }
        self.progress.message(
            f"round {round_}: evaluated {len(fresh)} — {counts['stable']} within "
            f"{threshold} eV/atom of the hull, {counts['novel']} novel, {len(hits)} hit(s)"
            + (f", {counts['stable_novelty_unknown']} stable with novelty unknown (no "
               "reference crystal of their chemical system)"
               if counts["stable_novelty_unknown"] else "")
        )
        counts.update(self.verify(round_))
        return self._finish_step(round_, "evaluate", counts)

    # -- 4b. DFT verification (part of evaluate) ---------------------------------------
    @property
    def dft_maker(self):
        """The DFT maker of the verification stage (``config.dft``), or None when off."""
        dft = self.config.dft
        if dft is None:
            return None
        if getattr(self, "_dft_maker", None) is None:
            from matloop.relax.dft import make_dft_maker

            kpoints = tuple(dft.kpoints) if isinstance(dft.kpoints, list) else dft.kpoints
            self._dft_maker = make_dft_maker(
                dft.code, dft.kind, fast=dft.fast, command=dft.command, kpoints=kpoints,
                input_settings=dict(dft.settings),
            )
        return self._dft_maker

    def verify(self, round_: int) -> dict[str, Any]:
        """Re-compute with DFT the ``dft.top_k`` best novel, unique candidates within the
        stability threshold that have no DFT result yet; store each as a ``DftDoc`` beside
        its ML evaluation (DFT energies never enter the ML hull). Returns round metrics."""
        dft = self.config.dft
        if dft is None or dft.top_k == 0:
            return {}
        done = {d.candidate_id for d in self.store.dft_results(self.name)}
        pool = sorted(
            (e for e in self.store.evaluations(self.name)
             # novel or unjudged (not a known crystal): DFT is worth it for both
             if e.is_stable and e.is_unique and (e.is_novel or e.novelty == "unjudged")
             and e.candidate_id not in done),
            key=lambda e: (e.e_above_hull, e.candidate_id),
        )
        relaxations = {
            r.candidate_id: r
            for r in self.store.relaxations(self.name, ids=[e.candidate_id for e in pool])
        }
        chosen = [
            e for e in pool
            if e.candidate_id in relaxations
            and len(relaxations[e.candidate_id].structure["sites"]) <= dft.max_atoms
        ][: dft.top_k]
        ok, failed = self.verify_candidates(round_, chosen)
        if chosen:
            self.progress.message(f"round {round_}: DFT verified {ok}, failed {failed}")
        return {"dft_verified": ok, "dft_failed": failed, **self.dft_hull(round_)}

    def verify_candidates(self, round_: int, chosen: list[EvaluationDoc]) -> tuple[int, int]:
        """Run the DFT maker on each chosen evaluation's ML-relaxed structure and store a
        ``DftDoc`` per candidate; returns (ok, failed). :meth:`dft_hull` then judges them."""
        from matloop.relax.dft import verify_with_dft
        from matloop.store import DftDoc

        dft = self.config.dft
        relaxations = {
            r.candidate_id: r
            for r in self.store.relaxations(self.name, ids=[e.candidate_id for e in chosen])
        }
        ok = failed = 0
        for evaluation in chosen:
            relax = relaxations[evaluation.candidate_id]
            ml_structure = _structure(relax.structure)
            self.progress.message(
                f"round {round_}: DFT ({dft.code} {dft.kind}) of {evaluation.formula} "
                f"{evaluation.candidate_id[:10]}"
            )
            (out,) = verify_with_dft(
                [(evaluation.candidate_id, ml_structure)], self.dft_maker, self.store.job_store()
            )
            volume_ratio = matches = None
            if out.structure is not None and dft.kind == "relax":
                from pymatgen.analysis.structure_matcher import StructureMatcher

                volume_ratio = out.structure.volume / ml_structure.volume
                matches = bool(StructureMatcher().fit(out.structure, ml_structure))
            self.store.save_dft([DftDoc(
                campaign=self.name, candidate_id=evaluation.candidate_id, round=round_,
                ok=out.ok, code=out.code, kind=out.kind, evidence=out.evidence,
                energy_per_atom=out.energy_per_atom, energy=out.energy,
                structure=_structure_dict(out.structure) if out.structure is not None else None,
                converged=out.converged, reason=out.reason, settings=out.settings,
                ml_energy_per_atom=relax.energy_per_atom, ml_e_above_hull=evaluation.e_above_hull,
                ml_potential=relax.potential, volume_ratio=volume_ratio,
                matches_ml_structure=matches, job_uuid=out.job_uuid, wall_s=out.wall_s,
            )])
            ok, failed = ok + out.ok, failed + (not out.ok)
        return ok, failed

    @property
    def dft_label(self) -> str:
        """The ``potential`` of this campaign's DFT references (code, kind, settings hash)."""
        from matloop.evaluators.dft_hull import dft_label_of

        return dft_label_of(self.config.dft.model_dump(mode="json"))

    def dft_hull(self, round_: int) -> dict[str, Any]:
        """Relax with the DFT maker the references the verified candidates need (elements
        and up to ``dft.max_references`` known compounds of each system), build the DFT hull
        and store each verification's ``dft_e_above_hull`` and verdict. Returns metrics."""
        from matloop.evaluators.dft_hull import (
            ReferenceChoice,
            choose_references,
            dft_hull,
            verdict,
        )
        from matloop.relax.dft import verify_with_dft

        dft, label = self.config.dft, self.dft_label
        results = self.store.dft_results(self.name)
        placed = [d for d in results if d.ok and d.structure]
        if not results:
            return {}
        campaign = self.store.get_campaign(self.name)
        ml_hull = campaign.reference_e_above_hull if campaign is not None else {}
        references = {r.reference_id: r for r in self.references()  # elements: always
                      if r.source == "elemental" or len(r.structure["sites"]) <= dft.max_atoms}
        known = [ReferenceChoice(r.reference_id, r.chemsys,
                                 ml_hull.get(r.reference_id, float("inf")),
                                 len(r.structure["sites"]), r.source == "elemental")
                 for r in references.values()]  # fmt: skip
        wanted: dict[str, list[str]] = {}
        for d in placed:
            chemsys = _structure(d.structure).composition.chemical_system
            wanted.setdefault(chemsys, choose_references(chemsys, known, dft.max_references))
        need = list(dict.fromkeys(i for ids in wanted.values() for i in ids))
        have = {r.reference_id for r in self.store.references(label, ids=need)}
        todo = [(i, _structure(references[i].structure)) for i in need if i not in have]
        failed = 0
        if todo:
            self.progress.message(f"round {round_}: DFT of {len(todo)} hull reference(s)")
        for rid, structure in todo:
            (out,) = verify_with_dft([(rid, structure)], self.dft_maker, self.store.job_store())
            if not out.ok:
                failed += 1
                self.progress.message(f"DFT reference {rid} failed: {out.reason}")
                continue
            ref = references[rid]
            self.store.save_references([ReferenceDoc(
                reference_id=rid, potential=label, formula=ref.formula, chemsys=ref.chemsys,
                energy_per_atom=float(out.energy_per_atom),
                structure=_structure_dict(out.structure), source=ref.source,
                source_id=ref.source_id, evidence=out.evidence,
                settings={**out.settings, "wall_s": out.wall_s, "job_uuid": out.job_uuid},
            )])
        dft_refs = self.store.references(label, ids=list(references))
        cell = lambda d: _structure(d.structure).composition.formula.replace(" ", "")  # noqa: E731
        hull = dft_hull([(r.reference_id, cell(r), r.energy_per_atom) for r in dft_refs],
                        [(d.candidate_id, cell(d), d.energy_per_atom) for d in placed],
                        scheme=label)
        threshold = self.config.objective.stability_threshold
        for d in results:
            d.dft_e_above_hull = hull.e_above_hull.get(d.candidate_id)
            d.verdict = verdict(d.kind, ok=d.ok, e_above_hull=d.dft_e_above_hull,
                                threshold=threshold)
            d.dft_hull_version = hull.version
            if d.structure:
                elements = set(_structure(d.structure).symbol_set)
                d.dft_reference_ids = [r.reference_id for r in dft_refs
                                       if set(r.chemsys.split("-")) <= elements]
        self.store.save_dft(results)
        verdicts = [d.verdict for d in results]
        return {"dft_confirmed": verdicts.count("confirmed"),
                "dft_refuted": verdicts.count("refuted"),
                "dft_references": len(dft_refs), "dft_references_failed": failed}

    # -- 5. learn ------------------------------------------------------------------------
    def learn(self, round_: int) -> StepResult:
        """Score the surrogate's predictions for this round, feed rewards back to the
        generators that learn, and close the round."""
        if done := self._already(round_, "learn"):
            return done

        evaluations = [e for e in self.store.evaluations(self.name) if e.round == round_]
        by_id = {c.candidate_id: c for c in self.store.candidates(
            self.name, ids=[e.candidate_id for e in evaluations])}
        counts: dict[str, Any] = {}
        pairs = [
            (by_id[e.candidate_id].predicted_e_above_hull, by_id[e.candidate_id].predicted_std,
             e.e_above_hull_at_round)
            for e in evaluations
            if by_id[e.candidate_id].predicted_e_above_hull is not None
            and np.isfinite(by_id[e.candidate_id].predicted_e_above_hull)
        ]
        if pairs:
            pred, std, true = (np.array(x, dtype=float) for x in zip(*pairs, strict=True))
            counts["surrogate_mae"] = float(np.mean(np.abs(pred - true)))
            # calibration: a calibrated Gaussian spread holds ~68 % within 1 sigma, ~95 % in 2
            counts["surrogate_within_1sigma"] = float(np.mean(np.abs(pred - true) <= std))
            counts["surrogate_within_2sigma"] = float(np.mean(np.abs(pred - true) <= 2 * std))
        feedback, sources = self._feedback(round_, evaluations, by_id)
        updated = []
        for cfg, generator in self.generators():
            own = [f for f, g in zip(feedback, sources, strict=True) if g == generator.name]
            if own:
                counts.setdefault("mean_reward_per_proposal", {})[cfg.name] = float(
                    np.mean([f.reward for f in own])
                )
            mode = getattr(cfg, "update", "finetune")
            if mode == "reinforce":
                # on-policy: only this generator's proposals, the rejected and failed included
                ready = bool(own) and hasattr(generator, "reinforce")
            else:
                ready = bool(feedback) and type(generator).update is not _base_update()
                own = feedback[: len(evaluations)]  # every evaluated candidate, as before
            if mode == "none" or not ready:
                continue
            if any(m.version == round_ for m in self.store.models(self.name, cfg.name)):
                updated.append(generator.name)  # done before an interruption
                continue
            if mode == "reinforce":
                logs = generator.reinforce(own, **getattr(cfg, "update_settings", {}))
                counts.setdefault("reinforce", {})[cfg.name] = logs
            else:
                generator.update(own)
            self._store_model(cfg.name, generator, round_)
            updated.append(generator.name)
        counts["generators_updated"] = updated
        result = self._finish_step(round_, "learn", counts)
        campaign = self.store.get_campaign(self.name)
        campaign.rounds_completed = sum(
            r.status == "completed" for r in self.store.rounds(self.name)
        )
        campaign.status = "running"
        campaign.updated_at = utcnow()
        self.store.save_campaign(campaign)
        return result

    def _feedback(self, round_, evaluations, by_id):
        """Rewards (:func:`matloop.evaluators.reward.reward`) of this round's evaluated
        candidates, then reward-0 feedback for this round's proposals rejected at screening
        and selections whose relaxation failed (the validity term; only the policy-gradient
        update sees those). Returns (feedback, the generator name of each)."""
        from matloop.evaluators.reward import reward
        from matloop.generators.base import Feedback

        objective = self.config.objective
        window = objective.property
        feedback, sources = [], []
        for e in evaluations:
            value = e.properties.get(window.name) if window else None
            feedback.append(Feedback(
                structure=_structure(by_id[e.candidate_id].structure),
                reward=reward(
                    e.e_above_hull,
                    stability_threshold=objective.stability_threshold,
                    # unjudged is not known: the generator is not penalised for exploring
                    novel=e.is_novel or e.novelty == "unjudged",
                    unique=e.is_unique,
                    property_value=value,
                    window=(window.min, window.max) if window else None,
                ),
                properties={"e_above_hull": e.e_above_hull, **e.properties},
            ))
            sources.append(by_id[e.candidate_id].generator)
        invalid = self.store.candidates(
            self.name, status=[CandidateStatus.rejected, CandidateStatus.failed]
        )
        for c in invalid:
            this_round = (c.status == CandidateStatus.rejected and c.round == round_) or (
                c.status == CandidateStatus.failed and c.selected_round == round_
            )
            if this_round:
                feedback.append(Feedback(structure=_structure(c.structure), reward=0.0))
                sources.append(c.generator)
        return feedback, sources

    def run_round(self, round_: int | None = None) -> RoundDoc:
        """All five steps in order, without Prefect (tests, notebooks)."""
        doc = self.start_round() if round_ is None else self._round(round_)
        for step in STEPS:
            getattr(self, step)(doc.round)
        return self._round(doc.round)

    def finish(self, reason: str | None) -> None:
        campaign = self.store.get_campaign(self.name)
        campaign.status = "stopped" if reason else "paused"
        campaign.stop_reason = reason
        campaign.updated_at = utcnow()
        self.store.save_campaign(campaign)


#: Relaxer settings that change how relaxations run but not their results: where they run,
#: and whether candidates relax together (the batched path agrees with the per-structure
#: one, see tests/relax/test_batched.py), so a campaign may switch them between runs.
_NOT_PHYSICS = ("executor", "executor_settings", "batched", "batch_size")


def _physics(part: str, settings: dict | None) -> dict | None:
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
    return {k: v for k, v in settings.items() if k not in _NOT_PHYSICS}


def _unanalysable(structure: Structure) -> str | None:
    """Why a proposal is too broken to fingerprint, or None: the id's symmetry and
    neighbour searches fail, or never finish, on non-finite or degenerate cells."""
    n = len(structure)
    if n == 0:
        return "empty structure"
    if n > 2000:
        return f"{n} atoms"
    matrix = np.asarray(structure.lattice.matrix, dtype=float)
    if not (np.all(np.isfinite(matrix)) and np.all(np.isfinite(structure.frac_coords))):
        return "non-finite lattice or coordinates"
    volume = float(abs(np.linalg.det(matrix)))
    if volume / n > 1e6:
        return f"absurd cell: {volume / n:.3g} Å³ per atom"
    a, b, c = np.asarray(structure.lattice.lll_matrix, dtype=float)
    areas = [np.linalg.norm(np.cross(b, c)), np.linalg.norm(np.cross(c, a)),
             np.linalg.norm(np.cross(a, b))]
    spacing = volume / max(areas) if max(areas) > 0 else 0.0
    if not np.isfinite(spacing) or spacing < 0.1:
        return f"degenerate cell: lattice planes {spacing:.2g} Å apart"
    return None


def _raw_id(structure: Structure) -> str:
    """An id for a proposal that cannot be fingerprinted: a hash of its raw form."""
    import hashlib
    import json

    raw = json.dumps(_structure_dict(structure), sort_keys=True, default=str)
    formula = structure.composition.reduced_formula or "empty"
    return f"{formula}-invalid-{hashlib.sha256(raw.encode()).hexdigest()[:12]}"


def _base_update():
    from matloop.generators.base import Generator

    return Generator.update


def _spacegroup(structure: Structure) -> str | None:
    try:
        from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

        return SpacegroupAnalyzer(structure, symprec=0.1).get_space_group_symbol()
    except Exception:
        return None
