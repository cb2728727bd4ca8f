"""mpc-agg: secure aggregation of federated-learning updates among non-colluding parties.

Pure layers: ``fixedpoint`` and ``ring`` (ring encoding, 64- or 32-bit) → ``sharing`` (additive shares with
AES-CTR seed expansion) → ``wire`` (versioned binary format) → ``transport``
(CURVE ZeroMQ) → ``crypten_glue`` (CrypTen communicator and dealer provider).
Role processes live in ``parties``; the client API in ``fl_client``.
"""

from .config import Deployment, generate_deployment
from .errors import (
    AggregationTimeout,
    AlreadyRevealedError,
    AuthError,
    BudgetExceededError,
    CohortTooSmallError,
    CommunicatorError,
    ConfigError,
    DuplicateReportError,
    EncodingError,
    MpcAggError,
    NoiseFloorError,
    NoiseRangeError,
    RangeError,
    RefusedError,
    RingSizeError,
    RoundStateError,
    SpecMismatchError,
    TrustError,
    UnknownClientError,
    WireError,
)
from .fixedpoint import DEFAULT_FRAC_BITS, decode, encode
from .spec import RoundSpec
from .wire import PROTOCOL_VERSION

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "PROTOCOL_VERSION",
    "DEFAULT_FRAC_BITS",
    "Deployment",
    "RoundSpec",
    "generate_deployment",
    "encode",
    "decode",
    "MpcAggError",
    "ConfigError",
    "EncodingError",
    "RangeError",
    "WireError",
    "AuthError",
    "RefusedError",
    "SpecMismatchError",
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
]
