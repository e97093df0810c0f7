"""Terminal views of a campaign: the status table and live progress while trials run."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import optuna
from optuna.trial import TrialState
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dm_tune.campaign import (
    ROLE_BASELINES,
    ROLE_CONFIRM,
    ROLE_DM,
    StudyProgress,
    campaign_progress,
)
from dm_tune.config import CampaignConfig
from dm_tune.guidelines import summarize_baselines

__all__ = ["live_launch", "run_with_progress", "status_rows", "status_table"]


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _baseline_summary(study: optuna.Study) -> str:
    results = summarize_baselines(study.get_trials(deepcopy=False))
    parts = [f"{r.loss} {_fmt(r.val_accuracy)}/{_fmt(r.test_accuracy)}" for r in results.values()]
    return ", ".join(parts) or "-"


def status_rows(storage: optuna.storages.RDBStorage, config: CampaignConfig) -> list[dict]:
    """One row per setting: DM trial counts, the best trial, and the baselines."""
    progress = campaign_progress(storage, config)
    by_setting: dict[str, dict[str, StudyProgress]] = {}
    for item in progress:
        by_setting.setdefault(item.setting, {})[item.role] = item
    rows = []
    for setting, roles in by_setting.items():
        dm = roles.get(ROLE_DM)
        if dm is None:
            continue
        study = optuna.load_study(study_name=dm.study_name, storage=storage)
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        best = max(complete, key=lambda t: t.value) if complete else None
        baselines = roles.get(ROLE_BASELINES)
        baseline_text = "-"
        if baselines is not None:
            baseline_text = _baseline_summary(
                optuna.load_study(study_name=baselines.study_name, storage=storage)
            )
        rows.append({
            "setting": setting,
            "budget": dm.budget,
            "complete": dm.counts.get("COMPLETE", 0),
            "pruned": dm.counts.get("PRUNED", 0),
            "failed": dm.failed,
            "running": dm.running,
            "best_val": best.value if best else None,
            "emphasis_mode": best.params.get("emphasis_mode") if best else None,
            "emphasis_variance": best.params.get("emphasis_variance") if best else None,
            "test_accuracy": best.user_attrs.get("test_accuracy") if best else None,
            "baselines": baseline_text,
            "confirmed": roles[ROLE_CONFIRM].done if ROLE_CONFIRM in roles else 0,
        })
    return rows


def status_table(storage: optuna.storages.RDBStorage, config: CampaignConfig) -> Table:
    """The ``dm-tune status`` table."""
    table = Table(title=f"campaign {config.name}", title_justify="left")
    for header in ("setting", "trials", "complete", "pruned", "failed", "running", "best val",
                   "mode", "variance", "test", "baselines val/test"):
        table.add_column(header, justify="left" if header in ("setting", "baselines val/test")
                         else "right")
    for row in status_rows(storage, config):
        table.add_row(
            row["setting"], f"{row['complete'] + row['pruned']}/{row['budget']}",
            str(row["complete"]), str(row["pruned"]),
            str(row["failed"]), str(row["running"]), _fmt(row["best_val"]),
            _fmt(row["emphasis_mode"]), _fmt(row["emphasis_variance"], 2),
            _fmt(row["test_accuracy"]), row["baselines"],
        )
    return table


def _progress_bars(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"), TimeElapsedColumn(), console=console,
        transient=False,
    )


class _CampaignBars:
    """A bar per study and one overall, refreshed from the database counts."""

    def __init__(self, storage, config: CampaignConfig, console: Console) -> None:
        self.storage, self.config = storage, config
        self.progress = _progress_bars(console)
        self.tasks: dict[str, int] = {}
        self.overall = self.progress.add_task("all studies", total=1, note="")

    def refresh(self, note: str = "") -> None:
        items = campaign_progress(self.storage, self.config)
        for item in items:
            if item.study_name not in self.tasks:
                label = item.setting if item.role == ROLE_DM else f"{item.setting} {item.role}"
                self.tasks[item.study_name] = self.progress.add_task(
                    label, total=item.budget, note=""
                )
            self.progress.update(self.tasks[item.study_name], completed=item.done,
                                 total=item.budget,
                                 note=f"{item.running} running" if item.running else "")
        self.progress.update(self.overall, completed=sum(min(i.done, i.budget) for i in items),
                             total=max(1, sum(i.budget for i in items)), note=note)


def run_with_progress(
    storage: optuna.storages.RDBStorage, config: CampaignConfig, device: str, console: Console
) -> bool:
    """Run a worker in this process with live bars; True if stopped by a signal."""
    from dm_tune.worker import install_stop_signals, run_worker

    bars = _CampaignBars(storage, config, console)
    stop = threading.Event()
    install_stop_signals(stop)
    last_epoch = {"at": 0.0}

    def on_trial(claimed, state) -> None:
        bars.refresh()

    def on_epoch(claimed, epoch, metrics) -> None:
        now = time.monotonic()
        if now - last_epoch["at"] > 0.5:  # keep the display cheap for sub-second epochs
            last_epoch["at"] = now
            bars.progress.update(
                bars.overall,
                note=f"{claimed.study.study_name.split('/', 1)[-1]} #{claimed.trial.number} "
                     f"epoch {epoch} val {metrics['val_accuracy']:.3f}",
            )

    with bars.progress:
        bars.refresh()
        # one in-process worker: a fixed sampler seed makes `dm-tune run` reproducible
        summary = run_worker(storage, config, device, stop=stop, on_trial=on_trial,
                             on_epoch=on_epoch, sampler_seed=0)
        bars.refresh(note="stopped" if summary.stopped else "done")
    return summary.stopped


def live_launch(
    storage, config: CampaignConfig, slots: Sequence, config_path: str, storage_url: str,
    console: Console,
) -> dict[str, int]:
    """Launch worker processes with a live table of workers and study bars."""
    from dm_tune.worker import launch_workers

    bars = _CampaignBars(storage, config, console)
    workers = {slot.label: (slot.device, None) for slot in slots}

    def render() -> Group:
        table = Table(title="workers", title_justify="left")
        for header in ("worker", "device", "state"):
            table.add_column(header)
        for label, (device, code) in workers.items():
            state = "running" if code is None else ("done" if code == 0 else f"exit {code}")
            table.add_row(label, device, state)
        return Group(table, bars.progress)

    with Live(render(), console=console, refresh_per_second=2) as live:
        def on_poll(codes: dict[str, int | None]) -> None:
            for label, code in codes.items():
                workers[label] = (workers[label][0], code)
            bars.refresh()
            live.update(render())

        return launch_workers(slots, config_path, storage_url, on_poll=on_poll)
