"""Round specification: what every client and party of one round agrees on.

The spec is canonicalised (sorted tensor names, JSON with sorted keys) and
hashed with SHA-256; clients compare the hash across all parties before they
submit, so a coordinator cannot give parties different specs unnoticed.

A spec states what a round's privacy rests on: ``parties`` and ``colluders``
(mpc_agg.trust: the fewest servers whose coalition recovers an update) and, in
noised rounds, ``min_honest`` (clients assumed to add their noise; mpc_agg.dp).
Noised rounds must keep each client's noise in the exact sampler's range
(mpc_agg.noise); ``frac_bits=None`` picks the finest grid that does.

``ring_bits`` is the ring of the update coordinates' shares: 32 when the round's bounds
fit it (mpc_agg.ring; ``RoundSpec.create`` chooses it), else 64.  A 32-bit spec
whose bounds do not fit is refused (RingSizeError) wherever it is read.  The JSON
form omits ``ring_bits`` at 64 and ``max_cohort`` when unset, so specs written
before these fields existed keep their meaning and their digest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Mapping

from . import noise, ring, trust
from .errors import ConfigError, NoiseRangeError, RingSizeError, WireError
from .fixedpoint import DEFAULT_FRAC_BITS, MAX_FRAC_BITS, MAX_REPORTS_PER_ROUND, max_abs_value
from .wire import PROTOCOL_VERSION

__all__ = ["RoundSpec"]

MAX_DIM = 1 << 31


@dataclass(frozen=True)
class RoundSpec:
    """One round's parameters. ``shapes`` is sorted by name; ``dim`` counts values."""

    round_id: int
    shapes: tuple[tuple[str, tuple[int, ...]], ...]
    min_clients: int = 3
    clip_norm: float | None = None
    noise_multiplier: float = 0.0
    frac_bits: int = DEFAULT_FRAC_BITS
    verify_norm: bool = False
    max_weight: float | None = None
    """Largest weight a report may carry (None: the largest encodable); the parties drop reports
    whose weight is not in (0, max_weight] before the reveal (needs the dealer)."""
    min_honest: int | None = None
    """clients assumed to add their share of the noise (None: min_clients, resolved on construction)"""
    parties: int | None = None
    """k, the number of parties (set by the coordinator; parties and clients check it)"""
    max_cohort: int | None = None
    """most reports a party accepts in this round (None: MAX_REPORTS_PER_ROUND); bounds the sum"""
    ring_bits: int = 64
    """ring of the update coordinates' shares: 32 only when the bounds fit (mpc_agg.ring)"""

    def __post_init__(self) -> None:
        if not isinstance(self.round_id, int) or isinstance(self.round_id, bool) or not 0 <= self.round_id < 2**63:
            raise ConfigError(f"round_id must be a non-negative int, got {self.round_id!r}")
        if not self.shapes:
            raise ConfigError("a round needs at least one named tensor")
        names = [n for n, _ in self.shapes]
        if names != sorted(names) or len(set(names)) != len(names):
            raise ConfigError("shapes must be sorted by unique name (use RoundSpec.create)")
        for name, shape in self.shapes:
            if not isinstance(name, str) or not name:
                raise ConfigError(f"bad tensor name {name!r}")
            if any((not isinstance(s, int)) or isinstance(s, bool) or s < 0 for s in shape):
                raise ConfigError(f"bad shape {shape!r} for {name!r}")
        if self.dim > MAX_DIM:
            raise ConfigError(f"{self.dim} values exceed the limit {MAX_DIM}")
        if not isinstance(self.min_clients, int) or self.min_clients < 1:
            raise ConfigError("min_clients must be an int >= 1")
        if self.clip_norm is not None and not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ConfigError("clip_norm must be a positive finite number or None")
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise ConfigError("noise_multiplier must be >= 0")
        if self.noise_multiplier > 0 and self.clip_norm is None:
            raise ConfigError("noise needs clip_norm: the noise scale is noise_multiplier * clip_norm")
        if not isinstance(self.frac_bits, int) or not 0 <= self.frac_bits <= MAX_FRAC_BITS:
            raise ConfigError(f"frac_bits must be in [0, {MAX_FRAC_BITS}]")
        if self.max_weight is not None and not (
                math.isfinite(self.max_weight) and 0 < self.max_weight < max_abs_value(self.frac_bits)):
            raise ConfigError(f"max_weight must be in (0, {max_abs_value(self.frac_bits):g}) at frac_bits "
                              f"{self.frac_bits}")
        if self.min_honest is None:
            object.__setattr__(self, "min_honest", self.min_clients)  # frozen: resolved once, here
        if not (isinstance(self.min_honest, int) and 1 <= self.min_honest <= self.min_clients):
            raise ConfigError("min_honest must be an int in [1, min_clients]")
        if self.parties is not None and not (isinstance(self.parties, int) and self.parties >= 2):
            raise ConfigError("parties must be an int >= 2")
        if self.noise_multiplier > 0 and self.clip_norm is not None:
            noise.check_noise_range(self.noise_multiplier, self.clip_norm, self.frac_bits, self.noise_clients)
        if self.verify_norm:
            if self.clip_norm is None:
                raise ConfigError("verify_norm needs clip_norm")
            self.norm_bound()
        if self.max_cohort is not None and not (isinstance(self.max_cohort, int) and not isinstance(
                self.max_cohort, bool) and self.min_clients <= self.max_cohort <= MAX_REPORTS_PER_ROUND):
            raise ConfigError(f"max_cohort must be an int in [min_clients, {MAX_REPORTS_PER_ROUND}] or None")
        if self.ring_bits not in ring.RING_BITS or isinstance(self.ring_bits, bool):
            raise ConfigError(f"ring_bits must be one of {ring.RING_BITS}, got {self.ring_bits!r}")
        if self.ring_bits == 32:
            self._check_ring32()

    def _check_ring32(self) -> None:
        """RingSizeError unless a cohort's honest sum provably fits Z_2^32 (mpc_agg.ring)."""
        if self.verify_norm:
            raise RingSizeError("verify_norm rounds run at 64 bits (the norm check is MPC on 64-bit shares)")
        bound = self.sum_bound()
        if not ring.fits(32, bound):
            if self.clip_norm is None:
                why = "it has no clip_norm"
            elif math.isinf(bound):
                why = "it has no max_weight"
            else:
                why = (f"a cohort of up to {self.cohort_limit} reports may sum to |coordinate| {bound:.4g} "
                       f"ring units >= 2^{31 - ring.RING_HEADROOM_BITS}")
            raise RingSizeError(f"round {self.round_id} does not fit a 32-bit ring: {why} (clip_norm="
                                f"{self.clip_norm}, max_weight={self.max_weight}, frac_bits={self.frac_bits}, "
                                f"noise_multiplier={self.noise_multiplier}); use 64 bits, or lower frac_bits, "
                                "max_cohort or max_weight")

    @property
    def cohort_limit(self) -> int:
        """The most reports a cohort of this round can hold (each party refuses more)."""
        return MAX_REPORTS_PER_ROUND if self.max_cohort is None else self.max_cohort

    def sum_bound(self, cohort: int | None = None) -> float:
        """Largest |coordinate| (ring units) of the sum of ``cohort`` (default: the most) honest reports;
        inf without clip_norm, or without max_weight in un-noised rounds (noised rounds have weight 1)."""
        weight = 1.0 if self.noise_multiplier > 0 else self.max_weight
        var = noise.client_variance(self.noise_multiplier, self.clip_norm or 0.0, self.frac_bits, self.noise_clients)
        return ring.sum_bound(clip_norm=self.clip_norm, frac_bits=self.frac_bits, max_weight=weight,
                              cohort=self.cohort_limit if cohort is None else cohort, dim=self.dim,
                              noise_lambda=noise.poisson_lambda(var) if var else 0)

    def report_bound(self) -> int | None:
        """In 32-bit rounds, the largest |coordinate| (ring units) one honest report has; None at 64 bits."""
        return None if self.ring_bits == 64 else math.floor(self.sum_bound(1))

    def fits_ring(self, bits: int) -> bool:
        """Whether this round may run with ``bits``-bit shares."""
        return bits == 64 or (not self.verify_norm and ring.fits(bits, self.sum_bound()))

    def weight_bound(self) -> int:
        """The largest weight coordinate (ring units) a report may carry: max_weight * 2**frac_bits."""
        top = max_abs_value(self.frac_bits) if self.max_weight is None else self.max_weight
        return int(math.floor(top * 2.0**self.frac_bits))

    def norm_bound(self) -> int:
        """Squared-norm bound (ring units) the parties check in verified rounds (mpc_agg.normcheck)."""
        from .normcheck import norm_bound
        from .wraptest import check_fits

        if self.clip_norm is None:
            raise ConfigError("verify_norm needs clip_norm")
        client_var = noise.client_variance(self.noise_multiplier, self.clip_norm, self.frac_bits, self.noise_clients)
        if client_var:
            client_var = 2.0 * noise.poisson_lambda(client_var)  # what the sampler draws (rounded up)
        bound = norm_bound(clip_norm=self.clip_norm, frac_bits=self.frac_bits, dim=self.dim,
                           noise_variance=client_var)
        check_fits(bound)  # the wraparound tests must be sound at this bound (mpc_agg.wraptest)
        return bound

    @classmethod
    def create(
        cls,
        round_id: int,
        shapes: Mapping[str, tuple[int, ...] | list[int]],
        *,
        min_clients: int = 3,
        clip_norm: float | None = None,
        noise_multiplier: float = 0.0,
        frac_bits: int | None = None,
        verify_norm: bool = False,
        max_weight: float | None = None,
        min_honest: int | None = None,
        parties: int | None = None,
        max_cohort: int | None = None,
        ring_bits: int | None = None,
    ) -> "RoundSpec":
        """``frac_bits=None``: DEFAULT_FRAC_BITS, or in noised rounds the largest value that keeps
        each client's noise in the exact sampler's range (NoiseRangeError if none does); in verified
        rounds, the largest such value at which the wraparound tests are sound (mpc_agg.wraptest).
        ``ring_bits=None``: 32 when the round's bounds fit it (mpc_agg.ring), else 64; 32 when they
        do not fit raises RingSizeError."""
        candidates = [frac_bits]
        if frac_bits is None and noise_multiplier > 0 and clip_norm is not None:
            honest = min_clients if min_honest is None else min_honest
            fits = noise.noised_frac_bits(float(noise_multiplier), float(clip_norm), honest, MAX_FRAC_BITS) \
                if isinstance(honest, int) and honest >= 1 else [DEFAULT_FRAC_BITS]
            if not fits:
                raise NoiseRangeError(f"no frac_bits keeps the noise of z={noise_multiplier}, C={clip_norm} "
                                      "in the exact sampler's range: change noise_multiplier * clip_norm")
            candidates = sorted(fits, reverse=True) if verify_norm else [max(fits)]
        elif frac_bits is None and verify_norm:
            candidates = list(range(DEFAULT_FRAC_BITS, 7, -1))
        try:
            norm = tuple(sorted((str(k), tuple(int(s) for s in v)) for k, v in shapes.items()))
        except (TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"shapes must map names to tuples of ints: {exc}") from None
        def make(f: int | None) -> "RoundSpec":
            return cls(round_id=round_id, shapes=norm, min_clients=min_clients,
                       clip_norm=None if clip_norm is None else float(clip_norm),
                       noise_multiplier=float(noise_multiplier), frac_bits=DEFAULT_FRAC_BITS if f is None else f,
                       verify_norm=bool(verify_norm), max_weight=None if max_weight is None else float(max_weight),
                       min_honest=min_honest, parties=parties, max_cohort=max_cohort)
        spec = None
        for f in candidates[:-1]:
            try:
                spec = make(f)
                break
            except ConfigError:  # e.g. the wraparound tests unsound at this grid: try a coarser one
                continue
        spec = spec or make(candidates[-1])
        if ring_bits == 32 or (ring_bits is None and spec.fits_ring(32)):
            return dataclasses.replace(spec, ring_bits=32)  # checked again: RingSizeError if it does not fit
        if ring_bits not in (None, 64):
            raise ConfigError(f"ring_bits must be 32, 64 or None, got {ring_bits!r}")
        return spec

    @property
    def dim(self) -> int:
        return sum(math.prod(s) for _, s in self.shapes)

    @property
    def noise_clients(self) -> int:
        """How many clients' noise adds up to the target variance (min_honest, resolved)."""
        return self.min_clients if self.min_honest is None else self.min_honest

    @property
    def colluders(self) -> int | None:
        """The fewest servers whose coalition recovers an update (None when ``parties`` is unset)."""
        return None if self.parties is None else trust.colluders(self.parties, self.verify_norm)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": PROTOCOL_VERSION,
            "round_id": self.round_id,
            "shapes": [[n, list(s)] for n, s in self.shapes],
            "min_clients": self.min_clients,
            "clip_norm": self.clip_norm,
            "noise_multiplier": self.noise_multiplier,
            "frac_bits": self.frac_bits,
            "verify_norm": self.verify_norm,
            "max_weight": self.max_weight,
            "min_honest": self.noise_clients,
            "parties": self.parties,
            "colluders": self.colluders,
            **({} if self.max_cohort is None else {"max_cohort": self.max_cohort}),
            **({} if self.ring_bits == 64 else {"ring_bits": self.ring_bits}),
        }

    @classmethod
    def from_json(cls, obj: Any) -> "RoundSpec":
        try:
            if obj["version"] != PROTOCOL_VERSION:
                raise WireError(f"spec version {obj['version']!r} unsupported")
            spec = cls(
                round_id=int(obj["round_id"]),
                shapes=tuple((str(n), tuple(int(x) for x in s)) for n, s in obj["shapes"]),
                min_clients=int(obj["min_clients"]),
                clip_norm=None if obj["clip_norm"] is None else float(obj["clip_norm"]),
                noise_multiplier=float(obj["noise_multiplier"]),
                frac_bits=int(obj["frac_bits"]),
                verify_norm=bool(obj["verify_norm"]),
                max_weight=None if obj.get("max_weight") is None else float(obj["max_weight"]),
                min_honest=int(obj["min_honest"]),
                parties=None if obj["parties"] is None else int(obj["parties"]),
                max_cohort=None if obj.get("max_cohort") is None else int(obj["max_cohort"]),
                ring_bits=int(obj.get("ring_bits", 64)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise WireError(f"malformed round spec: {exc!r}") from None
        except (NoiseRangeError, RingSizeError):
            raise
        except ConfigError as exc:
            raise WireError(f"invalid round spec: {exc}") from None
        if obj["colluders"] != spec.colluders:
            raise WireError(f"round spec states colluders={obj['colluders']!r}, its parameters give {spec.colluders}")
        return spec

    def digest(self) -> str:
        canon = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(canon).hexdigest()
