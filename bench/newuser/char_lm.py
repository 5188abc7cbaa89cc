"""A tiny character-level language model (GRU) on the descriptions shipped with scikit-learn's datasets.

Each sample is 32 characters; the target is the same text shifted by one character."""

import torch
from sklearn import datasets
from torch import nn

SEQ_LEN = 32


def _text():
    loaders = [datasets.load_iris, datasets.load_wine, datasets.load_breast_cancer, datasets.load_digits,
               datasets.load_diabetes, datasets.load_linnerud]
    return "\n".join(load().DESCR for load in loaders)


TEXT = _text()
VOCAB = sorted(set(TEXT))


class CharGRU(nn.Module):
    def __init__(self, vocab_size=len(VOCAB), embed=32, hidden=128):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed)
        self.gru = nn.GRU(embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, x):
        h, _ = self.gru(self.embed(x))
        return self.head(h)          # [N, T, V] logits


def model():
    return CharGRU()


def _windows(ids, stride):
    xs, ys = [], []
    for start in range(0, len(ids) - SEQ_LEN - 1, stride):
        xs.append(ids[start:start + SEQ_LEN])
        ys.append(ids[start + 1:start + SEQ_LEN + 1])
    return torch.stack(xs), torch.stack(ys)


def data():
    index = {c: i for i, c in enumerate(VOCAB)}
    ids = torch.tensor([index[c] for c in TEXT], dtype=torch.long)
    n = len(ids)
    train, val, test = ids[:int(0.8 * n)], ids[int(0.8 * n):int(0.9 * n)], ids[int(0.9 * n):]
    return _windows(train, 16), _windows(val, SEQ_LEN), _windows(test, SEQ_LEN)
