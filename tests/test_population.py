"""Population engine end to end: every member is a replicate of its train_trial."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from fixtures_data import write_npz

import dm_tune.population.engine as engine
import dm_tune.training as training
from dm_tune.data import DataSpec, TrialData, prepare_data
from dm_tune.noise import label_digest
from dm_tune.population import Member, MemberResult, stack_labels, train_population
from dm_tune.training import TrainSpec, TrialResult, train_trial

_POPULATION = engine._Population  # the spies below subclass it (not one another)

# float64 models and inputs: differences are the code's, not rounding's
pytestmark = pytest.mark.usefixtures("float64")


def as_float64(data: TrialData) -> TrialData:
    return replace(data, **{n: getattr(data, n).double() for n in ("x_train", "x_val", "x_test")})


@pytest.fixture(scope="module")
def digits() -> TrialData:
    return as_float64(prepare_data(
        DataSpec("digits", noise_kind="symmetric", noise_rate=0.4)
    ))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> TrialData:
    path = Path(tmp_path_factory.mktemp("img")) / "img.npz"
    write_npz(path, n=120, images=True)
    return as_float64(prepare_data(DataSpec("npz", root=str(path))))


def dm(mode: float, variance: float, **extra: float) -> dict[str, float]:
    return {"emphasis_mode": mode, "emphasis_variance": variance, **extra}


def mixed_members(data: TrialData) -> list[Member]:
    """Mixed seeds (one repeated), DM modes/variances/epsilons and a baseline."""
    return [
        Member(data, "dm", dm(0.5, 8.0), seed=3),
        Member(data, "dm", dm(0.0, 2.0, norm_epsilon=0.0), seed=0),
        Member(data, "gce", {"q": 0.7}, seed=3),
        Member(data, "dm", dm(1 / 3, 16.0), seed=11),
    ]


def run_trial(monkeypatch, member: Member, spec: TrainSpec) -> tuple[TrialResult, torch.nn.Module]:
    """train_trial of `member`, and the model it trained (read through its _make_loop)."""
    models = []
    make_loop = training._make_loop

    def spy(*args, **kwargs):
        loop = make_loop(*args, **kwargs)
        models.append(loop.model)
        return loop

    monkeypatch.setattr(training, "_make_loop", spy)
    result = train_trial(member.data, replace(spec, seed=member.seed), member.loss,
                         member.loss_params, progress=False)
    monkeypatch.setattr(training, "_make_loop", make_loop)
    return result, models[0]


def run_population(monkeypatch, members, spec, on_epoch=None, **kwargs):
    """train_population's results and its internal population, which records each member's
    weights as it leaves (`states`, by member index) and its width each epoch (`widths`)."""
    captured = []

    class Spy(_POPULATION):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.states: dict[int, dict[str, torch.Tensor]] = {}
            self.widths: list[int] = []
            captured.append(self)

        def epoch(self):
            self.widths.append(self.model.members)
            return super().epoch()

        def remove(self, positions):
            for p in positions:
                self.states[self.alive[p]] = {
                    key: value.clone() for key, value in self.model.member_state(p).items()}
            super().remove(positions)

    monkeypatch.setattr(engine, "_Population", Spy)
    return train_population(members, spec, on_epoch, **kwargs), captured[0]


def assert_replicates(result: MemberResult, state: dict, trial: TrialResult, model,
                      joined_late: bool = False) -> None:
    """Same weights, curves and end figures as train_trial (to 1e-6; seconds excepted).

    A member that joined late shows the population's batch-norm step counter, not its own
    (`PopulationModel.member_state`; no layer reads it)."""
    assert result.status == "complete" and result.reason is None
    for key, value in model.state_dict().items():
        if joined_late and key.endswith("num_batches_tracked"):
            continue
        torch.testing.assert_close(state[key], value, rtol=0, atol=1e-6, msg=key)
    for mine, theirs in ((result.val_accuracy_per_epoch, trial.val_accuracy_per_epoch),
                         (result.test_accuracy_per_epoch, trial.test_accuracy_per_epoch),
                         (result.train_loss_per_epoch, trial.train_loss_per_epoch)):
        assert mine == pytest.approx(theirs, abs=1e-6)
    mine, theirs = result.result.user_attrs(), trial.user_attrs()
    assert mine.pop("seconds") > 0 and theirs.pop("seconds") > 0
    assert mine == pytest.approx(theirs, abs=1e-6)
    assert result.result.val_accuracy_per_epoch == result.val_accuracy_per_epoch


def test_mlp_members_replicate_train_trial(monkeypatch, digits):
    spec = TrainSpec(epochs=3, seed=99)  # the spec's seed is ignored
    members = mixed_members(digits)
    results, population = run_population(monkeypatch, members, spec)
    assert [r.index for r in results] == [0, 1, 2, 3]
    finals = set()
    for k, member in enumerate(members):
        trial, model = run_trial(monkeypatch, member, spec)
        assert_replicates(results[k], population.states[k], trial, model)
        finals.add(tuple(trial.val_accuracy_per_epoch))
    assert len(finals) == 4  # the members really differ


def test_cnn_members_replicate_train_trial_with_augmentation(monkeypatch, images):
    spec = TrainSpec(model="cnn", model_params={"width": 4}, epochs=3, batch_size=32,
                     schedule="step", nesterov=True)
    members = mixed_members(images)
    results, population = run_population(monkeypatch, members, spec)
    for k, member in enumerate(members):
        trial, model = run_trial(monkeypatch, member, spec)
        assert_replicates(results[k], population.states[k], trial, model)


@pytest.mark.parametrize(("model", "params"), [("resnet20", {}), ("fastnet", {"width": 2})])
def test_resnet_and_fastnet_members_replicate_train_trial(monkeypatch, images, model, params):
    spec = TrainSpec(model=model, model_params=params, epochs=2, batch_size=48)
    members = mixed_members(images)[:2]
    results, population = run_population(monkeypatch, members, spec)
    for k, member in enumerate(members):
        trial, trained = run_trial(monkeypatch, member, spec)
        assert_replicates(results[k], population.states[k], trial, trained)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_a_pruned_member_leaves_the_others_trajectories_unchanged(
    monkeypatch, digits, images, kind
):
    data = digits if kind == "mlp" else images
    spec = TrainSpec(model=kind, model_params={"width": 4} if kind == "cnn" else {},
                     epochs=3, batch_size=32)
    members = mixed_members(data)[:3]
    full, full_population = run_population(monkeypatch, members, spec)
    seen: list[dict] = []

    def prune_member_1(epoch, metrics):
        seen.append(metrics)
        return [1] if epoch == 1 else None

    pruned, population = run_population(monkeypatch, members, spec, prune_member_1)
    assert [sorted(m) for m in seen] == [[0, 1, 2], [0, 2], [0, 2]]
    assert pruned[1].status == "pruned" and pruned[1].result is None
    assert pruned[1].epochs_run == 1 and "epoch 1" in pruned[1].reason
    assert pruned[1].val_accuracy_per_epoch == full[1].val_accuracy_per_epoch[:1]
    assert population.widths == [3, 2, 2]  # compacted, not masked
    for k in (0, 2):
        assert pruned[k].status == "complete"
        assert pruned[k].val_accuracy_per_epoch == full[k].val_accuracy_per_epoch
        assert pruned[k].train_loss_per_epoch == pytest.approx(full[k].train_loss_per_epoch,
                                                               rel=1e-12)
        state, reference = population.states[k], full_population.states[k]
        for key, value in reference.items():
            torch.testing.assert_close(state[key], value, rtol=1e-12, atol=1e-12, msg=key)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_a_member_that_joins_late_replicates_its_train_trial(monkeypatch, digits, images, kind):
    """refill: a member joins in a pruned one's place at its own first epoch (its own
    learning-rate schedule, fresh momentum) and is still its train_trial's replicate; the
    members already there keep their trajectories."""
    data = digits if kind == "mlp" else images
    spec = TrainSpec(model=kind, model_params={"width": 4} if kind == "cnn" else {},
                     epochs=3, batch_size=32, nesterov=kind == "cnn")
    members = mixed_members(data)[:3]
    late = Member(data, "dm", dm(0.25, 4.0), seed=7)
    full, full_population = run_population(monkeypatch, members, spec)
    asked: list[int] = []
    seen: list[dict[int, int]] = []

    def refill(free):
        asked.append(free)
        return [late] if len(asked) == 1 else []

    def prune_member_1(epoch, metrics):
        seen.append({k: m["epoch"] for k, m in metrics.items()})
        return [1] if epoch == 1 else None

    results, population = run_population(monkeypatch, members, spec, prune_member_1,
                                         refill=refill, capacity=3)
    assert [r.index for r in results] == [0, 1, 2, 3]
    # asked when a place is free: after the prune, when 0 and 2 complete, at the end
    assert asked == [1, 2, 3]
    # the late member is one epoch behind: it runs on alone after the others complete
    assert seen == [{0: 1, 1: 1, 2: 1}, {0: 2, 2: 2, 3: 1}, {0: 3, 2: 3, 3: 2}, {3: 3}]
    assert population.widths == [3, 3, 3, 1]
    for k in (0, 2):
        assert results[k].val_accuracy_per_epoch == full[k].val_accuracy_per_epoch
        for key, value in full_population.states[k].items():
            torch.testing.assert_close(population.states[k][key], value, rtol=1e-12,
                                       atol=1e-12, msg=key)
    trial, model = run_trial(monkeypatch, late, spec)
    assert_replicates(results[3], population.states[3], trial, model, joined_late=True)


def test_a_member_joining_an_emptied_population_replicates_its_train_trial(monkeypatch,
                                                                         digits):
    spec = TrainSpec(epochs=2)
    late = Member(digits, "dm", dm(0.25, 4.0), seed=7)
    given: list[Member] = []

    def refill(free):
        if given:
            return []
        given.append(late)
        return [late]

    results, population = run_population(monkeypatch, mixed_members(digits)[:2], spec,
                                         lambda epoch, metrics: [0, 1] if epoch == 1 else None,
                                         refill=refill)
    assert [r.status for r in results] == ["pruned", "pruned", "complete"]
    assert population.widths == [2, 1, 1]  # rebuilt from nothing for the newcomer
    trial, model = run_trial(monkeypatch, late, spec)
    assert_replicates(results[2], population.states[2], trial, model)


def test_refill_fills_to_capacity_and_the_run_ends_when_it_has_none(digits):
    spec = TrainSpec(epochs=2)
    queue = [Member(digits, "dm", dm(0.5, 8.0), seed=s) for s in range(10, 15)]
    asked: list[int] = []

    def refill(free):
        asked.append(free)
        given, queue[:] = queue[:free], queue[free:]
        return given

    results = train_population(mixed_members(digits)[:1], spec, refill=refill, capacity=3)
    assert len(results) == 6 and all(r.status == "complete" for r in results)
    # 1 member + 2 at once; when those complete (epoch 2) three places, two members left
    assert asked[:2] == [2, 3] and queue == []
    assert all(r.epochs_run == 2 for r in results)


def test_a_population_spans_two_noise_settings(monkeypatch):
    settings = [as_float64(prepare_data(DataSpec("digits", noise_kind="symmetric",
                                                 noise_rate=rate))) for rate in (0.2, 0.6)]
    members = [Member(settings[k % 2], "dm", dm(0.5, 8.0), seed=k // 2) for k in range(4)]
    labels = stack_labels(members)
    assert labels.shape == (4, len(settings[0].y_train))
    for row, member in zip(labels, members, strict=True):
        assert label_digest(row.numpy()) == member.data.label_digest
    assert settings[0].label_digest != settings[1].label_digest
    spec = TrainSpec(epochs=2)
    results, population = run_population(monkeypatch, members, spec)
    for k in range(4):
        realised = results[k].result.realised_noise_rate
        assert realised == members[k].data.realised_noise_rate
        assert abs(realised - (0.2, 0.6)[k % 2]) < 0.05
    trial, model = run_trial(monkeypatch, members[1], spec)  # trained on the 0.6 labels
    assert_replicates(results[1], population.states[1], trial, model)


def test_a_nonfinite_member_is_removed_and_the_others_continue(monkeypatch, digits):
    spec = TrainSpec(epochs=2)
    healthy = mixed_members(digits)[:2]
    # poly1 with a huge epsilon: gradients overflow within the first epoch
    broken = Member(digits, "poly1", {"epsilon": 1e300}, seed=5)
    seen: list[set] = []
    results = train_population([healthy[0], broken, healthy[1]], spec,
                               lambda epoch, metrics: seen.append(set(metrics)))
    alone = train_population(healthy, spec)
    assert results[1].status == "nonfinite" and results[1].epochs_run == 0
    assert "training loss is" in results[1].reason and "epoch 1" in results[1].reason
    assert seen == [{0, 2}, {0, 2}]
    for mine, theirs in ((results[0], alone[0]), (results[2], alone[1])):
        assert mine.status == "complete"
        assert mine.val_accuracy_per_epoch == theirs.val_accuracy_per_epoch
        assert mine.train_loss_per_epoch == pytest.approx(theirs.train_loss_per_epoch, rel=1e-12)


def test_on_epoch_exceptions_propagate_and_bad_removals_are_refused(digits):
    class Stop(Exception):
        pass

    def stop(epoch, metrics):
        raise Stop

    members = mixed_members(digits)[:2]
    with pytest.raises(Stop):
        train_population(members, TrainSpec(epochs=3), stop)
    with pytest.raises(ValueError, match="member 7 is not training"):
        train_population(members, TrainSpec(epochs=3), lambda epoch, metrics: [7])


def test_removing_every_member_ends_the_run(digits):
    calls = []

    def prune_all(epoch, metrics):
        calls.append(epoch)
        return list(metrics)

    results = train_population(mixed_members(digits)[:2], TrainSpec(epochs=5), prune_all)
    assert calls == [1]
    assert [r.status for r in results] == ["pruned", "pruned"]
    assert all(r.epochs_run == 1 for r in results)


def test_members_must_share_their_inputs(digits, images):
    other_split = as_float64(prepare_data(DataSpec("digits", seed=1)))
    with pytest.raises(ValueError, match=r"members\[1\]\.data\.x_train"):
        train_population([Member(digits), Member(other_split)], TrainSpec(epochs=1))
    with pytest.raises(ValueError, match="num_classes"):
        train_population([Member(digits), Member(images)], TrainSpec(epochs=1))
    with pytest.raises(ValueError, match="at least one member"):
        train_population([], TrainSpec(epochs=1))
    with pytest.raises(ValueError, match="emphasis_mode"):
        train_population([Member(digits, "dm", {"emphasis_variance": 1.0})], TrainSpec())
