"""Sequence tagging on synthetic token sequences, with my own (flattening) loss.

Tokens 1..59 fall in three word classes (token % 3). The tag of a token is its class, unless the token
before it is of class 0, then it is 3 + its class. Sequences have 8 to 24 tokens and are padded with 0;
padded positions have the tag -100 (ignored by the loss)."""

import torch
import torch.nn.functional as F
from torch import nn

VOCAB, NUM_TAGS, MAX_LEN = 60, 6, 24


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 32, padding_idx=0)
        self.conv = nn.Conv1d(32, 64, kernel_size=3, padding=1)
        self.out = nn.Linear(64, NUM_TAGS)

    def forward(self, tokens):
        h = self.embed(tokens).transpose(1, 2)          # [N, E, T]
        h = torch.relu(self.conv(h)).transpose(1, 2)    # [N, T, H]
        return self.out(h)                              # [N, T, C]


def model():
    return Tagger()


def loss(out, y):
    C = out.shape[-1]
    return F.cross_entropy(out.reshape(-1, C), y.reshape(-1))


def _make(n, generator):
    tokens = torch.zeros(n, MAX_LEN, dtype=torch.long)
    tags = torch.full((n, MAX_LEN), -100, dtype=torch.long)
    lengths = torch.randint(8, MAX_LEN + 1, (n,), generator=generator)
    for i in range(n):
        length = int(lengths[i])
        seq = torch.randint(1, VOCAB, (length,), generator=generator)
        cls = seq % 3
        prev_is_0 = torch.cat([torch.tensor([False]), cls[:-1] == 0])
        tokens[i, :length] = seq
        tags[i, :length] = cls + 3 * prev_is_0.long()
    return tokens, tags


def data():
    g = torch.Generator().manual_seed(1234)
    return _make(2000, g), _make(500, g), _make(500, g)
