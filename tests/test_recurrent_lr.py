"""The automatic choice's LR for a recurrent model on token ids: the range test's valley, racing alone
(`converge.choose.auto._valley_lr`), and every other model as before."""

import pytest
import torch
from torch import nn

import converge
from converge.choose.auto import _race_lrs, recurrent_on_token_ids
from converge.data import make_split
from converge.decide.lr_suggest import LrSuggestion


class TokenGRU(nn.Module):
    def __init__(self, vocab=12, classes=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, 8)
        self.gru = nn.GRU(8, 16, batch_first=True)
        self.out = nn.Linear(16, classes)

    def forward(self, x):
        return self.out(self.gru(self.emb(x))[0][:, -1])


class FloatLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(1, 8, batch_first=True)
        self.out = nn.Linear(8, 1)

    def forward(self, x):
        return self.out(self.lstm(x)[0][:, -1])


class TokensAndMask(TokenGRU):
    def forward(self, inputs):
        return super().forward(inputs["ids"] * inputs["mask"])


def _split(inputs, targets):
    return make_split((inputs, targets), "train")


@pytest.mark.parametrize("model, inputs, expected", [
    (TokenGRU(), torch.randint(0, 12, (6, 5)), True),                          # token ids into a GRU
    (FloatLSTM(), torch.randn(6, 5, 1), False),                                # a recurrent model on readings
    (nn.Sequential(nn.Embedding(12, 4), nn.Flatten(), nn.Linear(20, 3)), torch.randint(0, 12, (6, 5)), False),
    (TokensAndMask(), {"ids": torch.randint(0, 12, (6, 5)), "mask": torch.ones(6, 5, dtype=torch.long)}, True),
])
def test_a_recurrent_model_on_token_ids_is_told_apart(model, inputs, expected):
    assert recurrent_on_token_ids(model, _split(inputs, torch.zeros(6, dtype=torch.long))) is expected


def test_a_bool_mask_is_not_token_ids():
    inputs = {"x": torch.randn(6, 5, 1), "mask": torch.ones(6, 5, dtype=torch.bool)}

    class Masked(FloatLSTM):
        def forward(self, batch):
            return super().forward(batch["x"] * batch["mask"].unsqueeze(-1))

    assert not recurrent_on_token_ids(Masked(), _split(inputs, torch.zeros(6)))


SUGGESTION = LrSuggestion(lr=8.5e-3, ok=True, reason="largest of 3 rules", min_loss_lr=0.031,
                          candidates={"min_over_10": 3.1e-3, "steepest": 8.5e-3, "valley": 9.1e-4})


@pytest.mark.parametrize("suggestion, valley, lr, arms", [
    (SUGGESTION, False, 8.5e-3, [8.5e-3, 8.5e-3 / 3]),                     # the largest rule and a third of it
    (SUGGESTION, True, 9.1e-4, [9.1e-4]),                                  # the valley, alone
    (LrSuggestion(lr=8.5e-3, ok=True, reason="", min_loss_lr=0.031, candidates={"valley": 1e-5}),
     True, 3.1e-4, [3.1e-4]),                                              # never below min-loss LR / 100
    (LrSuggestion(lr=8.5e-3, ok=True, reason="", min_loss_lr=0.031, candidates={"steepest": 8.5e-3}),
     True, 8.5e-3, [8.5e-3, 8.5e-3 / 3]),                                  # no valley: as before
    (LrSuggestion(lr=None, ok=False, reason="never fell"), True, 1e-3, [1e-3]),   # no evidence: the standard
])
def test_the_lr_raced_for_a_recurrent_model_on_token_ids(suggestion, valley, lr, arms):
    chosen, reason, raced = _race_lrs(suggestion, "adamw", fixed=False, valley=valley)
    assert chosen == pytest.approx(lr)
    assert ("valley rule" in reason) is (valley and suggestion.ok and chosen != suggestion.lr)
    assert raced == pytest.approx(arms)


def test_train_races_each_optimizer_at_its_valley_on_a_gru_over_token_ids():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 12, (640, 6), generator=g)
    y = x[:, -1] % 3   # learnt within the range test: its curve has a valley
    torch.manual_seed(0)
    result = converge.fit(TokenGRU(), (x[:480], y[:480]), (x[480:], y[480:]), max_epochs=1, verbose=False,
                          device="cpu")
    tests = {e["optimizer"]: e for e in result.events if e["event"] == "lr_range_test"}
    rung = next(e for e in result.events if e["event"] == "race_rung")
    for optimizer, test in tests.items():
        if test["ok"] and test["candidates"].get("valley"):
            assert "valley rule" in test["reason"]
            assert test["suggested_lr"] == pytest.approx(max(test["candidates"]["valley"],
                                                             test["min_loss_lr"] / 100))
        assert [a["lr"] for a in rung["arms"] if a["optimizer"] == optimizer] == [test["suggested_lr"]]
    assert any("valley rule" in t["reason"] for t in tests.values())
