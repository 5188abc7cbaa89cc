"""A tiny Hugging Face transformer, built from a config (nothing is downloaded), classifying synthetic
sentences. The Dataset yields dicts in the Hugging Face convention (input_ids, attention_mask, labels,
padded); converge calls the model as model(**inputs, labels=labels) and trains on the loss it returns,
reporting accuracy from its logits. Needs `pip install 'torch-converge[hf]'` (transformers).

    converge train examples/hf_text.py

Words 1..10 are positive, 11..20 negative; a sentence is positive when it has more positive words.
"""

import torch
from torch.utils.data import Dataset
from transformers import BertConfig, BertForSequenceClassification

VOCAB, LENGTH, CLS, SEP, PAD = 64, 24, 62, 63, 0


class Sentences(Dataset):
    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.input_ids = torch.full((n, LENGTH), PAD)
        self.attention_mask = torch.zeros(n, LENGTH, dtype=torch.long)
        self.labels = torch.zeros(n, dtype=torch.long)
        filled = 0
        while filled < n:
            words = torch.randint(1, CLS, (int(torch.randint(4, LENGTH - 2, (1,), generator=g)),), generator=g)
            positive, negative = int((words <= 10).sum()), int(((words > 10) & (words <= 20)).sum())
            if positive == negative:
                continue
            ids = torch.cat([torch.tensor([CLS]), words, torch.tensor([SEP])])
            self.input_ids[filled, :len(ids)] = ids
            self.attention_mask[filled, :len(ids)] = 1
            self.labels[filled] = int(positive > negative)
            filled += 1

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.input_ids[i], "attention_mask": self.attention_mask[i], "labels": self.labels[i]}


def model():
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=LENGTH, num_labels=2)
    return BertForSequenceClassification(config)


def data():
    return Sentences(1500, seed=0), Sentences(300, seed=1), Sentences(300, seed=2)
