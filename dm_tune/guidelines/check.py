"""The guideline checks itself: leave one searched rate out, recommend there, compare.

For each interior searched rate of each noise kind (not the lowest or highest, where a
refit would have to extrapolate), the kind's surface is refitted without that rate's
trials and asked for its recommendation at that rate. The recommendation is scored by
the full surface (all data) at that rate, and compared with what the rate's own data
say: the selected setting's confirmed mean clean-validation accuracy when the setting
was confirmed, else the full surface's own best prediction there. A small gap means the
guideline would have recommended nearly as well without searching that rate.
"""

from __future__ import annotations

from dm_tune.guidelines.results import CampaignResults, RateCheck
from dm_tune.guidelines.surface import fit_surface, kind_observations

__all__ = ["GAP_VERDICTS", "gap_verdict", "leave_one_rate_out"]

#: what a leave-one-rate-out gap means, by its size in points of accuracy (|gap| up to
#: the bound, first match): one validation standard deviation of a fixed setting is about
#: 1.1 points on the demo's split (DESIGN.md section 7), so within one point the held-out
#: pick is as good as the rate's own, up to two it is within selection noise, beyond that
#: the guideline loses real accuracy between searched rates. The one place these live.
GAP_VERDICTS: tuple[tuple[float, str], ...] = (
    (1.0, "small: the guideline interpolates well"),
    (2.0, "moderate: within about two standard deviations of one run; check with "
          "recommend --verify"),
    (float("inf"), "large: the guideline does not interpolate well here; verify a pick "
                   "between searched rates (recommend --verify) or search that rate"),
)


def gap_verdict(gap: float | None) -> str:
    """The verdict on a gap (a fraction of accuracy, either sign), from GAP_VERDICTS."""
    if gap is None:
        return "unknown: no gap"
    points = round(abs(100 * gap), 1)  # as the report prints it: the words follow the number
    return next(text for bound, text in GAP_VERDICTS if points <= bound)


def leave_one_rate_out(results: CampaignResults) -> list[RateCheck]:
    """One row per interior searched rate of each kind with a surface (see module doc)."""
    rows = []
    for kind, full in sorted(results.surfaces.items()):
        settings = results.settings_of(kind)
        obs = kind_observations(settings)
        selected = {s.noise_rate: s.selected for s in settings}
        for rate in full.searched_rates[1:-1]:
            anchors = {r: a for r, a in full.anchors.items() if r != round(rate, 6)}
            held_out = fit_surface(kind, obs.without_rate(rate), variance_log=full.variance_log,
                                   anchors=anchors)
            rec = held_out.optimum(rate)
            predicted, _ = full.predict(rec.emphasis_mode, rec.emphasis_variance, rate)
            sel = selected.get(round(rate, 6))
            if sel is not None and sel.source == "confirm":
                reference, source = sel.val_accuracy, "confirm"
            else:
                reference, source = full.optimum(rate).predicted_accuracy, "surface"
            rows.append(
                RateCheck(
                    noise_kind=kind,
                    noise_rate=rate,
                    emphasis_mode=rec.emphasis_mode,
                    emphasis_variance=rec.emphasis_variance,
                    predicted_accuracy=float(predicted[0]),
                    selected_accuracy=float(reference),
                    selected_source=source,
                    gap=float(reference - predicted[0]),
                )
            )
    return rows
