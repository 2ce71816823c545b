"""RMSNorm as Gemma uses it: normalise by the root mean square, scale by (1 + weight), all in float32."""

import torch
from torch import nn


class GemmaRMSNorm(nn.Module):
    r"""$y = \frac{x}{\sqrt{\mathrm{mean}(x^2) + \epsilon}} \cdot (1 + w)$, with $w$ initialised to zeros.

    The `1 +` makes a freshly initialised layer the identity scaling, so weight decay pulls the
    scale towards 1 rather than 0. The sum of squares runs in float32 because in bfloat16 it loses
    most of its digits (see notebook 01).
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * (1.0 + self.weight.float())).type_as(x)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.eps}"
