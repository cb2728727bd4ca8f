"""Who must collude to recover a client's update, and who has to agree before that changes.

An unverified round is private unless all k parties collude (additive shares;
SECURITY.md).  ``verify_norm`` lowers that (README "Verified clipping"): at k = 3
each party also holds the next party's share, so any 2 of the 3 parties suffice;
at other k the dealer's Beaver tuples let the dealer with any one party recover
inputs.  Counting the dealer as one server, a verified round is private against
coalitions of at most ``colluders - 1 = 1`` server.

Such a downgrade happens only with the consent of the side whose trust it spends:
each party's ``allow_verify_norm`` (its own config entry, off by default) and each
client's ``min_colluders`` floor (None, the default: only a coalition of all k
parties may recover its update).  The coordinator's request alone changes nothing.
The round spec states the result (``parties``, ``colluders``); parties and clients
recompute it rather than trust the statement.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import ConfigError, TrustError

if TYPE_CHECKING:
    from .spec import RoundSpec

__all__ = ["colluders", "describe", "check_party_consent", "check_client_consent"]


def colluders(parties: int, verify_norm: bool) -> int:
    """The fewest servers (parties; the dealer counts as one) whose coalition recovers an update."""
    return 2 if verify_norm else parties


def describe(parties: int, verify_norm: bool) -> str:
    """The threat model in words, for error messages and logs."""
    if not verify_norm:
        return f"private unless all {parties} parties collude"
    if parties == 3:
        return "private unless 2 of the 3 parties collude"
    return "private unless the dealer colludes with any one party"


def _check_statement(spec: "RoundSpec", parties: int, who: str, *, required: bool = True) -> None:
    if spec.parties != parties and (required or spec.parties is not None):
        raise TrustError(f"{who}: round {spec.round_id} was made for {spec.parties} parties, the deployment has "
                         f"{parties}")


def check_party_consent(spec: "RoundSpec", *, parties: int, allow_verify_norm: bool, has_dealer: bool,
                        who: str = "party") -> None:
    """A party's checks on OPEN_ROUND: the spec's threat statement (if any: clients insist on one) is right,
    and the party agreed to what verify_norm does."""
    _check_statement(spec, parties, who, required=False)
    if spec.verify_norm:
        if not allow_verify_norm:
            raise TrustError(f"{who} refuses verify_norm in round {spec.round_id}: it makes the round "
                             f"{describe(parties, True)}, and this party's config does not allow it "
                             "(allow_verify_norm = true in its [[parties]] entry)")
        if not has_dealer:
            raise ConfigError("verify_norm needs a dealer ([dealer] in the deployment) for MPC multiplication")


def check_client_consent(spec: "RoundSpec", *, parties: int, min_colluders: int | None, who: str = "client") -> None:
    """A client's check before it shares anything: the round's threat model meets its own floor."""
    _check_statement(spec, parties, who)
    need = parties if min_colluders is None else min_colluders
    if spec.colluders < need or (min_colluders is None and spec.verify_norm):
        raise TrustError(f"{who} refuses round {spec.round_id}: it is {describe(parties, spec.verify_norm)}; this "
                         f"client requires " + ("all parties to collude (set min_colluders to allow verify_norm)"
                                                if min_colluders is None else f"at least {need} colluders"))
