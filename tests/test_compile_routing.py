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
from krea2.speedups.compile import (
    Routed,
    eager_here,
    eager_in_this_thread,
    mark_sequence_dynamic,
    route_compiled_blocks,
)
from krea2.speedups.vae_decode import DecodeOps


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
    mark_sequence_dynamic((hidden, temb, (cos, sin), None), {})
    assert hidden._dynamo_weak_dynamic_indices == {1}
    assert cos._dynamo_weak_dynamic_indices == {0} and sin._dynamo_weak_dynamic_indices == {0}
    assert not getattr(temb, "_dynamo_weak_dynamic_indices", set())


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
