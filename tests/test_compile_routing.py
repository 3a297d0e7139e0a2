"""Compiling beside requests (`speedups/compile.py`): the compiled blocks and VAE kernels run eagerly in a thread
that asks for it while another thread compiles, and the first compilation of the blocks is already dynamic in the
sequence length, so a second prompt length or image size does not compile them again. On the tiny real transformer,
with torch.compile's "eager" backend (dynamo traces and guards exactly as with inductor, without generating kernels)."""

from __future__ import annotations

import threading

import torch
from torch._dynamo.utils import counters

from krea2.demo import build_demo_pipeline
from krea2.pipeline import Krea2StudioPipeline
from krea2.request import GenerationRequest
from krea2.speedups.compile import (
    Routed,
    compile_order,
    eager_here,
    eager_in_this_thread,
    mark_sequence_dynamic,
    route_compiled_blocks,
)
from krea2.speedups.vae_decode import DecodeOps, norm_silu, scaled_softmax


def tiny_pipe() -> Krea2StudioPipeline:
    return Krea2StudioPipeline.from_pipeline(build_demo_pipeline(transformer_seed=3, is_distilled=True))


def run(pipe: Krea2StudioPipeline, prompt: str, side: int) -> None:
    pipe(prompt=prompt, width=side, height=side, num_inference_steps=1, output_type="latent")


def unique_graphs() -> int:
    return counters["stats"]["unique_graphs"]


def test_the_first_compilation_of_the_blocks_covers_every_sequence_length():
    """Two prompt lengths and two image sizes after the first call: no second compilation (torch would otherwise
    compile the first shape statically and again, dynamically, at the second: 70-90 s each on an H200)."""
    torch._dynamo.reset()
    pipe = tiny_pipe()
    pipe.transformer.compile_repeated_blocks(fullgraph=True, dynamic=None, backend="eager")
    route_compiled_blocks(pipe.transformer)
    before = unique_graphs()
    for prompt, side in [("a red circle", 64), ("a blue square on a green background", 64), ("a red circle", 96)]:
        run(pipe, prompt, side)
    assert unique_graphs() - before == 1


def test_without_the_marks_the_second_shape_compiles_again():
    """The same calls with the blocks compiled as diffusers leaves them: what the marks save (this test shows the
    one above can fail)."""
    torch._dynamo.reset()
    pipe = tiny_pipe()
    pipe.transformer.compile_repeated_blocks(fullgraph=True, dynamic=None, backend="eager")
    before = unique_graphs()
    for prompt, side in [("a red circle", 64), ("a blue square on a green background", 64)]:
        run(pipe, prompt, side)
    assert unique_graphs() - before == 2


def test_only_sequence_dimensions_are_marked_never_a_feature_dimension():
    hidden = torch.zeros(1, 8, 8)  # the sequence as long as the width: only dim 1 is the sequence
    cos, sin = torch.zeros(8, 4), torch.zeros(8, 4)
    temb = torch.zeros(1, 1, 8)
    mask = torch.ones(1, 1, 1, 8, dtype=torch.bool)
    mark_sequence_dynamic((hidden, temb, (cos, sin), mask), {})
    assert hidden._dynamo_weak_dynamic_indices == {1}
    assert cos._dynamo_weak_dynamic_indices == {0} and sin._dynamo_weak_dynamic_indices == {0}
    assert not getattr(temb, "_dynamo_weak_dynamic_indices", set())
    assert not getattr(mask, "_dynamo_weak_dynamic_indices", set())  # its sequence is its last dim: a key mask
    square = torch.zeros(8, 8, 4)  # a batch as large as the sequence: its first dimension is still the batch
    mark_sequence_dynamic((square,), {})
    assert square._dynamo_weak_dynamic_indices == {1}


def test_the_blocks_compile_once_for_one_image_and_once_for_several():
    """Guided or not, 1, 2 or 3 images: two graphs (torch specialises a batch of 1). What the warm-up's 2-image shape
    is for; marking the batch unbacked would save it, but failed on the GPU (`mark_sequence_dynamic`)."""
    torch._dynamo.reset()
    pipe = Krea2StudioPipeline.from_pipeline(build_demo_pipeline(transformer_seed=3, is_distilled=False))
    pipe.transformer.compile_repeated_blocks(fullgraph=True, dynamic=None, backend="eager")
    route_compiled_blocks(pipe.transformer)
    before = unique_graphs()
    for guidance, images in [(0.0, 1), (3.5, 1), (0.0, 2), (3.5, 2), (0.0, 3)]:
        pipe(prompt="a red circle", width=64, height=64, num_inference_steps=1, output_type="latent",
             guidance_scale=guidance, num_images_per_prompt=images)  # fmt: skip
    assert unique_graphs() - before == 2


def test_routed_functions_run_eagerly_in_the_thread_that_asks_and_compiled_elsewhere():
    torch._dynamo.reset()
    routed = Routed(torch.compile(lambda x: torch.sin(x) + 1, backend="eager", fullgraph=True), lambda x: x * 0)
    before = unique_graphs()
    results: dict[str, torch.Tensor] = {}

    def user() -> None:
        with eager_in_this_thread():
            assert eager_here()
            results["user"] = routed(torch.ones(3))

    with eager_in_this_thread():  # the flag is per thread: this one's does not reach the compiling thread
        compiling = threading.Thread(target=lambda: results.setdefault("compiled", routed(torch.ones(3))))
        compiling.start()
        compiling.join(60)
    thread = threading.Thread(target=user)
    thread.start()
    thread.join(60)
    assert torch.equal(results["user"], torch.zeros(3))  # the eager original ran, never dynamo
    assert torch.allclose(results["compiled"], torch.sin(torch.ones(3)) + 1)
    assert unique_graphs() - before == 1 and not eager_here()


def test_the_vae_kernels_are_routed_too():
    ops = DecodeOps.compiled()
    for op in (ops.norm_silu, ops.bias_norm_silu, ops.bias_add, ops.softmax):
        assert isinstance(op, Routed)


def test_one_compilation_of_each_vae_kernel_serves_every_size_and_batch():
    """Non-square first (the warm-up's `compile_order`): a square image, 2 and 3 images, other sizes reuse it. Square
    first, a non-square image compiles again (torch's duck sizing: what the order avoids)."""
    ops = DecodeOps.compiled()
    gamma = torch.rand(8, 1, 1)  # QwenImageRMS_norm's shape for images

    def graphs_for(shapes) -> int:
        before = unique_graphs()
        for shape in shapes:
            x = torch.randn(shape).to(memory_format=torch.channels_last)
            torch.testing.assert_close(ops.norm_silu(x, gamma, 0.0, 2.0), norm_silu(x, gamma, 0.0, 2.0))
        return unique_graphs() - before

    torch._dynamo.reset()
    assert graphs_for([(1, 8, 6, 4), (1, 8, 4, 4), (2, 8, 4, 4), (3, 8, 5, 7), (1, 8, 9, 9)]) == 1
    torch._dynamo.reset()
    ops = DecodeOps.compiled()
    assert graphs_for([(1, 8, 4, 4), (1, 8, 6, 4)]) == 2

    torch._dynamo.reset()  # the attention's softmax (GPU only in the decoder; here called directly): one graph too
    before = unique_graphs()
    for shape in [(1, 64, 256), (1, 16, 256), (2, 64, 256), (3, 48, 192)]:
        scores = torch.randn(shape)
        expected = scaled_softmax(scores, 0.1, torch.float32)
        torch.testing.assert_close(ops.softmax(scores, 0.1, torch.float32), expected)
    assert unique_graphs() - before == 1


def test_the_warm_up_compiles_a_non_square_image_first_and_keeps_the_rest_in_order():
    def request(width: int, height: int, checkpoint: str) -> GenerationRequest:
        return GenerationRequest(prompt="a cat", checkpoint=checkpoint, width=width, height=height)

    square_turbo, square_raw = request(1024, 1024, "turbo"), request(1024, 1024, "raw")
    wide_turbo, wide_raw = request(1024, 768, "turbo"), request(1024, 768, "raw")
    ordered = compile_order([square_turbo, square_raw, wide_turbo, wide_raw])
    assert ordered == [wide_turbo, wide_raw, square_turbo, square_raw]
