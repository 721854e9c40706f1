"""A campaign's report: key numbers, and one self-contained HTML page (plus ``report.md``).

:func:`campaign_summary` gathers the numbers that say what a campaign did and how sure it is
(used by ``matloop status``, the Prefect artifacts and both reports). :func:`write_reports`
writes ``report.html`` — plots embedded as data URIs, CIFs linked relatively (``cifs/ID.cif``),
so the export folder can be zipped, mailed and opened anywhere — and ``report.md``.
"""

from __future__ import annotations

import base64
import html
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matloop.evaluators.evidence import (
    MEANING,
    count_by_evidence,
    evidence_for_potential,
    is_confirmed,
    strongest_evidence,
)

if TYPE_CHECKING:
    from matloop.store import MatloopStore

#: Rows in the best-candidates tables.
BEST_ROWS = 20


def campaign_summary(
    store: MatloopStore,
    campaign: str,
    *,
    references: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The key numbers of a campaign, JSON-ready.

    A *discovery* (hit) is a novel, unique candidate within the stability threshold of the
    current hull. ``discoveries_by_evidence`` splits them by how their energy was obtained;
    only ``dft-relaxed`` ones count as ``confirmed``, the rest are ``leads``.

    ``references`` (the rows of ``references.csv``) let the summary name the hull they make
    and check it against the one the stored evaluations were judged against; without them
    (``matloop status``, fast) the stored version is reported.
    """
    from matloop.results.rows import NEAR_STABLE, reference_version_of

    doc = store.get_campaign(campaign)
    if doc is None:
        raise KeyError(f"no campaign named {campaign!r} in the store")
    config = doc.config
    threshold = float(config.get("objective", {}).get("stability_threshold", NEAR_STABLE))
    # one read of each, only the fields summed here (no structures): fast at 100k candidates
    evaluations = _read(store, "evaluations", campaign, SUMMARY_EVALUATION_FIELDS)
    relaxations = _read(store, "relaxations", campaign, SUMMARY_RELAXATION_FIELDS)
    relax_by_id = {r.candidate_id: r for r in relaxations}
    counts = store.status_counts(campaign)
    rounds = store.rounds(campaign)

    # DFT verifications (kept beside the ML evaluations) raise a candidate's evidence level
    dft = {d.candidate_id: d for d in store.dft_results(campaign) if d.ok}

    def level(ev) -> str:
        relax = relax_by_id.get(ev.candidate_id)
        ml = ev.evidence or (relax.evidence if relax else None) or evidence_for_potential(
            relax.potential if relax else "")
        check = dft.get(ev.candidate_id)
        return strongest_evidence(ml, check.evidence if check else None)

    hits = [e for e in evaluations if e.is_stable and e.is_novel and e.is_unique]
    by_evidence = count_by_evidence(level(e) for e in hits)
    # confirmed: DFT-relaxed AND within the threshold on a DFT hull of the same settings
    confirmed = sum(_confirmed(e, dft.get(e.candidate_id)) for e in hits)
    verdicts = [d.verdict for d in dft.values()]
    novelty = {key: sum(e.novelty == key for e in evaluations)
               for key in ("novel", "known", "unjudged")}
    novelty_sets = sorted({s for e in evaluations for s in e.novelty_reference.get("sets", [])})
    stored = sorted({e.reference_set_version for e in evaluations if e.reference_set_version})
    if references is not None:
        version = reference_version_of(references, doc.hull_scheme) if references else None
        n_entries = len(references)
        n_refs = sum(r.get("kind") == "reference" for r in references)
    else:
        version = stored[-1] if len(stored) == 1 else None
        n_entries = max((e.n_hull_entries or 0 for e in evaluations), default=0) or None
        n_refs = len(config.get("chemical_space", {}).get("elements", [])) + len(
            doc.seed_reference_ids)
    ok = [r for r in relaxations if r.ok]
    forces = [r.max_force for r in ok if r.max_force is not None]
    best = min(evaluations, key=lambda e: e.e_above_hull, default=None)
    potential = next((r.potential for r in relaxations if r.potential), None)
    return {
        "campaign": campaign,
        "elements": list(config.get("chemical_space", {}).get("elements", [])),
        "max_atoms": config.get("chemical_space", {}).get("max_atoms"),
        "status": doc.status,
        "stop_reason": doc.stop_reason,
        "rounds_completed": sum(r.status == "completed" for r in rounds),
        "rounds": len(rounds),
        "proposed": sum(counts.values()),
        "rejected": counts.get("rejected", 0),
        "relaxations": len(relaxations),
        "relaxed": len(ok),
        "failed": len(relaxations) - len(ok),
        "evaluated": len(evaluations),
        "stable": sum(e.is_stable for e in evaluations),
        "on_hull": sum(e.e_above_hull <= 1e-6 for e in evaluations),
        "discoveries": len(hits),
        "hit_rate": len(hits) / len(relaxations) if relaxations else 0.0,
        # stable, unique, no match, but no reference crystal of its system: not a discovery
        "stable_novelty_unknown": sum(
            e.is_stable and e.is_unique and e.novelty == "unjudged" for e in evaluations
        ),
        "novelty": novelty,
        "novelty_reference_sets": novelty_sets,
        "discoveries_by_evidence": by_evidence,
        "evaluated_by_evidence": count_by_evidence(level(e) for e in evaluations),
        "confirmed": confirmed,
        "leads": len(hits) - confirmed,
        "best": None if best is None else {
            "candidate_id": best.candidate_id, "formula": best.formula,
            "e_above_hull": best.e_above_hull, "evidence": level(best),
        },
        "stability_threshold": threshold,
        "potential": potential,
        "relaxer_settings": {k: v for k, v in config.get("relaxer", {}).items()
                             if k != "potential"},
        "converged": sum(bool(r.converged) for r in ok),
        "median_max_force": statistics.median(forces) if forces else None,
        "worst_max_force": max(forces) if forces else None,
        "hull_scheme": doc.hull_scheme,
        "reference_set_version": version,
        "n_hull_entries": n_entries,
        "n_references": n_refs,
        "stored_reference_set_versions": stored,
        "hull_stale": references is not None and bool(stored) and stored != [version],
        "seed_crystals": len(doc.seed_reference_ids),
        "seed_coverage": seed_coverage_of(doc),
        "dft_verified": len(dft),
        "dft_confirmed": verdicts.count("confirmed"),
        "dft_refuted": verdicts.count("refuted"),
    }


#: The fields of evaluations and relaxations :func:`campaign_summary` reads.
SUMMARY_EVALUATION_FIELDS = (
    "candidate_id", "formula", "e_above_hull", "is_stable", "is_novel", "is_unique", "novelty",
    "novelty_reference", "evidence", "reference_set_version", "n_hull_entries",
)
SUMMARY_RELAXATION_FIELDS = (
    "candidate_id", "ok", "potential", "evidence", "converged", "max_force",
)


def _read(store: MatloopStore, name: str, campaign: str, fields: Sequence[str]) -> list[Any]:
    """The campaign's documents of ``name`` with only ``fields``, read as attributes (the
    summary's code reads them as it reads whole documents)."""
    from types import SimpleNamespace

    return [SimpleNamespace(**row)
            for row in store.project(name, {"campaign": campaign}, fields,
                                     sort={"candidate_id": 1})]


def _confirmed(evaluation, check) -> bool:
    """Confirmed: a DFT verification on a DFT hull says so, or the campaign's own relaxer
    was DFT (its hull then is a DFT hull) and the candidate is stable on it."""
    if check is not None:
        return check.verdict == "confirmed"
    return is_confirmed(evaluation.evidence) and evaluation.is_stable


def seed_coverage_of(doc) -> dict[str, Any] | None:
    """:func:`matloop.data.seed_coverage` of a stored campaign: seed crystals per chemical
    system and the warning when a system has none (None before references are ready, or
    for a campaign stored before seed systems were recorded). Without any seed data the
    report says so on its own."""
    from matloop.data import seed_coverage

    seed = doc.config.get("seed_data") or {}
    if not doc.references_ready or doc.seed_systems is None:
        return None
    coverage = seed_coverage(doc.seed_systems, list(doc.config["chemical_space"]["elements"]))
    if not (seed.get("files") or seed.get("materials_project") or seed.get("optimade")):
        coverage["warning"] = None  # "no seed data" is reported instead
    return coverage


def _seed_warning(s: Mapping[str, Any]) -> str | None:
    return (s.get("seed_coverage") or {}).get("warning")


# -- markdown ------------------------------------------------------------------------------
def _evidence_sentence(summary: Mapping[str, Any]) -> str:
    n, confirmed = summary["discoveries"], summary["confirmed"]
    parts = [f"{count} {level}" for level, count in summary["discoveries_by_evidence"].items()
             if count]
    text = f"{n} discover{'y' if n == 1 else 'ies'}"
    if parts:
        text += " (" + ", ".join(parts) + ")"
    if confirmed:
        text += (f": {confirmed} confirmed on a DFT hull, {summary['leads']} lead(s)")
    elif n:
        text += ": none confirmed — every one is a lead for DFT, not a confirmed compound"
    if summary.get("dft_refuted"):
        text += f"; {summary['dft_refuted']} refuted by DFT (above the DFT hull)"
    if unknown := summary.get("stable_novelty_unknown"):
        text += (f"; {unknown} stable with novelty unknown (no reference crystal of their "
                 "chemical system)")
    return text + "."


def novelty_sentence(summary: Mapping[str, Any]) -> str:
    """What novelty was judged against, and how to judge it when it was not."""
    sets = summary.get("novelty_reference_sets") or []
    if sets:
        return (f"Novelty is judged against {', '.join(sets)} ({summary['seed_crystals']} "
                "known crystal(s) of the space); a candidate whose chemical system holds none "
                "of them is 'unjudged', never 'novel'.")
    return ("No reference crystals: novelty is unknown ('unjudged') for every candidate. "
            "Add a reference: seed_data.files (CSV/extxyz), seed_data.materials_project "
            "(MP_API_KEY) or seed_data.optimade ({base_url, filter}).")


def markdown_report(
    summary: Mapping[str, Any],
    candidates: Sequence[Mapping[str, Any]],
    rounds: Sequence[Mapping[str, Any]],
    n_cifs: int,
    figures: Mapping[str, str],
) -> str:
    from matloop.results.rows import NEAR_STABLE

    s = summary
    best = _best(candidates)
    lines = [
        f"# Campaign {s['campaign']}",
        "",
        f"Chemical space: {'-'.join(s['elements'])} (≤ {s['max_atoms']} atoms per cell). "
        f"Status: {s['status']}" + (f" ({s['stop_reason']})" if s["stop_reason"] else "") + ".",
        "",
        f"**{_evidence_sentence(s)}** Energies: {s['potential']} relaxations "
        f"({s['converged']} of {s['relaxed']} converged). Hull: {s['hull_scheme']}, "
        f"{s['n_hull_entries']} entries, reference set `{s['reference_set_version']}` "
        "(`references.csv` rebuilds it with pymatgen alone).",
        "",
        novelty_sentence(s) if s.get("novelty_reference_sets") else
        f"**{novelty_sentence(s)}**",
        *(["", f"**Warning: {_seed_warning(s)}.**"] if _seed_warning(s) else []),
        "",
        "## Rounds",
        "",
        "| round | proposed | rejected | relaxed | failed | stable | novel "
        "| stable, novelty unknown | hits | hit rate |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rounds:
        lines.append(
            f"| {r['round']} | {r.get('proposed', 0)} | {r.get('rejected', 0)} | "
            f"{r.get('relaxed', 0)} | {r.get('failed', 0)} | {r.get('stable', 0)} | "
            f"{r.get('novel', 0)} | {r.get('stable_novelty_unknown', 0)} | "
            f"{r.get('hits', 0)} | {(r.get('hit_rate') or 0):.0%} |"
        )
    lines += ["", *diagnostics_markdown(rounds)]
    lines += [
        "",
        "## Best candidates",
        "",
        "| candidate | formula | round relaxed | space group | E above hull (eV/atom) "
        "| evidence | novel | unique |",
        "|---|---|---:|---|---:|---|---|---|",
    ]
    for c in best:
        cif = f"[{c['candidate_id']}](cifs/{c['candidate_id']}.cif)" if (
            c["e_above_hull"] <= NEAR_STABLE) else c["candidate_id"]
        lines.append(
            f"| {cif} | {c['formula']} | {c.get('selected_round') or c['round']} | "
            f"{c.get('spacegroup') or ''} | {c['e_above_hull']:.3f} | "
            f"{_row_evidence(c)} | {_novelty_cell(c)} | {c.get('is_unique')} |"
        )
    lines += ["", f"{n_cifs} CIF(s) of stable or nearly stable crystals in `cifs/`.", ""]
    lines += [f"![{p}]({p})" for p in figures.values()]
    return "\n".join(lines) + "\n"


def _novelty_cell(c: Mapping[str, Any]) -> str:
    """novel / known (= its match) / unjudged, with a DFT verdict when there is one."""
    novelty = c.get("novelty") or ("novel" if c.get("is_novel") else "known")
    text = novelty
    if novelty == "known" and c.get("duplicate_of"):
        text += f" (= {c['duplicate_of']})"
    if c.get("dft_verdict"):
        text += f"; DFT: {c['dft_verdict']}"
        if c.get("dft_energy_converged") in (True, "True"):  # stopped at MAX_ITER, settled
            text += " (energy-converged)"
    return html.escape(text)


def _row_evidence(c: Mapping[str, Any]) -> str:
    """A candidates.csv row's strongest evidence: its ML evaluation or a DFT verification."""
    return strongest_evidence(c.get("evidence"), c.get("dft_evidence") if c.get("dft_ok")
                              else None)


def _best(candidates: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    evaluated = [c for c in candidates if c.get("e_above_hull") not in (None, "")]
    return sorted(evaluated, key=lambda c: c["e_above_hull"])[:BEST_ROWS]


# -- HTML ----------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI","DejaVu Sans",sans-serif;margin:0;
 background:#f5f6f8;color:#1d2330;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:18px 28px 40px}
h1{margin:0 0 4px;font-size:26px}h2{font-size:19px;margin:28px 0 10px;
 border-bottom:2px solid #dfe3ea;padding-bottom:4px}
.sub{color:#5b6577;margin-bottom:14px}
.banner{border-radius:8px;padding:10px 14px;margin:12px 0;font-size:15px}
.lead{background:#fff6e0;border:1px solid #f0c36d}.ok{background:#e8f6ec;border:1px solid #8fd19e}
.warn{background:#fdecea;border:1px solid #f5a19a}
.cards{display:grid;grid-template-columns:repeat(6,1fr);gap:10px;margin:14px 0}
.card{background:#fff;border:1px solid #dfe3ea;border-radius:8px;padding:10px 12px}
.card .v{font-size:24px;font-weight:650}.card .k{color:#5b6577;font-size:12.5px}
table{border-collapse:collapse;background:#fff;font-size:13.5px;width:100%}
th,td{border:1px solid #dfe3ea;padding:4px 8px;text-align:left}
th{background:#eef1f5;font-weight:600}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
tr.hit td{background:#f1faf3}
.tag{display:inline-block;border-radius:10px;padding:0 8px;font-size:12px;white-space:nowrap}
.tag.mlip-relaxed{background:#fff0cc}.tag.dft-single-point{background:#dcecff}
.tag.dft-relaxed{background:#cdeed6}
.fig{background:#fff;border:1px solid #dfe3ea;border-radius:8px;padding:8px;text-align:center}
.fig img{max-width:100%;height:auto}
.row{display:grid;grid-template-columns:1fr 1fr;gap:14px;align-items:start}
.id{white-space:nowrap;font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12.5px}
code{background:#eef1f5;padding:1px 4px;border-radius:4px;font-size:12.5px}
pre{background:#fff;border:1px solid #dfe3ea;border-radius:8px;padding:10px;font-size:12.5px;
 overflow-x:auto}
.muted{color:#5b6577;font-size:13px}footer{color:#8a93a3;font-size:12px;margin-top:30px}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _img(folder: Path, relative: str, alt: str) -> str:
    data = base64.b64encode((folder / relative).read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


#: Header of the loop-diagnostics table (markdown report and Prefect artifact).
DIAGNOSTIC_HEADERS = ["round", "allocation", "proposals asked (per generator)",
                      "hit rate per generator (per relaxation)", "repeats",
                      "surrogate MAE", "bias", "within 1σ / 2σ"]


def diagnostic_table_rows(rounds: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """One row of loop diagnostics per round, from round rows (``results.rows.round_rows``,
    whose per-generator values are already ``name=value; ...`` cells)."""
    from matloop.results.rows import diagnostic_cells

    out = []
    for r in rounds:
        cells = {**r, **diagnostic_cells(r)} if isinstance(r.get("allocation"), dict) else r
        share = cells.get("duplicate_share")
        out.append([
            str(r["round"]), str(cells.get("allocation_strategy") or ""),
            str(cells.get("allocation") or ""),
            (f"{cells.get('hit_rate_by_generator') or ''} "
             f"(hits {cells.get('hits_by_generator') or ''})")
            if cells.get("hits_by_generator") else "",
            ("" if share in (None, "") else f"{float(share):.0%}") + _skipped(r),
            _num(cells.get("surrogate_mae")), _num(cells.get("surrogate_bias")),
            _calibration(cells),
        ])
    return out


def _skipped(round_row: Mapping[str, Any]) -> str:
    """How many known crystals the generators passed over (never counted as repeats)."""
    skipped = round_row.get("known_skipped_by_generator")  # a dict, or its "a=1; b=2" cell
    if isinstance(skipped, str):
        skipped = dict(part.split("=") for part in skipped.split("; ") if "=" in part)
    n = sum(int(v) for v in skipped.values()) if isinstance(skipped, dict) else 0
    return f" ({n} known skipped)" if n else ""


def diagnostics_markdown(rounds: Sequence[Mapping[str, Any]]) -> list[str]:
    """The report's "Loop diagnostics" section (markdown lines)."""
    rows = diagnostic_table_rows(rounds)
    lines = ["## Loop diagnostics", "",
             "| " + " | ".join(DIAGNOSTIC_HEADERS) + " |",
             "|" + "---|" * len(DIAGNOSTIC_HEADERS)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", "Repeats: share of the round's proposals that were crystals already stored "
              "or rejected at screening as duplicates. Surrogate: predicted vs relaxed energy "
              "above the hull of the round's relaxations (bias > 0: predicted too high)."]
    return lines


def _calibration(round_metrics: dict) -> str:
    """'62% / 91%' from a round's surrogate calibration metrics, '' when not measured."""
    one, two = (round_metrics.get(f"surrogate_within_{k}sigma") for k in (1, 2))
    if one is None:
        return ""
    return f"{one:.0%}" + ("" if two is None else f" / {two:.0%}")


def _num(value: Any, fmt: str = "{:.3f}") -> str:
    if value in (None, ""):
        return ""
    try:
        return fmt.format(float(value))
    except (TypeError, ValueError):
        return _e(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: set[int],
           row_classes: Sequence[str] | None = None) -> str:
    head = "".join(f'<th class="n">{_e(h)}</th>' if i in numeric else f"<th>{_e(h)}</th>"
                   for i, h in enumerate(headers))
    body = []
    for index, row in enumerate(rows):
        cls = f' class="{row_classes[index]}"' if row_classes and row_classes[index] else ""
        cells = "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>"
                        for i, c in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def html_report(
    summary: Mapping[str, Any],
    candidates: Sequence[Mapping[str, Any]],
    rounds: Sequence[Mapping[str, Any]],
    references: Sequence[Mapping[str, Any]],
    folder: Path,
    figures: Mapping[str, str],
    *,
    generated_at: str = "",
) -> str:
    """The report page as one HTML string (figures read from ``folder`` and embedded)."""
    from matloop.results.rows import NEAR_STABLE

    s = summary
    space = "–".join(s["elements"])
    status = s["status"] + (f" ({s['stop_reason']})" if s["stop_reason"] else "")
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>matloop — {_e(s['campaign'])}</title>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<style>{_CSS}</style></head><body><main>",
        f"<h1>Campaign {_e(s['campaign'])}</h1>",
        f"<div class='sub'>{_e(space)} · up to {_e(s['max_atoms'])} atoms per cell · "
        f"{s['rounds_completed']} round(s) completed · status: {_e(status)}"
        + (f" · report written {_e(generated_at)}" if generated_at else "") + "</div>",
    ]
    # how sure: the banner every reader sees first
    if s["confirmed"]:
        parts.append(f"<div class='banner ok'>{_e(_evidence_sentence(s))}</div>")
    else:
        parts.append(
            f"<div class='banner lead'><b>{_e(_evidence_sentence(s))}</b> Every energy here "
            f"comes from an ML potential ({_e(s['potential'])}).</div>")
    if s["hull_stale"]:
        parts.append(
            "<div class='banner warn'>The stored evaluations were judged against hull "
            f"{_e(', '.join(s['stored_reference_set_versions']))}, but the exported references "
            f"make hull {_e(s['reference_set_version'])}: a round stopped after relaxing and "
            "before evaluating. Run the campaign again to finish it.</div>")
    if not s.get("novelty_reference_sets") or s.get("stable_novelty_unknown"):
        parts.append(f"<div class='banner warn'><b>Novelty:</b> {_e(novelty_sentence(s))}"
                     + (f" {s['stable_novelty_unknown']} stable candidate(s) have novelty "
                        "unknown." if s.get("stable_novelty_unknown") else "") + "</div>")
    if _seed_warning(s):
        parts.append(f"<div class='banner warn'><b>Seed coverage:</b> {_e(_seed_warning(s))}"
                     ".</div>")
    best = s["best"]
    cards = [
        (s["rounds_completed"], "rounds completed"),
        (s["proposed"], "candidates proposed"),
        (f"{s['relaxed']}<small style='font-size:14px;color:#9a4'> / {s['failed']} failed"
         "</small>", "relaxed"),
        (s["discoveries"], f"discoveries (≤ {s['stability_threshold']} eV/atom, novel)"),
        (s.get("stable_novelty_unknown", 0), "stable, novelty unknown"),
        (s["confirmed"], "confirmed on a DFT hull"),
        (s.get("dft_refuted", 0), "refuted by DFT"),
        (_num(best["e_above_hull"]) if best else "–",
         f"best E above hull (eV/atom){': ' + _e(best['formula']) if best else ''}"),
    ]
    parts.append("<div class='cards'>" + "".join(
        f"<div class='card'><div class='v'>{v}</div><div class='k'>{k}</div></div>"
        for v, k in cards) + "</div>")

    # -- evidence
    parts.append("<h2>How sure</h2>")
    ev_rows = [
        [f"<span class='tag {_e(level)}'>{_e(level)}</span>", _e(MEANING.get(level, "")),
         str(s["evaluated_by_evidence"].get(level, 0)),
         str(s["discoveries_by_evidence"].get(level, 0))]
        for level in s["evaluated_by_evidence"]
    ]
    settings = ", ".join(f"{k} {v}" for k, v in s["relaxer_settings"].items())
    parts.append("<div class='row'><div>" + _table(
        ["evidence level", "meaning", "evaluated", "discoveries"], ev_rows, {2, 3}) + "</div>")
    parts.append(
        "<div class='muted'>"
        f"<p><b>Energies:</b> {_e(s['potential'])} relaxations ({_e(settings)}); "
        f"{s['converged']} of {s['relaxed']} converged; final max force median "
        f"{_num(s['median_max_force'])} eV/Å, worst {_num(s['worst_max_force'])} eV/Å.</p>"
        f"<p><b>Hull:</b> {_e(s['hull_scheme'])}, {s['n_hull_entries']} entries "
        f"({s['n_references']} references, the rest the campaign's evaluated candidates); "
        f"reference set <code>{_e(s['reference_set_version'])}</code>. "
        "<a href='references.csv'>references.csv</a> holds every entry with raw and "
        "corrected energies; the hull and every E above hull rebuild from it with pymatgen "
        "alone:</p></div></div>")
    parts.append(
        "<pre>import csv\nfrom pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram\n"
        "from pymatgen.core import Composition\n"
        "rows = [r for r in csv.DictReader(open(\"references.csv\")) "
        "if r[\"hull\"] == \"ml\"]  # or \"dft\": the DFT verifications' hull\n"
        "entries = [PDEntry(Composition(r[\"formula\"]), float(r[\"corrected_energy\"]), "
        "name=r[\"entry_id\"]) for r in rows]\n"
        "pd = PhaseDiagram(entries)\n"
        "e_hull = {e.name: pd.get_e_above_hull(e) for e in entries}</pre>")

    # -- rounds
    parts.append("<h2>Rounds</h2><div class='row'><div>")
    round_rows = [
        [str(r["round"]) + ("" if r.get("status") == "completed" else "*"),
         str(r.get("proposed", 0)), str(r.get("rejected", 0)), str(r.get("relaxed", 0)),
         str(r.get("failed", 0)), str(r.get("stable", 0)), str(r.get("novel", 0)),
         str(r.get("stable_novelty_unknown", 0)), str(r.get("hits", 0)),
         f"{(r.get('hit_rate') or 0):.0%}",
         _num(r.get("best_e_above_hull")), _num(r.get("surrogate_mae")),
         _calibration(r)]
        for r in rounds
    ]
    parts.append(_table(
        ["round", "proposed", "rejected", "relaxed", "failed", "stable", "novel",
         "stable, novelty unknown", "hits", "hit rate", "best E hull", "surrogate MAE",
         "within 1σ / 2σ"], round_rows, set(range(13))))
    parts.append("<p class='muted'>stable: within the threshold of the hull when evaluated; "
                 "hits: stable, novel and unique; stable, novelty unknown: stable and unique "
                 "but no reference crystal of its chemical system to judge it by; * round not "
                 "finished. Within 1σ / 2σ: share "
                 "of the round's relaxed candidates whose e_above_hull fell within one / two "
                 "predicted standard deviations of the surrogate's prediction (calibrated: "
                 "about 68 % / 95 %).</p></div>")
    if "hit_rate" in figures:
        parts.append(f"<div class='fig'>{_img(folder, figures['hit_rate'], 'hit rate')}</div>")
    parts.append("</div>")
    parts.append("<h3>Loop diagnostics</h3>")
    parts.append(_table(DIAGNOSTIC_HEADERS,
                        [[_e(c) for c in row] for row in diagnostic_table_rows(rounds)],
                        {0, 4, 5, 6}))
    parts.append("<p class='muted'>Allocation: fixed weights, or the bandit over generators "
                 "(thompson). Repeats: share of the round's proposals that were crystals "
                 "already stored or rejected as duplicates. Surrogate: predicted vs relaxed "
                 "energy above the hull of the round's relaxations.</p>")

    # -- hull and latent maps
    if "hull" in figures:
        on_hull = sorted(
            (r for r in references if float(r["e_above_hull"]) <= 1e-6),
            key=lambda r: float(r.get("formation_energy_per_atom") or 0.0))
        hull_rows = [
            [_e(r["reduced_formula"]), f"<span class='id'>{_e(r['entry_id'])}</span>",
             _num(r.get("formation_energy_per_atom")), _e(r["source"])]
            for r in on_hull
        ]
        parts.append("<h2>Convex hull</h2><div class='row'><div class='fig'>"
                     f"{_img(folder, figures['hull'], 'convex hull')}</div><div>"
                     "<p class='muted'>Black squares: references (elements and known "
                     "crystals); circles: the campaign's candidates, coloured by energy above "
                     "the hull; red rings: discoveries. Lines join the phases on the hull, "
                     "listed here:</p>"
                     + _table(["phase", "entry", "formation energy (eV/atom)", "source"],
                              hull_rows, {2})
                     + "</div></div>")
    latents = {k.split(":", 1)[1]: v for k, v in figures.items() if k.startswith("latent:")}
    if latents:
        parts.append("<h2>Latent maps</h2>")
        for name, rel in latents.items():
            parts.append(f"<div class='fig'>{_img(folder, rel, name + ' latent map')}</div>"
                         f"<p class='muted'>{_e(name)}: training data, fresh samples and the "
                         "campaign's candidates, projected to 2-D.</p>")

    # -- best candidates
    best_rows, classes = [], []
    for index, c in enumerate(_best(candidates), start=1):
        cid = _e(c["candidate_id"])
        link = (f"<a class='id' href='cifs/{cid}.cif'>{cid}</a>"
                if float(c["e_above_hull"]) <= NEAR_STABLE else f"<span class='id'>{cid}</span>")
        level = _row_evidence(c)
        conv = " ".join(x for x in (
            {True: "✓", False: "✗ not converged,"}.get(c.get("converged"), ""),
            _num(c.get("max_force")) + " eV/Å," if c.get("max_force") not in (None, "") else "",
            f"{c['n_steps']} steps" if c.get("n_steps") not in (None, "") else "",
        ) if x).rstrip(",")
        hit = bool(c.get("is_stable") and c.get("is_novel") and c.get("is_unique"))
        best_rows.append([
            str(index), link, _e(c["formula"]), _e(c.get("spacegroup")),
            _num(c["e_above_hull"]), f"<span class='tag {_e(level)}'>{_e(level)}</span>",
            f"<span style='white-space:nowrap'>{_e(conv) or '–'}</span>",
            str(c.get("selected_round") or c["round"]),
            _e(c.get("generator")),
            _novelty_cell(c),
        ])
        classes.append("hit" if hit else "")
    parts.append("<h2>Best candidates</h2>")
    if best_rows:
        parts.append(_table(
            ["#", "candidate (CIF)", "formula", "space group", "E above hull (eV/atom)",
             "evidence", "convergence", "round", "generator", "novelty"],
            best_rows, {0, 4, 7}, classes))
        parts.append("<p class='muted'>Green rows: discoveries. CIFs of every candidate within "
                     f"{NEAR_STABLE} eV/atom of the hull are in <code>cifs/</code>.</p>")
    else:
        parts.append("<p>Nothing evaluated yet.</p>")
    parts.append(
        "<h2>Files</h2><p>"
        + " · ".join(f"<a href='{f}'>{f}</a>" for f in (
            "candidates.csv", "rounds.csv", "references.csv", "summary.json", "report.md"))
        + "</p>")
    parts.append(f"<footer>matloop · hull {_e(s['hull_scheme'])} · reference set "
                 f"{_e(s['reference_set_version'])}</footer></main></body></html>")
    return "\n".join(parts)


def write_reports(
    store: MatloopStore,
    campaign: str,
    folder: Path,
    *,
    candidates: Sequence[Mapping[str, Any]],
    rounds: Sequence[Mapping[str, Any]],
    references: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any] | None = None,
    n_cifs: int = 0,
    figures: Mapping[str, str] | None = None,
) -> Path:
    """Write ``report.md`` and ``report.html`` into ``folder``; returns the HTML's path."""
    from matloop.store.documents import utcnow

    figures = figures or {}
    summary = summary or campaign_summary(store, campaign, references=references)
    folder = Path(folder)
    (folder / "report.md").write_text(
        markdown_report(summary, candidates, rounds, n_cifs, figures))
    path = folder / "report.html"
    path.write_text(html_report(summary, candidates, rounds, references, folder, figures,
                                generated_at=utcnow()))
    return path


def screenshot(
    page: str | Path, png: str | Path, *, width: int = 1300, height: int = 1800,
    browser: str | None = None,
) -> Path | None:
    """Render ``page`` in headless Chromium and save a PNG; None without a browser.

    Examples
    --------
    >>> screenshot("report.html", "report.png")  # doctest: +SKIP
    PosixPath('report.png')
    """
    import shutil
    import subprocess

    exe = browser or next(
        (found for name in ("chromium", "chromium-browser", "google-chrome")
         if (found := shutil.which(name))), None)
    if exe is None:
        return None
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--hide-scrollbars", "--virtual-time-budget=5000", f"--screenshot={png}",
         f"--window-size={width},{height}", Path(page).resolve().as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    return png if png.is_file() else None
