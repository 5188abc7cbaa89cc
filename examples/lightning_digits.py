"""Digits (scikit-learn's bundled 8x8 images, 10 classes) in PyTorch Lightning, two ways: Lightning's own
recipe (EarlyStopping, ReduceLROnPlateau, ModelCheckpoint for the best weights) and the same script with
converge's callback. Needs `pip install 'torch-converge[lightning,examples]'`.

    python examples/lightning_digits.py            # with ConvergeCallback
    python examples/lightning_digits.py --recipe   # Lightning's own recipe

docs/integrations.md shows the two side by side; bench/integrations.py measures them over seeds.
"""

from __future__ import annotations

import argparse

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from converge.integrations.lightning import ConvergeCallback


# --8<-- [start:module]
class Digits(L.LightningModule):
    def __init__(self, lr: float = 1e-3, plateau_schedule: bool = False):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
        self.lr, self.plateau_schedule = lr, plateau_schedule

    def step(self, batch, split: str):
        x, y = batch
        logits = self.net(x)
        loss = nn.functional.cross_entropy(logits, y)
        self.log(f"{split}_loss", loss, on_step=False, on_epoch=True)
        self.log(f"{split}_accuracy", (logits.argmax(1) == y).float().mean(), on_step=False, on_epoch=True)
        return loss

    def training_step(self, batch, index):
        return self.step(batch, "train")

    def validation_step(self, batch, index):
        self.step(batch, "val")

    def test_step(self, batch, index):
        self.step(batch, "test")

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr)
        if not self.plateau_schedule:
            return optimizer  # with ConvergeCallback: converge cuts the LR
        schedule = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.1, patience=2)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "monitor": "val_loss"}}
# --8<-- [end:module]


def loaders(seed: int):
    digits = load_digits()
    x, y = torch.tensor(digits.data / 16.0, dtype=torch.float32), torch.tensor(digits.target)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    x_train, x_val, y_train, y_val = train_test_split(x_train, y_train, test_size=0.2, random_state=0,
                                                      stratify=y_train)
    train = DataLoader(TensorDataset(x_train, y_train), batch_size=64, shuffle=True,
                       generator=torch.Generator().manual_seed(seed))
    return train, DataLoader(TensorDataset(x_val, y_val), batch_size=256), DataLoader(TensorDataset(x_test, y_test),
                                                                                      batch_size=256)


def with_lightning_recipe(seed: int = 0, max_epochs: int = 100, root: str = "runs/lightning-recipe") -> dict:
    L.seed_everything(seed, verbose=False)
    train, val, test = loaders(seed)
    # --8<-- [start:recipe]
    model = Digits(plateau_schedule=True)
    best = ModelCheckpoint(monitor="val_loss")
    trainer = L.Trainer(max_epochs=max_epochs, default_root_dir=root,
                        callbacks=[EarlyStopping(monitor="val_loss", patience=5), best])
    trainer.fit(model, train, val)
    trainer.test(model, test, ckpt_path="best")
    # --8<-- [end:recipe]
    return {"epochs": trainer.current_epoch, **{k: float(v) for k, v in trainer.callback_metrics.items()
                                                if k.startswith("test_")}}


def with_converge(seed: int = 0, max_epochs: int = 100, root: str = "runs/lightning-converge") -> dict:
    L.seed_everything(seed, verbose=False)
    train, val, test = loaders(seed)
    # --8<-- [start:converge]
    model = Digits()
    converge = ConvergeCallback(patience=5)  # the run folder goes to the trainer's log dir
    trainer = L.Trainer(max_epochs=max_epochs, default_root_dir=root, callbacks=[converge],
                        enable_checkpointing=False)
    trainer.fit(model, train, val)  # ends with the best weights in `model`
    trainer.test(model, test)
    print(converge.result_.summary["stop_reason"])
    # --8<-- [end:converge]
    return {"epochs": trainer.current_epoch, **{k: float(v) for k, v in trainer.callback_metrics.items()
                                                if k.startswith("test_")}}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", action="store_true", help="Lightning's own recipe instead of converge's callback")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print((with_lightning_recipe if args.recipe else with_converge)(args.seed))
