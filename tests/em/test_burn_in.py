"""The burn-in trend test: its false-alarm rate on stationary noise is near the nominal one,
and it flags the slow geometric approach of EM with a large fraction of missing information
(the planted case: a burn-in that would end too early)."""

import pytest
import torch

from pyro_lvmle.em.burn_in import MIN_BURN_IN, record_burn_in, trend_test


def ar1(rate, start, length, noise=1.0):
    values, x = [], start
    for _ in range(length):
        x = rate * x + noise * torch.randn(())
        values.append(x)
    return torch.stack(values)[:, None]


def test_stationary_noise_rarely_trends():
    alarms = sum(trend_test(torch.randn(50, 1)).trending for _ in range(2000))
    # nominal 0.27% at |z| > 3: 5.4 of 2000; Poisson 4-sigma bound
    assert alarms < 5.4 + 4 * 5.4**0.5, alarms


def test_slow_contraction_trends():
    """EM contracting by 0.98 from 200 noise units away: flagged over 50 iterations;
    Newton's iterates (rate 0) are not."""
    slow = ar1(0.98, torch.tensor(200.0), 50)
    assert trend_test(slow).trending
    fast = ar1(0.0, torch.tensor(200.0), 50)
    assert not trend_test(fast).trending


def _run_burn_in(path, max_burn_in):
    end, trajectory, iteration = None, [], 0
    while end is None:
        end, trajectory, _ = record_burn_in("SAEM", trajectory, path[iteration], iteration,
                                            max_burn_in)
        iteration += 1
    return end


def test_record_burn_in_ends_on_noise_and_warns_at_the_cap_while_trending():
    """Stationary iterates end the burn-in at its shortest length, silently; a slow
    contraction runs to the cap, where the user is warned with the driver's name."""
    torch.manual_seed(0)
    assert _run_burn_in(torch.randn(300, 2), 200) == MIN_BURN_IN
    with pytest.warns(UserWarning, match="SAEM: the burn-in hit its cap at iteration 60"):
        assert _run_burn_in(ar1(0.98, torch.tensor(200.0), 300), 60) == 60
