"""The pure tensor pieces shared by the objectives, against direct computations."""

import math

import pytest
import torch

from pyro_lvmle.objectives.base import leave_one_out_signal, renyi_bound
from tests.common import assert_close


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 2.0])
def test_renyi_bound_matches_its_formula(alpha):
    log_w = torch.randn(6, 3)
    expected = log_w.mean(0) if alpha == 1.0 else torch.log(
        (log_w * (1 - alpha)).exp().mean(0)) / (1 - alpha)
    assert_close(renyi_bound(log_w, alpha).squeeze(0), expected, atol=1e-12)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_leave_one_out_signal_matches_a_loop(alpha):
    log_w = torch.randn(5, 4)
    signal = leave_one_out_signal(log_w, alpha)
    for k in range(5):
        others = torch.cat([log_w[:k], log_w[k + 1:]])
        replaced = log_w.clone()
        replaced[k] = others.mean(0)
        expected = renyi_bound(log_w, alpha) - renyi_bound(replaced, alpha)
        assert_close(signal[k], expected.squeeze(0), atol=1e-12, what=f"particle {k}")


def test_leave_one_out_baseline_does_not_depend_on_its_own_particle():
    # L_{-k} must not change when z_k (hence log w_k) changes: that is what keeps VIMCO
    # unbiased
    log_w = torch.randn(4, 1)
    moved = log_w.clone()
    moved[2] += 3.0
    base = renyi_bound(log_w, 0.0) - leave_one_out_signal(log_w, 0.0)
    base_moved = renyi_bound(moved, 0.0) - leave_one_out_signal(moved, 0.0)
    assert_close(base[2], base_moved[2], atol=1e-12)
    assert not torch.allclose(base[0], base_moved[0])


def test_one_particle_signal_is_the_bound():
    log_w = torch.randn(1, 3)
    assert_close(leave_one_out_signal(log_w, 0.0), log_w, atol=0)


def test_renyi_bound_is_stable_for_extreme_weights():
    log_w = torch.tensor([[-1000.0], [-1001.0]])
    assert math.isfinite(renyi_bound(log_w, 0.0).item())
