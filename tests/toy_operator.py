"""A toy attention, registered by tests/test_operators.py the way README's "Adding an operator"
says: its module (class plus kernel tally) and one `register` call, nothing else in the package."""
import torch
import torch.nn as nn

from latency_models import features
from search_space.fold import affine_into_linear
from search_space.operators import Attention


class MeanTokenMixer(nn.Module):
    """v = fc(x), then proj(v + the mean of v over the tokens): a mixer with one global token."""

    def __init__(self, dim: int, heads: int, key_dim: int, value_ratio: int = 1, grid: int = 0):
        super().__init__()
        self.fc, self.proj = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.fc(x)
        return self.proj(v + v.mean(1, keepdim=True))

    def absorb_input_affine(self, a: torch.Tensor, b: torch.Tensor) -> None:
        affine_into_linear(self.fc, a, b)


def tally(t: features.KernelTally, s, n: int, grid: int, folded: bool) -> None:
    c = s.width
    features.linear(t, n, c, c)
    t.add("reduce", n * c, features.F32 * n * c)
    features.elementwise(t, n * c)
    features.linear(t, n, c, c)


MEANMIX = Attention("meanmix", "tests.toy_operator:MeanTokenMixer", "tests.toy_operator:tally")
