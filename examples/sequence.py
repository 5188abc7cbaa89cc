"""A sequence model: a character-level GRU language model on the descriptions that ship with scikit-learn.

The model returns logits of shape (N, T, V) and the targets are the next characters, integers of shape
(N, T). converge infers cross-entropy at every position over the V classes and reports per-token
accuracy and perplexity. Targets equal to -100 would be padding (left out of loss and metrics).

    converge train examples/sequence.py
"""

import torch
from sklearn import datasets
from torch import nn

LENGTH = 32
TEXT = "\n".join(load().DESCR for load in (datasets.load_iris, datasets.load_wine, datasets.load_diabetes))
VOCAB = sorted(set(TEXT))


class CharGRU(nn.Module):
    def __init__(self, vocab=len(VOCAB), embed=32, hidden=96):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.gru = nn.GRU(embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x):
        hidden, _ = self.gru(self.embed(x))
        return self.head(hidden)  # (N, T, V)


def model():
    return CharGRU()


def windows(ids, stride):
    starts = range(0, len(ids) - LENGTH - 1, stride)
    return (torch.stack([ids[s:s + LENGTH] for s in starts]),
            torch.stack([ids[s + 1:s + LENGTH + 1] for s in starts]))


def data():
    ids = torch.tensor([VOCAB.index(c) for c in TEXT])
    n = len(ids)
    return windows(ids[:int(0.8 * n)], 8), windows(ids[int(0.8 * n):int(0.9 * n)], LENGTH), \
        windows(ids[int(0.9 * n):], LENGTH)
