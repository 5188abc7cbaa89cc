"""Part-of-speech style tagging with a bidirectional GRU.

Sentences come from a small hidden Markov model: 8 tags with a transition matrix, each tag emitting
words from its own (overlapping) slice of a 300-word vocabulary, so many words are ambiguous and the
tag depends on the context. Padding id is 0; padded tags are -100."""
import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB, TAGS, MAXLEN = 300, 8, 30


class BiGRUTagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 64, padding_idx=0)
        self.gru = nn.GRU(64, 64, batch_first=True, bidirectional=True)
        self.head = nn.Linear(128, TAGS)

    def forward(self, x):
        h, _ = self.gru(self.emb(x))
        return self.head(h)


def model():
    return BiGRUTagger()


def loss(logits, tags):
    return F.cross_entropy(logits.reshape(-1, TAGS), tags.reshape(-1), ignore_index=-100)


def _corpus(n, g):
    trans = torch.rand(TAGS, TAGS, generator=g) ** 3 + 0.02
    trans = trans / trans.sum(1, keepdim=True)
    emit = torch.zeros(TAGS, VOCAB)
    for t in range(TAGS):
        lo = 1 + t * 30
        emit[t, lo:lo + 70] = torch.rand(70, generator=g) + 0.1
    emit = emit / emit.sum(1, keepdim=True)
    x = torch.zeros(n, MAXLEN, dtype=torch.long)
    y = torch.full((n, MAXLEN), -100, dtype=torch.long)
    lengths = torch.randint(5, MAXLEN + 1, (n,), generator=g)
    for i in range(n):
        tag = int(torch.randint(0, TAGS, (1,), generator=g))
        for j in range(int(lengths[i])):
            y[i, j] = tag
            x[i, j] = int(torch.multinomial(emit[tag], 1, generator=g))
            tag = int(torch.multinomial(trans[tag], 1, generator=g))
    return x, y


def data():
    g = torch.Generator().manual_seed(7)
    x, y = _corpus(4000, g)
    return (x[:2800], y[:2800]), (x[2800:3400], y[2800:3400]), (x[3400:], y[3400:])
