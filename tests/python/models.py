"""Models for the Python tests, importable in subprocesses and Ray workers."""
import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, d_in=16, d_hidden=32, d_out=4):
        super().__init__()
        self.fc1 = nn.Linear(d_in, d_hidden)
        self.fc2 = nn.Linear(d_hidden, d_out)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class Tied(nn.Module):
    """Tied and viewed weights, every dtype that matters, odd buffers."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 6)
        self.head = nn.Linear(6, 10, bias=False)
        self.head.weight = self.embed.weight                         # tied
        self.proj = nn.Parameter(torch.randn(8, 6).t())              # transposed view
        self.register_buffer("strided", torch.arange(40.0).reshape(5, 8)[:, ::2])  # non-contiguous
        self.bf16 = nn.Parameter(torch.randn(4, 4).to(torch.bfloat16))
        self.f16 = nn.Parameter(torch.randn(3).half())
        self.register_buffer("i8", torch.randint(-100, 100, (7,), dtype=torch.int8))
        self.register_buffer("mask", torch.rand(5) > 0.5)
        self.register_buffer("z", torch.randn(3, dtype=torch.complex64))
        self.register_buffer("f64", torch.randn(2, dtype=torch.float64))
        self.register_buffer("scalar", torch.tensor(3.5))

    def forward(self, ids):
        h = self.embed(ids)
        return self.head(h) + (h @ self.proj).sum(-1, keepdim=True)


class Pipeline:
    """Models in every kind of place a pipeline keeps them."""

    def __init__(self):
        self.encoder = MLP(16, 32, 8)
        self._private = MLP(8, 8, 8)
        self.stages = [MLP(8, 8, 8), MLP(8, 8, 8)]
        self.pair = (MLP(8, 8, 8),)
        self.named = {"head": MLP(8, 8, 3)}
        self.blocks = nn.ModuleList([MLP(8, 8, 8)])
        self.again = self.encoder  # the same module twice
        self.threshold = 0.5

    def __call__(self, x):
        h = self._private(self.encoder(x))
        for m in self.stages + list(self.pair) + list(self.blocks):
            h = m(h)
        return self.named["head"](h)

    def predict(self, x):
        return self(x).argmax(-1)

    def predict_proba(self, x):
        return torch.softmax(self(x), dim=-1)

    def set_threshold(self, value):
        self.threshold = value

    def above_threshold(self, x):
        return self.predict_proba(x).max(-1).values > self.threshold


class TwoStage:
    """A pipeline as the published library's docs write them: two models as
    attributes, plain values beside them."""

    def __init__(self):
        self.encoder = MLP(16, 32, 8)
        self.decoder = MLP(8, 8, 4)
        self.threshold = 0.25
        self.label = "two-stage"

    def __call__(self, x):
        return self.decoder(self.encoder(x))

    def score(self, x):
        return self(x).max(-1).values > self.threshold


class FrozenByTrain(nn.Linear):
    """A layer whose own train() does more than set the flag (as batch-norm
    freezing layers do): load() must call it."""
    calls: list = []

    def train(self, mode=True):
        FrozenByTrain.calls.append(mode)
        return super().train(mode)


class OwnEval(nn.Module):
    """A model whose eval() does more than train(False): load() must call it."""
    calls: list = []

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def eval(self):
        OwnEval.calls.append("eval")
        return super().eval()
