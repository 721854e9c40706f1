"""Generative-model metrics with CDVAE's definitions (Xie et al., ICLR 2022).

* **Structural validity**: every interatomic distance (minimum image) is at least 0.5 Å and
  the cell volume at least 0.1 Å^3.
* **Compositional validity**: SMACT charge neutrality plus Pauling electronegativity test
  (:func:`matloop.chemistry.smact_valid`).
* **Coverage** (COV-R recall, COV-P precision): structure fingerprints are the mean over sites
  of matminer's ``CrystalNNFingerprint.from_preset("ops")``; composition fingerprints are
  matminer's Magpie ``ElementProperty``, standardised. A reference crystal is *covered* when
  some generated crystal lies within both cut-offs of it (recall); a generated crystal is
  *precise* when it lies within both cut-offs of some reference crystal (precision, divided by
  the number of generated crystals fingerprinted, invalid ones included). CDVAE's cut-offs are
  in :data:`COV_CUTOFFS` (perov-5: struc 0.2, comp 4; MP-20: struc 0.4, comp 10).
* **Wasserstein distances** between generated (valid) and reference distributions of density,
  number of distinct elements and a property.
* **Reconstruction**: match rate and mean RMS distance with
  ``StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)``.

Differences from CDVAE, on purpose: CDVAE standardises Magpie fingerprints with fixed means
and standard deviations shipped in its repository; here the scaler is fitted on the reference
set (pass ``comp_scaler`` to use other statistics). CDVAE's property Wasserstein distance uses
a property model it trained; :class:`SurrogateProperty` is matloop's stand-in.

matminer is needed only for the fingerprints (imported lazily).
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from matloop.chemistry import smact_valid

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pymatgen.core import Composition, Structure

#: CDVAE's coverage cut-offs (``scripts/compute_metrics.py``), by data set.
COV_CUTOFFS: dict[str, dict[str, float]] = {
    "perov_5": {"struc": 0.2, "comp": 4.0},
    "carbon_24": {"struc": 0.2, "comp": 4.0},
    "mp_20": {"struc": 0.4, "comp": 10.0},
}

#: ``StructureMatcher`` settings of CDVAE's reconstruction metric.
MATCHER_SETTINGS = {"stol": 0.5, "angle_tol": 10, "ltol": 0.3}


# --------------------------------------------------------------------------- validity


def structure_validity(structure: Structure, cutoff: float = 0.5, min_volume: float = 0.1) -> bool:
    """True when all interatomic distances are >= ``cutoff`` Å and volume >= ``min_volume``.

    Distances are minimum-image distances between distinct sites (CDVAE's definition); an
    atom closer than ``cutoff`` to its own periodic image (a lattice vector shorter than the
    cut-off) also makes the structure invalid.
    """
    volume = structure.volume
    if not np.isfinite(volume) or volume < min_volume:
        return False
    if min(structure.lattice.abc) < cutoff:
        return False
    if len(structure) < 2:
        return True
    dist = structure.distance_matrix + np.eye(len(structure)) * (cutoff + 10.0)
    return bool(dist.min() >= cutoff)


def composition_validity(composition: Composition | Structure) -> bool:
    """SMACT charge neutrality + electronegativity (False for fractional occupancies)."""
    comp = composition.composition if hasattr(composition, "composition") else composition
    try:
        return smact_valid(comp)
    except ValueError:
        return False


def validity_rates(structures: Sequence[Structure | None]) -> dict[str, float]:
    """Fractions structurally, compositionally and jointly valid (``None`` counts invalid)."""
    if not structures:
        return {"struct_valid": 0.0, "comp_valid": 0.0, "valid": 0.0}
    struct = np.array([s is not None and structure_validity(s) for s in structures])
    comp = np.array([s is not None and composition_validity(s) for s in structures])
    return {
        "struct_valid": float(struct.mean()),
        "comp_valid": float(comp.mean()),
        "valid": float((struct & comp).mean()),
    }


# --------------------------------------------------------------------------- fingerprints


@lru_cache(maxsize=1)
def _featurizers() -> tuple[Any, Any]:
    try:
        from matminer.featurizers.composition.composite import ElementProperty
        from matminer.featurizers.site.fingerprint import CrystalNNFingerprint
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "coverage metrics need matminer (pip install matminer): its CrystalNN and Magpie "
            "featurizers define CDVAE's fingerprints"
        ) from err
    return CrystalNNFingerprint.from_preset("ops"), ElementProperty.from_preset("magpie")


def structure_fingerprint(structure: Structure) -> np.ndarray | None:
    """Mean CrystalNN ``ops`` site fingerprint; ``None`` when CrystalNN fails."""
    crystalnn, _ = _featurizers()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sites = [crystalnn.featurize(structure, i) for i in range(len(structure))]
    except Exception:  # noqa: BLE001 - CDVAE counts any fingerprint failure as missing
        return None
    return np.asarray(sites, dtype=float).mean(axis=0)


def composition_fingerprint(composition: Composition | Structure) -> np.ndarray:
    """Magpie element-property statistics (132 numbers, NaN where data is missing)."""
    _, magpie = _featurizers()
    comp = composition.composition if hasattr(composition, "composition") else composition
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(magpie.featurize(comp), dtype=float)


def fingerprints(
    structures: Sequence[Structure],
) -> tuple[list[np.ndarray | None], np.ndarray]:
    """Structure fingerprints (``None`` where CrystalNN fails) and the Magpie matrix."""
    struc = [structure_fingerprint(s) for s in structures]
    if not structures:
        return struc, np.zeros((0, 132))
    comp = np.array([composition_fingerprint(s) for s in structures])
    return struc, comp


class CompScaler:
    """Standardiser for Magpie fingerprints; NaNs become 0 after scaling (as in CDVAE)."""

    def __init__(self, means: np.ndarray, stds: np.ndarray):
        self.means = np.asarray(means, dtype=float)
        stds = np.asarray(stds, dtype=float)
        self.stds = np.where(np.isfinite(stds) & (stds > 1e-12), stds, 1.0)

    @classmethod
    def fit(cls, comp_fps: np.ndarray) -> CompScaler:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            means = np.nan_to_num(np.nanmean(comp_fps, axis=0))
            stds = np.nan_to_num(np.nanstd(comp_fps, axis=0))
        return cls(means, stds)

    def transform(self, comp_fps: np.ndarray) -> np.ndarray:
        return np.nan_to_num((np.asarray(comp_fps, dtype=float) - self.means) / self.stds)


def coverage_from_fingerprints(
    gen_struc: Sequence[np.ndarray | None],
    gen_comp: np.ndarray,
    ref_struc: Sequence[np.ndarray | None],
    ref_comp: np.ndarray,
    struc_cutoff: float,
    comp_cutoff: float,
    comp_scaler: CompScaler | None = None,
) -> dict[str, float]:
    """COV-R / COV-P and the mean minimum distances (AMSD / AMCD), CDVAE's ``compute_cov``.

    Generated crystals without a structure fingerprint are dropped before the distances but
    still count in the COV-P denominator. The composition scaler defaults to one fitted on the
    reference fingerprints.
    """
    from scipy.spatial.distance import cdist

    n_gen = len(gen_struc)
    keep = [i for i, fp in enumerate(gen_struc) if fp is not None]
    ref_keep = [i for i, fp in enumerate(ref_struc) if fp is not None]
    if not keep or not ref_keep or n_gen == 0:
        return {"cov_recall": 0.0, "cov_precision": 0.0}
    scaler = comp_scaler or CompScaler.fit(np.asarray(ref_comp)[ref_keep])
    g_s = np.array([gen_struc[i] for i in keep])
    r_s = np.array([ref_struc[i] for i in ref_keep])
    g_c = scaler.transform(np.asarray(gen_comp)[keep])
    r_c = scaler.transform(np.asarray(ref_comp)[ref_keep])
    struc_d = cdist(g_s, r_s)
    comp_d = cdist(g_c, r_c)
    recall = np.logical_and(struc_d.min(axis=0) <= struc_cutoff, comp_d.min(axis=0) <= comp_cutoff)
    precise = np.logical_and(struc_d.min(axis=1) <= struc_cutoff, comp_d.min(axis=1) <= comp_cutoff)
    return {
        "cov_recall": float(recall.mean()),
        "cov_precision": float(precise.sum() / n_gen),
        "amsd_recall": float(struc_d.min(axis=0).mean()),
        "amsd_precision": float(struc_d.min(axis=1).mean()),
        "amcd_recall": float(comp_d.min(axis=0).mean()),
        "amcd_precision": float(comp_d.min(axis=1).mean()),
    }


def composition_coverage(
    gen_comp: np.ndarray,
    ref_comp: np.ndarray,
    comp_cutoff: float,
    comp_scaler: CompScaler | None = None,
) -> dict[str, float]:
    """COV-R / COV-P on composition fingerprints alone (``cov_*_comp``, ``amcd_*_comp``).

    For generators that make compositions (their crystals are template decorations, so a
    structural fingerprint would measure the template bank, not the model). The same
    definitions as :func:`coverage_from_fingerprints` with the structural condition dropped;
    for crystal generators it is an upper bound of their full COV.
    """
    from scipy.spatial.distance import cdist

    gen_comp, ref_comp = np.asarray(gen_comp, dtype=float), np.asarray(ref_comp, dtype=float)
    if len(gen_comp) == 0 or len(ref_comp) == 0:
        return {"cov_recall_comp": 0.0, "cov_precision_comp": 0.0}
    scaler = comp_scaler or CompScaler.fit(ref_comp)
    d = cdist(scaler.transform(gen_comp), scaler.transform(ref_comp))
    return {
        "cov_recall_comp": float((d.min(axis=0) <= comp_cutoff).mean()),
        "cov_precision_comp": float((d.min(axis=1) <= comp_cutoff).mean()),
        "amcd_recall_comp": float(d.min(axis=0).mean()),
        "amcd_precision_comp": float(d.min(axis=1).mean()),
    }


def coverage(
    generated: Sequence[Structure],
    reference: Sequence[Structure],
    struc_cutoff: float = 0.2,
    comp_cutoff: float = 4.0,
) -> dict[str, float]:
    """COV-R / COV-P of ``generated`` against ``reference`` (fingerprints computed here)."""
    gs, gc = fingerprints(generated)
    rs, rc = fingerprints(reference)
    return coverage_from_fingerprints(gs, gc, rs, rc, struc_cutoff, comp_cutoff)


# --------------------------------------------------------------------------- distributions


def wasserstein(a: Sequence[float], b: Sequence[float]) -> float:
    """1-D Wasserstein (earth mover's) distance between two samples."""
    from scipy.stats import wasserstein_distance

    return float(wasserstein_distance(np.asarray(a, dtype=float), np.asarray(b, dtype=float)))


def distribution_metrics(
    generated: Sequence[Structure],
    reference: Sequence[Structure],
    generated_property: Sequence[float] | None = None,
    reference_property: Sequence[float] | None = None,
) -> dict[str, float | None]:
    """Wasserstein distances of density, number of distinct elements and (optionally) a
    property. CDVAE computes them over valid generated crystals; pass those."""
    out: dict[str, float | None] = {
        "wdist_density": wasserstein(
            [s.density for s in generated], [s.density for s in reference]
        ),
        "wdist_num_elems": wasserstein(
            [len(s.composition.elements) for s in generated],
            [len(s.composition.elements) for s in reference],
        ),
        "wdist_prop": None,
    }
    if generated_property is not None and reference_property is not None:
        out["wdist_prop"] = wasserstein(generated_property, reference_property)
    return out


# --------------------------------------------------------------------------- reconstruction


def reconstruction_metrics(
    predicted: Sequence[Structure | None], truth: Sequence[Structure]
) -> dict[str, float | None]:
    """Match rate and mean RMS distance (over matches) with CDVAE's ``StructureMatcher``.

    ``None`` predictions and structurally or compositionally invalid ones count as misses,
    as in CDVAE.
    """
    from pymatgen.analysis.structure_matcher import StructureMatcher

    if len(predicted) != len(truth):
        raise ValueError("predicted and truth differ in length")
    matcher = StructureMatcher(**MATCHER_SETTINGS)
    rms = []
    for pred, ref in zip(predicted, truth, strict=True):
        if pred is None or not (structure_validity(pred) and composition_validity(pred)):
            continue
        try:
            result = matcher.get_rms_dist(pred, ref)
        except Exception:  # noqa: BLE001 - a matcher failure is a miss
            result = None
        if result is not None:
            rms.append(result[0])
    return {
        "match_rate": len(rms) / max(len(truth), 1),
        "rms_dist": float(np.mean(rms)) if rms else None,
    }


# --------------------------------------------------------------------------- property surrogate


class SurrogateProperty:
    """A property model for scoring generated crystals (CDVAE scores with a trained GNN; this
    is a random forest on Magpie + CrystalNN fingerprints + density and volume per atom).

    Fit it on training crystals only; its held-out error says how far to trust it.
    """

    def __init__(self, n_estimators: int = 200, seed: int = 0):
        from sklearn.ensemble import RandomForestRegressor

        self.model = RandomForestRegressor(
            n_estimators=n_estimators, min_samples_leaf=2, random_state=seed, n_jobs=1
        )

    @staticmethod
    def features(
        structures: Sequence[Structure],
        struc_fps: Sequence[np.ndarray | None] | None = None,
        comp_fps: np.ndarray | None = None,
    ) -> np.ndarray:
        if struc_fps is None or comp_fps is None:
            struc_fps, comp_fps = fingerprints(structures)
        width = next((len(f) for f in struc_fps if f is not None), 61)
        sf = np.array([f if f is not None else np.zeros(width) for f in struc_fps])
        extra = np.array([[s.density, s.volume / len(s)] for s in structures])
        return np.nan_to_num(np.hstack([np.asarray(comp_fps), sf, extra]))

    def fit(
        self, structures: Sequence[Structure], values: Sequence[float], **fps: Any
    ) -> SurrogateProperty:
        self.model.fit(self.features(structures, **fps), np.asarray(values, dtype=float))
        return self

    def predict(self, structures: Sequence[Structure], **fps: Any) -> np.ndarray:
        return self.model.predict(self.features(structures, **fps))
