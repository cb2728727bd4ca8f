"""Deployment configuration: who the parties, dealer, coordinator and clients are.

``deployment.toml`` holds endpoints and CURVE public keys (Z85); private keys
live in separate files (mode 0600) referenced by path relative to the TOML file,
so each organisation only needs its own private key file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import zmq

from .errors import ConfigError
from .fixedpoint import MAX_REPORTS_PER_ROUND

__all__ = ["PartyConfig", "ClientConfig", "Deployment", "generate_deployment", "free_ports"]


@dataclass(frozen=True)
class PartyConfig:
    id: int
    client_endpoint: str
    peer_endpoint: str
    public_key: str
    private_key_file: Path | None
    min_clients: int
    state_dir: Path
    allow_verify_norm: bool = False
    """this party's consent to verify_norm rounds, which lower who must collude (mpc_agg.trust)"""
    max_reports: int = MAX_REPORTS_PER_ROUND
    """reports accepted per round (at most MAX_REPORTS_PER_ROUND, so the sum cannot wrap)"""
    bulk_endpoint: str = ""
    """where clients send AES-GCM-sealed share chunks (mpc_agg.bulk); not a CURVE socket"""


@dataclass(frozen=True)
class ClientConfig:
    """A client's entry; the privacy fields are the client's own floor, not the coordinator's."""

    id: str
    public_key: str
    private_key_file: Path | None
    min_noise_multiplier: float = 0.0
    max_epsilon: float | None = None
    delta: float = 1e-5
    min_colluders: int | None = None
    """fewest servers that may recover this client's update; None: all k parties (no verify_norm rounds)"""
    ledger_path: Path | None = None
    """this client's privacy ledger (default state/client-<id>/privacy-ledger.json beside the TOML file)"""


@dataclass(frozen=True)
class Deployment:
    """A parsed, validated ``deployment.toml``."""

    path: Path
    parties: tuple[PartyConfig, ...]
    clients: tuple[ClientConfig, ...]
    coordinator_public_key: str
    coordinator_private_key_file: Path | None
    dealer_endpoint: str | None = None
    dealer_public_key: str | None = None
    dealer_private_key_file: Path | None = None
    _client_by_key: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Deployment":
        """Read and check ``path``; every problem is a ConfigError that names the file."""
        p = Path(path)
        raw, base = _read_toml(p), p.parent
        try:
            parties = tuple(_party_entry(s, base) for s in raw["parties"])
            clients = tuple(_client_entry(c, base) for c in raw.get("clients", []))
            coord = raw["coordinator"]
            dealer = raw.get("dealer")
            dep = cls(
                path=p,
                parties=tuple(sorted(parties, key=lambda x: x.id)),
                clients=clients,
                coordinator_public_key=_check_key(str(coord["public_key"])),
                coordinator_private_key_file=_keyfile(base, coord.get("private_key_file")),
                dealer_endpoint=None if dealer is None else str(dealer["endpoint"]),
                dealer_public_key=None if dealer is None else _check_key(str(dealer["public_key"])),
                dealer_private_key_file=None if dealer is None else _keyfile(base, dealer.get("private_key_file")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{p}: missing or invalid field: {exc}") from None
        dep._check()
        dep._client_by_key.update({c.public_key: c.id for c in clients})
        return dep

    def _check(self) -> None:
        p, parties, clients = self.path, self.parties, self.clients
        endpoints = [e for x in parties for e in (x.client_endpoint, x.peer_endpoint, x.bulk_endpoint)]
        if len(set(endpoints)) != len(endpoints):
            raise ConfigError(f"{p}: two endpoints are the same (each party needs its own client, peer and "
                              "bulk endpoints)")
        if len(parties) < 2:
            raise ConfigError(f"{p}: at least 2 parties are needed, found {len(parties)}")
        if [x.id for x in parties] != list(range(len(parties))):
            raise ConfigError(f"{p}: party ids must be 0..{len(parties) - 1}")
        if any(x.min_clients < 1 for x in parties):
            raise ConfigError(f"{p}: min_clients must be >= 1")
        if any(not 1 <= x.max_reports <= MAX_REPORTS_PER_ROUND for x in parties):
            raise ConfigError(f"{p}: max_reports must be in [1, {MAX_REPORTS_PER_ROUND}] (the ring's headroom)")
        if any(c.min_colluders is not None and c.min_colluders < 2 for c in clients):
            raise ConfigError(f"{p}: a client's min_colluders must be >= 2 (or absent: all parties)")
        if len({c.id for c in clients}) != len(clients):
            raise ConfigError(f"{p}: duplicate client ids")
        all_keys = [x.public_key for x in parties] + [c.public_key for c in clients] + [self.coordinator_public_key]
        if len(set(all_keys)) != len(all_keys):
            raise ConfigError(f"{p}: a public key is used by two roles")

    def party(self, party_id: int) -> PartyConfig:
        for x in self.parties:
            if x.id == party_id:
                return x
        raise ConfigError(f"no party with id {party_id} in {self.path}")

    def client(self, client_id: str) -> ClientConfig:
        for c in self.clients:
            if c.id == client_id:
                return c
        raise ConfigError(f"no client {client_id!r} in {self.path}")

    def client_id_for_key(self, public_key: str) -> str | None:
        return self._client_by_key.get(public_key)


def _flag(v: Any, name: str) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{name} must be true or false, got {v!r}")
    return v


def _check_key(z85: str) -> str:
    if len(z85) != 40:
        raise ConfigError(f"a CURVE public key is 40 Z85 characters, got {len(z85)}")
    try:
        zmq.utils.z85.decode(z85)
    except Exception:
        raise ConfigError("public key is not valid Z85") from None
    return z85


def read_secret_key(path: Path | None, role: str) -> str:
    """Read a Z85 CURVE secret key file, refusing group/world-readable files."""
    if path is None:
        raise ConfigError(f"the deployment has no private key file for {role}")
    try:
        mode = path.stat().st_mode
        text = path.read_text("ascii").strip()
    except FileNotFoundError:
        raise ConfigError(f"private key file {path} for {role} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read private key file {path} for {role}: {getattr(exc, 'strerror', exc)}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"private key file {path} must not be readable by group/others (chmod 600)")
    _check_key(text)
    return text


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """Ask the OS for ``n`` currently free TCP ports on ``host``."""
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def _toml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string of printable text is a valid TOML basic string


_KEY_NAME = re.compile(r"(coordinator|dealer|party-\d+|client-\d+)\.key")


def _clear_deployment(out: Path, force: bool) -> None:
    """Refuse to write over an earlier keygen's output, or (``force``) delete exactly what it wrote."""
    keys = [p for p in (out / "keys").glob("*.key") if _KEY_NAME.fullmatch(p.name)]
    states = [p for p in (out / "state").glob("party-*") if p.is_dir()]
    toml = out / "deployment.toml"
    found = ([toml] if toml.exists() else []) + keys + states
    if not found:
        return
    if not force:
        raise ConfigError(f"{out} already holds a deployment ({len(keys)} key files, {len(states)} party state "
                          "directories); choose another --out, or pass --force to replace it (its keys and "
                          "party state are deleted)")
    for p in found:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()



def _read_toml(p: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(p.read_text("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"deployment file {p} not found (create one with `mpc-agg keygen`)") from None
    except IsADirectoryError:
        raise ConfigError(f"{p} is a directory; give the deployment file, e.g. {p / 'deployment.toml'}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read deployment file {p}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None


def _keyfile(base: Path, v: Any) -> Path | None:
    return None if v in (None, "") else (base / str(v))


def _party_entry(s: dict[str, Any], base: Path) -> PartyConfig:
    return PartyConfig(
        id=int(s["id"]),
        client_endpoint=str(s["client_endpoint"]),
        peer_endpoint=str(s["peer_endpoint"]),
        public_key=_check_key(str(s["public_key"])),
        private_key_file=_keyfile(base, s.get("private_key_file")),
        min_clients=int(s.get("min_clients", 3)),
        state_dir=base / str(s.get("state_dir", f"state/party-{s['id']}")),
        allow_verify_norm=_flag(s.get("allow_verify_norm", False), "allow_verify_norm"),
        max_reports=int(s.get("max_reports", MAX_REPORTS_PER_ROUND)),
        bulk_endpoint=str(s["bulk_endpoint"]),
    )


def _client_entry(c: dict[str, Any], base: Path) -> ClientConfig:
    return ClientConfig(
        id=str(c["id"]),
        public_key=_check_key(str(c["public_key"])),
        private_key_file=_keyfile(base, c.get("private_key_file")),
        min_noise_multiplier=float(c.get("min_noise_multiplier", 0.0)),
        max_epsilon=None if c.get("max_epsilon") is None else float(c["max_epsilon"]),
        delta=float(c.get("delta", 1e-5)),
        min_colluders=None if c.get("min_colluders") is None else int(c["min_colluders"]),
        ledger_path=base / str(c.get("ledger_path", f"state/client-{c['id']}/privacy-ledger.json")),
    )

def _check_counts(parties: int, clients: int, min_clients: int, hosts: Sequence[str] | None) -> list[str]:
    """generate_deployment's argument checks; returns one host per party."""
    if parties < 2:
        raise ConfigError("at least 2 parties are needed")
    if clients < 0 or min_clients < 1:
        raise ConfigError("clients must be >= 0 and min_clients >= 1")
    if 0 < clients < min_clients:
        raise ConfigError(f"{clients} clients can never reach a cohort floor of {min_clients} "
                          "(--min-clients must be <= --clients)")
    out = list(hosts) if hosts else ["127.0.0.1"] * parties
    if len(out) != parties:
        raise ConfigError(f"{len(out)} hosts given for {parties} parties")
    return out


def _new_key(path: Path) -> str:
    """A fresh CURVE key pair: the secret written to ``path`` (0600), the public key returned."""
    public, secret = zmq.curve_keypair()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret.decode("ascii") + "\n")
    os.chmod(path, 0o600)
    return public.decode("ascii")


def generate_deployment(
    out_dir: str | os.PathLike[str],
    *,
    parties: int = 3,
    clients: int = 3,
    min_clients: int = 3,
    hosts: Sequence[str] | None = None,
    base_port: int | None = None,
    with_dealer: bool = True,
    allow_verify_norm: bool = False,
    force: bool = False,
) -> Path:
    """Write ``out_dir/deployment.toml`` and one 0600 key file per role.

    ``allow_verify_norm`` writes every party's consent to verify_norm rounds (default: none consents).
    An existing deployment in ``out_dir`` is refused (ConfigError) unless ``force``; then the
    files an earlier keygen wrote there (deployment.toml, role keys, party state) are deleted
    first, so no stale round state outlives its keys.  Nothing else in ``out_dir`` is touched."""
    hosts = _check_counts(parties, clients, min_clients, hosts)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a directory")
    _clear_deployment(out, force)
    keys = out / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    os.chmod(keys, 0o700)
    nports = 3 * parties + 1
    ports = free_ports(nports) if base_port is None else list(range(base_port, base_port + nports))

    def new_key(name: str) -> str:
        return _new_key(keys / f"{name}.key")

    lines = ["# mpc-agg deployment (generated by `mpc-agg keygen`)", "version = 1", ""]
    lines += ["[coordinator]", f"public_key = {_toml_str(new_key('coordinator'))}",
              'private_key_file = "keys/coordinator.key"', ""]
    if with_dealer:
        lines += ["[dealer]", f"endpoint = {_toml_str(f'tcp://127.0.0.1:{ports[-1]}')}",
                  f"public_key = {_toml_str(new_key('dealer'))}", 'private_key_file = "keys/dealer.key"', ""]
    for i in range(parties):
        h = hosts[i]
        lines += [
            "[[parties]]",
            f"id = {i}",
            f"client_endpoint = {_toml_str(f'tcp://{h}:{ports[3 * i]}')}",
            f"peer_endpoint = {_toml_str(f'tcp://{h}:{ports[3 * i + 1]}')}",
            f"bulk_endpoint = {_toml_str(f'tcp://{h}:{ports[3 * i + 2]}')}",
            f"public_key = {_toml_str(new_key(f'party-{i}'))}",
            f'private_key_file = "keys/party-{i}.key"',
            f"min_clients = {min_clients}",
            f'state_dir = "state/party-{i}"',
            f"allow_verify_norm = {'true' if allow_verify_norm else 'false'}",
            "",
        ]
    for c in range(clients):
        lines += ["[[clients]]", f'id = "client-{c}"', f"public_key = {_toml_str(new_key(f'client-{c}'))}",
                  f'private_key_file = "keys/client-{c}.key"', ""]
    path = out / "deployment.toml"
    path.write_text("\n".join(lines), "utf-8")
    return path
