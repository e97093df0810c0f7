"""What the dashboard shows: the objective's name, each study's role, dm-tune's selection."""

from __future__ import annotations

import json

import optuna
import pytest
from fake_campaign import CAMPAIGN, shared_campaign_url
from test_dashboard import Server, _chromium, _get

from dm_tune.campaign import create_campaign
from dm_tune.campaign.confirm import confirm_study
from dm_tune.campaign.create import study_names
from dm_tune.campaign.records import METRIC_NAME
from dm_tune.campaign.settings import settings_of
from dm_tune.config import load_campaign_config
from dm_tune.dashboard_view import (
    SELECTED_TRIAL_ATTR,
    SELECTION_ATTR,
    DashboardView,
    labelled_name,
)
from dm_tune.storage import open_storage
from tests.campaign_files import write_tiny

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_created_studies_name_their_objective(tmp_path):
    """Read back from the database: every study's objective is `clean_val_accuracy`, so
    the dashboard's axes do not say "Objective 0"; an older study gets the name when the
    campaign is created again."""
    config = load_campaign_config(write_tiny(tmp_path))
    url = f"sqlite:///{tmp_path / 'c.db'}"
    storage = open_storage(url)
    old = optuna.create_study(study_name="tiny/symmetric-0.40", storage=storage,
                              direction="maximize")
    assert old.metric_names is None  # as a study of an earlier dm-tune was stored
    optuna.delete_study(study_name="tiny/symmetric-0.40", storage=storage)
    create_campaign(config, storage)
    setting = settings_of(config)[0]
    dm = optuna.load_study(study_name=setting.study_name("tiny"), storage=storage)
    confirm_study(storage, config, setting, dm)
    fresh = open_storage(url)  # a new connection: what is stored, not a cached object
    names = [*study_names(config), f"{setting.study_name('tiny')}/confirm"]
    assert len(names) == 5
    for name in names:
        assert optuna.load_study(study_name=name, storage=fresh).metric_names == [METRIC_NAME]


def test_an_older_study_gets_its_metric_name_on_create(tmp_path):
    config = load_campaign_config(write_tiny(tmp_path))
    storage = open_storage(f"sqlite:///{tmp_path / 'c.db'}")
    create_campaign(config, storage)
    name = settings_of(config)[0].study_name("tiny")
    # as a study of an earlier version: its metric name removed
    study = optuna.load_study(study_name=name, storage=storage)
    storage.set_study_system_attr(study._study_id, "study:metric_names", None)
    assert optuna.load_study(study_name=name, storage=storage).metric_names is None
    create_campaign(config, storage)
    assert optuna.load_study(study_name=name, storage=storage).metric_names == [METRIC_NAME]


@pytest.fixture(scope="module")
def url(tmp_path_factory) -> str:
    return shared_campaign_url(tmp_path_factory)


def test_labelled_names():
    assert labelled_name("C/symmetric-0.40", "dm") == "[search] C/symmetric-0.40"
    assert labelled_name("C/s-0.40/gce_q", "gce_q") == "[q-grid] C/s-0.40/gce_q"
    assert labelled_name("mine", None) == "mine" and labelled_name("x", "other") == "x"


def _rows(url: str) -> list[str]:
    """Every row of the SQLite database, as SQL: what a write would change."""
    import sqlite3

    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        return list(db.iterdump())


def test_view_groups_studies_by_role_and_marks_the_selection(url):
    storage = optuna.storages.RDBStorage(url)
    before = _rows(url)
    view = DashboardView(storage)
    shown = view.get_all_studies()
    for study in shown:  # what the dashboard reads of a study page, through the view
        study_id = study._study_id
        view.get_all_trials(study_id)
        view.get_study_user_attrs(study_id)
    assert _rows(url) == before  # the view wrote nothing
    # handed over reversed: the dashboard's default (newest first) view reads top-down
    names = [s.study_name for s in reversed(shown)]
    assert names == [
        "[search] fake/symmetric-0.20", "[search] fake/symmetric-0.40",
        "[search] fake/symmetric-0.60", "[search] fake/pairflip-0.40",
        "[confirm] fake/symmetric-0.40/confirm",
        "[baselines] fake/symmetric-0.20/baselines", "[baselines] fake/symmetric-0.40/baselines",
        "[baselines] fake/symmetric-0.60/baselines", "[baselines] fake/pairflip-0.40/baselines",
    ]
    attrs = {s.study_name: s.user_attrs for s in shown}
    # symmetric 0.40: the search's best trial is trial 0 (one run at 0.90); dm-tune selects
    # the setting confirmed at (0.45, 10) from trial 5: mean of 0.91 and 0.92 over 2 seeds
    sym = attrs["[search] fake/symmetric-0.40"]
    assert sym[SELECTED_TRIAL_ATTR] == 5
    assert sym[SELECTION_ATTR] == (
        "trial 5 (mode 0.45, variance 10): confirmed mean clean-val accuracy 91.5% ± 0.7 over "
        "2 seeds. Trust this mean, not the best trial's single run (the maximum of many "
        "noisy runs).")
    low = attrs["[search] fake/symmetric-0.20"]
    assert low[SELECTED_TRIAL_ATTR] == 0
    assert low[SELECTION_ATTR].startswith("trial 0 (mode 0.25, variance 8): the best search "
                                          "trial, one run at 90.0%; not confirmed yet")
    assert low["campaign"] == CAMPAIGN  # the stored attributes are all still there
    assert SELECTION_ATTR not in attrs["[confirm] fake/symmetric-0.40/confirm"]
    # nothing is written: the stored names and attributes are unchanged
    stored = {s.study_name: s.user_attrs for s in storage.get_all_studies()}
    assert "fake/symmetric-0.40" in stored and SELECTION_ATTR not in stored["fake/symmetric-0.40"]
    assert view.get_study_id_from_name("fake/symmetric-0.40") == storage.get_study_id_from_name(
        "fake/symmetric-0.40")
    storage.engine.dispose()


@pytest.fixture(scope="module")
def server(url):
    srv = Server(url)
    yield srv
    srv.stop()


def test_served_list_and_study_page_show_roles_and_the_selection(server):
    summaries = json.loads(_get(f"{server.base}/api/studies"))["study_summaries"]
    by_name = {s["study_name"]: s for s in summaries}
    assert "[search] fake/symmetric-0.40" in by_name and "fake/symmetric-0.40" not in by_name
    study_id = by_name["[search] fake/symmetric-0.40"]["study_id"]
    detail = json.loads(_get(f"{server.base}/api/studies/{study_id}"))
    attrs = {a["key"]: a["value"] for a in detail["user_attrs"]}
    assert attrs[SELECTED_TRIAL_ATTR] == "5"
    assert "confirmed mean clean-val accuracy 91.5%" in attrs[SELECTION_ATTR]


@pytest.mark.browser
def test_browser_shows_role_labels(server, tmp_path):
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--no-first-run",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
           "--dump-dom", f"{server.base}/dashboard/"]
    import subprocess

    result = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    assert "[search] fake/symmetric-0.40" in dom and "[confirm] fake/symmetric-0.40/confirm" in dom
    assert dom.index("[search] fake/pairflip-0.40") < dom.index("[confirm] fake/symmetric-0.40")
