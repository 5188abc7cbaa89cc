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


@pytest.mark.parametrize("df, needed", [(1, 6.314), (15, 1.753), (21, 1.725), (24, 1.725), (30, 1.697),
                                        (31, 1.645), (1000, 1.645)])
def test_t_needed_takes_the_more_cautious_listed_value(df, needed):
    assert sig.t_needed(df) == needed


def test_t_needed_refuses_no_degrees_of_freedom():
    with pytest.raises(ValueError, match="at least 1"):
        sig.t_needed(0)


def test_a_rise_of_every_part_is_significant_and_one_part_is_not():
    before = [0.1, 0.3, 0.2, 0.05, 0.4, 0.1, 0.2, 0.3]
    everywhere = sig.paired_rise([b + 0.05 + 0.01 * (i % 3) for i, b in enumerate(before)], before)
    assert everywhere.parts == 8 and everywhere.rise == pytest.approx(0.05 + 0.01 * 7 / 8)
    assert everywhere.significant and everywhere.t > everywhere.needed == 1.895
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


@pytest.mark.parametrize("after, before", [(None, [1.0, 2.0]), ([1.0, 2.0], None), ([1.0], [2.0]),
                                           ([1.0, 2.0, 3.0], [1.0, 2.0])])
def test_parts_that_cannot_say_give_no_test(after, before):
    assert sig.paired_rise(after, before) is None
