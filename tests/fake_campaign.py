"""Build fake campaigns in an Optuna storage with known numbers (no training).

The standard campaign ``fake``:

- symmetric 0.2 / 0.4 / 0.6: the top 8 of 12 DM trials agree exactly on
  (0.25, 8), (0.40, 12), (0.55, 12); the other 4 sit far away with low accuracy;
- pairflip 0.4: the top trials disagree (modes 0.05..0.85, variances 1..20);
- baselines ``cce`` and ``gce`` for every setting;
- symmetric 0.4 has a confirm study whose best mean is (0.45, 10), not the search's
  best (0.40, 12); symmetric 0.2 has one PRUNED and one FAIL trial too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

CAMPAIGN = "fake"
DISTRIBUTIONS = {
    "emphasis_mode": FloatDistribution(0.0, 0.95),
    "emphasis_variance": FloatDistribution(0.5, 24.0, log=True),
}
AGREED = {0.2: (0.25, 8.0), 0.4: (0.40, 12.0), 0.6: (0.55, 12.0)}
CONFIRMED = (0.45, 10.0)
BASELINES = {"cce": (0.70, 0.68, 0.60), "gce": (0.80, 0.79, 0.30)}  # val, test, memorised
PAIRFLIP_MODES = (0.05, 0.85, 0.20, 0.70, 0.35, 0.60, 0.10, 0.80, 0.50, 0.15, 0.65, 0.30)
PAIRFLIP_VARIANCES = (1.0, 20.0, 2.0, 16.0, 4.0, 12.0, 1.5, 18.0, 6.0, 3.0, 14.0, 8.0)


@dataclass(frozen=True)
class FakeTrial:
    """One DM trial to add."""

    mode: float
    variance: float
    val: float
    test: float | None = None
    memorized: float | None = None
    seed: int = 0
    source_trial: int | None = None


def study_attrs(campaign: str, kind: str, rate: float, role: str) -> dict:
    """The study user attrs dm_tune.campaign.create writes (campaign/records.py StudyKey)."""
    return {
        "campaign": campaign,
        "dataset": "digits",
        "model": "mlp",
        "noise_kind": kind,
        "noise_rate": rate,
        "budget": 12,
        "config_hash": "cafe1234",
        "label_digest": "d" * 64,
        "dm_tune_version": "0.1.0",
        "role": role,
        "setting": f"{kind}-{rate:.2f}",
    }


def _study(storage, campaign: str, kind: str, rate: float, role: str) -> optuna.Study:
    """Create one study with its attrs."""
    suffix = "" if role == "dm" else f"/{role}"
    study = optuna.create_study(
        storage=storage,
        study_name=f"{campaign}/{kind}-{rate:.2f}{suffix}",
        direction="maximize",
    )
    for key, value in study_attrs(campaign, kind, rate, role).items():
        study.set_user_attr(key, value)
    return study


def _dm_trial(t: FakeTrial, loss: str = "dm") -> optuna.trial.FrozenTrial:
    """A COMPLETE DM trial with DESIGN.md's user attrs."""
    attrs = {"loss": loss, "seed": t.seed, "seconds": 1.0, "device": "cpu"}
    if t.test is not None:
        attrs["test_accuracy"] = t.test
        attrs["test_accuracy_at_best_val"] = t.test + 0.005
    if t.memorized is not None:
        attrs["memorized_noisy_fraction"] = t.memorized
    if t.source_trial is not None:
        attrs["source_trial"] = t.source_trial
    return optuna.trial.create_trial(
        params={"emphasis_mode": t.mode, "emphasis_variance": t.variance},
        distributions=DISTRIBUTIONS,
        value=t.val,
        user_attrs=attrs,
    )


def add_setting(
    storage,
    kind: str,
    rate: float,
    trials: Sequence[FakeTrial],
    *,
    campaign: str = CAMPAIGN,
    baselines: dict[str, tuple[float, float, float]] | None = None,
    confirm: Sequence[FakeTrial] = (),
    pruned: int = 0,
    failed: int = 0,
) -> optuna.Study:
    """Add a DM study (and optional baselines and confirm studies) for one setting."""
    study = _study(storage, campaign, kind, rate, "dm")
    for t in trials:
        study.add_trial(_dm_trial(t))
    for _ in range(pruned):
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.PRUNED,
                params={"emphasis_mode": 0.9, "emphasis_variance": 20.0},
                distributions=DISTRIBUTIONS,
                intermediate_values={1: 0.1},
            )
        )
    for _ in range(failed):
        study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL))
    if baselines:
        base = _study(storage, campaign, kind, rate, "baselines")
        for loss, (val, test, mem) in baselines.items():
            for seed, delta in enumerate((-0.01, 0.01)):  # two seeds; the mean is exact
                attrs = {
                    "loss": loss,
                    "seed": seed,
                    "test_accuracy": test + delta,
                    "test_accuracy_at_best_val": test + delta,
                    "memorized_noisy_fraction": mem + delta,
                }
                base.add_trial(optuna.trial.create_trial(value=val + delta, user_attrs=attrs))
    if confirm:
        conf = _study(storage, campaign, kind, rate, "confirm")
        for t in confirm:
            conf.add_trial(_dm_trial(t))
    return study


def agreeing_trials(mode: float, variance: float, n_top: int = 8, n_bad: int = 4):
    """Top trials that agree exactly on (mode, variance), then far-away poor ones."""
    top = [
        FakeTrial(mode, variance, 0.90 - 0.01 * i, 0.88 - 0.01 * i, 0.10 + 0.01 * i)
        for i in range(n_top)
    ]
    bad = [FakeTrial(0.9, 22.0, 0.30 - 0.01 * i, 0.28, 0.9) for i in range(n_bad)]
    return top + bad


def disagreeing_trials():
    """Trials whose close top values hide very different parameters."""
    return [
        FakeTrial(m, v, 0.80 - 0.002 * i, 0.78 - 0.002 * i, 0.2)
        for i, (m, v) in enumerate(zip(PAIRFLIP_MODES, PAIRFLIP_VARIANCES, strict=True))
    ]


def build_campaign(url: str, campaign: str = CAMPAIGN) -> str:
    """Write the standard fake campaign into ``url`` and return ``url``."""
    storage = optuna.storages.RDBStorage(url)
    for rate, (mode, variance) in AGREED.items():
        confirm = []
        if rate == 0.4:
            confirm = [
                FakeTrial(mode, variance, 0.88, 0.86, 0.12, seed=1, source_trial=0),
                FakeTrial(mode, variance, 0.90, 0.88, 0.10, seed=2, source_trial=0),
                FakeTrial(*CONFIRMED, 0.91, 0.90, 0.05, seed=1, source_trial=5),
                FakeTrial(*CONFIRMED, 0.92, 0.92, 0.07, seed=2, source_trial=5),
            ]
        add_setting(
            storage,
            "symmetric",
            rate,
            agreeing_trials(mode, variance),
            campaign=campaign,
            baselines=BASELINES,
            confirm=confirm,
            pruned=1 if rate == 0.2 else 0,
            failed=1 if rate == 0.2 else 0,
        )
    add_setting(
        storage, "pairflip", 0.4, disagreeing_trials(), campaign=campaign, baselines=BASELINES
    )
    storage.engine.dispose()  # let Windows/NFS delete the file; frees the pool in tests
    return url


_SHARED: dict[str, str] = {}


def shared_campaign_url(tmp_path_factory) -> str:
    """The standard campaign, built once per pytest session (tests only read it)."""
    base = str(tmp_path_factory.getbasetemp())
    if base not in _SHARED:
        path = tmp_path_factory.mktemp("fake-campaign") / "fake.db"
        _SHARED[base] = build_campaign(f"sqlite:///{path}")
    return _SHARED[base]


def campaign_file(name: str) -> str:
    """A minimal valid campaign file (TOML) whose campaign is ``name``."""
    return f'[campaign]\nname = "{name}"\n\n[[noise]]\nkind = "symmetric"\nrates = [0.2, 0.4]\n'
