"""What a new user meets first (issue 22, "The CLI"): --version, -h, shell completion;
`status` refusing a campaign that is not there, saying when the file changed, asking
Slurm only about recorded jobs, plain lines when piped and `--format json`;
`recommend` outside the searched rates and `--strict`; one confirmation default."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from dm_tune import __version__
from dm_tune.campaign.records import StudyKey
from dm_tune.cli import app
from dm_tune.config import load_campaign_config
from tests.fake_campaign import AGREED, CONFIRMED, build_campaign, campaign_file

runner = CliRunner()


def dm_tune(*args: str, env: dict | None = None, timeout: int = 120):
    """The CLI as a user runs it (stdout and stderr are pipes)."""
    return subprocess.run(
        [sys.executable, "-m", "dm_tune", *args], capture_output=True, text=True,
        timeout=timeout, env={**os.environ, "DM_TUNE_STORAGE": "", **(env or {})},
    )


@pytest.fixture(scope="module")
def fake(tmp_path_factory) -> tuple[Path, str]:
    """The standard fake campaign (tests/fake_campaign.py) and a campaign file whose
    config hash is the stored one (as `dm-tune create` would have written it)."""
    folder = tmp_path_factory.mktemp("first-hour")
    url = build_campaign(f"sqlite:///{folder / 'fake.db'}")
    config = folder / "fake.toml"
    config.write_text(campaign_file("fake"))
    digest = load_campaign_config(config).config_hash()
    storage = optuna.storages.RDBStorage(url)
    for summary in storage.get_all_studies():
        storage.set_study_user_attr(summary._study_id, StudyKey.CONFIG_HASH, digest)
    storage.engine.dispose()
    return config, url


# ------------------------------------------------------------------ --version, -h, completion


def test_version_and_h_on_every_command():
    result = dm_tune("--version")
    assert (result.returncode, result.stdout, result.stderr) == (0, f"dm-tune {__version__}\n", "")
    top = dm_tune("-h")
    assert top.returncode == 0 and "Usage: dm-tune [OPTIONS] COMMAND" in top.stdout
    for command in ("status", "recommend", "run", "storage-proxy"):
        sub = dm_tune(command, "-h")
        assert sub.returncode == 0, sub.stderr
        assert f"Usage: dm-tune {command} [OPTIONS]" in sub.stdout


def test_shell_completion_is_switched_on():
    script = dm_tune("--show-completion", "bash")
    assert script.returncode == 0, script.stderr
    assert "_DM_TUNE_COMPLETE=complete_bash" in script.stdout
    assert script.stdout.rstrip().endswith("complete -o default -F _dm_tune_completion dm-tune")
    # what bash asks at <TAB>: the commands and options that start with the word
    words = dm_tune(env={"_DM_TUNE_COMPLETE": "complete_bash", "COMP_WORDS": "dm-tune sta",
                         "COMP_CWORD": "1"})
    assert words.returncode == 0 and words.stdout.split() == ["status"]
    options = dm_tune(env={"_DM_TUNE_COMPLETE": "complete_bash",
                           "COMP_WORDS": "dm-tune status --form", "COMP_CWORD": "2"})
    assert options.stdout.split() == ["--format"]


# ------------------------------------------------------------------ status: what is stored


def test_status_of_a_campaign_not_in_the_storage_is_refused(fake, tmp_path):
    _config, url = fake
    other = tmp_path / "other.toml"
    other.write_text(campaign_file("other"))
    result = dm_tune("status", str(other), "--storage", url)
    assert result.returncode == 2 and result.stdout == ""
    database = url.removeprefix("sqlite:///")
    assert result.stderr == (
        f"dm-tune: campaign 'other' has no study in {database}; run `dm-tune create "
        f"{other}` first (or give the database it was run in with --storage)\n")


def test_status_says_when_the_files_config_hash_differs(fake, tmp_path):
    config, url = fake
    same = dm_tune("status", str(config), "--storage", url)
    assert same.returncode == 0 and same.stderr == ""
    edited = tmp_path / "fake.toml"  # the same campaign, trained longer: another experiment
    edited.write_text(campaign_file("fake") + "\n[training]\nepochs = 99\n")
    new_hash = load_campaign_config(edited).config_hash()
    old_hash = load_campaign_config(config).config_hash()
    result = dm_tune("status", str(edited), "--storage", url)
    assert result.returncode == 0
    assert result.stderr == (
        f"dm-tune: warning: {edited}'s config hash {new_hash} differs from the stored one "
        f"({old_hash}): the file changed since the campaign was created; shown: the "
        "stored results\n")
    assert result.stdout == same.stdout  # the stored results, as before


def test_status_piped_has_no_trailing_spaces(fake):
    config, url = fake
    result = dm_tune("status", str(config), "--storage", url)
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0] == "campaign fake"
    assert [line for line in lines if line != line.rstrip()] == []
    assert any(line.startswith(" symmetric-0.40   12/12  0/0/0  0.450   10  2 seeds")
               for line in lines)


def test_status_format_json_has_the_documented_shape(fake):
    config, url = fake
    result = dm_tune("status", str(config), "--storage", url, "--format", "json")
    assert result.returncode == 0 and result.stderr == ""
    doc = json.loads(result.stdout)
    assert list(doc) == ["schema", "schema_version", "campaign", "database", "config_hash",
                         "stored_config_hashes", "config_hash_matches", "settings",
                         "slurm_jobs", "slurm_tasks"]
    assert (doc["schema"], doc["schema_version"], doc["campaign"]) == ("dm-tune/status", 1,
                                                                      "fake")
    assert doc["database"] == url.removeprefix("sqlite:///")
    assert doc["config_hash_matches"] is True
    assert doc["stored_config_hashes"] == [doc["config_hash"]]
    assert (doc["slurm_jobs"], doc["slurm_tasks"]) == ([], [])
    by_name = {s["setting"]: s for s in doc["settings"]}
    assert list(by_name) == ["symmetric-0.20", "symmetric-0.40"]  # the file's settings
    low = by_name["symmetric-0.20"]
    assert {k: low[k] for k in ("budget", "complete", "pruned", "failed", "running",
                                "confirmed")} == {"budget": 12, "complete": 12, "pruned": 1,
                                                  "failed": 1, "running": 0, "confirmed": 0}
    assert set(low) == {"setting", "budget", "complete", "pruned", "failed", "running",
                        "confirmed", "selected", "baselines"}
    assert set(low["selected"]) == {
        "emphasis_mode", "emphasis_variance", "val_accuracy", "test_accuracy",
        "test_accuracy_at_best_val", "memorized_noisy_fraction", "source", "trial_number",
        "n_seeds", "val_accuracy_std", "test_accuracy_std", "collapsed"}
    assert (low["selected"]["emphasis_mode"], low["selected"]["emphasis_variance"],
            low["selected"]["source"]) == (*AGREED[0.2], "search")
    mid = by_name["symmetric-0.40"]["selected"]
    # the confirmed selection: the mean over its 2 seeds (0.91, 0.92), a fraction
    assert (mid["emphasis_mode"], mid["emphasis_variance"], mid["source"],
            mid["n_seeds"]) == (*CONFIRMED, "confirm", 2)
    assert mid["val_accuracy"] == pytest.approx(0.915)
    cce = by_name["symmetric-0.40"]["baselines"]["cce"]
    assert (cce["loss"], cce["n"], cce["val_accuracy"], cce["params"]) == ("cce", 2, 0.7, {})


# ------------------------------------------------------------------ status and Slurm


def _fake_squeue(folder: Path, body: str) -> Path:
    """A `squeue` on PATH that notes each call in folder/called, then runs ``body``."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "squeue"
    script.write_text(f"#!/bin/sh\necho \"$@\" >> {folder / 'called'}\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def _status(config: Path, url: str, bin_dir: Path) -> tuple[float, object]:
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "DM_TUNE_STORAGE": ""}
    started = time.monotonic()
    result = runner.invoke(app, ["status", str(config), "--storage", url], env=env)
    return time.monotonic() - started, result


def test_status_never_asks_slurm_for_a_campaign_without_slurm_jobs(fake, tmp_path):
    # Slurm's client tools installed, no controller: squeue hangs (10 s in real life)
    config, url = fake
    bin_dir = _fake_squeue(tmp_path, "exec sleep 30")
    seconds, result = _status(config, url, bin_dir)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert not (tmp_path / "called").exists()  # squeue never ran
    assert seconds < 2.0, seconds


def _with_recorded_job(fake, tmp_path, job: str) -> tuple[Path, str]:
    """A copy of the fake campaign whose DM studies recorded Slurm array ``job``."""
    config, url = fake
    copy = tmp_path / "slurm.db"
    copy.write_bytes(Path(url.removeprefix("sqlite:///")).read_bytes())
    storage = optuna.storages.RDBStorage(f"sqlite:///{copy}")
    for summary in storage.get_all_studies():
        if summary.user_attrs.get("role") == "dm":
            storage.set_study_user_attr(summary._study_id, StudyKey.SLURM_JOBS, [job])
    storage.engine.dispose()
    return config, f"sqlite:///{copy}"


def test_status_asks_slurm_about_the_recorded_jobs_only_with_a_short_timeout(fake, tmp_path):
    from dm_tune.cli.cluster_commands import STATUS_SLURM_TIMEOUT_S

    config, url = _with_recorded_job(fake, tmp_path, "77")
    bin_dir = _fake_squeue(tmp_path, "exec sleep 30")
    seconds, result = _status(config, url, bin_dir)
    assert result.exit_code == 0
    assert result.stderr == (f"dm-tune: Slurm jobs 77 unknown: squeue did not answer within "
                             f"{STATUS_SLURM_TIMEOUT_S:g} s\n")
    assert STATUS_SLURM_TIMEOUT_S <= seconds < STATUS_SLURM_TIMEOUT_S + 3.0
    # an answering squeue: the recorded array's tasks, not another job of the same name
    (tmp_path / "called").unlink()
    bin_dir = _fake_squeue(tmp_path, "printf '77_0|77|dm-tune-fake|RUNNING\\n"
                                     "77_1|77|dm-tune-fake|PENDING\\n"
                                     "90_0|90|dm-tune-fake|RUNNING\\n'")
    seconds, result = _status(config, url, bin_dir)
    assert result.exit_code == 0 and result.stderr == ""
    assert result.stdout.splitlines()[-1] == ("Slurm tasks of dm-tune-fake: 77_0 running, "
                                              "77_1 pending")
    assert (tmp_path / "called").read_text().count("\n") == 1


def test_launch_slurm_records_its_job_array(tmp_path, monkeypatch):
    from tests.campaign_files import write_tiny

    config = write_tiny(tmp_path)
    url = f"sqlite:///{tmp_path / 'todo.db'}"
    monkeypatch.setattr("dm_tune.cluster.slurm.slurm_unavailable_reason", lambda: None)
    monkeypatch.setattr("dm_tune.cluster.slurm.submit_worker_array",
                        lambda *args, **kwargs: ["4242_0", "4242_1"])
    result = runner.invoke(app, ["launch", str(config), "--slurm", "--slurm-array", "2",
                                 "--storage", url])
    assert result.exit_code == 0, result.output
    storage = optuna.storages.RDBStorage(url)
    recorded = {s.study_name: s.user_attrs.get(StudyKey.SLURM_JOBS)
                for s in storage.get_all_studies()}
    assert recorded == {"tiny/symmetric-0.20": ["4242"], "tiny/symmetric-0.40": ["4242"],
                        "tiny/symmetric-0.20/baselines": None,
                        "tiny/symmetric-0.40/baselines": None}


# ------------------------------------------------------------------ recommend


def test_recommend_outside_the_searched_rates_gives_the_surfaces_uncertainty_there(fake):
    import warnings

    from dm_tune import guidelines as g

    _config, url = fake
    results = g.load_campaign(url, "fake")  # the surface
    searched = g.recommend(results, "symmetric", 0.6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        far = g.recommend(results, "symmetric", 0.8)
    assert "its figures are the surface's extrapolation to 0.8" in str(caught[0].message)
    assert far.extrapolated and far.nearest_rates == (0.6,)
    # the same pick as at 0.6 (nothing better is known), with 0.8's uncertainty
    assert (far.emphasis_mode, far.emphasis_variance) == (searched.emphasis_mode,
                                                           searched.emphasis_variance)
    surface = results.surfaces["symmetric"]
    _mean, std = surface.predict([far.emphasis_mode], [far.emphasis_variance], 0.8)
    assert far.predicted_std == pytest.approx(float(std[0]))
    assert far.predicted_std > 2 * searched.predicted_std
    assert far.low_accuracy < searched.low_accuracy - 0.05
    assert far.notes[0] == ("outside the searched rates: the pick is 0.6's; the band and "
                            "accuracies are the surface's extrapolation to 0.8")


def test_recommend_from_an_export_outside_the_range_prints_no_borrowed_spread(fake, tmp_path):
    config, url = fake
    out = tmp_path / "r.json"
    assert runner.invoke(app, ["export", str(config), "--storage", url, "-o",
                               str(out)]).exit_code == 0
    inside = runner.invoke(app, ["recommend", "--from", str(out), "--noise", "symmetric",
                                 "--rate", "0.6"])
    assert "[0.250, 0.900]" in inside.stdout and "expected" in inside.stdout
    result = runner.invoke(app, ["recommend", "--from", str(out), "--noise", "symmetric",
                                 "--rate", "0.8"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == ("symmetric 0.8: emphasis_mode 0.400, emphasis_variance 12 (searched "
                        "rates 0.6; extrapolated; from confirm@0.4)")
    assert lines[1] == ("note: no uncertainty estimate at 0.8: outside the searched rates "
                        "[0.2, 0.6] (the campaign's database gives the surface's "
                        "extrapolation)")
    as_json = json.loads(runner.invoke(app, ["recommend", "--from", str(out), "--noise",
                                             "symmetric", "--rate", "0.8", "--json"]).stdout)
    assert [as_json[k] for k in ("emphasis_mode_low", "predicted_std", "low_accuracy")] == [
        None, None, None]


@pytest.mark.parametrize("source", ["database", "export"])
def test_recommend_strict_refuses_a_rate_outside_the_searched_ones(fake, tmp_path, source):
    config, url = fake
    if source == "export":
        out = tmp_path / "r.json"
        assert runner.invoke(app, ["export", str(config), "--storage", url, "-o",
                                   str(out)]).exit_code == 0
        args = ["--from", str(out)]
    else:
        args = [str(config), "--storage", url]
    for rate in ("0.8", "0.1"):
        result = runner.invoke(app, ["recommend", *args, "--noise", "symmetric", "--rate",
                                     rate, "--strict"])
        assert result.exit_code == 2 and result.stdout == ""
        assert result.stderr == (f"dm-tune: --strict: symmetric rate {rate} is outside the "
                                 "searched rates (0.2 to 0.6); drop --strict for the nearest "
                                 "searched rate's pick, or search that rate\n")
    inside = runner.invoke(app, ["recommend", *args, "--noise", "symmetric", "--rate", "0.5",
                                 "--strict"])
    assert inside.exit_code == 0 and inside.stdout.startswith("symmetric 0.5: emphasis_mode")


def test_recommend_strict_verify_refuses_before_training(fake):
    config, url = fake
    result = runner.invoke(app, ["recommend", str(config), "--storage", url, "--noise",
                                 "symmetric", "--rate", "0.8", "--strict", "--verify"])
    assert result.exit_code == 2
    # the database's searched rates, as without --verify (the file names 0.2 and 0.4 only)
    assert result.stderr == ("dm-tune: --strict: symmetric rate 0.8 is outside the searched "
                             "rates (0.2 to 0.6); nothing was trained\n")


def test_recommend_refuses_a_csv_export_by_its_header_whatever_its_name(fake, tmp_path):
    config, url = fake
    csv = tmp_path / "recs.json"  # a CSV under a .json name
    assert runner.invoke(app, ["export", str(config), "--storage", url, "-f", "csv", "-o",
                               str(csv)]).exit_code == 0
    result = runner.invoke(app, ["recommend", "--from", str(csv), "--noise", "symmetric",
                                 "--rate", "0.3"])
    assert result.exit_code == 2
    assert result.stderr == (
        f"dm-tune: {csv} is not the JSON export (the CSV holds one row per searched setting, "
        "no advice between rates): pass `dm-tune export CONFIG -f json` output to --from, or "
        "give the campaign file to read the database\n")


# ------------------------------------------------------------------ one confirmation default


def test_confirm_top_k_and_the_confirm_table_share_one_default():
    import typer.main

    from dm_tune.config import CONFIRM_SEEDS, CONFIRM_SETTINGS, ConfirmConfig

    command = typer.main.get_command(app).commands["confirm"]
    defaults = {p.name: p.default for p in command.params}
    # `run` confirms the argmax and `candidates` more: the same count as --top-k
    assert defaults["top_k"] == CONFIRM_SETTINGS == ConfirmConfig().candidates + 1 == 3
    assert defaults["seeds"] == CONFIRM_SEEDS == ConfirmConfig().seeds
    shown = " ".join(dm_tune("confirm", "-h").stdout.split())
    assert "[confirm] candidates = 2 more" in shown.replace("│ ", "")


# ------------------------------------------------------------------ the storage proxy


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_command_through_a_proxy_that_is_down_fails_fast(fake):
    pytest.importorskip("grpc")
    config, _url = fake
    url = f"grpc://127.0.0.1:{_free_port()}"  # nothing listens there
    started = time.monotonic()
    result = dm_tune("status", str(config), "--storage", url)
    seconds = time.monotonic() - started
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (f"dm-tune: cannot reach the storage proxy {url}: connection "
                             "refused (nothing listens there); start it with `dm-tune "
                             "storage-proxy` or check the URL\n")
    assert seconds < 15, seconds  # it waited gRPC's 30 s before


def test_the_proxy_says_why_it_stopped(tmp_path):
    pytest.importorskip("grpc")
    import signal

    port = _free_port()
    proxy = subprocess.Popen(
        [sys.executable, "-m", "dm_tune", "storage-proxy", "--port", str(port), "--storage",
         f"sqlite:///{tmp_path / 'p.db'}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "DM_TUNE_STORAGE": ""})
    try:
        listening = proxy.stdout.readline()
        assert listening == f"dm-tune proxy: listening on grpc://127.0.0.1:{port} (pool_size=8)\n"
        proxy.send_signal(signal.SIGTERM)
        _out, err = proxy.communicate(timeout=60)
    finally:
        if proxy.poll() is None:
            proxy.kill()
            proxy.communicate()
    assert proxy.returncode == 0
    assert err == (f"dm-tune proxy: stopped by SIGTERM; grpc://127.0.0.1:{port} no longer "
                   "serves the database\n")
