"""Separate hosts: the three parties run in their own Linux network namespaces with their own addresses.

Topology (all made and removed by this test): a hub namespace with a bridge; one namespace per party,
joined to the bridge by a veth pair; the test's own namespace (coordinator, clients) joined the same way.
Cutting a party's veth mid-round makes the close end in a typed error with nothing revealed; bringing it
back up lets the same round close with the full cohort.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from fl_client import SecureAggClient
from mpc_agg.errors import AggregationTimeout
from mpc_agg.store import RoundStore
from parties import Coordinator
from parties.launcher import LocalDeployment

pytestmark = pytest.mark.timeout(300)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, timeout=20, capture_output=True)


class Namespaces:
    """Network namespaces for ``parties`` parties on 10.77.S.0/24 (S from our pid, so runs never clash)."""

    def __init__(self, parties: int) -> None:
        tag = f"{os.getpid() % 100000}"
        self.hub, self.tag = f"mpa{tag}hub", tag
        self.ns = [f"mpa{tag}p{i}" for i in range(parties)]
        subnet = f"10.77.{os.getpid() % 250}"
        self.addrs = [f"{subnet}.{i + 1}" for i in range(parties)]
        self.local = f"{subnet}.254"
        self.made: list[str] = []

    def hub_port(self, i: int | str) -> str:
        return f"mpa{self.tag}h{i}"  # the bridge side of a veth pair (<= 15 chars)

    def __enter__(self) -> "Namespaces":
        try:
            for ns in (self.hub, *self.ns):
                _ip("netns", "add", ns)
                self.made.append(ns)
            _ip("-n", self.hub, "link", "add", "br0", "type", "bridge", "forward_delay", "0")
            _ip("-n", self.hub, "link", "set", "br0", "up")
            for i, ns in enumerate(self.ns):
                inner = f"mpa{self.tag}e{i}"
                _ip("link", "add", self.hub_port(i), "type", "veth", "peer", "name", inner)
                _ip("link", "set", self.hub_port(i), "netns", self.hub)
                _ip("-n", self.hub, "link", "set", self.hub_port(i), "master", "br0", "up")
                _ip("link", "set", inner, "netns", ns)
                _ip("-n", ns, "addr", "add", f"{self.addrs[i]}/24", "dev", inner)
                _ip("-n", ns, "link", "set", inner, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
            mine = f"mpa{self.tag}el"
            _ip("link", "add", self.hub_port("l"), "type", "veth", "peer", "name", mine)
            self.made.append(mine)
            _ip("link", "set", self.hub_port("l"), "netns", self.hub)
            _ip("-n", self.hub, "link", "set", self.hub_port("l"), "master", "br0", "up")
            _ip("addr", "add", f"{self.local}/24", "dev", mine)
            _ip("link", "set", mine, "up")
        except (subprocess.CalledProcessError, OSError) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            self.__exit__()
            pytest.skip(f"cannot make network namespaces here ({exc}: {detail.decode(errors='replace').strip()})")
        return self

    def cut(self, i: int, up: bool) -> None:
        _ip("-n", self.hub, "link", "set", self.hub_port(i), "up" if up else "down")

    def __exit__(self, *exc: object) -> None:
        for name in reversed(self.made):
            if name.startswith(f"mpa{self.tag}e"):
                subprocess.run(["ip", "link", "del", name], timeout=20, capture_output=True)
            else:
                subprocess.run(["ip", "netns", "del", name], timeout=20, capture_output=True)
        self.made.clear()


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2 (`ip`)")
    with Namespaces(3) as ns:
        yield ns


def test_parties_on_separate_hosts_survive_a_cut_link(tmp_path: Path, namespaces: Namespaces) -> None:
    ns = namespaces
    ld = LocalDeployment(tmp_path / "dep", parties=3, clients=3, min_clients=3, dealer=False, hosts=ns.addrs,
                         party_prefix=lambda i: ["ip", "netns", "exec", ns.ns[i]])
    with ld, Coordinator(ld.deployment) as coord:
        assert all(p.client_endpoint.startswith(f"tcp://{a}:") for p, a in zip(ld.deployment.parties, ns.addrs))
        coord.open_round(1, shapes={"w": (5000,)}, min_clients=3, timeout_s=60)
        for i in range(3):
            with SecureAggClient(ld.deployment, f"client-{i}") as c:
                c.submit(1, {"w": np.full(5000, float(i + 1))})
        ns.cut(2, up=False)  # party 2's host drops off the network mid-round
        try:
            with pytest.raises(AggregationTimeout):
                coord.close_round(1, timeout_s=8)
            for p in ld.deployment.parties:
                assert not RoundStore(p.state_dir).is_revealed(1)  # nothing revealed anywhere
            assert all(ld.alive().values())
        finally:
            ns.cut(2, up=True)
        res = coord.close_round(1, timeout_s=90)
    assert res.clients == ("client-0", "client-1", "client-2")
    assert np.allclose(res.average["w"].numpy(), 2.0)
