"""Flower app example: a small PyTorch classifier trained with FedAvg, aggregated by mpc-agg."""
