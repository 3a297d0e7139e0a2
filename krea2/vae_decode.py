"""Single-frame VAE decode: the Qwen-Image VAE's causal 3D convolutions run as 2D convolutions on an image.

Krea 2 decodes through the Qwen-Image (Wan 2.1) video VAE, one frame. Each of its causal convolutions pads the time
axis with `kernel_t - 1` zero frames in front of the input; on the first (here: only) frame nothing is cached, so a
3x3x3 kernel multiplies two of its three time slices by zeros. Only the last time slice touches real data, and running
that slice as a 2D convolution computes the same sums without the zero products: a third of the decoder's convolution
work (bench/NOTES.md has the measured time). The math is unchanged; the floating-point summation order may differ, as
between any two convolution algorithms.

The swap changes the class of the VAE's causal convolution modules in place (weights, state dict and `from_pretrained`
are untouched) and is undone by `use_single_frame_decode(vae, False)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.autoencoder_kl_qwenimage import QwenImageCausalConv3d
from torch import nn


class SingleFrameCausalConv3d(QwenImageCausalConv3d):
    """A `QwenImageCausalConv3d` that takes the 2D path on one uncached frame and the stock path otherwise."""

    def forward(self, x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
        if cache_x is not None or x.shape[2] != 1 or not self.single_frame_exact():
            return super().forward(x, cache_x)
        left, right, top, bottom = self._padding[:4]
        image = F.pad(x[:, :, 0], (left, right, top, bottom))
        weight = self.weight[:, :, -1]  # the time slice that meets the frame itself; the others meet zero padding
        out = F.conv2d(image, weight, self.bias, self.stride[1:], 0, self.dilation[1:], self.groups)
        return out.unsqueeze(2)

    def single_frame_exact(self) -> bool:
        """True when one frame in gives one frame out, computed by the last time slice alone: the causal padding is
        exactly `kernel_t - 1` zero frames and the time axis is neither strided nor dilated."""
        return self._padding[4] == self.kernel_size[0] - 1 and self.stride[0] == 1 and self.dilation[0] == 1


def use_single_frame_decode(vae: nn.Module, enabled: bool = True) -> int:
    """Switch the decoder side of `vae` (its `post_quant_conv` and `decoder`) to single-frame convolutions, or back to
    stock with `enabled=False`. Returns how many modules were switched."""
    target = SingleFrameCausalConv3d if enabled else QwenImageCausalConv3d
    count = 0
    for part in (getattr(vae, "post_quant_conv", None), getattr(vae, "decoder", None)):
        if part is None:
            continue
        for module in part.modules():
            if isinstance(module, QwenImageCausalConv3d) and type(module) is not target:
                module.__class__ = target
                count += 1
    return count
