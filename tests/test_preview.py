"""StepPreviews: on the CPU each preview is handed on at once; on CUDA one step late, so the GPU is never left idle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from krea2.preview import StepPreviews, preview_pixels

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
    return preview_pixels(packed_latents(step), HEIGHT, WIDTH).numpy()


def test_cpu_previews_are_handed_on_at_once_with_the_pixels_of_their_step():
    after_each, received = run_previews("cpu")
    assert after_each == [[1], [1, 2], [1, 2, 3]]
    assert [(i, n) for i, n, _ in received] == [(1, 3), (2, 3), (3, 3)]
    for step, _, pixels in received:
        assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
        assert np.array_equal(pixels, expected_pixels(step))


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
