"""The noise hospitals add: OpenDP's samplers, at the scale and epsilon the docs state."""

import math

import numpy as np
import pytest

from healthsync.privacy import noise


@pytest.mark.parametrize(("kind", "sensitivity"), [("count", 1.0), ("sum", 7.5), ("sum", 0.3)])
def test_opendp_certifies_the_epsilon_each_vector_is_charged(kind, sensitivity):
    epsilon = 0.25
    measurement = noise.laplace_measurement(kind, sensitivity / epsilon)
    d_in = int(sensitivity) if kind == "count" else sensitivity
    assert measurement.map(d_in) == pytest.approx(epsilon, rel=1e-9)


def test_sums_carry_laplace_noise_of_the_documented_scale():
    exact = np.full(20_000, 1234.5)
    got = noise.noisy_sums(exact, epsilon=0.5, sensitivity=3.0)
    scale = 3.0 / 0.5
    assert got.dtype == np.float64 and got.shape == exact.shape
    assert abs(got.mean() - 1234.5) < 4 * math.sqrt(2) * scale / math.sqrt(exact.size)
    assert got.var() == pytest.approx(2 * scale**2, rel=0.1)
    assert len(np.unique(got)) == exact.size  # fresh noise for every quantity


def test_counts_stay_integers_in_their_shape_and_empty_vectors_cost_nothing():
    got = noise.noisy_counts(np.arange(12).reshape(3, 4), epsilon=1.0)
    assert got.dtype == np.int64 and got.shape == (3, 4)
    assert noise.noisy_counts(np.array([], dtype=np.int64), 1.0).shape == (0,)
    assert noise.noisy_sums(np.array([]), 1.0, 2.0).shape == (0,)


def test_a_seeded_generator_gives_the_same_draws_every_run_for_tests():
    a = noise.noisy_counts(np.full(50, 20), 0.5, np.random.default_rng(4))
    b = noise.noisy_counts(np.full(50, 20), 0.5, np.random.default_rng(4))
    assert (a == b).all() and (a != 20).any()
    assert a.var() == pytest.approx(noise.count_noise_sd(0.5) ** 2, rel=0.6)
