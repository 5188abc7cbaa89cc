"""Digits (scikit-learn's bundled 8x8 images, 10 classes) with the Hugging Face Trainer, two ways: the
Trainer's own recipe (EarlyStoppingCallback with load_best_model_at_end) and the same script with converge's
callback. The model is a small MLP in the Hugging Face conventions (a config, ``labels`` in, ``loss`` out),
built from its config: nothing is downloaded. Needs `pip install 'torch-converge[hf,examples]'`.

    python examples/hf_digits.py            # with ConvergeCallback
    python examples/hf_digits.py --recipe   # the Trainer's own recipe

docs/integrations.md shows the two side by side; bench/integrations.py measures them over seeds.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from transformers import (EarlyStoppingCallback, PretrainedConfig, PreTrainedModel, Trainer, TrainingArguments,
                          set_seed)

from converge.integrations.transformers import ConvergeCallback


class DigitsConfig(PretrainedConfig):
    model_type = "converge-digits-mlp"

    def __init__(self, hidden: int = 128, **kwargs):
        super().__init__(**kwargs)
        self.hidden = hidden


class DigitsMlp(PreTrainedModel):
    config_class = DigitsConfig

    def __init__(self, config: DigitsConfig):
        super().__init__(config)
        self.net = nn.Sequential(nn.Linear(64, config.hidden), nn.ReLU(), nn.Linear(config.hidden, config.hidden),
                                 nn.ReLU(), nn.Linear(config.hidden, 10))
        self.post_init()

    def forward(self, pixels, labels=None):
        logits = self.net(pixels)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


class Images(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, index):
        return {"pixels": self.x[index], "labels": self.y[index]}


def splits():
    digits = load_digits()
    x, y = digits.data / 16.0, digits.target
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    x_train, x_val, y_train, y_val = train_test_split(x_train, y_train, test_size=0.2, random_state=0,
                                                      stratify=y_train)
    return Images(x_train, y_train), Images(x_val, y_val), Images(x_test, y_test)


def accuracy(prediction) -> dict:
    return {"accuracy": float((np.argmax(prediction.predictions, axis=1) == prediction.label_ids).mean())}


COMMON = dict(learning_rate=1e-3, per_device_train_batch_size=64, eval_strategy="epoch",
              logging_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True)


def with_trainer_recipe(seed: int = 0, epochs: int = 100, out: str = "runs/hf-recipe") -> dict:
    set_seed(seed)
    train, val, test = splits()
    # --8<-- [start:recipe]
    arguments = TrainingArguments(output_dir=out, seed=seed, num_train_epochs=epochs, **COMMON,
                                  save_strategy="epoch", save_total_limit=2,
                                  load_best_model_at_end=True, metric_for_best_model="eval_loss")
    trainer = Trainer(model=DigitsMlp(DigitsConfig()), args=arguments, train_dataset=train, eval_dataset=val,
                      compute_metrics=accuracy, callbacks=[EarlyStoppingCallback(early_stopping_patience=5)])
    trainer.train()
    test_values = trainer.evaluate(test, metric_key_prefix="test")
    # --8<-- [end:recipe]
    return {"epochs": int(trainer.state.epoch), **test_values}


def with_converge(seed: int = 0, epochs: int = 100, out: str = "runs/hf-converge") -> dict:
    set_seed(seed)
    train, val, test = splits()
    # --8<-- [start:converge]
    arguments = TrainingArguments(output_dir=out, seed=seed, num_train_epochs=epochs, **COMMON, save_strategy="no")
    converge = ConvergeCallback(patience=5)  # the run folder goes to output_dir
    trainer = Trainer(model=DigitsMlp(DigitsConfig()), args=arguments, train_dataset=train, eval_dataset=val,
                      compute_metrics=accuracy, callbacks=[converge])
    trainer.train()  # ends with the best weights in the model
    test_values = trainer.evaluate(test, metric_key_prefix="test")
    print(converge.result_.summary["stop_reason"])
    # --8<-- [end:converge]
    return {"epochs": int(trainer.state.epoch), **test_values}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", action="store_true", help="the Trainer's own recipe instead of converge's callback")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print((with_trainer_recipe if args.recipe else with_converge)(args.seed))
