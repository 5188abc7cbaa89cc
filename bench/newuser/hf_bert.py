"""A tiny BERT (2 layers, hidden 32, built from a config: nothing downloaded) classifying synthetic
sentences. The Dataset yields Hugging Face style dicts: input_ids, attention_mask, labels, padded to 32.

Ids 1..10 are positive words, 11..20 negative words, the label is 1 when positives outnumber negatives.
Needs `pip install transformers`."""

import torch
from torch.utils.data import Dataset

try:
    from transformers import BertConfig, BertForSequenceClassification
except ImportError as exc:  # say what is missing instead of a bare traceback
    raise ImportError("hf_bert.py needs the transformers package: pip install transformers") from exc

VOCAB, MAX_LEN, CLS, SEP, PAD = 100, 32, 98, 99, 0


class Sentences(Dataset):
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.input_ids = torch.full((n, MAX_LEN), PAD, dtype=torch.long)
        self.attention_mask = torch.zeros(n, MAX_LEN, dtype=torch.long)
        self.labels = torch.zeros(n, dtype=torch.long)
        i = 0
        while i < n:
            length = int(torch.randint(5, MAX_LEN - 1, (1,), generator=g))
            words = torch.randint(1, 98, (length,), generator=g)
            pos, neg = int((words <= 10).sum()), int(((words >= 11) & (words <= 20)).sum())
            if pos == neg:
                continue
            ids = torch.cat([torch.tensor([CLS]), words, torch.tensor([SEP])])
            self.input_ids[i, :len(ids)] = ids
            self.attention_mask[i, :len(ids)] = 1
            self.labels[i] = int(pos > neg)
            i += 1

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.input_ids[i], "attention_mask": self.attention_mask[i], "labels": self.labels[i]}


def model():
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=MAX_LEN, num_labels=2)
    return BertForSequenceClassification(config)


def data():
    return Sentences(2000, seed=0), Sentences(500, seed=1), Sentences(500, seed=2)
