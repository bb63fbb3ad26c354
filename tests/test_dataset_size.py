"""exp_dataset_size.py's data-quality study: which datasets it collects."""

import dataclasses

import pytest

import exp_dataset_size as D


class Collected(Exception):
    """Stops run() at its first collection, so the test trains nothing."""


@pytest.mark.parametrize("preset", ["cpu", "long", "paper"])
def test_the_quality_study_collects_datasets_of_its_own_size(preset, monkeypatch, tmp_path):
    """The size study's dataset_size is MinAtar's 1e6 at `long` and 0 (DQN Replay) at `paper`; the
    quality study collects bsuite datasets of quality_dataset_size at every preset instead."""
    sizes = []

    def collect(env_id, noise, num_transitions, *args, **kwargs):
        sizes.append(num_transitions)
        raise Collected

    monkeypatch.setattr(D.C, "collect_dataset", collect)
    cfg = dataclasses.replace(D.PRESETS[preset], studies=("quality",))
    with pytest.raises(Collected):
        D.run(cfg, tmp_path, D.C.Timings())
    assert sizes == [cfg.quality_dataset_size] and cfg.quality_dataset_size == 50_000


def test_a_quality_study_without_data_is_rejected():
    with pytest.raises(ValueError, match="--quality-dataset-size must be > 0"):
        dataclasses.replace(D.PRESETS["cpu"], quality_dataset_size=0).check()
