"""The figures of a campaign report: hit rate per round, the convex hull with the
candidates on it (binary and ternary spaces drawn as phase diagrams, larger ones as energy
above hull per formula), and latent maps of learned generators (:mod:`matloop.results.latent`).

Every function writes a PNG and returns its path, or None when there was nothing to draw or
drawing failed (logged): a plot never loses an export.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matloop.results.figures import pyplot, save_figure

if TYPE_CHECKING:
    from pymatgen.analysis.phase_diagram import PhaseDiagram

    from matloop.store import MatloopStore

log = logging.getLogger("matloop")

#: Candidates further above the hull than this are not drawn on the hull diagram.
HULL_WINDOW = 0.5
#: Colour scale of energy above hull (eV/atom) tops out here.
EHULL_VMAX = 0.3


def hit_rate_plot(rounds: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path | None:
    """Hit rate per round (line) and cumulative discoveries (bars)."""
    if not rounds:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.4))
    xs = [r["round"] for r in rounds]
    ax2 = ax.twinx()
    ax.set_zorder(ax2.get_zorder() + 1)  # the hit-rate line in front of the bars
    ax.patch.set_visible(False)
    cumulative, total = [], 0
    for r in rounds:
        total += r.get("hits") or 0
        cumulative.append(total)
    ax2.bar(xs, cumulative, alpha=0.3, color="tab:green", width=0.6, label="cumulative hits")
    ax2.set_ylabel("cumulative discoveries", color="tab:green")
    ax2.set_ylim(0, max(cumulative + [1]) * 1.15)
    ax.plot(xs, [r.get("hit_rate") or 0.0 for r in rounds], "o-", color="tab:blue",
            label="hit rate")
    ax.set_xlabel("round")
    ax.set_ylabel("hit rate (novel, unique, near hull)", color="tab:blue")
    ax.set_ylim(0, 1.05)
    ax.set_xticks(xs)
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def hull_plot(
    pd: PhaseDiagram,
    path: Path,
    candidate_ids: Sequence[str],
    hit_ids: Sequence[str] = (),
    *,
    title: str = "",
) -> Path | None:
    """The hull with the campaign's candidates on it, coloured by energy above hull.

    Binary spaces: formation energy against composition, the hull as a line. Ternary: a
    Gibbs triangle with the hull's tie-lines. Larger: energy above hull per formula
    (:func:`matloop.evaluators.stability.plot_hull`). References are black squares, candidates
    circles, hits (novel, unique, near the hull) ringed in red.
    """
    n_el = len(pd.elements)
    if n_el > 3 or n_el < 2:
        from matloop.evaluators.stability import plot_hull

        return plot_hull(pd, path, highlight_ids=hit_ids, title=title)
    plt = pyplot()
    from matplotlib.colors import Normalize

    elements = sorted(pd.elements, key=lambda el: el.X)  # most electronegative last
    candidates, hits = set(candidate_ids), set(hit_ids)
    stable = set(pd.stable_entries)
    fig, ax = plt.subplots(figsize=(6.4, 5.0) if n_el == 3 else (6.4, 4.2))
    norm = Normalize(0.0, EHULL_VMAX)

    def coords(entry) -> tuple[float, float]:
        comp = entry.composition.fractional_composition
        fr = [comp.get_atomic_fraction(el) for el in elements]
        if n_el == 2:
            return fr[1], float(pd.get_form_energy_per_atom(entry))
        return fr[1] + fr[2] / 2, fr[2] * math.sqrt(3) / 2

    # the hull: tie-lines between stable entries
    if n_el == 2:
        points = sorted(coords(e) for e in stable)
        ax.plot([p[0] for p in points], [p[1] for p in points], "-", color="black", lw=1.2,
                zorder=2)
    else:
        corners = [(0, 0), (1, 0), (0.5, math.sqrt(3) / 2), (0, 0)]
        ax.plot(*zip(*corners, strict=True), color="black", lw=1.2, zorder=2)
        drawn = set()
        for facet in pd.facets:
            verts = [pd.qhull_entries[i] for i in facet]
            for i in range(len(verts)):
                for j in range(i + 1, len(verts)):
                    a, b = coords(verts[i]), coords(verts[j])
                    key = tuple(sorted((a, b)))
                    if key not in drawn:
                        drawn.add(key)
                        ax.plot([a[0], b[0]], [a[1], b[1]], "-", color="0.35", lw=0.8, zorder=2)
    # entries
    cand_xy, cand_c, ref_xy, off_chart = [], [], [], 0
    hit_xy = []
    for entry in pd.all_entries:
        e_hull = float(pd.get_e_above_hull(entry))
        xy = coords(entry)
        if entry.entry_id in candidates:
            if e_hull > HULL_WINDOW:
                off_chart += 1
                continue
            cand_xy.append(xy)
            cand_c.append(e_hull)
            if entry.entry_id in hits:
                hit_xy.append(xy)
        elif entry in stable or e_hull <= HULL_WINDOW:
            ref_xy.append(xy)
    if ref_xy:
        ax.scatter(*zip(*ref_xy, strict=True), marker="s", s=40, color="black", zorder=3,
                   label="reference")
    if cand_xy:
        scatter = ax.scatter(*zip(*cand_xy, strict=True), c=cand_c, cmap="viridis", norm=norm,
                             s=46, edgecolors="white", linewidths=0.6, zorder=4,
                             label="candidate")
        bar = fig.colorbar(scatter, ax=ax, shrink=0.8, pad=0.02, extend="max")
        bar.set_label("E above hull (eV/atom)")
    if hit_xy:
        ax.scatter(*zip(*hit_xy, strict=True), s=170, facecolors="none", edgecolors="red",
                   linewidths=1.8, zorder=5, label="hit (novel, near hull)")
    # label the stable phases once per formula
    labelled = set()
    for entry in sorted(stable, key=lambda e: e.composition.reduced_formula):
        formula = entry.composition.reduced_formula
        if formula in labelled or (n_el == 3 and entry.composition.is_element):
            continue
        labelled.add(formula)
        x, y = coords(entry)
        if n_el == 2:
            ax.annotate(formula, (x, y), textcoords="offset points", xytext=(0, -14),
                        ha="center", fontsize=8)
        else:
            cx, cy = 0.5, math.sqrt(3) / 6  # push labels outwards from the centre
            dx, dy = x - cx, y - cy
            norm_d = math.hypot(dx, dy) or 1.0
            ax.annotate(formula, (x, y), textcoords="offset points",
                        xytext=(10 * dx / norm_d, 10 * dy / norm_d), ha="center",
                        va="center", fontsize=8, zorder=6,
                        bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none",
                              "alpha": 0.7})
    if n_el == 2:
        ax.set_xlabel(f"fraction of {elements[1].symbol} in {elements[0].symbol}–"
                      f"{elements[1].symbol}")
        ax.set_ylabel("formation energy (eV/atom)")
        ax.axhline(0.0, color="grey", lw=0.6, zorder=1)
        ax.set_xlim(-0.05, 1.05)
    else:
        for el, (x, y), ha in zip(elements, [(0, 0), (1, 0), (0.5, math.sqrt(3) / 2)],
                                  ["right", "left", "center"], strict=True):
            ax.annotate(el.symbol, (x, y), textcoords="offset points",
                        xytext={"right": (-6, -8), "left": (6, -8), "center": (0, 8)}[ha],
                        ha=ha, fontsize=12, weight="bold")
        ax.set_aspect("equal")
        ax.set_xlim(-0.08, 1.08)
        ax.set_ylim(-0.08, math.sqrt(3) / 2 + 0.08)
        ax.axis("off")
    note = f" ({off_chart} candidate(s) > {HULL_WINDOW} eV/atom not shown)" if off_chart else ""
    ax.set_title((title + "\n" if title else "") + f"{len(pd.all_entries)} entries{note}",
                 fontsize=9)
    ax.legend(loc="lower right" if n_el == 2 else "upper left", fontsize=7, framealpha=0.8)
    return save_figure(fig, path)


def campaign_plots(
    store: MatloopStore,
    campaign: str,
    folder: Path,
    rounds: Sequence[dict[str, Any]],
    references: Sequence[dict[str, Any]],
    *,
    generators: Sequence[Any] = (),
) -> dict[str, str]:
    """Every figure of the report; returns ``{kind: path relative to the export folder}``
    with kinds ``hit_rate``, ``hull`` and ``latent:<generator name>``."""
    written: dict[str, str] = {}
    doc = store.get_campaign(campaign)
    try:
        if hit_rate_plot(rounds, folder / "hit_rate.png", title=campaign):
            written["hit_rate"] = "plots/hit_rate.png"
    except Exception as err:  # noqa: BLE001 - a plot must never lose the export
        log.warning("could not draw the hit rate: %s", err)
    try:
        if references:
            from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
            from pymatgen.core import Composition

            entries = []
            for row in references:
                entry = PDEntry(Composition(row["formula"]), row["corrected_energy"])
                entry.entry_id = row["entry_id"]
                entries.append(entry)
            evaluations = store.project(
                "evaluations", {"campaign": campaign},
                ["candidate_id", "is_stable", "is_novel", "is_unique"])
            hit_ids = [e["candidate_id"] for e in evaluations
                       if e["is_stable"] and e["is_novel"] and e["is_unique"]]
            if hull_plot(PhaseDiagram(entries), folder / "hull.png",
                         [r["entry_id"] for r in references if r["kind"] == "candidate"],
                         hit_ids, title=doc.hull_scheme or ""):
                written["hull"] = "plots/hull.png"
    except Exception as err:  # noqa: BLE001
        log.warning("could not draw the convex hull: %s", err)
    if generators:
        from matloop.results.latent import campaign_latent_maps

        try:
            for name, path in campaign_latent_maps(store, campaign, generators, folder).items():
                written[f"latent:{name}"] = f"plots/{path.name}"
        except Exception as err:  # noqa: BLE001
            log.warning("could not draw latent maps: %s", err)
    return written
