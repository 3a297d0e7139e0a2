"""StepPreviews: on the CPU each preview is handed on at once; on CUDA one step late, so the GPU is never left idle."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from krea2.preview import QWEN_IMAGE_LATENT_RGB, StepPreviews

HEIGHT = WIDTH = 256  # 16x16 packed tokens of 16 channels x 2 x 2 -> a 32x32 preview


def packed_latents(seed: int, device: str = "cpu") -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, (HEIGHT // 16) * (WIDTH // 16), 64, generator=generator).to(device)


def run_previews(device: str, steps: int = 3) -> tuple[list, list]:
    """Push `steps` previews; returns what the callback had received after each push, and everything at the end."""
    received: list[tuple[int, int, np.ndarray]] = []
    previews = StepPreviews(
        lambda i, n, image: received.append((i, n, np.asarray(image))), steps, HEIGHT, WIDTH, torch.device(device)
    )
    after_each = []
    for step in range(1, steps + 1):
        previews.push(step, packed_latents(step, device))
        after_each.append([i for i, _, _ in received])
    previews.flush()
    return after_each, received


def expected_pixels(step: int) -> np.ndarray:
    """The preview worked out independently, in numpy, pixel by pixel: latent pixel (row, col) of channel c sits in
    packed token (row // 2) * cols + col // 2 at feature c * 4 + (row % 2) * 2 + col % 2 (diffusers' 2x2 packing);
    its RGB is the linear map of the 16 channels, then (x + 1) / 2 in 8 bits."""
    packed = packed_latents(step)[0].double().numpy()  # (tokens, 64)
    factors = np.array(QWEN_IMAGE_LATENT_RGB.factors)  # (16, 3)
    bias = np.array(QWEN_IMAGE_LATENT_RGB.bias)
    rows, cols = HEIGHT // 8, WIDTH // 8
    pixels = np.zeros((rows, cols, 3), dtype=np.uint8)
    for row in range(rows):
        for col in range(cols):
            token = (row // 2) * (cols // 2) + col // 2
            channels = packed[token, [c * 4 + (row % 2) * 2 + col % 2 for c in range(16)]]
            rgb = np.clip((channels @ factors + bias + 1) / 2, 0, 1)
            pixels[row, col] = np.round(rgb * 255)
    return pixels


def test_the_reference_reads_the_packing_the_pipeline_writes():
    """`expected_pixels` unpacks by hand; check its reading against diffusers' own packing of a known latent."""
    from diffusers import Krea2Pipeline

    latent = torch.arange(16 * 4 * 4, dtype=torch.float32).reshape(1, 16, 4, 4)
    packing = types.SimpleNamespace(patch_size=2)  # all `_pack_latents` reads of the pipeline
    packed = Krea2Pipeline._pack_latents(packing, latent, 1, 16, 4, 4)[0]
    for c, row, col in ((0, 0, 0), (5, 1, 2), (15, 3, 3), (7, 2, 1)):
        assert packed[(row // 2) * 2 + col // 2, c * 4 + (row % 2) * 2 + col % 2] == latent[0, c, row, col]


def test_cpu_previews_are_handed_on_at_once_with_the_pixels_of_their_step():
    after_each, received = run_previews("cpu")
    assert after_each == [[1], [1, 2], [1, 2, 3]]
    assert [(i, n) for i, n, _ in received] == [(1, 3), (2, 3), (3, 3)]
    for step, _, pixels in received:
        assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
        # float32 on the CPU against float64 here: a value right at a rounding boundary may land one level apart
        assert np.abs(pixels.astype(int) - expected_pixels(step).astype(int)).max() <= 1


def test_flush_with_nothing_in_flight_calls_nothing():
    calls = []
    StepPreviews(lambda *args: calls.append(args), 8, HEIGHT, WIDTH).flush()
    assert calls == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the GPU machine)")
def test_cuda_previews_arrive_one_step_late_and_flush_delivers_the_last():
    after_each, received = run_previews("cuda")
    assert after_each == [[], [1], [1, 2]]
    assert [i for i, _, _ in received] == [1, 2, 3]
    for step, _, pixels in received:
        # the GPU's einsum may round differently from the CPU's: allow one 8-bit level
        assert np.abs(pixels.astype(int) - expected_pixels(step).astype(int)).max() <= 1
