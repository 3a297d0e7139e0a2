"""A cheap RGB preview of the latents at any step: a linear 16-channel -> RGB map, no VAE decode."""

from __future__ import annotations

import torch
from PIL import Image

# Widely used linear factors for the Qwen-Image / Wan 2.1 latent space (rows: latent channel; columns: R, G, B),
# applied to the normalised latent the pipeline denoises.
_LATENT_RGB_FACTORS = [
    [-0.1299, -0.1692, 0.2932], [0.0671, 0.0406, 0.0442], [0.3568, 0.2548, 0.1747], [0.0372, 0.2344, 0.1420],
    [0.0313, 0.0189, -0.0328], [0.0296, -0.0956, -0.0665], [-0.3477, -0.4059, -0.2925], [0.0166, 0.1902, 0.1975],
    [-0.0412, 0.0267, -0.1364], [-0.1293, 0.0740, 0.1636], [0.0680, 0.3019, 0.1128], [0.0032, 0.0581, 0.0639],
    [-0.1251, 0.0927, 0.1699], [0.0060, -0.0633, 0.0005], [0.3477, 0.2275, 0.2950], [0.1984, 0.0913, 0.1861],
]  # fmt: skip
_LATENT_RGB_BIAS = [-0.1835, -0.0868, -0.3360]


def unpack_latents(packed: torch.Tensor, height: int, width: int, vae_scale: int = 8, patch: int = 2) -> torch.Tensor:
    """(B, tokens, C*p*p) packed tokens -> (B, C, H/8, W/8) latent image (the inverse of the pipeline's packing)."""
    batch, _, packed_channels = packed.shape
    rows, cols = height // (vae_scale * patch), width // (vae_scale * patch)
    channels = packed_channels // (patch * patch)
    latents = packed.view(batch, rows, cols, channels, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return latents.reshape(batch, channels, rows * patch, cols * patch)


def latents_to_preview(packed: torch.Tensor, height: int, width: int) -> Image.Image:
    """First image of the batch as a small PIL preview (1/8 of the output size)."""
    latents = unpack_latents(packed[:1].float(), height, width)[0]  # (16, h, w)
    factors = torch.tensor(_LATENT_RGB_FACTORS, device=latents.device)
    bias = torch.tensor(_LATENT_RGB_BIAS, device=latents.device)
    rgb = torch.einsum("chw,cr->hwr", latents, factors) + bias
    rgb = ((rgb + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()
    return Image.fromarray(rgb, mode="RGB")
