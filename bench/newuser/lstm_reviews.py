"""Review sentiment from token ids with an LSTM.

Each word has a hidden polarity (most are neutral); "not" flips the next word. A review is positive
when its summed polarity, plus noise, is above zero. Reviews are 10-60 tokens, right-padded with 0.
One logit out, BCEWithLogitsLoss, float 0/1 labels."""
import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence

VOCAB, MAXLEN, NOT = 500, 60, 1


class Reviewer(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 48, padding_idx=0)
        self.lstm = nn.LSTM(48, 96, batch_first=True)
        self.out = nn.Linear(96, 1)

    def forward(self, x):
        lengths = (x != 0).sum(1).clamp(min=1).cpu()
        packed = pack_padded_sequence(self.emb(x), lengths, batch_first=True, enforce_sorted=False)
        _, (h, _) = self.lstm(packed)
        return self.out(h[-1]).squeeze(-1)


def model():
    return Reviewer()


loss = nn.BCEWithLogitsLoss()


def data():
    g = torch.Generator().manual_seed(3)
    polarity = torch.zeros(VOCAB)
    words = torch.randperm(VOCAB - 2, generator=g)[:120] + 2
    polarity[words] = torch.randn(120, generator=g).sign() * (0.5 + torch.rand(120, generator=g))
    n = 6000
    x = torch.zeros(n, MAXLEN, dtype=torch.long)
    y = torch.zeros(n)
    lengths = torch.randint(10, MAXLEN + 1, (n,), generator=g)
    for i in range(n):
        L = int(lengths[i])
        seq = torch.randint(2, VOCAB, (L,), generator=g)
        negate = torch.rand(L, generator=g) < 0.08
        seq[negate] = NOT
        score = 0.0
        for j in range(L):
            w = int(seq[j])
            p = float(polarity[w])
            if j > 0 and int(seq[j - 1]) == NOT:
                p = -p
            score += p
        y[i] = float(score + 0.7 * float(torch.randn(1, generator=g)) > 0)
        x[i, :L] = seq
    return (x[:4000], y[:4000]), (x[4000:5000], y[4000:5000]), (x[5000:], y[5000:])
