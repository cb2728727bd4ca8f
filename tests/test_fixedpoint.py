import numpy as np
import pytest

from mpc_agg.errors import EncodingError, MpcAggError, RangeError
from mpc_agg.fixedpoint import HEADROOM_BITS, decode, encode, max_abs_value


@pytest.mark.parametrize("frac_bits", [0, 8, 16, 24, 40])
def test_round_trip_error_is_half_an_ulp(frac_bits: int) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(0, 10, size=10_000)
    x = x[np.abs(x) < max_abs_value(frac_bits)]
    err = np.abs(decode(encode(x, frac_bits), frac_bits) - x)
    assert err.max() <= 2.0 ** -(frac_bits + 1) + 1e-12


def test_negative_fractions_decode_exactly_where_crypten_fails() -> None:
    # CrypTen 0.4.1's FixedPointEncoder.decode is off by 1.0 for some negatives.
    x = np.array([-0.5, -1.25, -3.0000152587890625, -2.0 ** -16, -7.75, -1e-3])
    assert np.array_equal(decode(encode(x, 16), 16), np.round(x * 2**16) / 2**16)


def test_rounds_to_nearest_not_truncation() -> None:
    assert encode([0.9, -0.9, 0.4, -0.4], 0).tolist() == [1, -1, 0, 0]


def test_tiny_llm_delta_survives_with_enough_frac_bits() -> None:
    x = np.full(100, 1e-6)
    assert np.all(encode(x, 16) == 0)  # CrypTen's default precision loses it
    assert np.allclose(decode(encode(x, 40), 40), x, rtol=1e-5)


def test_range_overflow_is_an_error_never_a_wrap() -> None:
    limit = max_abs_value(24)
    assert limit == 2.0 ** (63 - HEADROOM_BITS - 24)
    encode([limit * 0.999], 24)
    with pytest.raises(RangeError):
        encode([limit], 24)
    with pytest.raises(RangeError):
        encode([-limit * 1.5], 24)


@pytest.mark.parametrize("bad", [[np.nan], [np.inf], [-np.inf]])
def test_non_finite_is_rejected(bad: list[float]) -> None:
    with pytest.raises(EncodingError):
        encode(bad, 16)


@pytest.mark.parametrize("frac_bits", [-1, 47, 2.5, True])
def test_bad_frac_bits(frac_bits: object) -> None:
    with pytest.raises(EncodingError):
        encode([1.0], frac_bits)  # type: ignore[arg-type]


def test_decode_requires_int64() -> None:
    with pytest.raises(EncodingError):
        decode(np.zeros(3, dtype=np.float64), 16)


def test_errors_share_one_root() -> None:
    assert issubclass(RangeError, MpcAggError) and issubclass(EncodingError, MpcAggError)
