"""Tag names in token streams: words 1..499, a name is a run of 'name words' (ids 400-499) after a
trigger word (ids 1-20); tags O=0, B=1, I=2, with 5 % of the tags wrong. A bidirectional LSTM tagger
returning [N, T, 3]; my loss flattens it."""
import torch
import torch.nn.functional as F
from torch import nn

V, T = 500, 40


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, 64)
        self.lstm = nn.LSTM(64, 64, batch_first=True, bidirectional=True)
        self.out = nn.Linear(128, 3)

    def forward(self, x):
        h, _ = self.lstm(self.emb(x))
        return self.out(h)


def model():
    return Tagger()


def loss(scores, tags):
    return F.cross_entropy(scores.reshape(-1, 3), tags.reshape(-1))


def data():
    g = torch.Generator().manual_seed(21)
    n = 3000
    x = torch.randint(21, 400, (n, T), generator=g)
    y = torch.zeros(n, T, dtype=torch.long)
    for i in range(n):
        t = 0
        while t < T - 3:
            if torch.rand(1, generator=g) < 0.12:
                x[i, t] = int(torch.randint(1, 21, (1,), generator=g))
                length = int(torch.randint(1, 4, (1,), generator=g))
                for k in range(length):
                    x[i, t + 1 + k] = int(torch.randint(400, 500, (1,), generator=g))
                    y[i, t + 1 + k] = 1 if k == 0 else 2
                t += length + 1
            else:
                if torch.rand(1, generator=g) < 0.03:   # a name word with no trigger is not a name
                    x[i, t] = int(torch.randint(400, 500, (1,), generator=g))
                t += 1
    wrong = torch.rand(n, T, generator=g) < 0.05
    y[wrong] = torch.randint(0, 3, (int(wrong.sum()),), generator=g)
    return (x[:2000], y[:2000]), (x[2000:2500], y[2000:2500]), (x[2500:], y[2500:])
