"""One CrypTen party for test_crypten_mpc: runs MPC over the ZeroMQ communicator with the dealer.

Usage: python tests/crypten_worker.py CONFIG RANK OUT_JSON
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import zmq  # noqa: E402

from mpc_agg.config import Deployment, read_secret_key  # noqa: E402
from mpc_agg.crypten_glue import DealerProvider, ZmqCommunicator, activate, import_crypten  # noqa: E402
from mpc_agg.transport import Requester, SecureContext  # noqa: E402


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
        a = torch.tensor([1.5, -2.25, 3.0, -0.125])
        b = torch.tensor([-4.0, 0.5, 2.0, -8.0])
        x = crypten.cryptensor(a if rank == 0 else torch.zeros(4), src=0)
        y = crypten.cryptensor(b if rank == 1 else torch.zeros(4), src=1)
        result = {
            "rank": rank,
            "provider": crypten.cfg.mpc.provider,
            "add": (x + y).get_plain_text().tolist(),
            "mul": (x * y).get_plain_text().tolist(),
            "square": x.square().get_plain_text().tolist(),
            "lt": (x < y).get_plain_text().tolist(),
            "bytes": comm.get_communication_stats()["bytes"],
        }
    Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
