"""The benchmark models: transformer-like stacks of fp32 weights (an
embedding, then blocks of qkv / proj / up / down projections and layer
norms), sized to about 256 MiB, 1 GiB and 4 GiB, 61 tensors each."""
import torch
import torch.nn as nn

VOCAB = 8192


class Block(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(h), nn.LayerNorm(h)
        self.qkv, self.proj = nn.Linear(h, 3 * h), nn.Linear(h, h)
        self.up, self.down = nn.Linear(h, 4 * h), nn.Linear(4 * h, h)

    def forward(self, x):
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        att = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        x = x + self.proj(att @ v)
        return x + self.down(torch.relu(self.up(self.ln2(x))))


class TransformerLike(nn.Module):
    def __init__(self, hidden, layers):
        super().__init__()
        # On the meta device, nn.Embedding's own init (normal_) costs torch
        # ~0.8 s the first time in a process; an explicit weight skips it.
        self.embed = nn.Embedding(VOCAB, hidden, _weight=torch.empty(VOCAB, hidden))
        self.blocks = nn.ModuleList(Block(hidden) for _ in range(layers))

    def forward(self, ids):
        x = self.embed(ids)
        for b in self.blocks:
            x = b(x)
        return x


def config(mib: int):
    """(hidden, layers) for about `mib` MiB of fp32 weights."""
    hidden = 1024 if mib <= 512 else 2048 if mib <= 2048 else 4096
    per_layer = 12 * hidden * hidden + 13 * hidden
    layers = max(1, round((mib * 2**20 / 4 - VOCAB * hidden) / per_layer))
    return hidden, layers


def build(mib: int, device="cpu", seed=0):
    hidden, layers = config(mib)
    with torch.device(device):
        model = TransformerLike(hidden, layers)
    return (model if device == "meta" else initialized(model, seed)).eval()


def initialized(model, seed=0):
    """`model` with every parameter drawn from N(0, 0.02) by a generator of
    `seed` (the embedding is made uninitialized: see TransformerLike)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02, generator=g)
    return model


def factory(mib: int):
    """Builds the skeleton on the meta device: no memory, for load_state_dict(assign=True)."""
    return lambda: build(mib, device="meta")


class Gated(nn.Module):
    """A small TorchScript model with control flow (a loop and a branch on
    the data): what a JIT load in a fresh process is measured on."""

    def __init__(self, hidden: int = 512, layers: int = 4):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers))
        self.gate = nn.Linear(hidden, 1)

    def forward(self, x):
        for layer in self.layers:
            y = torch.relu(layer(x))
            if bool(self.gate(y).mean() > 0):
                x = x + y
            else:
                x = y
        return x


def scripted(seed=0):
    """Gated, scripted: about 4 MiB of weights, 10 tensors."""
    torch.manual_seed(seed)
    return torch.jit.script(Gated().eval())


def example_input():
    return torch.arange(16).reshape(1, 16)
