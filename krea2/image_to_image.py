"""Starting a generation from an image (img2img, inpaint, outpaint) on Krea 2's flow-matching schedule.

Krea2Pipeline draws text-to-image from noise along `sigmas = linspace(1, 1/N, N)`, shifted by the checkpoint's time
shift (fixed for Turbo, by image size for Raw). Starting from an image at `strength` s keeps the same N-step schedule
and runs only its last round(s·N) steps: the image's latents are noised to the first of those sigmas,
`x = (1 - sigma) * image + sigma * noise`, with the very noise text-to-image would draw for the seed, and the stock
pipeline denoises from there (its public `latents=` and `sigmas=` arguments), so every speed-up of text-to-image
applies unchanged. At s = 1 the first sigma is exactly 1 and `x` is exactly that noise: the result is text-to-image's,
bit for bit.

Inpainting keeps the unmasked part on the image's own path: after every step the latents outside the mask are
replaced by the image's latents noised to the step's sigma (the same noise), so the last step lands on the image's
latents there; after decoding, unmasked pixels are composited back from the image itself, so they come back
unchanged, and a feathered mask blends the seam.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.pipelines.krea2.pipeline_krea2 import calculate_shift
from PIL import Image

from .request import GenerationRequest, ImageInput

DISTILLED_MU = 1.15  # Krea2Pipeline's fixed shift for distilled checkpoints (Turbo)


def schedule_tail(steps: int, strength: float) -> list[float]:
    """The unshifted sigmas of the last round(strength·steps) steps of the `steps`-step text-to-image schedule."""
    full = np.linspace(1.0, 1 / steps, steps)
    run = max(1, round(steps * strength))
    return full[steps - run :].tolist()


def schedule_mu(pipe, image_tokens: int) -> float:
    """The time shift Krea2Pipeline applies to its sigmas for this many image tokens (its step 5)."""
    if pipe.config.is_distilled:
        return DISTILLED_MU
    config = pipe.scheduler.config
    return calculate_shift(
        image_tokens,
        config.get("base_image_seq_len", 256),
        config.get("max_image_seq_len", 6400),
        config.get("base_shift", 0.5),
        config.get("max_shift", 1.15),
    )


def shifted_sigmas(pipe, sigmas: list[float], image_tokens: int) -> torch.Tensor:
    """The sigmas the pipeline's scheduler will step through for `sigmas` (shifted, with the final 0), computed on a
    copy of it so the pipeline's own scheduler is left as it is."""
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    scheduler.set_timesteps(sigmas=sigmas, mu=schedule_mu(pipe, image_tokens))
    return scheduler.sigmas.float()


def pixels_of(image: Image.Image, device: torch.device) -> torch.Tensor:
    """(1, 3, h, w) in [0, 1], float32."""
    array = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
    return array.permute(2, 0, 1).unsqueeze(0).to(device, torch.float32) / 255


def mask_of(mask: Image.Image, device: torch.device) -> torch.Tensor:
    """(1, 1, h, w) in [0, 1], float32: 1 repaints, 0 keeps."""
    return torch.from_numpy(np.asarray(mask, dtype=np.uint8).copy()).to(device, torch.float32)[None, None] / 255


@torch.no_grad()
def encode_image(pipe, pixels: torch.Tensor) -> torch.Tensor:
    """(1, 3, h, w) pixels in [0, 1] -> the packed, normalised latents the transformer denoises (1, tokens, 64): the
    inverse of the pipeline's step 7 (the posterior's mode, so the same image always gives the same latents)."""
    vae = pipe.vae
    x = (pixels * 2 - 1).to(vae.dtype)[:, :, None]  # one frame of the video VAE
    z = vae.encode(x).latent_dist.mode()[:, :, 0].float()
    mean = torch.tensor(vae.config.latents_mean, device=z.device).view(1, -1, 1, 1)
    std = torch.tensor(vae.config.latents_std, device=z.device).view(1, -1, 1, 1)
    z = (z - mean) / std
    b, c, h, w = z.shape
    return pipe._pack_latents(z, b, c, h, w)


def packed_mask(pipe, mask: torch.Tensor, channels: int) -> torch.Tensor:
    """A (1, 1, h, w) pixel mask as the packed latents' layout (1, tokens, channels·4): each latent pixel takes the
    mean of the 8x8 pixels it encodes."""
    scale = pipe.vae_scale_factor
    small = F.avg_pool2d(mask, scale)
    b, _, h, w = small.shape
    return pipe._pack_latents(small.expand(b, channels, h, w).contiguous(), b, channels, h, w)


@dataclass
class ImageStart:
    """Everything the denoising loop needs to start from an image: `latents` (the noised image) and `sigmas` for the
    pipeline call, and the parts `blend` and `composite` use for inpainting."""

    latents: torch.Tensor  # (images, tokens, 64): where the loop starts
    sigmas: list[float]  # unshifted, for the pipeline's `sigmas=`
    image_latents: torch.Tensor  # (1, tokens, 64)
    noise: torch.Tensor  # (images, tokens, 64)
    step_sigmas: torch.Tensor  # shifted, with the final 0: the noise level after step i is step_sigmas[i + 1]
    latent_mask: torch.Tensor | None  # (1, tokens, 64) in [0, 1]
    pixels: torch.Tensor  # (1, 3, h, w) in [0, 1]
    pixel_mask: torch.Tensor | None  # (1, 1, h, w) in [0, 1]

    def blend(self, step: int, latents: torch.Tensor) -> torch.Tensor:
        """After step `step`: the latents outside the mask put back on the image's own path."""
        if self.latent_mask is None:
            return latents
        sigma = self.step_sigmas[step + 1].item()
        known = (1 - sigma) * self.image_latents + sigma * self.noise.float()
        mask = self.latent_mask
        return (mask * latents.float() + (1 - mask) * known).to(latents.dtype)

    def composite(self, images: torch.Tensor) -> torch.Tensor:
        """Decoded (images, 3, h, w) in [0, 1] with the unmasked pixels taken back from the image itself."""
        if self.pixel_mask is None:
            return images
        mask = self.pixel_mask
        return mask * images.float() + (1 - mask) * self.pixels


def start_from_image(
    pipe, request: GenerationRequest, generators: list[torch.Generator], dtype: torch.dtype, device: torch.device
) -> ImageStart:
    """The start of `request` (which has a `source`): its noise drawn from `generators` exactly as the pipeline's
    `prepare_latents` draws text-to-image's, the image encoded and noised to the first sigma of the tail."""
    source: ImageInput = request.source  # type: ignore[assignment]
    assert request.steps is not None
    channels = pipe.transformer.config.in_channels // (pipe.patch_size**2)
    noise = pipe.prepare_latents(request.num_images, channels, request.height, request.width, dtype, device, generators)
    pixels = pixels_of(source.image, device)
    image_latents = encode_image(pipe, pixels)
    sigmas = schedule_tail(request.steps, source.strength)
    step_sigmas = shifted_sigmas(pipe, sigmas, noise.shape[1])
    first = step_sigmas[0].item()
    latents = ((1 - first) * image_latents + first * noise.float()).to(dtype)
    pixel_mask = mask_of(source.mask, device) if source.mask is not None else None
    latent_mask = packed_mask(pipe, pixel_mask, channels) if pixel_mask is not None else None
    return ImageStart(
        latents=latents,
        sigmas=sigmas,
        image_latents=image_latents,
        noise=noise,
        step_sigmas=step_sigmas,
        latent_mask=latent_mask,
        pixels=pixels,
        pixel_mask=pixel_mask,
    )
