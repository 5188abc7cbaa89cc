"""Monthly rent from a listing: numeric columns as scraped (floor area in sq ft, building age in years,
floor number, distance to the subway in meters) and two categorical columns (district 0-24, unit type
0-3) that go through embeddings. The model takes (numeric, categorical); rent in dollars; MSE."""
import torch
from torch import nn


class RentNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.district = nn.Embedding(25, 8)
        self.kind = nn.Embedding(4, 3)
        self.mlp = nn.Sequential(nn.Linear(4 + 8 + 3, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, numeric, categorical):
        h = torch.cat([numeric, self.district(categorical[:, 0]), self.kind(categorical[:, 1])], dim=1)
        return self.mlp(h).squeeze(1)


def model():
    return RentNet()


def data():
    g = torch.Generator().manual_seed(5)
    n = 4000
    sqft = 350 + 1800 * torch.rand(n, generator=g)
    age = 100 * torch.rand(n, generator=g) ** 2
    floor = torch.randint(1, 30, (n,), generator=g).float()
    subway = 2500 * torch.rand(n, generator=g)
    district = torch.randint(0, 25, (n,), generator=g)
    kind = torch.randint(0, 4, (n,), generator=g)
    district_premium = torch.linspace(-600, 900, 25)[torch.randperm(25, generator=g)]
    rent = (800 + 1.6 * sqft - 6 * age + 15 * floor - 0.25 * subway + district_premium[district]
            + torch.tensor([0.0, 150, 300, -100])[kind] + 120 * torch.randn(n, generator=g))
    numeric = torch.stack([sqft, age, floor, subway], 1)
    categorical = torch.stack([district, kind], 1)
    split = lambda a, b: ((numeric[a:b], categorical[a:b]), rent[a:b])
    return split(0, 2800), split(2800, 3400), split(3400, n)
