"""Daily energy use of office buildings in kWh from raw readings: floor area (m2), occupants, outside
temperature (deg C), insulation grade (1-4), weekday flag. A few meters glitch and report 5-10x the
true use, so I train with a Huber loss (delta 100 kWh) instead of MSE."""
import torch
from torch import nn


def model():
    return nn.Sequential(nn.Linear(5, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))


loss = nn.HuberLoss(delta=100.0)


def data():
    g = torch.Generator().manual_seed(11)
    n = 3000
    area = 500 + 9500 * torch.rand(n, generator=g)
    people = (area / 25 * (0.5 + torch.rand(n, generator=g))).round()
    temp = -5 + 35 * torch.rand(n, generator=g)
    grade = torch.randint(1, 5, (n,), generator=g).float()
    weekday = (torch.rand(n, generator=g) < 5 / 7).float()
    heating_cooling = (temp - 18).abs() * area / 1000 * (5 - grade) * 6
    kwh = 0.08 * area + 1.5 * people * weekday + heating_cooling + 40 * torch.randn(n, generator=g)
    glitch = torch.rand(n, generator=g) < 0.03
    kwh = torch.where(glitch, kwh * (5 + 5 * torch.rand(n, generator=g)), kwh)
    x = torch.stack([area, people, temp, grade, weekday], 1)
    y = kwh.unsqueeze(1)
    return (x[:2000], y[:2000]), (x[2000:2500], y[2000:2500]), (x[2500:], y[2500:])
