"""exp_dataset_size.py's sub-studies: which datasets they collect, and which target period each trains with."""

import dataclasses
import types

import numpy as np
import pytest

import exp_dataset_size as D


@pytest.mark.parametrize("preset", ["cpu", "long", "paper"])
def test_the_quality_study_collects_the_same_datasets_at_every_preset(preset, monkeypatch, tmp_path):
    """The size study's dataset_size is MinAtar's 1e6 at `long` and 0 (DQN Replay) at `paper`, and its
    dataset_noise is 0 at `paper`; the quality study's bsuite datasets have their own size and weak
    behaviour's noise, the same at every preset. Nothing is collected or trained: the calls are recorded."""
    calls = []

    def collect(env_id, noise, num_transitions, seed, *, cfg):  # cfg by keyword: the 5th parameter is history
        calls.append((env_id, noise, num_transitions, cfg.learning_fraction))

    monkeypatch.setattr(D.C, "collect_dataset", collect)
    monkeypatch.setattr(D.C, "episode_returns", lambda ds: np.zeros(1))
    monkeypatch.setattr(D, "train", lambda *args, **kwargs: [])
    D.run(dataclasses.replace(D.PRESETS[preset], studies=("quality",)), tmp_path, D.C.Timings())
    expected = [(env, noise, 50_000, fraction) for env in ("bsuite/cartpole", "bsuite/mountain_car")
                for noise, fraction in ((0.0, 1.0), (0.1, 1.0), (0.3, 1.0), (0.5, 1.0), (0.1, 0.1))]
    assert calls == expected


@pytest.mark.parametrize("setting, value, message", [("quality_dataset_size", 0, "--quality-dataset-size must be > 0"),
                                                     ("weak_noise", 1.5, "--weak-noise must be in")])
def test_a_quality_study_without_data_or_with_an_impossible_noise_is_rejected(setting, value, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(D.PRESETS["cpu"], **{setting: value}).check()


@pytest.mark.parametrize("studies, rejected", [(("quality",), False), (("size",), True), (("size", "quality"), True)])
def test_the_size_studys_length_and_data_are_checked_only_when_it_runs(studies, rejected):
    """--num-steps and --dataset-size belong to the size study: a quality-only run ignores them."""
    for bad in ({"num_steps": 20_001}, {"dataset_size": 0}):
        cfg = dataclasses.replace(D.PRESETS["cpu"], studies=studies, **bad)
        if rejected:
            with pytest.raises(ValueError, match="--num-steps|--dataset-size"):
                cfg.check()
        else:
            cfg.check()


@pytest.mark.parametrize("preset", ["cpu", "long", "paper", "smoke"])
def test_each_sub_study_trains_with_its_own_target_period(preset, monkeypatch, tmp_path):
    """The size study updates its target network every target_update_period steps (MinAtar's 1,000 or
    2,500), the bsuite quality study every quality_target_update_period (100). Nothing is collected or
    trained: the trainer's configs are recorded."""
    class Data:  # what run() and train() read of a dataset
        valid, num_actions = np.arange(64), 3

        def __len__(self):
            return len(self.valid)

    periods = []

    def train_offline(net, ds, loss, members, train, **kwargs):
        periods.append((kwargs["columns"]["study"], train.target_update_period))
        return types.SimpleNamespace(rows=[])

    monkeypatch.setattr(D.C, "offline_dataset", lambda *args, **kwargs: Data())
    monkeypatch.setattr(D.C, "collect_dataset", lambda *args, **kwargs: Data())
    monkeypatch.setattr(D.C, "episode_returns", lambda ds: np.zeros(1))
    monkeypatch.setattr(D.C, "default_network", lambda *args, **kwargs: None)
    monkeypatch.setattr(D.C, "Evaluator", lambda *args, **kwargs: None)
    monkeypatch.setattr(D.C, "train_offline", train_offline)
    cfg = D.PRESETS[preset]
    D.run(cfg, tmp_path, D.C.Timings())
    assert {"size", "quality"} == {study for study, _ in periods}
    assert all(period == (cfg.target_update_period if study == "size" else cfg.quality_target_update_period)
               for study, period in periods)
    assert all(period == 100 for study, period in periods if study == "quality")
