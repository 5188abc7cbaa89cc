"""converge.decide.significance: a paired difference against its noise, on scripted parts."""

import json
import math

import pytest

from converge.decide import significance as sig


@pytest.mark.parametrize("a, b, expected", [
    ((1.0, 2.0, 3.0), (1.0, 2.0, 3.0), 0.0),             # the same parts: no noise
    ((1.0, 2.0), (0.0, 2.0), 0.5),                       # differences 1, 0: stdev 0.707 / sqrt(2)
    ((1.0,), (0.0,), None),                              # one part: no spread to measure
    ((1.0, 2.0), (1.0,), None),                          # parts that do not pair up
    ((1.0, float("nan")), (1.0, 2.0), None),
])
def test_paired_standard_error(a, b, expected):
    found = sig.paired_standard_error(a, b)
    assert found == (None if expected is None else pytest.approx(expected))


# Printed tables of Student's t (one-sided): 95 %, 97.5 % and 99 % quantiles.
@pytest.mark.parametrize("df, level, needed", [(1, 0.05, 6.314), (2, 0.05, 2.920), (3, 0.05, 2.353),
                                               (4, 0.05, 2.132), (15, 0.05, 1.753), (30, 0.05, 1.697),
                                               (120, 0.05, 1.658), (1, 0.025, 12.706), (10, 0.025, 2.228),
                                               (15, 0.01, 2.602), (5, 0.01, 3.365), (60, 0.01, 2.390)])
def test_t_needed_is_students_quantile(df, level, needed):
    assert sig.t_needed(df, level) == pytest.approx(needed, abs=5e-4)


@pytest.mark.parametrize("df", [1, 2, 5, 16])
def test_the_tail_is_symmetric_and_halves_at_zero(df):
    assert sig.t_upper_tail(0.0, df) == pytest.approx(0.5)
    assert sig.t_upper_tail(1.3, df) + sig.t_upper_tail(-1.3, df) == pytest.approx(1.0)
    assert sig.t_upper_tail(sig.t_needed(df, 0.01), df) == pytest.approx(0.01, rel=1e-9)


def test_t_needed_refuses_no_degrees_of_freedom_and_levels_outside_the_tail():
    with pytest.raises(ValueError, match="at least 1"):
        sig.t_needed(0)
    with pytest.raises(ValueError, match="level"):
        sig.t_needed(5, 0.5)


def test_a_rise_of_every_part_is_significant_and_one_part_is_not():
    before = [0.1, 0.3, 0.2, 0.05, 0.4, 0.1, 0.2, 0.3]
    everywhere = sig.paired_rise([b + 0.05 + 0.01 * (i % 3) for i, b in enumerate(before)], before)
    assert everywhere.parts == 8 and everywhere.rise == pytest.approx(0.05 + 0.01 * 7 / 8)
    assert everywhere.significant and everywhere.t > everywhere.needed == pytest.approx(1.895, abs=5e-4)
    # the same mean rise from one part alone (one sample grown confidently wrong): within the noise
    one = sig.paired_rise([b + (0.8 if i == 1 else 0.0) for i, b in enumerate(before)], before)
    assert one.rise == pytest.approx(0.1) and not one.significant
    # a fall is never a significant rise
    assert not sig.paired_rise([b - 0.05 for b in before], before).significant


def test_without_noise_the_sign_decides_and_the_evidence_stays_json():
    same = sig.PairedRise(rise=0.0, standard_error=0.0, parts=4)
    rose = sig.PairedRise(rise=0.1, standard_error=0.0, parts=4)
    assert same.t == 0.0 and not same.significant
    assert rose.t == math.inf and rose.significant
    evidence = rose.evidence()
    assert evidence == {"rise_t": None, "rise_t_needed": 2.353, "rise_parts": 4, "rise_significant": True}
    json.dumps(evidence, allow_nan=False)


def test_each_look_at_a_rise_is_held_to_its_share_of_the_level():
    """The live test is repeated every epoch while a rise lasts: breast cancer (91 validation rows) was told
    overfitting at t = 1.91 two epochs after its kept one, where the end of the run measured 1.0."""
    once = sig.PairedRise(rise=0.0191, standard_error=0.01, parts=16)
    third = sig.PairedRise(rise=0.0191, standard_error=0.01, parts=16, looks=3)
    assert once.significant and not third.significant
    assert third.needed == pytest.approx(sig.t_needed(15, 0.05 / 3)) and third.needed > once.needed
    assert third.evidence()["rise_looks"] == 3 and "rise_looks" not in once.evidence()
    assert sig.paired_rise([1.0, 2.0, 3.5], [0.5, 1.4, 3.0], looks=0).looks == 1   # never fewer than one


@pytest.mark.parametrize("after, before", [(None, [1.0, 2.0]), ([1.0, 2.0], None), ([1.0], [2.0]),
                                           ([1.0, 2.0, 3.0], [1.0, 2.0])])
def test_parts_that_cannot_say_give_no_test(after, before):
    assert sig.paired_rise(after, before) is None
