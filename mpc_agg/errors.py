"""The package's exception hierarchy: one root, one subclass per failure kind.

Every error carries a stable ``code`` string; the wire format transports it so a
refusal raised inside a party process reaches the caller as the same type.
"""

from __future__ import annotations

__all__ = [
    "MpcAggError",
    "ConfigError",
    "EncodingError",
    "RangeError",
    "WireError",
    "AuthError",
    "SpecMismatchError",
    "RefusedError",
    "UnknownClientError",
    "DuplicateReportError",
    "RoundStateError",
    "CohortTooSmallError",
    "AlreadyRevealedError",
    "AggregationTimeout",
    "CommunicatorError",
    "BudgetExceededError",
    "NoiseFloorError",
    "NoiseRangeError",
    "RingSizeError",
    "TrustError",
    "SealError",
    "error_from_code",
]


class MpcAggError(Exception):
    """Root of every error raised by mpc-agg."""

    code = "error"


class ConfigError(MpcAggError):
    """A deployment file, key file or round parameter is invalid."""

    code = "config"


class EncodingError(MpcAggError):
    """A value cannot be encoded (NaN, infinity, wrong shape or dtype)."""

    code = "encoding"


class RangeError(EncodingError):
    """A fixed-point value would wrap around the ring: refused, never wrapped."""

    code = "range"


class WireError(MpcAggError):
    """A frame violates the wire format (magic, version, type, lengths, size)."""

    code = "wire"


class SealError(WireError):
    """A sealed chunk or its acknowledgement failed AES-GCM authentication (mpc_agg.bulk)."""

    code = "seal"


class AuthError(MpcAggError):
    """The peer is not allowed to do this (unknown key or wrong role)."""

    code = "auth"


class RefusedError(MpcAggError):
    """A party refused a request for a protocol reason."""

    code = "refused"


class SpecMismatchError(RefusedError):
    """Parties disagree about a round's spec, or a report does not match it."""

    code = "spec_mismatch"


class UnknownClientError(RefusedError):
    """The report comes from a client that is not in the deployment."""

    code = "unknown_client"


class DuplicateReportError(RefusedError):
    """A client's second report in a round, or a replayed report id."""

    code = "duplicate_report"


class RoundStateError(RefusedError):
    """The round does not exist, is already open, or is closed."""

    code = "round_state"


class CohortTooSmallError(RefusedError):
    """The agreed cohort is below some party's floor: nothing is revealed."""

    code = "cohort_too_small"


class AlreadyRevealedError(RefusedError):
    """The round's sum was already revealed once."""

    code = "already_revealed"


class BudgetExceededError(MpcAggError):
    """The next round would push epsilon past the configured privacy budget."""

    code = "budget_exceeded"


class NoiseFloorError(RefusedError):
    """A round's noise is below what this client accepts (its own floor), or would exceed its max epsilon."""

    code = "noise_floor"


class NoiseRangeError(ConfigError):
    """A noised round's parameters fall outside the exact noise sampler's range (mpc_agg.noise)."""

    code = "noise_range"


class RingSizeError(ConfigError):
    """A round's bounds do not fit the ring its spec states (mpc_agg.ring: 32-bit rounds)."""

    code = "ring_size"


class TrustError(RefusedError):
    """A round weakens who must collude beyond what this party or client consented to (mpc_agg.trust)."""

    code = "trust"


class AggregationTimeout(MpcAggError):
    """A party or peer did not answer within the timeout."""

    code = "timeout"


class CommunicatorError(MpcAggError):
    """The party-to-party (CrypTen) communicator failed."""

    code = "communicator"


_BY_CODE = {
    cls.code: cls
    for cls in (
        MpcAggError, ConfigError, EncodingError, RangeError, WireError, AuthError,
        RefusedError, SpecMismatchError, UnknownClientError, DuplicateReportError,
        RoundStateError, CohortTooSmallError, AlreadyRevealedError,
        AggregationTimeout, CommunicatorError, BudgetExceededError, NoiseFloorError,
        NoiseRangeError, RingSizeError, TrustError, SealError,
    )
}


def error_from_code(code: str, message: str) -> MpcAggError:
    """Rebuild the typed error a remote party reported (unknown codes → root)."""
    return _BY_CODE.get(code, MpcAggError)(message)
