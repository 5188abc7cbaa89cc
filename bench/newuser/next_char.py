"""Next-character prediction on generated 'words' (a small Markov chain over 20 letters), an embedding and a
GRU giving [N, T, V] logits, and my own loss that flattens them."""
import torch
import torch.nn.functional as F
from torch import nn

V, T = 21, 24


class CharGRU(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, 32)
        self.gru = nn.GRU(32, 64, batch_first=True)
        self.out = nn.Linear(64, V)

    def forward(self, x):
        h, _ = self.gru(self.emb(x))
        return self.out(h)


def model():
    return CharGRU()


def loss(logits, targets):
    return F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1))


def data():
    g = torch.Generator().manual_seed(8)
    trans = torch.rand(V, V, generator=g) ** 4
    trans = trans / trans.sum(1, keepdim=True)
    n = 3000
    seq = torch.zeros(n, T + 1, dtype=torch.long)
    seq[:, 0] = torch.randint(0, V, (n,), generator=g)
    for t in range(T):
        seq[:, t + 1] = torch.multinomial(trans[seq[:, t]], 1, generator=g).squeeze(1)
    x, y = seq[:, :-1], seq[:, 1:]
    return (x[:2000], y[:2000]), (x[2000:2500], y[2000:2500]), (x[2500:], y[2500:])
