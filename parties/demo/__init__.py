"""``mpc-agg demo``: federated fine-tuning through a whole local deployment, and the directory it works in.

Demo code, not a role process: it starts the parties (``parties.launcher``), drives the ``Coordinator`` and
spawns client processes (``fl_client.training.worker``).
"""
