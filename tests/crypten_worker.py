"""One CrypTen party for test_crypten_mpc: runs MPC over the ZeroMQ communicator with the dealer.

Usage: python tests/crypten_worker.py CONFIG RANK OUT_JSON
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import zmq  # noqa: E402

from mpc_agg.config import Deployment, read_secret_key  # noqa: E402
from mpc_agg.crypten_glue import DealerProvider, ZmqCommunicator, activate, import_crypten  # noqa: E402
from mpc_agg.fixedpoint import decode  # noqa: E402
from mpc_agg.transport import Requester, SecureContext  # noqa: E402


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed values (negatives with fractions) followed by 500 seeded normal draws."""
    g = torch.Generator().manual_seed(1234)
    a = torch.cat([torch.tensor([1.5, -2.25, 3.0, -0.125]), 10 * torch.randn(500, generator=g)])
    b = torch.cat([torch.tensor([-4.0, 0.5, 2.0, -8.0]), 10 * torch.randn(500, generator=g)])
    return a, b


def plain(t: object) -> list[float]:
    """Reveal to all parties (test only) and decode with our decoder, not CrypTen's."""
    ring = t.reveal().numpy()  # type: ignore[attr-defined]
    return decode(ring, int(round(math.log2(t.encoder.scale)))).tolist()  # type: ignore[attr-defined]


def main(config: str, rank: int, out: str) -> None:
    dep = Deployment.load(config)
    me = dep.party(rank)
    secret = read_secret_key(me.private_key_file, "party")
    crypten = import_crypten()
    with SecureContext() as sctx:
        comm = ZmqCommunicator(sctx, rank=rank, endpoints=[p.peer_endpoint for p in dep.parties],
                               public_keys=[p.public_key for p in dep.parties], secret_key=secret, timeout_s=60)
        dsock = sctx.client(zmq.DEALER, dep.dealer_endpoint, public_key=me.public_key, secret_key=secret,
                            server_key=dep.dealer_public_key)
        activate(comm, DealerProvider(Requester(dsock), rank=rank, timeout_s=60), "mpc-test")
        a, b = inputs()
        x = crypten.cryptensor(a if rank == 0 else torch.zeros(a.shape), src=0)
        y = crypten.cryptensor(b if rank == 1 else torch.zeros(b.shape), src=1)
        result = {
            "rank": rank,
            "provider": crypten.cfg.mpc.provider,
            "add": plain(x + y),
            "mul": plain(x * y),
            "square": plain(x.square()),
            "lt": plain(x < y),
            "bytes": comm.get_communication_stats()["bytes"],
        }
    Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
