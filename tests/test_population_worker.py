"""Population workers (``[search] population = K``): exact budgets, the same records as
single trials, member curves equal to train_trial's, and crash recovery on PostgreSQL."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from pg import pg_url  # noqa: F401 (a pytest fixture)

from dm_tune.campaign import create_campaign, data_spec, run_worker, settings_of, train_spec
from dm_tune.config import load_campaign_config
from dm_tune.storage import open_storage
from dm_tune.training import train_trial
from tests.campaign_files import write_tiny
from tests.stored import trials_by_study
from tests.test_worker import _create, _worker

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)


def _with_population(path: Path, k: int, name: str | None = None) -> Path:
    """A copy of a campaign file with ``population = k`` in its [search] section."""
    target = path.with_name(name or f"{path.stem}-k{k}.toml")
    target.write_text(path.read_text().replace("[search]\n", f"[search]\npopulation = {k}\n"))
    return target




def _running_counter(storage, widths: list[int]):
    """An on_epoch hook appending the number of RUNNING trials in the storage to `widths`."""

    def count_running(claimed, epoch, metrics):
        studies = trials_by_study(storage).values()
        widths.append(sum(t.state == TrialState.RUNNING for ts in studies for t in ts))

    return count_running


def _keys_by_state(studies) -> dict[TrialState, set[str]]:
    keys: dict[TrialState, set[str]] = {}
    for trials in studies.values():
        for t in trials:
            keys.setdefault(t.state, set()).update(t.user_attrs)
    return keys


def _assert_exact_budgets(studies, budgets: dict[str, int]) -> None:
    assert set(studies) == set(budgets)
    for name, trials in studies.items():
        assert len([t for t in trials if t.state in COUNTED]) == budgets[name], name
        assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


@pytest.fixture(scope="module")
def population_campaign(tmp_path_factory):
    """A tiny campaign run by one population worker (K = 4) and by one single-trial worker."""
    tmp_path = tmp_path_factory.mktemp("population")
    single_file = write_tiny(tmp_path, epochs=3, trials=6)
    runs = {}
    for k, path in ((4, _with_population(single_file, 4)), (1, single_file)):
        config = load_campaign_config(path)
        storage = open_storage(f"sqlite:///{tmp_path / f'k{k}.db'}")
        create_campaign(config, storage)
        summary = run_worker(storage, config, "cpu", name=f"w{k}", sampler_seed=0)
        runs[k] = (config, storage, summary)
    return runs


def test_population_config_defaults_to_one_and_is_not_part_of_the_identity(tmp_path):
    path = write_tiny(tmp_path)
    single, four = load_campaign_config(path), load_campaign_config(_with_population(path, 4))
    assert single.search.population == 1 and four.search.population == 4
    assert single.config_hash() == four.config_hash()
    with pytest.raises(ValueError):
        load_campaign_config(_with_population(path, 0))


def test_a_population_worker_meets_every_budget_with_single_trial_records(population_campaign):
    config, storage, summary = population_campaign[4]
    studies = trials_by_study(storage)
    budgets = {}
    for setting in settings_of(config):
        budgets[setting.study_name("tiny")] = 6
        budgets[setting.study_name("tiny", "baselines")] = 1
    _assert_exact_budgets(studies, budgets)
    assert summary.trials == sum(budgets.values())
    everything = [t for ts in studies.values() for t in ts]
    assert {t.state for t in everything} <= set(COUNTED)
    sizes = [t.user_attrs["population_size"] for t in everything]
    assert all(1 <= s <= 4 for s in sizes) and max(sizes) == 4
    # the same keys as a single-trial worker's records, plus population_size
    single = _keys_by_state(trials_by_study(population_campaign[1][1]))
    population = _keys_by_state(studies)
    assert TrialState.COMPLETE in single and TrialState.COMPLETE in population
    for state in set(single) & set(population):
        assert population[state] == single[state] | {"population_size"}, state
    for study_trials in studies.values():
        for t in study_trials:
            if t.state == TrialState.COMPLETE:
                assert t.value == t.intermediate_values[max(t.intermediate_values)]


def test_a_member_curve_equals_train_trial_of_the_same_params_and_seed(population_campaign):
    config, storage, _ = population_campaign[4]
    setting = settings_of(config)[1]
    study = optuna.load_study(study_name=setting.study_name("tiny"), storage=storage)
    trial = [t for t in study.get_trials(states=(TrialState.COMPLETE,))
             if t.user_attrs["population_size"] > 1][-1]
    seed = trial.user_attrs["seed"]
    again = train_trial(data_spec(config, setting), train_spec(config, "cpu", seed), "dm",
                        trial.params)
    assert trial.user_attrs["val_accuracy_curve"] == pytest.approx(
        [round(v, 6) for v in again.val_accuracy_per_epoch], abs=1e-5)
    assert trial.value == pytest.approx(again.val_accuracy, abs=1e-5)
    assert trial.user_attrs["test_accuracy"] == pytest.approx(again.test_accuracy, abs=1e-5)


def test_a_population_refills_its_free_places_and_stops_at_max_trials(tmp_path):
    """Trials that end (pruned at the first rung, complete) make room for new ones in the
    same population run, which stays K = 3 trials wide and ends at max_trials."""
    config = load_campaign_config(_with_population(write_tiny(tmp_path, epochs=3), 3))
    storage = open_storage(f"sqlite:///{tmp_path / 'refill.db'}")
    create_campaign(config, storage)
    widths: list[int] = []
    count_running = _running_counter(storage, widths)

    summary = run_worker(storage, config, "cpu", max_trials=7, name="w", sampler_seed=0,
                         on_epoch=count_running)
    trials = [t for ts in trials_by_study(storage).values() for t in ts]
    ended = [t for t in trials if t.state in COUNTED]
    assert summary.trials == len(ended) == 7
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert len(summary.claim_seconds) == 1  # one population run claimed all seven
    assert max(widths) == 3 and min(widths) >= 1
    first_end = min(t.datetime_complete for t in ended)
    assert any(t.datetime_start > first_end for t in ended)  # joined in a freed place
    assert {t.user_attrs["population_size"] for t in ended} <= {1, 2, 3}
    for t in ended:  # each trial's own time, not the population run's
        window = (t.datetime_complete - t.datetime_start).total_seconds()
        assert 0 < t.user_attrs["seconds"] <= window + 0.5, t.number


def test_replicate_trials_and_single_seed_jobs_share_a_population_k_trials_wide(tmp_path):
    """S = 2 replicate members per search trial, 1 per baseline: the population is
    counted in trials (at most K = 2 RUNNING), and a search trial's retry (it carries the
    search's seed, as a re-queued trial does) still trains its S replicates."""
    path = _with_population(write_tiny(tmp_path, epochs=2, trials=6), 2)
    path.write_text(path.read_text().replace("[search]\n", "[search]\nseeds = 2\n"))
    config = load_campaign_config(path)
    storage = open_storage(f"sqlite:///{tmp_path / 'mixed.db'}")
    create_campaign(config, storage)
    search = config.search
    dm_study = optuna.load_study(study_name=settings_of(config)[0].study_name("tiny"),
                                 storage=storage)
    retry_params = {"emphasis_mode": 0.5, "emphasis_variance": 8.0}
    dm_study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=retry_params, user_attrs={"seed": 0},
        distributions={
            "emphasis_mode": optuna.distributions.FloatDistribution(
                search.emphasis_mode.low, search.emphasis_mode.high),
            "emphasis_variance": optuna.distributions.FloatDistribution(
                search.emphasis_variance.low, search.emphasis_variance.high)},
        system_attrs={"failed_trial": 0}))
    widths: list[int] = []
    count_running = _running_counter(storage, widths)

    run_worker(storage, config, "cpu", name="w", sampler_seed=0, on_epoch=count_running)
    studies = trials_by_study(storage)
    assert max(widths) == 2
    everything = [t for ts in studies.values() for t in ts]
    assert not [t for t in everything if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for name, trials in studies.items():
        for t in (t for t in trials if t.state == TrialState.COMPLETE):
            replicates = t.user_attrs.get("replicate_seeds")
            assert (len(replicates) == 2) if not name.endswith("baselines") else \
                replicates is None, (name, t.number)
    (retried,) = [t for t in dm_study.get_trials() if t.system_attrs.get("failed_trial") == 0]
    assert retried.state in COUNTED and len(retried.user_attrs["replicate_seeds"]) == 2


def test_an_error_while_starting_fails_every_claimed_trial_and_stops_their_beats(
    tmp_path, monkeypatch
):
    import dm_tune.campaign.population_run as population_run

    config = load_campaign_config(_with_population(write_tiny(tmp_path, baselines=()), 3))
    storage = open_storage(f"sqlite:///{tmp_path / 'boom.db'}")
    create_campaign(config, storage)
    real, calls = population_run.suggest_job, []

    def second_fails(claimed, config):
        calls.append(claimed.trial.number)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real(claimed, config)

    monkeypatch.setattr(population_run, "suggest_job", second_fails)
    with pytest.raises(RuntimeError, match="boom"):
        run_worker(storage, config, "cpu", name="w", sampler_seed=0)
    trials = [t for ts in trials_by_study(storage).values() for t in ts]
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 3 and all("boom" in t.user_attrs["error"] for t in failed)
    assert not [t for t in threading.enumerate() if t.name.startswith("heartbeat-")]


def test_a_stop_fails_and_requeues_every_unfinished_member(tmp_path):
    config = load_campaign_config(_with_population(write_tiny(tmp_path, baselines=()), 3))
    storage = open_storage(f"sqlite:///{tmp_path / 'stop.db'}")
    create_campaign(config, storage)
    stop = threading.Event()
    summary = run_worker(storage, config, "cpu", stop=stop, name="w0",
                         on_epoch=lambda claimed, epoch, metrics: stop.set())
    assert summary.stopped and summary.states == {"FAIL": 3}
    for trials in trials_by_study(storage).values():
        for dead in [t for t in trials if t.state == TrialState.FAIL]:
            assert dead.user_attrs["stopped"] == "worker stop"
            assert dead.user_attrs["population_size"] == 3
            assert dead.user_attrs["epochs_run"] == 1
            (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
            assert retry.state == TrialState.WAITING and retry.params == dead.params
        assert not [t for t in trials if t.state == TrialState.RUNNING]


# ------------------------------------------------------------------ PostgreSQL, processes


def _wait_for_running(url: str, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            running = [t for ts in trials_by_study(url).values() for t in ts
                       if t.state == TrialState.RUNNING and t.params]
            if len(running) >= count:
                time.sleep(1.0)  # training under way (the params are sampled before it)
                return
        except Exception:  # tables may not exist yet
            pass
        time.sleep(0.2)
    raise AssertionError(f"fewer than {count} trials started running")


@pytest.mark.postgres
def test_population_and_single_workers_share_exact_budgets(tmp_path, pg_url):  # noqa: F811
    single = write_tiny(tmp_path, name="mixed", epochs=3, trials=5, baselines=())
    population = _with_population(single, 3)
    _create(single, pg_url)
    workers = [_worker(population, pg_url), _worker(single, pg_url)]
    outputs = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    studies = trials_by_study(pg_url)
    _assert_exact_budgets(studies, {"mixed/symmetric-0.20": 5, "mixed/symmetric-0.40": 5})
    everything = [t for ts in studies.values() for t in ts]
    assert {t.state for t in everything} <= set(COUNTED)
    assert len({t.user_attrs["worker"] for t in everything}) == 2  # both took part


@pytest.mark.postgres
def test_a_killed_population_worker_is_recovered_by_a_later_worker(tmp_path, pg_url):  # noqa: F811
    single = write_tiny(tmp_path, name="crash", epochs=40, trials=2, baselines=())
    population = _with_population(single, 3)
    _create(single, pg_url)
    victim = _worker(population, pg_url, "--heartbeat", "1")
    _wait_for_running(pg_url, 3)
    assert victim.poll() is None  # still training its population
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=30)
    running = {(name, t.number) for name, ts in trials_by_study(pg_url).items() for t in ts
               if t.state == TrialState.RUNNING}
    # the retries and the last new trials, as one population of four
    survivor = _worker(_with_population(single, 4), pg_url, "--heartbeat", "1")
    _, err = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, err
    studies = trials_by_study(pg_url)
    _assert_exact_budgets(studies, {"crash/symmetric-0.20": 2, "crash/symmetric-0.40": 2})
    everything = [(name, t) for name, ts in studies.items() for t in ts]
    failed = [(name, t) for name, t in everything if t.state == TrialState.FAIL]
    # every trial the kill left RUNNING, and only those, failed and ran again; how many
    # were still running at the kill depends on the pruner's first rung and the machine's
    # load (three, unless some were pruned while the test looked)
    assert running and {(name, t.number) for name, t in failed} == running
    for name, dead in failed:
        retries = [t for n, t in everything
                   if n == name and t.system_attrs.get("failed_trial") == dead.number]
        assert len(retries) == 1 and retries[0].params == dead.params
        assert retries[0].state in COUNTED


def test_replicate_seeds_make_the_objective_their_mean(tmp_path):
    """[search] seeds = 2: each search trial trains 2 replicates; objective = mean val;
    replicate 0 is exactly the single-seed trial and replicate 1 trains with its own seed."""
    from dm_tune.campaign.population_run import replicate_seeds

    path = write_tiny(tmp_path, epochs=2, trials=2, baselines=())
    path.write_text(path.read_text().replace("[search]\n", "[search]\nseeds = 2\n")
                    .replace("rates = [0.2, 0.4]", "rates = [0.4]")
                    .replace('warm_start = "paper"', 'warm_start = "none"'))
    config = load_campaign_config(path)
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    create_campaign(config, storage)
    run_worker(storage, config, "cpu", name="w", sampler_seed=0)
    (trials,) = trials_by_study(storage).values()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 2
    setting = settings_of(config)[0]
    for trial in complete:
        seeds = trial.user_attrs["replicate_seeds"]
        assert seeds == replicate_seeds(config.campaign.seed, 2) and seeds[0] != seeds[1]
        vals = trial.user_attrs["replicate_val_accuracies"]
        assert trial.value == pytest.approx(sum(vals) / 2, abs=1e-12)
        assert trial.user_attrs["val_accuracy_std"] == pytest.approx(abs(vals[0] - vals[1]) / 2)
        from dm_tune.data import prepare_data

        for seed, val in zip(seeds, vals, strict=True):
            alone = train_trial(prepare_data(data_spec(config, setting)),
                                train_spec(config, "cpu", seed), "dm", trial.params)
            assert alone.val_accuracy == pytest.approx(val, abs=1e-5)


def test_a_train_hook_is_refused_for_a_population_campaign(population_campaign):
    config, storage, _ = population_campaign[4]

    def hook(*args, **kwargs):
        raise AssertionError("never called")

    def counts() -> list[int]:
        return [len(trials) for trials in trials_by_study(storage).values()]

    before = counts()
    with pytest.raises(ValueError, match="one trial at a time"):
        run_worker(storage, config, "cpu", name="hooked", train=hook)
    assert counts() == before
