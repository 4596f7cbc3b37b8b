"""The batch time estimate: one test per rule of ``streamtrk.service.batch_time``."""

from __future__ import annotations

import pytest

from streamtrk.service.batch_time import WINDOW, BatchTime


def test_before_any_batch_the_estimate_is_zero() -> None:
    assert BatchTime().estimate(100_000) == 0.0


def test_batches_of_alike_sizes_give_a_time_proportional_to_the_hits() -> None:
    bt = BatchTime()
    for hits, seconds in [(1000, 0.1), (1500, 0.2), (1200, 0.12)]:  # within a factor 2
        bt.observe(hits, seconds)
    assert bt.fixed == 0.0 and bt.per_hit == pytest.approx(0.42 / 3700)


def test_sizes_apart_give_the_fixed_cost_and_the_cost_per_hit() -> None:
    bt = BatchTime()
    for hits in (100, 5_000, 1_000, 20_000, 300):
        bt.observe(hits, 0.01 + 2e-6 * hits)
    assert bt.fixed == pytest.approx(0.01) and bt.per_hit == pytest.approx(2e-6)


def test_a_small_batch_does_not_make_large_ones_look_slow() -> None:
    """One 3-hit batch after large ones: its time is the fixed cost, not 3 hits' worth."""
    bt = BatchTime()
    for _ in range(10):
        bt.observe(9_000, 0.35)
    bt.observe(3, 0.016)
    assert 0.016 <= bt.estimate(4_700) < 0.35 * 4_700 / 9_000 + 0.016
    assert bt.estimate(9_000) == pytest.approx(0.35, rel=0.01)


def test_a_slower_batch_raises_the_estimate_at_once() -> None:
    bt = BatchTime()
    for hits in (1_000, 8_000) * 5:
        bt.observe(hits, 0.01 + 1e-5 * hits)
    bt.observe(4_000, 0.5)  # the device slowed down
    assert bt.estimate(4_000) == pytest.approx(0.5)
    assert bt.estimate(8_000) > 0.5


def test_a_faster_batch_lowers_it_by_its_share_of_the_window() -> None:
    bt = BatchTime()
    for _ in range(WINDOW):
        bt.observe(1_000, 1.0)
    bt.observe(1_000, 0.5)
    assert bt.estimate(1_000) == pytest.approx(1.0 - 0.5 / WINDOW)


def test_only_the_last_window_of_batches_counts() -> None:
    bt = BatchTime()
    bt.observe(1_000, 100.0)
    for _ in range(WINDOW):
        bt.observe(1_000, 1.0)
    assert bt.estimate(1_000) == pytest.approx(1.0)


def test_batches_of_no_hits_are_a_fixed_cost() -> None:
    bt = BatchTime()
    bt.observe(0, 0.02)
    assert bt.estimate(0) == pytest.approx(0.02) and bt.per_hit == 0.0
    bt.observe(10_000, 0.12)  # sizes apart: 0.02 s fixed and 1e-5 s a hit
    assert bt.fixed == pytest.approx(0.02) and bt.per_hit == pytest.approx(1e-5)


@pytest.mark.parametrize(
    "batches",
    [
        [(1_000, 0.3), (3_000, 0.1), (10_000, 0.05)],  # larger ones faster: no cost per hit
        [(1_000, 0.001), (3_000, 0.1), (10_000, 1.0)],  # a line below 0 s at no hits
    ],
)
def test_neither_cost_is_negative(batches: list[tuple[int, float]]) -> None:
    bt = BatchTime()
    for hits, seconds in batches:
        bt.observe(hits, seconds)
    assert bt.fixed >= 0 and bt.per_hit >= 0 and bt.estimate(10_000) >= 0.05


def test_forgotten_batches_stand_until_the_next_which_starts_the_window_afresh() -> None:
    bt = BatchTime()
    for _ in range(WINDOW):
        bt.observe(1_000, 1.0)
    bt.forget()  # a reload: another model
    assert bt.estimate(1_000) == pytest.approx(1.0)
    bt.observe(1_000, 0.01)
    assert bt.estimate(1_000) == pytest.approx(0.01)


def test_a_batch_of_no_hits_slower_than_a_fit_without_fixed_cost_raises_it() -> None:
    """Costs that grow faster than the hits (a line below 0 s at no hits: no fixed cost),
    then a batch of empty events: the estimate covers it at once."""
    bt = BatchTime()
    for hits, seconds in [(1_000, 0.001), (3_000, 0.1), (10_000, 1.0)]:
        bt.observe(hits, seconds)
    assert bt.fixed == 0.0
    bt.observe(0, 0.05)
    assert bt.estimate(0) == pytest.approx(0.05)


def test_batches_of_no_hits_alone_cost_their_mean() -> None:
    bt = BatchTime()
    for seconds in (0.02, 0.02, 0.05):
        bt.observe(0, seconds)
    assert bt.estimate(0) == pytest.approx(0.05)  # raised by the last
    bt.observe(0, 0.02)
    assert bt.estimate(0) == pytest.approx(0.11 / 4) and bt.per_hit == 0.0


def test_a_negative_cost_is_the_least_squares_fit_without_it() -> None:
    """Larger batches faster: no cost per hit, the fixed cost their mean; a line below 0 s
    at no hits: no fixed cost, the cost per hit the least squares line through 0."""
    bt = BatchTime()
    for hits, seconds in [(1_000, 0.3), (3_000, 0.1), (10_000, 0.05)]:
        bt.observe(hits, seconds)
    assert bt.per_hit == 0.0 and bt.fixed == pytest.approx(0.15)
    bt = BatchTime()
    batches = [(3_000, 0.1), (10_000, 1.0), (1_000, 0.001)]  # the last not slower than the fit
    for hits, seconds in batches:
        bt.observe(hits, seconds)
    slope = sum(h * s for h, s in batches) / sum(h * h for h, _ in batches)
    assert bt.fixed == 0.0 and bt.per_hit == pytest.approx(slope)


def test_a_batch_a_little_slower_raises_the_estimate_to_it() -> None:
    bt = BatchTime()
    for _ in range(WINDOW):
        bt.observe(1_000, 1.0)
    bt.observe(1_000, 1.5)
    assert bt.estimate(1_000) == pytest.approx(1.5)


def test_sizes_a_factor_spread_apart_give_both_costs() -> None:
    """Batches of one and of two like events: a factor 2 apart, no longer within it."""
    bt = BatchTime()
    bt.observe(1_000, 0.03)
    bt.observe(2_000, 0.04)
    assert bt.fixed == pytest.approx(0.02) and bt.per_hit == pytest.approx(1e-5)


def test_the_window_is_the_documented_32_batches() -> None:
    """docs/serve.md: "fitted to the last 32 batches": the 33rd before is forgotten, the
    32nd before still counts (its share of the window)."""
    bt = BatchTime()
    bt.observe(1_000, 100.0)
    for _ in range(31):
        bt.observe(1_000, 1.0)
    assert bt.estimate(1_000) == pytest.approx((100.0 + 31) / 32)
    bt.observe(1_000, 1.0)
    assert bt.estimate(1_000) == pytest.approx(1.0)


def test_a_window_given_is_the_one_kept() -> None:
    bt = BatchTime(window=2)
    for seconds in (9.0, 1.0, 1.0):
        bt.observe(1_000, seconds)
    assert bt.estimate(1_000) == pytest.approx(1.0)
