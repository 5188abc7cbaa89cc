"""Sentence classification in the Hugging Face style: a Dataset of dicts (input_ids, labels),
variable-length sequences padded by a collate function that also builds the attention mask, and a
model called as model(input_ids=..., attention_mask=...).

Synthetic "sentences": token ids 1..99; ids 1..10 are positive words, 11..20 negative words. The label
is 1 when a sentence has more positive than negative words (ties are not generated)."""

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

VOCAB, PAD = 100, 0


class Sentences(Dataset):
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.items = []
        while len(self.items) < n:
            length = int(torch.randint(5, 33, (1,), generator=g))
            ids = torch.randint(1, VOCAB, (length,), generator=g)
            pos, neg = int(((ids >= 1) & (ids <= 10)).sum()), int(((ids >= 11) & (ids <= 20)).sum())
            if pos == neg:
                continue
            self.items.append({"input_ids": ids, "labels": int(pos > neg)})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def collate(batch):
    longest = max(len(item["input_ids"]) for item in batch)
    input_ids = torch.full((len(batch), longest), PAD, dtype=torch.long)
    attention_mask = torch.zeros(len(batch), longest, dtype=torch.long)
    for i, item in enumerate(batch):
        input_ids[i, :len(item["input_ids"])] = item["input_ids"]
        attention_mask[i, :len(item["input_ids"])] = 1
    labels = torch.tensor([item["labels"] for item in batch])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class BagClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 32, padding_idx=PAD)
        self.head = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))

    def forward(self, input_ids, attention_mask):
        mask = attention_mask.unsqueeze(-1).float()
        summed = (self.embed(input_ids) * mask).sum(dim=1)
        return self.head(summed / mask.sum(dim=1).clamp(min=1))   # logits [N, 2]


def model():
    return BagClassifier()


def data():
    train = DataLoader(Sentences(3000, seed=0), batch_size=32, shuffle=True, collate_fn=collate)
    val = DataLoader(Sentences(600, seed=1), batch_size=128, collate_fn=collate)
    test = DataLoader(Sentences(600, seed=2), batch_size=128, collate_fn=collate)
    return train, val, test
