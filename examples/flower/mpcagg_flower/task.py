"""The model, each client's synthetic data, and local training (deterministic, CPU, no downloads)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

NUM_FEATURES = 8
NUM_CLASSES = 3


class Net(nn.Module):
    """A two-layer perceptron: 8 features -> 16 hidden -> 3 classes (195 parameters)."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)  # every process builds the same initial model
            self.fc1 = nn.Linear(NUM_FEATURES, 16)
            self.fc2 = nn.Linear(16, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def load_data(partition_id: int, *, test: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Client ``partition_id``'s examples: three Gaussian blobs, skewed per client (non-IID), and
    a different number of them per client (32 + 8·id), so FedAvg's weights differ."""
    rng = np.random.default_rng(1000 * partition_id + (1 if test else 0))
    n = 16 if test else 32 + 8 * partition_id
    centres = np.random.default_rng(7).normal(0, 2, (NUM_CLASSES, NUM_FEATURES))
    probs = np.roll([0.6, 0.25, 0.15], partition_id)
    y = rng.choice(NUM_CLASSES, size=n, p=probs)
    x = centres[y] + rng.normal(0, 1, (n, NUM_FEATURES))
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.int64)


def train(model: Net, x: torch.Tensor, y: torch.Tensor, *, epochs: int, batch_size: int, lr: float,
          seed: int) -> float:
    """Plain SGD, shuffled by ``seed``; returns the mean training loss."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(batch_size):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return float(np.mean(losses))


@torch.no_grad()
def evaluate(model: Net, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(loss, accuracy)."""
    model.eval()
    out = model(x)
    return float(nn.functional.cross_entropy(out, y)), float((out.argmax(1) == y).float().mean())
