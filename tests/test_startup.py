"""converge's optimizers without torch._dynamo's import, and the same training as torch's own."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from converge.engine.optim import _PLAIN_ADAM_STEP, EagerAdamW

pytestmark = pytest.mark.skipif(_PLAIN_ADAM_STEP is None, reason="this torch wraps its Adam step another way")


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


def _train(optimizer_classes, steps: int = 6, **kwargs) -> tuple[list[torch.Tensor], dict]:
    """``steps`` steps of a small regression; the optimizer is rebuilt from the last one's state_dict at each
    change of ``optimizer_classes`` (one class per step, or one class for all)."""
    classes = optimizer_classes if isinstance(optimizer_classes, list) else [optimizer_classes] * steps
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2))
    x, y = torch.randn(16, 5), torch.randn(16, 2)
    optimizer = None
    for optimizer_class in classes:
        if type(optimizer) is not optimizer_class:
            state = optimizer.state_dict() if optimizer is not None else None
            optimizer = optimizer_class(model.parameters(), lr=0.05, weight_decay=0.1, **kwargs)
            if state is not None:
                optimizer.load_state_dict(state)
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()], optimizer.state_dict()


@pytest.mark.parametrize("fused", [False, True])
def test_eager_adamw_takes_exactly_torchs_adamw_steps(fused):
    eager, eager_state = _train(EagerAdamW, fused=fused)
    plain, plain_state = _train(torch.optim.AdamW, fused=fused)
    assert all(torch.equal(a, b) for a, b in zip(eager, plain))
    assert eager_state["param_groups"] == plain_state["param_groups"]
    for key, state in plain_state["state"].items():
        assert all(torch.equal(state[name], eager_state["state"][key][name]) for name in state)


def test_a_run_switching_between_eager_and_torchs_adamw_goes_on_the_same():
    """A run trained by the command resumes in a library call, and back: the state is the same."""
    switching, _ = _train([EagerAdamW] * 3 + [torch.optim.AdamW] * 2 + [EagerAdamW])
    plain, _ = _train(torch.optim.AdamW)
    assert all(torch.equal(a, b) for a, b in zip(switching, plain))


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_converges_optimizers_never_import_dynamo(name):
    result = _python(f"""
        import sys, torch
        from converge.engine.optim import build_optimizer
        model = torch.nn.Linear(2, 2)
        optimizer = build_optimizer(model, {name!r}, 0.01, 0.1)
        for _ in range(2):
            optimizer.zero_grad()
            model(torch.randn(4, 2)).sum().backward()
            optimizer.step()
        optimizer.load_state_dict(optimizer.state_dict())
        print("torch._dynamo" in sys.modules)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False"]


def test_the_searched_constant_baseline_never_imports_dynamo():
    result = _python("""
        import sys, torch
        from converge.data import TensorSplit
        from converge.engine.objective import in_memory_constant_loss, resolve_objective
        x, y = torch.randn(200, 4), torch.randint(0, 3, (200,))
        splits = {"train": TensorSplit(x, y, "train"), "val": TensorSplit(x[:50], y[:50], "val")}
        loss = torch.nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 4.0]))
        objective = resolve_objective(torch.nn.Linear(4, 3), splits, loss, {}, amp="off",
                                      device=torch.device("cpu"), probe_size=32)
        print(in_memory_constant_loss(splits["train"], objective) is not None, "torch._dynamo" in sys.modules)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False"]


def test_torchs_own_adamw_imports_dynamo_which_is_what_eager_adamw_spares():
    """The check above can fail: torch's AdamW, the same steps, imports it."""
    result = _python("""
        import sys, torch
        model = torch.nn.Linear(2, 2)
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
        model(torch.randn(4, 2)).sum().backward()
        optimizer.step()
        print("torch._dynamo" in sys.modules)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True"]


def test_the_command_trains_without_importing_dynamo(make_task, tmp_path):
    task = make_task()
    result = _python(f"""
        import sys
        sys.argv = ["converge", "train", {str(task)!r}, "--out", {str(tmp_path / "run")!r}, "--quiet",
                    "--max-epochs", "3"]
        from converge.cli import entry
        code = entry()
        print(code, "torch._dynamo" in sys.modules)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-2:] == ["0", "False"]
    assert (tmp_path / "run" / "summary.json").exists()


class _TorchStepSGDW(torch.optim.SGD):
    """SGDW as it was: the decoupled decay, then torch's own (decorated) SGD step."""

    def __init__(self, params, lr, weight_decay):
        super().__init__(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=0.0)
        self.decay = weight_decay

    @torch.no_grad()
    def step(self, closure=None):
        torch._foreach_mul_([p for g in self.param_groups for p in g["params"]], 1.0 - self.param_groups[0]["lr"]
                            * self.decay)
        return super().step(closure)


def test_sgdw_takes_exactly_the_steps_of_torchs_sgd_after_the_decoupled_decay():
    from converge.engine.optim import SGDW

    def trained(build):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2))
        optimizer = build(model)
        x, y = torch.randn(16, 5), torch.randn(16, 2)
        for _ in range(6):
            optimizer.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
        return [p.detach().clone() for p in model.parameters()]

    ours = trained(lambda m: SGDW([{"params": list(m.parameters()), "weight_decay": 0.1}], lr=0.05))
    theirs = trained(lambda m: _TorchStepSGDW(m.parameters(), lr=0.05, weight_decay=0.1))
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
