"""Live terminal views while trials run: a bar per study, a table of worker processes."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import optuna
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dm_tune.campaign.launcher import Slot, launch_workers
from dm_tune.campaign.progress import campaign_progress
from dm_tune.campaign.records import ROLE_DM
from dm_tune.campaign.worker import run_worker, stop_signals
from dm_tune.config import CampaignConfig

__all__ = ["live_launch", "run_with_progress"]


class _CampaignBars:
    """A bar per study and one overall, refreshed from the database counts."""

    def __init__(self, storage, config: CampaignConfig, console: Console) -> None:
        self.storage, self.config = storage, config
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"), TimeElapsedColumn(), console=console,
            transient=False,
            # rich re-renders the whole table from a thread at every tick, terminal or not
            # (where only the last render is printed), competing with training for the
            # GIL: twice a second for a terminal (elapsed time moves by seconds), never
            # for a pipe or a file
            auto_refresh=console.is_terminal, refresh_per_second=2,
        )
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
    storage: optuna.storages.RDBStorage, config: CampaignConfig, device: str, console: Console,
    sampler_seed: int | None = None,
) -> bool:
    """Run a worker in this process with live bars; True if stopped by a signal.

    ``sampler_seed``: the process's worker seed (default: it joins the campaign anew)."""
    bars = _CampaignBars(storage, config, console)
    last_epoch = {"at": 0.0}

    def on_trial(claimed, outcome) -> None:
        bars.refresh()

    def on_epoch(claimed, epoch, metrics) -> None:
        now = time.monotonic()
        if now - last_epoch["at"] > 0.5:  # keep the display cheap for sub-second epochs
            last_epoch["at"] = now
            bars.progress.update(
                bars.overall,
                note=f"{claimed.study.study_name.split('/', 1)[-1]} #{claimed.trial.number} "
                     f"epoch {epoch} val {100 * metrics['val_accuracy']:.1f}%",
            )

    with bars.progress, stop_signals(threading.Event()) as stop:
        bars.refresh()
        # the campaign's first process gets seed 0: a lone `dm-tune run` is reproducible
        summary = run_worker(storage, config, device, stop=stop, on_trial=on_trial,
                             on_epoch=on_epoch, sampler_seed=sampler_seed)
        bars.refresh(note="stopped" if summary.stopped else "done")
    return summary.stopped


def live_launch(
    storage, config: CampaignConfig, slots: Sequence[Slot], config_path: str, storage_url: str,
    console: Console, population: int | None = None, stop: threading.Event | None = None,
) -> dict[str, int]:
    """Launch worker processes with a live table of workers and study bars (``population``
    overrides the file's ``[search] population`` in each worker; a signal sets ``stop``,
    see :func:`dm_tune.campaign.launcher.launch_workers`)."""
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

        return launch_workers(slots, config_path, storage_url, on_poll=on_poll,
                              population=population, stop=stop)
