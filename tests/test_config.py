"""Campaign files: validation, error messages that name key and file, the shipped studies."""

from __future__ import annotations

from pathlib import Path

import pytest

from dm_tune.campaign.settings import settings_of
from dm_tune.config import ConfigError, load_campaign_config, parse_campaign_config
from dm_tune.models import build_model

STUDIES = sorted((Path(__file__).parent.parent / "studies").glob("*.toml"))
BASE = {"campaign": {"name": "c"}, "noise": [{"kind": "symmetric", "rates": [0.2]}]}


def test_the_shipped_campaigns_are_all_there():
    names = {p.stem for p in STUDIES}
    assert {"digits-quick", "cifar10-symmetric", "cifar10-asymmetric", "cifar100",
            "cifar10n"} <= names


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_every_file_in_studies_validates_and_builds_its_model(path):
    config = load_campaign_config(path)
    assert config.name == path.stem
    assert settings_of(config)
    shape = (64,) if config.data.dataset == "digits" else (3, 32, 32)
    classes = 100 if config.data.dataset.startswith("cifar100") else 10
    model = build_model(config.model.name, shape, classes, **config.model.params)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_digits_quick_matches_the_demo_promise():
    config = load_campaign_config(Path("studies/digits-quick.toml"))
    # the README's promise: symmetric every 0.1 from 0.2 to 0.6 (a rate range), pairflip at
    # 0.2, 0.3, 0.4
    assert [(s.kind, round(s.rate, 6)) for s in settings_of(config)] == [
        ("symmetric", 0.2), ("symmetric", 0.3), ("symmetric", 0.4), ("symmetric", 0.5),
        ("symmetric", 0.6), ("pairflip", 0.2), ("pairflip", 0.3), ("pairflip", 0.4)]
    symmetric = next(n for n in config.noise if n.kind == "symmetric")
    assert (symmetric.rate_range, symmetric.rate_step) == ((0.2, 0.6), 0.1)
    assert config.data.dataset == "digits"


def test_defaults_and_ranges_from_pairs():
    config = parse_campaign_config({**BASE, "search": {"emphasis_mode": [0.1, 0.7]}})
    assert config.search.emphasis_mode.low == 0.1
    assert config.search.emphasis_variance.high == 24.0
    assert config.search.budget() == 30


def test_config_hash_ignores_budget_and_noise_list_but_not_training():
    first = parse_campaign_config(BASE)
    more_trials = parse_campaign_config({**BASE, "search": {"trials": 99}})
    more_noise = parse_campaign_config({**BASE, "noise": [{"kind": "symmetric",
                                                             "rates": [0.2, 0.4]}]})
    other_epochs = parse_campaign_config({**BASE, "training": {"epochs": 7}})
    assert first.config_hash() == more_trials.config_hash() == more_noise.config_hash()
    assert first.config_hash() != other_epochs.config_hash()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[campaign\nname = 'x'", "not valid TOML"),
        ("[campaign]\nname='x'\ncolour='red'\n[[noise]]\nkind='symmetric'\nrates=[0.2]",
         "campaign.colour: unknown key"),
        ("[campaign]\nname='x'\n[[noise]]\nkind='symmetric'\nrates=[1.2]", "noise.0.rates.0"),
        ("[campaign]\nname='x'\n[[noise]]\nkind='gaussian'\nrates=[0.2]", "noise.0.kind"),
        ("[campaign]\nname='x'\n[training]\nepochs='ten'\n[[noise]]\nkind='symmetric'\n"
         "rates=[0.2]", "training.epochs"),
        ("[campaign]\nname='x'\n[search]\nemphasis_mode=[0.5, 1.5]\n[[noise]]\n"
         "kind='symmetric'\nrates=[0.2]", "emphasis_mode range"),
        ("[campaign]\nname='x'\n[baselines]\nlosses=['focal']\n[[noise]]\n"
         "kind='symmetric'\nrates=[0.2]", "unknown loss 'focal'"),
        ("[campaign]\nname='x'\n[[noise]]\nkind='symmetric'\nrates=[0.2, 0.201]",
         "2 decimals"),
        ("[campaign]\nname='has space'\n[[noise]]\nkind='symmetric'\nrates=[0.2]",
         "campaign.name"),
        ("[campaign]\nname='x'\n[[noise]]\nkind='human'\nlabels=['worse_label']",
         "human noise needs"),
    ],
)
def test_bad_files_name_the_key_and_the_file(tmp_path, text, needle):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_campaign_config(path)
    assert needle in str(info.value)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value).strip()


def test_missing_file():
    with pytest.raises(ConfigError, match="campaign file not found"):
        load_campaign_config("/nonexistent/campaign.toml")
