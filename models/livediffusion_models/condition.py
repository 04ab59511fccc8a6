"""A ControlNet's condition made from the input frame on the device, inside the frame step.

Edges need no weights, so they are computed where the frame already is, in the same CUDA graph
(and the same Core ML program) as the rest of the step: no round trip to the host, no OpenCV.

``canny`` follows Canny's recipe with fixed costs, so a graph can capture it: grey, a 5x5
Gaussian blur, Sobel gradients, non-maximum suppression along the gradient quantised to four
directions, two thresholds, and hysteresis as a fixed number of 3x3 growth steps from the
strong edges through the weak ones (instead of an unbounded flood fill). White edges on black,
as the canny ControlNets were trained on (OpenCV's ``Canny(image, 100, 200)``).

A step edge has two pixels of equal gradient, one each side; suppression keeps the one on the
*brighter* side (ties, equal up to rounding, break one way only), so a white square on black
gives exactly its own outermost ring of pixels (a black square on white gives the outline just
outside it, its corners cut by the four-direction quantisation).

``sketch`` is the same edges drawn as dark strokes on white, thickened to ``stroke`` pixels:
what the SDXS-512-DreamShaper sketch ControlNet takes (its authors' demo feeds black strokes on
a white canvas, and an empty canvas is all white).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from livediffusion_models.registry import CONDITIONS, ConditionKind

__all__ = ["CONDITIONS", "ConditionKind", "EdgeCondition", "condition_for"]


_TAN_22_5 = math.tan(math.pi / 8)
_TIE = 1e-4


def _gaussian(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).reshape(1, 1, size, size)


class EdgeCondition(nn.Module):
    """``image`` in [-1, 1] (streams, 3, H, W) -> the ControlNet's condition in [0, 1], same shape.

    ``low`` and ``high`` are Canny's thresholds on the gradient magnitude of the [0, 1] grey
    picture (a sharp black-to-white step measures 1 before the blur, about 0.6 after it).
    """

    blur: torch.Tensor
    sobel: torch.Tensor

    def __init__(
        self,
        kind: ConditionKind = "canny",
        *,
        low: float = 0.1,
        high: float = 0.2,
        hysteresis_steps: int = 2,
        stroke: int = 3,
    ) -> None:
        super().__init__()
        if kind not in CONDITIONS:
            raise ValueError(f"condition must be one of {', '.join(CONDITIONS)}, got {kind!r}")
        if not 0 < low <= high:
            raise ValueError(f"canny thresholds need 0 < low <= high, got {low}, {high}")
        if stroke < 1 or stroke % 2 == 0:
            raise ValueError(f"stroke must be an odd number of pixels, got {stroke}")
        self.kind: ConditionKind = kind
        self.low = float(low)
        self.high = float(high)
        self.hysteresis_steps = int(hysteresis_steps)
        self.stroke = int(stroke)
        self.register_buffer("blur", _gaussian(5, 1.0), persistent=False)
        dx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 4
        self.register_buffer("sobel", torch.stack([dx, dx.T]).unsqueeze(1), persistent=False)

    def edges(self, image: torch.Tensor) -> torch.Tensor:
        """1 on an edge pixel, 0 elsewhere: (streams, 1, H, W), float32."""
        rgb = (image.float() + 1) * 0.5
        grey = 0.299 * rgb[:, 0:1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:3]
        # replicate padding: the picture's own border is not an edge
        grey = F.conv2d(F.pad(grey, (2, 2, 2, 2), mode="replicate"), self.blur)
        gradients = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), self.sobel)
        gx, gy = gradients[:, 0:1], gradients[:, 1:2]
        magnitude = torch.sqrt(gx * gx + gy * gy)

        # the eight neighbours' magnitudes (0 outside the picture)
        padded = F.pad(magnitude, (1, 1, 1, 1))
        height, width = magnitude.shape[-2:]

        def at(dy: int, dx: int) -> torch.Tensor:
            return padded[:, :, 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]

        ax, ay = gx.abs(), gy.abs()
        horizontal = ay <= _TAN_22_5 * ax  # gradient along x: compare left and right
        vertical = ax <= _TAN_22_5 * ay
        same_sign = gx * gy > 0  # gradient towards down-right (or up-left)
        # "ahead" is the neighbour the gradient points to (brighter), "behind" the other
        ahead = torch.where(
            horizontal,
            torch.where(gx > 0, at(0, 1), at(0, -1)),
            torch.where(
                vertical,
                torch.where(gy > 0, at(1, 0), at(-1, 0)),
                torch.where(
                    same_sign,
                    torch.where(gx > 0, at(1, 1), at(-1, -1)),
                    torch.where(gx > 0, at(-1, 1), at(1, -1)),
                ),
            ),
        )
        behind = torch.where(
            horizontal,
            torch.where(gx > 0, at(0, -1), at(0, 1)),
            torch.where(
                vertical,
                torch.where(gy > 0, at(-1, 0), at(1, 0)),
                torch.where(
                    same_sign,
                    torch.where(gx > 0, at(-1, -1), at(1, 1)),
                    torch.where(gx > 0, at(1, -1), at(-1, 1)),
                ),
            ),
        )
        # the bright side of a step wins the tie: >= behind, > ahead; the two sides of a step
        # are equal only up to rounding, so "equal" is within _TIE
        # (logical_and, not &: coremltools 9 converts no Python operator on booleans)
        thin = torch.logical_and(magnitude >= behind - _TIE, magnitude > ahead + _TIE)
        weak = torch.logical_and(thin, magnitude >= self.low).float()
        edges = torch.logical_and(thin, magnitude >= self.high).float()
        for _ in range(self.hysteresis_steps):  # grow strong edges along connected weak ones
            edges = torch.maximum(edges, weak * F.max_pool2d(edges, 3, stride=1, padding=1))
        return edges

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        edges = self.edges(image)
        if self.kind == "sketch":
            if self.stroke > 1:
                edges = F.max_pool2d(edges, self.stroke, stride=1, padding=self.stroke // 2)
            edges = 1.0 - edges
        return edges.expand(-1, 3, -1, -1).to(image.dtype)


def condition_for(kind: ConditionKind, size: tuple[int, int]) -> EdgeCondition:
    """The condition module for a model running at ``size`` (height, width): sketch strokes
    3 pixels wide at 512, scaled with the picture (odd, at least 1)."""
    stroke = max(1, round(3 * min(size) / 512)) | 1
    return EdgeCondition(kind, stroke=stroke)
