"""Client API: clip, encode and secret-share a model delta, and send one share to each party.

The client fetches the round's spec from every party and refuses to submit
unless all of them agree (a coordinator cannot hand parties different specs).
The upload is the dense share vector to the report's dense party (mpc_agg.sharing,
``dense_party``: it rotates with the report id; the leader in verify_norm rounds) and a
32-byte seed to each other party over its CURVE channel.  The dense share is 4 bytes per
coordinate in rounds whose spec states a 32-bit ring (mpc_agg.ring), 8 otherwise, plus the
8-byte weight coordinate.  Up to ``INLINE_MAX`` bytes it goes whole in a REPORT over CURVE,
like a seed; larger, once the dense party admits the upload over CURVE and hands out its
key, in AES-GCM-sealed chunks to its bulk endpoint (mpc_agg.bulk).
"""

from __future__ import annotations

import collections
import math
import os
import time
from types import TracebackType
from typing import Any, Mapping

import numpy as np
import torch

from mpc_agg.bulk import UploadSeal
from mpc_agg.config import Deployment, read_secret_key
from mpc_agg.dp import (PrivacyLedger, SkellamRound, csprng, l2_norm, randomized_round, rounded_norm_bound,
                        skellam_noise)
from mpc_agg.errors import ConfigError, EncodingError, NoiseFloorError, RangeError, SpecMismatchError, WireError
from mpc_agg.fanout import PartyLinks
from mpc_agg.fixedpoint import HEADROOM_BITS, encode
from mpc_agg.messages import request
from mpc_agg.ring import report_nbytes
from mpc_agg.sharing import ShareContext, dense_chunk, dense_party, new_seeds, seed_parties
from mpc_agg.spec import RoundSpec
from mpc_agg.trust import check_client_consent
from mpc_agg.transport import Requester, SecureContext
from mpc_agg.wire import INLINE_MAX, UPLOAD_WINDOW, MsgType

__all__ = ["SecureAggClient", "flatten_update", "clip_to_norm"]

_TORCH_INTS = {torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8}


def _to_numpy(name: str, v: Any) -> np.ndarray:
    """A real-valued float64 array, or EncodingError (strings, objects, complex and booleans are refused)."""
    if hasattr(v, "detach"):
        v = v.detach().cpu()
        if v.is_complex() or not (v.is_floating_point() or v.dtype in _TORCH_INTS):
            raise EncodingError(f"{name!r} has dtype {v.dtype}: updates must be real numbers")
        return v.double().numpy()
    try:
        arr = np.asarray(v)
    except (ValueError, TypeError) as exc:  # e.g. ragged nested lists
        raise EncodingError(f"{name!r} is not an array of numbers: {exc}") from None
    if arr.dtype.kind not in "iuf":
        raise EncodingError(f"{name!r} has dtype {arr.dtype}: updates must be real numbers")
    return arr.astype(np.float64, copy=False)


def clip_to_norm(x: np.ndarray, clip_norm: float) -> np.ndarray:
    """``x`` scaled down to L2 norm ``clip_norm`` if it is longer (x itself otherwise).

    The norm is taken of ``x / max|x|``, so it cannot overflow: an update of 1e200 is
    clipped like one of 1.0, never turned into zeros."""
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak == 0.0:
        return x
    rel = l2_norm(x / peak)  # in [1, sqrt(d)]: ||x|| = peak * rel
    if rel <= clip_norm / peak:
        return x
    return (x / peak) * (clip_norm / rel)


def flatten_update(spec: RoundSpec, update: Mapping[str, Any]) -> np.ndarray:
    """Flatten named tensors in the spec's canonical (sorted-name) order, checking shapes."""
    names = {n for n, _ in spec.shapes}
    if set(update) != names:
        missing, extra = sorted(names - set(update)), sorted(set(update) - names)
        raise EncodingError(f"update does not match round {spec.round_id}: missing {missing}, unexpected {extra}")
    parts = []
    for name, shape in spec.shapes:
        arr = _to_numpy(name, update[name])
        if tuple(arr.shape) != shape:
            raise EncodingError(f"{name!r} has shape {tuple(arr.shape)}, the round expects {shape}")
        parts.append(arr.reshape(-1))
    if len(parts) == 1:
        return parts[0]  # callers never write into it
    return np.concatenate(parts) if parts else np.zeros(0)


class SecureAggClient:
    """One client of a deployment, authenticated by its own CURVE key.

    Privacy floors are the client's own (keyword arguments, else its
    ``[[clients]]`` entry): ``submit`` refuses a round whose noise multiplier is
    below ``min_noise_multiplier``, that would raise this client's own epsilon
    (at ``delta``, kept in ``ledger_path``, by default the entry's) above
    ``max_epsilon``, or that fewer than ``min_colluders`` servers could break
    (default: only all k parties; verify_norm rounds refused, mpc_agg.trust).
    A round is charged to the ledger once its report may have reached a party,
    even when an acknowledgement then times out.
    """

    SPEC_CACHE = 16

    def __init__(
        self,
        deployment: Deployment,
        client_id: str,
        *,
        timeout_s: float = 30.0,
        min_noise_multiplier: float | None = None,
        max_epsilon: float | None = None,
        delta: float | None = None,
        ledger_path: str | os.PathLike[str] | None = None,
        min_colluders: int | None = None,
    ) -> None:
        cfg = deployment.client(client_id)
        secret = read_secret_key(cfg.private_key_file, f"client {client_id}")
        self.client_id = client_id
        self.timeout_s = timeout_s
        self.min_noise_multiplier = cfg.min_noise_multiplier if min_noise_multiplier is None else min_noise_multiplier
        self.max_epsilon = cfg.max_epsilon if max_epsilon is None else max_epsilon
        self.min_colluders = cfg.min_colluders if min_colluders is None else min_colluders
        self.ledger = PrivacyLedger.open(cfg.ledger_path if ledger_path is None else ledger_path,
                                         delta=cfg.delta if delta is None else delta)
        self.dep = deployment
        self.sctx = SecureContext()
        self._specs: dict[int, RoundSpec] = {}
        self._bulk: dict[int, Requester] = {}
        self._req = PartyLinks.to_parties(self.sctx, deployment.parties, public_key=cfg.public_key, secret_key=secret)

    @classmethod
    def from_config(cls, path: str | os.PathLike[str], client_id: str, **kw: Any) -> "SecureAggClient":
        return cls(Deployment.load(path), client_id, **kw)

    @property
    def bytes_sent(self) -> int:
        """Message bytes this client has sent to all parties so far (its upload cost)."""
        return self._req.bytes_sent + sum(b.bytes_sent for b in self._bulk.values())

    def close(self) -> None:
        self.sctx.close()

    def __enter__(self) -> "SecureAggClient":
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def fetch_spec(self, round_id: int) -> RoundSpec:
        """The round's spec, identical at every party, or SpecMismatchError.  Asked once per round (a
        round's spec never changes and its id is never reused); the last ``SPEC_CACHE`` are kept."""
        if round_id in self._specs:
            return self._specs[round_id]
        specs = self._req.ask_all(MsgType.GET_SPEC, request(MsgType.GET_SPEC, round=round_id), self.timeout_s)
        digests = {m.meta.get("digest") for m in specs}
        if len(digests) != 1:
            raise SpecMismatchError(f"parties disagree about round {round_id}'s spec: refusing to submit")
        spec = RoundSpec.from_json(specs[0].meta.get("spec"))
        if spec.digest() != specs[0].meta.get("digest") or spec.round_id != round_id:
            raise SpecMismatchError("a party's spec does not match its own digest")
        if len(self._specs) >= self.SPEC_CACHE:
            del self._specs[next(iter(self._specs))]
        self._specs[round_id] = spec
        return spec

    def submit(self, round_id: int, update: Mapping[str, Any], *, weight: float = 1.0, clip: bool = True) -> str:
        """Clip, weight, encode and share ``update``; returns the report id (hex).

        ``clip=False`` skips this client's own clipping (for tests of what the
        parties enforce).  The average revealed is sum(weight*update)/sum(weight).
        """
        if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight > 0):
            raise ConfigError(f"weight must be a positive finite number, got {weight!r}")
        spec = self.fetch_spec(round_id)
        if spec.max_weight is not None and weight > spec.max_weight:
            raise ConfigError(f"weight {weight} exceeds round {round_id}'s max_weight {spec.max_weight}")
        check_client_consent(spec, parties=len(self._req), min_colluders=self.min_colluders,
                             who=f"client {self.client_id}")
        if spec.verify_norm and weight != 1.0:
            raise ConfigError("rounds with verify_norm need weight=1.0 (the parties check it)")
        event = self._check_privacy(spec, weight)
        x = flatten_update(spec, update)
        if not np.all(np.isfinite(x)):
            raise EncodingError("update contains NaN or infinite values")
        if clip and spec.clip_norm is not None:
            x = clip_to_norm(x, self._clip_target(spec, noised=event is not None))
        bound = spec.report_bound()  # 32-bit rounds: what the ring was sized for (RangeError past it)
        if event is None:
            ring = np.empty(x.size + 1, dtype=np.int64)  # the weighted update, then the weight itself
            encode(x, spec.frac_bits, scale=weight, out=ring[:-1], bound=bound)
            encode([weight], spec.frac_bits, out=ring[-1:])
        else:
            ring = np.append(self._noised(x, event, clipped=clip, limit=bound), encode([weight], spec.frac_bits))
        try:
            return self.upload_encoded(spec, ring)
        finally:  # delivered, or perhaps delivered before a timeout: spent either way (once per round)
            if event is not None:
                self.ledger.record(round_id, event)

    def upload_encoded(self, spec: RoundSpec, ring: np.ndarray) -> str:
        """Share and upload an already encoded ring vector (``spec.dim`` values, then the weight
        coordinate), with no check of its contents; returns the report id (hex).

        This is what :meth:`submit` does after clipping and encoding, and what a malicious
        client can always do: the parties' own checks (SECURITY.md) must not rely on the client's.
        ``ring`` is overwritten (the dense share is computed in place).  In a 32-bit round the
        update coordinates are shared mod 2**32 (values outside the round's bound wrap)."""
        if ring.dtype != np.int64 or ring.shape != (spec.dim + 1,):
            raise EncodingError(f"an encoded report is an int64 vector of {spec.dim + 1} values")
        report_id = os.urandom(16)
        ctx = ShareContext(spec.round_id, self.client_id, report_id)
        k = len(self._req)
        dense = dense_party(spec, report_id, k)
        others = seed_parties(k, dense)
        seeds = new_seeds(k)
        meta = request(MsgType.REPORT, round=spec.round_id, client=self.client_id, report_id=report_id.hex(),
                       spec_digest=spec.digest())
        deadline = time.monotonic() + self.timeout_s
        sent = [self._req.send(i, MsgType.REPORT, meta, [seed]) for i, seed in zip(others, seeds)]  # seeds first
        if report_nbytes(spec.ring_bits, spec.dim) <= INLINE_MAX:  # a small dense share rides in its REPORT
            whole = dense_chunk(ring, seeds, ctx, start=0, dim=spec.dim, bits=spec.ring_bits, dense=dense)
            sent.append(self._req.send(dense, MsgType.REPORT, meta, [whole]))
        else:
            self._upload_dense(dense, meta, ring, seeds, ctx, deadline, spec.ring_bits)
        self._req.collect(sent, deadline)
        return report_id.hex()

    def _upload_dense(self, dense: int, meta: dict[str, Any], ring: np.ndarray, seeds: list[bytes],
                      ctx: ShareContext, deadline: float, bits: int) -> None:
        """Send party ``dense`` its share chunk by chunk (computed chunk by chunk), a few chunks in flight."""
        req, who = self._req[dense], f"party {dense}"
        go = req.wait(req.send(MsgType.REPORT_BEGIN, request(MsgType.REPORT_BEGIN, **meta,
                                                         deadline=time.time() + deadline - time.monotonic())),
                      deadline, who)
        chunk = go.meta.get("chunk")
        if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk <= 0 or chunk % 2:
            raise WireError(f"{who} announced an invalid chunk size")
        seal = UploadSeal(bytes.fromhex(go.meta["key"]), ctx.round_id, ctx.report_id)
        bulk = self._bulk_link(dense)
        pending: collections.deque[tuple[str, int]] = collections.deque()
        for start in range(0, ring.size, chunk):
            part = ring[start:start + chunk]  # (at 64 bits shared in place: the ring is not needed again)
            payload = dense_chunk(part, seeds, ctx, start=start, dim=ring.size - 1, bits=bits, dense=dense)
            head = request(MsgType.REPORT_CHUNK, report_id=meta["report_id"], offset=start)
            sealed = seal.seal_chunk(start, part.size, payload)
            pending.append((bulk.send(MsgType.REPORT_CHUNK, head, [sealed]), start + part.size))
            if len(pending) >= UPLOAD_WINDOW:
                self._check_ack(bulk, seal, *pending.popleft(), ring.size, deadline, who)
        while pending:
            self._check_ack(bulk, seal, *pending.popleft(), ring.size, deadline, who)

    @staticmethod
    def _check_ack(bulk: Requester, seal: UploadSeal, rid: str, upto: int, total: int, deadline: float,
                   who: str) -> None:
        """Wait for the party's acknowledgement of the values up to ``upto``: tagged under the upload key
        (mpc_agg.bulk), ``done`` on the last one, which the party sends after its fsync."""
        ack = bulk.wait(rid, deadline, who)
        if ack.meta["next"] != upto or ack.meta["done"] != (upto == total):
            raise WireError(f"{who} acknowledged another chunk than the one sent")
        seal.check_ack(upto, upto == total, ack.meta["tag"])

    def _bulk_link(self, i: int) -> Requester:
        """The link to party ``i``'s bulk endpoint (sealed chunks), made on first use."""
        if i not in self._bulk:
            self._bulk[i] = Requester(self.sctx.bulk_client(self.dep.parties[i].bulk_endpoint))
        return self._bulk[i]

    @staticmethod
    def _clip_target(spec: RoundSpec, *, noised: bool) -> float:
        """The norm to clip to.  In an un-noised verified round, clip_norm less what rounding to nearest may
        add (at most sqrt(d)/2 ring units, by the triangle inequality), so that the encoded report always
        passes the parties' check (mpc_agg.normcheck), even at the bound; noised rounds round randomly
        under a bound that already allows for it (mpc_agg.dp.rounded_norm_bound)."""
        clip_norm = float(spec.clip_norm or 0.0)
        if not spec.verify_norm or noised:
            return clip_norm
        target = clip_norm - math.sqrt(spec.dim) / 2.0 ** (spec.frac_bits + 1)
        if target < clip_norm / 2:
            raise ConfigError(f"round {spec.round_id}: frac_bits {spec.frac_bits} is too coarse for clip_norm "
                              f"{clip_norm} at d = {spec.dim}: rounding alone could exceed the bound")
        return target

    def _check_privacy(self, spec: RoundSpec, weight: float) -> SkellamRound | None:
        """Apply this client's own floors; returns the round's DP event (None when un-noised)."""
        if spec.noise_multiplier < self.min_noise_multiplier:
            raise NoiseFloorError(f"round {spec.round_id} has noise multiplier {spec.noise_multiplier}, below this "
                                  f"client's floor {self.min_noise_multiplier}")
        if spec.noise_multiplier == 0:
            if self.max_epsilon is not None:
                raise NoiseFloorError(f"round {spec.round_id} adds no noise; this client caps epsilon at "
                                      f"{self.max_epsilon}")
            return None
        if weight != 1.0:
            raise ConfigError("noised rounds need weight=1.0 (the DP sensitivity is clip_norm per client)")
        event = SkellamRound.from_spec(spec)
        if event is None:
            raise ConfigError("noised rounds need clip_norm")
        if self.max_epsilon is not None:
            eps = self.ledger.epsilon_with(event, spec.round_id)
            if eps > self.max_epsilon:
                raise NoiseFloorError(f"round {spec.round_id} would raise this client's epsilon to {eps:.4g} > "
                                      f"{self.max_epsilon} (delta={self.ledger.delta:g})")
        return event

    @staticmethod
    def _noised(x: np.ndarray, event: SkellamRound, *, clipped: bool, limit: int | None = None) -> np.ndarray:
        """Scale, randomly round (conditioned on the norm bound) and add this client's Skellam share;
        ``limit``: a 32-bit round's bound on |value| (RoundSpec.report_bound)."""
        rng = csprng()
        bound = rounded_norm_bound(event.clip_norm * event.scale, event.dim) if clipped else math.inf
        ints = randomized_round(x * event.scale, bound, rng)
        ints += skellam_noise(event.client_variance, x.size, rng)
        peak = int(np.max(np.abs(ints))) if ints.size else 0
        if peak >= 2 ** (63 - HEADROOM_BITS):
            raise RangeError("noised update would wrap the ring: lower frac_bits")
        if limit is not None and peak > limit:
            raise RangeError(f"noised update exceeds {limit} ring units, the bound this round's 32-bit ring "
                             "was sized for: clip the update")
        return ints

