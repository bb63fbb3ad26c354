"""exp_robustness.py's evaluation under perturbed observations."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import common as C
import exp_robustness as R

ENV = "minatar/breakout"


@pytest.mark.parametrize("kind", ["shift", "scale"])
def test_level_zero_leaves_observations_unchanged(kind):
    obs = jax.random.randint(jax.random.key(0), (6, 10, 10, 4), 0, 2).astype(jnp.uint8)
    out = R.Perturbation(kind, 0, C.image_axes(ENV))(jax.random.key(1), obs)
    np.testing.assert_array_equal(out, obs)


def test_level_zero_is_one_clean_evaluation_reported_under_both_kinds(monkeypatch):
    """Level 0 is played once (one evaluation fewer than there are levels), and both kinds report
    exactly the returns of an unperturbed evaluation."""
    cfg = dataclasses.replace(R.PRESETS["smoke"], perturbed_episodes=4)
    net = C.MinAtarCNN(3)
    params = jax.vmap(lambda k: net.init(k, jnp.zeros((1, 10, 10, 4))))(jax.random.split(jax.random.key(2), 2))
    members = [C.Member(seed=s, learning_rate=3e-4) for s in range(2)]
    played = []
    evaluate = C.Evaluator.__call__
    monkeypatch.setattr(C.Evaluator, "__call__",
                        lambda self, n, p: played.append(self.transform) or evaluate(self, n, p))
    rows = R.perturbed_returns(cfg, ENV, net, {}, members, params)
    assert len(played) == len(cfg.shift_levels) + len(cfg.scale_levels) - 1
    clean = evaluate(C.Evaluator(ENV, cfg.perturbed_episodes, seed=C.PERTURBED_EVAL_SEED), net, params)["return"]
    for kind in ("shift", "scale"):
        assert [r["value"] for r in rows if r["perturbation"] == kind and r["level"] == 0] == [float(x) for x in clean]


def test_levels_of_one_kind_share_one_compiled_policy(monkeypatch):
    """The level is an argument of the compiled policy, not a constant: the evaluator traces the
    perturbation once per kind, however many levels it plays (a compile cost ~1 s per level)."""
    cfg = dataclasses.replace(R.PRESETS["smoke"], perturbed_episodes=2, shift_levels=(0, 1, 2),
                              scale_levels=(0.0, 0.2, 0.4))
    net = C.MinAtarCNN(3)
    params = jax.vmap(lambda k: net.init(k, jnp.zeros((1, 10, 10, 4))))(jax.random.split(jax.random.key(2), 2))
    members = [C.Member(seed=s, learning_rate=3e-4) for s in range(2)]
    traced = []
    perturb = R.Perturbation.__call__
    monkeypatch.setattr(R.Perturbation, "__call__", lambda self, k, o: traced.append(self.kind) or perturb(self, k, o))
    C._act_fn.cache_clear()  # a fresh compiled policy, whatever the other tests compiled
    rows = R.perturbed_returns(cfg, ENV, net, {}, members, params)
    assert sorted(traced) == ["scale", "shift"]
    assert len(rows) == len(members) * (len(cfg.shift_levels) + len(cfg.scale_levels))
