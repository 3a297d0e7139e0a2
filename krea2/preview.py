"""A cheap RGB preview of the latents at any step: a linear 16-channel -> RGB map, no VAE decode."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
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
# A VAE folder may carry its own factors (the demo VAE does: demo/train.py fits them to its latent space).
LATENT_RGB_FILE = "latent_rgb.json"


@dataclass(frozen=True)
class LatentRGB:
    """A linear map from the 16 normalised latent channels to RGB in [-1, 1]: (16, 3) factors and a (3,) bias."""

    factors: list[list[float]]
    bias: list[float]

    @classmethod
    def for_vae_folder(cls, folder: str | Path | None) -> LatentRGB:
        """The factors saved beside a VAE (`<folder>/latent_rgb.json`), else the Qwen-Image VAE's."""
        path = Path(folder) / LATENT_RGB_FILE if folder else None
        if path is not None and path.is_file():
            data = json.loads(path.read_text())
            return cls(factors=data["factors"], bias=data["bias"])
        return QWEN_IMAGE_LATENT_RGB

    def on(self, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """The factors and bias on `device`. Made once per generation, before its steps: copying a Python list to a GPU
        waits for everything queued on the stream first (a pageable host-to-device copy)."""
        return torch.tensor(self.factors, device=device), torch.tensor(self.bias, device=device)


QWEN_IMAGE_LATENT_RGB = LatentRGB(_LATENT_RGB_FACTORS, _LATENT_RGB_BIAS)


def unpack_latents(packed: torch.Tensor, height: int, width: int, vae_scale: int = 8, patch: int = 2) -> torch.Tensor:
    """(B, tokens, C*p*p) packed tokens -> (B, C, H/8, W/8) latent image (the inverse of the pipeline's packing)."""
    batch, _, packed_channels = packed.shape
    rows, cols = height // (vae_scale * patch), width // (vae_scale * patch)
    channels = packed_channels // (patch * patch)
    latents = packed.view(batch, rows, cols, channels, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return latents.reshape(batch, channels, rows * patch, cols * patch)


# While the content filter is on, a preview is a mosaic of this many cells along its long side: where the colours
# are, nothing a person (or the classifier) could recognise. The filter judges only finished images, so a detailed
# preview of the last steps would show what it is about to block.
FILTERED_PREVIEW_CELLS = 8


def mosaic(rgb: torch.Tensor, cells: int) -> torch.Tensor:
    """An (h, w, 3) image as a mosaic of `cells` blocks along its long side (each block its mean), same size."""
    h, w, _ = rgb.shape
    rows, cols = max(1, round(cells * h / max(h, w))), max(1, round(cells * w / max(h, w)))
    blocks = F.adaptive_avg_pool2d(rgb.permute(2, 0, 1)[None], (rows, cols))
    return F.interpolate(blocks, size=(h, w), mode="nearest")[0].permute(1, 2, 0)


def preview_pixels(
    packed: torch.Tensor,
    height: int,
    width: int,
    rgb_map: tuple[torch.Tensor, torch.Tensor] | None = None,
    mosaic_cells: int | None = None,
) -> torch.Tensor:
    """First image of the batch as 8-bit RGB pixels (1/8 of the output size, (h, w, 3)), where the latents are; as a
    mosaic of `mosaic_cells` blocks when given (the content filter is on)."""
    latents = unpack_latents(packed[:1].float(), height, width)[0]  # (16, h, w)
    factors, bias = rgb_map if rgb_map is not None else QWEN_IMAGE_LATENT_RGB.on(latents.device)
    rgb = torch.einsum("chw,cr->hwr", latents, factors) + bias
    if mosaic_cells is not None:
        rgb = mosaic(rgb, mosaic_cells)
    return ((rgb + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8)


StepCallback = Callable[[int, int, Image.Image], None]  # (step, total steps, preview)


class StepPreviews:
    """Step previews that never leave the GPU idle.

    Reading a preview back right after its step waits for that step to finish, and the GPU then idles while the CPU
    converts the preview and queues the next step. Here a CUDA step's preview is computed and copied to pinned host
    memory without waiting, and handed on at the next step, once the step after it is already queued: the GPU always
    has work, and the CPU stays at most one step ahead, so previews stay live and a cancel still lands within a step.
    Nothing in `push` may wait for the GPU: the colour map and two pinned buffers (used in turn: the one a step writes
    was read back one step earlier) are made up front. On the CPU there is nothing to overlap, and each preview is
    handed on at once."""

    def __init__(
        self,
        on_step: StepCallback,
        total_steps: int,
        height: int,
        width: int,
        device: torch.device | str = "cpu",
        latent_rgb: LatentRGB = QWEN_IMAGE_LATENT_RGB,
        mosaic_cells: int | None = None,
    ) -> None:
        self.on_step, self.total_steps, self.height, self.width = on_step, total_steps, height, width
        self.mosaic_cells = mosaic_cells  # coarse previews while the content filter is on
        self.rgb_map = latent_rgb.on(device)
        self.cuda = torch.device(device).type == "cuda"
        shape = (height // 8, width // 8, 3)
        self.buffers = [torch.empty(shape, dtype=torch.uint8, pin_memory=True) for _ in range(2)] if self.cuda else []
        self.pending: tuple[int, torch.Tensor, torch.cuda.Event] | None = None

    def push(self, step: int, packed_latents: torch.Tensor) -> None:
        """Start the preview of `step` (1-based), and hand on the previous one."""
        pixels = preview_pixels(packed_latents, self.height, self.width, self.rgb_map, self.mosaic_cells)
        if not self.cuda:
            self.on_step(step, self.total_steps, Image.fromarray(pixels.cpu().numpy(), mode="RGB"))
            return
        host = self.buffers[step % 2]
        host.copy_(pixels, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record()
        self.flush()
        self.pending = (step, host, copied)

    def flush(self) -> None:
        """Hand on the preview still in flight, if any (waits for its copy)."""
        if self.pending is None:
            return
        step, host, copied = self.pending
        self.pending = None
        copied.synchronize()
        self.on_step(step, self.total_steps, Image.fromarray(host.numpy().copy(), mode="RGB"))  # the buffer is reused
