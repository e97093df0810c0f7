"""An honest comparison of DM's selection with each baseline, in numbers and in words.

The comparison is on **final-epoch test accuracy**, mean +- standard deviation over
seeds: DM's selected setting (its confirmed seeds, or the one search trial) against each
baseline loss (its seeds; a tuned baseline such as GCE's q carries its ``params``).
Test accuracy, not clean validation, because DM's validation accuracy is the maximum
over the search and so biased upwards (the winner's curse); test accuracy took no part
in choosing either side.

The rule: a baseline is **as good as or better than DM** when

    baseline mean >= DM mean - margin,  margin = sqrt(s_dm^2 / n_dm + s_b^2 / n_b)

one pooled standard error of the difference of the two means (``s`` the sample standard
deviation over seeds, ``n`` the seeds). A difference smaller than its own standard error
is not evidence that DM is better, so the tie goes to the baseline. An unknown standard
deviation (a single seed) contributes 0: with one seed per side the rule compares the
means as they are, and the sentence says the spread is unknown. Otherwise DM is better.
Pure: reads result objects only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from dm_tune.guidelines.results import BaselineResult, Selection, SettingResult

__all__ = [
    "LOSS_RULE",
    "RULE",
    "Comparison",
    "LossAdvice",
    "best_configuration",
    "compare",
    "compare_setting",
    "mean_std_text",
    "params_pairs",
    "params_text",
    "sentence",
    "setting_label",
]

#: the rule in one line, as the report prints it
RULE = (
    "A baseline counts as as good as or better than DM when its mean test accuracy is at "
    "least DM's mean minus one pooled standard error, sqrt(s_DM^2/n_DM + s_b^2/n_b) over "
    "seeds (an unknown spread, one seed, counts 0); otherwise DM is better."
)


@dataclass(frozen=True)
class Comparison:
    """DM's selection against one baseline at one setting, on test accuracy."""

    baseline: str
    params: dict[str, float] = field(default_factory=dict)
    dm_mean: float = math.nan
    dm_std: float | None = None
    dm_n: int = 1
    baseline_mean: float = math.nan
    baseline_std: float | None = None
    baseline_n: int = 1
    margin: float = 0.0  # one pooled standard error of the difference
    baseline_as_good: bool = False  # baseline mean >= DM mean - margin
    dm_collapsed: bool = False
    baseline_collapsed: bool = False


def _se_term(std: float | None, n: int) -> float:
    """s^2 / n, 0 when the spread is unknown."""
    return 0.0 if std is None or not math.isfinite(std) else std * std / max(n, 1)


def compare(
    selection: Selection | None, baselines: Mapping[str, BaselineResult]
) -> list[Comparison]:
    """One comparison per baseline with a test accuracy, best baseline mean first.

    Empty when DM's selection has no test accuracy (nothing to compare with).
    """
    if selection is None or selection.test_accuracy is None:
        return []
    dm_n = max(selection.n_seeds, 1)
    out = []
    for b in baselines.values():
        if b.test_accuracy is None:
            continue
        margin = math.sqrt(
            _se_term(selection.test_accuracy_std, dm_n) + _se_term(b.test_accuracy_std, b.n)
        )
        out.append(
            Comparison(
                baseline=b.loss,
                params=dict(b.params),
                dm_mean=selection.test_accuracy,
                dm_std=selection.test_accuracy_std,
                dm_n=dm_n,
                baseline_mean=b.test_accuracy,
                baseline_std=b.test_accuracy_std,
                baseline_n=b.n,
                margin=margin,
                baseline_as_good=b.test_accuracy >= selection.test_accuracy - margin,
                dm_collapsed=selection.collapsed,
                baseline_collapsed=b.collapsed,
            )
        )
    return sorted(out, key=lambda c: (-c.baseline_mean, c.baseline))


def compare_setting(s: SettingResult) -> list[Comparison]:
    """:func:`compare` for one setting's selection and baselines."""
    return compare(s.selected, s.baselines)


def setting_label(kind: str, rate: float) -> str:
    """'symmetric 0.6' as the sentences name a setting."""
    return f"{kind} {rate:g}"


def params_pairs(params: Mapping[str, float], sep: str = " ", spec: str = "g") -> str:
    """A loss's parameters as 'q=0.4' pairs joined by ``sep`` ('' for none)."""
    return sep.join(f"{k}={v:{spec}}" for k, v in sorted(params.items()))


def params_text(params: Mapping[str, float]) -> str:
    """' (q=0.4)' for tuned parameters, '' for none."""
    return f" ({params_pairs(params, ', ')})" if params else ""


def mean_std_text(mean: float | None, std: float | None, spec: str = ".3f",
                  percent: bool = False) -> str:
    """'0.871 ± 0.006', '0.871' without a spread, '-' when unknown; with ``percent``:
    '87.1 ± 0.6%' (one decimal, the unit of the CLI's tables and the report)."""
    if mean is None:
        return "-"
    if percent:
        return f"{100 * mean:.1f}%" if std is None else f"{100 * mean:.1f} ± {100 * std:.1f}%"
    return format(mean, spec) if std is None else f"{mean:{spec}} ± {std:{spec}}"


def _seeds(c: Comparison, name: str) -> str:
    """'3 seeds each' or 'DM 3 seeds, GCE 2 seeds'; says when a spread is unknown."""
    def n(k: int) -> str:
        return f"{k} seed{'s' if k != 1 else ''}"

    text = f"{n(c.dm_n)} each" if c.dm_n == c.baseline_n else (
        f"DM {n(c.dm_n)}, {name} {n(c.baseline_n)}")
    if c.dm_std is None or c.baseline_std is None:
        text += ": spread unknown" if c.dm_std is None and c.baseline_std is None else (
            f": {'DM' if c.dm_std is None else name}'s spread unknown")
    return text


def _collapse_note(c: Comparison, name: str) -> str:
    """A clause naming a side whose replicate collapsed."""
    sides = [side for side, flag in (("DM", c.dm_collapsed), (name, c.baseline_collapsed))
             if flag]
    return f" A replicate of {' and '.join(sides)} collapsed (below chance + 10 points)." if (
        sides) else ""


def sentence(label: str, comparisons: list[Comparison], percent: bool = False) -> str:
    """One plain sentence (or a few) for a setting: where a baseline is as good or better,
    else that DM is better than every baseline, with the numbers (see the module rule);
    accuracies in percent with ``percent`` (the report), else fractions."""
    def num(mean: float | None, std: float | None) -> str:
        return mean_std_text(mean, std, percent=percent)

    def se(margin: float) -> str:
        return f"{100 * margin:.1f} points" if percent else f"{margin:.3f}"

    if not comparisons:
        return f"At {label}, no baseline (or no DM test accuracy) to compare with yet."
    as_good = [c for c in comparisons if c.baseline_as_good]
    clauses = []
    for i, c in enumerate(as_good):
        name = c.baseline.upper()
        numbers = (
            f"{num(c.baseline_mean, c.baseline_std)} vs "
            f"{num(c.dm_mean, c.dm_std)} test accuracy ({_seeds(c, name)})"
        )
        lead = (f"At {label}, {name}{params_text(c.params)} is as good as or better than DM"
                if i == 0 else f"so is {name}{params_text(c.params)}")
        clauses.append(f"{lead}: {numbers}")
    if clauses:
        notes = "".join(dict.fromkeys(_collapse_note(c, c.baseline.upper()) for c in as_good))
        return "; ".join(clauses) + "." + notes
    c = comparisons[0]  # the strongest baseline by test accuracy
    name = c.baseline.upper()
    others = "every baseline" if len(comparisons) > 1 else name
    return (
        f"At {label}, DM is better than {others}: "
        f"{num(c.dm_mean, c.dm_std)} vs {name}{params_text(c.params)} "
        f"{num(c.baseline_mean, c.baseline_std)} test accuracy"
        f"{', the best baseline' if len(comparisons) > 1 else ''} "
        f"({_seeds(c, name)}{f'; standard error {se(c.margin)}' if c.margin > 0 else ''})."
        + _collapse_note(c, name)
    )


@dataclass(frozen=True)
class LossAdvice:
    """The configuration to use at one setting: DM's selection or a (tuned) baseline."""

    loss: str  # "dm" or a baseline loss
    params: dict[str, float]
    val_accuracy: float | None  # mean over its seeds (clean validation: how it was chosen)
    test_accuracy: float | None
    dm_val_accuracy: float | None  # DM's selection beside it
    dm_test_accuracy: float | None
    margin: float  # one pooled standard error of the validation difference
    reason: str


#: the loss rule in one line, as the export and the report state it
LOSS_RULE = (
    "A baseline is named as the configuration to use when its mean clean-validation accuracy "
    "beats DM's confirmed selection by more than one pooled standard error "
    "sqrt(s_DM^2/n_DM + s_b^2/n_b) over seeds; otherwise DM. Chosen on validation, never test."
)


def best_configuration(s: SettingResult) -> LossAdvice | None:
    """DM's selection, or the best baseline when it wins on validation by more than its SE."""
    sel = s.selected
    if sel is None:
        return None
    dm_params = {"emphasis_mode": sel.emphasis_mode, "emphasis_variance": sel.emphasis_variance}
    dm = LossAdvice("dm", dm_params, sel.val_accuracy, sel.test_accuracy, sel.val_accuracy,
                    sel.test_accuracy, 0.0, "DM's selection; no baseline beats it by more "
                    "than its standard error")
    scored = [b for b in s.baselines.values() if b.val_accuracy is not None and not b.collapsed]
    if not scored:
        return dm
    best = max(scored, key=lambda b: (b.val_accuracy, b.loss))
    margin = math.sqrt(_se_term(sel.val_accuracy_std, max(sel.n_seeds, 1))
                       + _se_term(best.val_accuracy_std, best.n))
    if best.val_accuracy - sel.val_accuracy <= margin:
        return dm
    return LossAdvice(
        best.loss, dict(best.params), best.val_accuracy, best.test_accuracy, sel.val_accuracy,
        sel.test_accuracy, margin,
        f"{best.loss.upper()}{params_text(best.params)} beats DM on clean validation by "
        f"{100 * (best.val_accuracy - sel.val_accuracy):.1f} points (standard error "
        f"{100 * margin:.1f})",
    )
