"""Telecom churn. Columns as they come out of the billing export: tenure in months, monthly charge in
dollars, total charged so far in dollars, contract code (0 month-to-month, 1 one year, 2 two years),
support calls last quarter, paperless billing flag. One logit out; my own loss with a positive weight
because churners are the minority."""
import torch
import torch.nn.functional as F
from torch import nn


def model():
    return nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))


def loss(logit, churned):
    return F.binary_cross_entropy_with_logits(logit.view(-1), churned, pos_weight=torch.tensor(2.0))


def data():
    g = torch.Generator().manual_seed(3)
    n = 5000
    tenure = torch.randint(1, 73, (n,), generator=g).float()
    monthly = 20 + 100 * torch.rand(n, generator=g)
    total = tenure * monthly * (0.9 + 0.2 * torch.rand(n, generator=g))
    contract = torch.multinomial(torch.tensor([0.55, 0.25, 0.20]), n, replacement=True, generator=g).float()
    calls = torch.poisson(torch.full((n,), 1.5), generator=g)
    paperless = (torch.rand(n, generator=g) < 0.6).float()
    z = 0.5 - 0.05 * tenure + 0.02 * (monthly - 70) - 1.2 * contract + 0.4 * calls + 0.3 * paperless
    churned = (torch.rand(n, generator=g) < torch.sigmoid(z)).float()
    x = torch.stack([tenure, monthly, total, contract, calls, paperless], 1)
    return (x[:3500], churned[:3500]), (x[3500:4250], churned[3500:4250]), (x[4250:], churned[4250:])
