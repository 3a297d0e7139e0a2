"""Regional compilation of the transformer blocks, and the warm-up that compiles them before any user waits.

diffusers' `compile_repeated_blocks`: every `Krea2TransformerBlock` shares one compiled graph, so compiling takes
seconds instead of minutes, and Raw reuses what Turbo compiled (same block class; weights are inputs).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from ..request import GenerationRequest

# Two prompt lengths and the common sizes: after the second distinct shape torch.compile marks the varying
# dimensions dynamic, so later prompts and sizes reuse the compiled blocks instead of recompiling in a user's face.
WARMUP_PROMPTS = ("a photograph of a red fox standing in fresh snow at dawn", "a cat")
WARMUP_SIZES = ((1024, 1024), (1024, 768))
# Batch size 1 compiles a graph of its own (torch specialises size-1 dimensions), so a 2-image request is part of the
# warm-up too.
WARMUP_BATCH_SIZES = (1, 2)
# Two steps per run: the first compiles (or generalises) for the shape, the second captures the denoiser's CUDA graph.
WARMUP_STEPS = 2
# torch.compile's own default per-function recompile limit (8): one device's shapes fit in it.
PER_DEVICE_RECOMPILES = 8


def compile_blocks(transformer: nn.Module) -> None:
    """Compile the repeated blocks (lazily: the first call of each shape compiles); blocks compiled already are left
    as they are, so compiled code is not thrown away by a second `apply`.

    dynamic=None (automatic), not True: True also made the model width symbolic, and the generated fp8 quantisation
    kernels then indexed with runtime div/mod. Automatic marks only what changes between calls (the sequence length,
    after the warm-up's second shape) dynamic."""
    if blocks_compiled(transformer):
        return
    streamed = [block for block in transformer.transformer_blocks if offloaded(block)]
    if not streamed:
        transformer.compile_repeated_blocks(fullgraph=True, dynamic=None)
    else:
        # A small-GPU plan streams some blocks with group offloading (`krea2/residency.py`): its hooks move weights in
        # Python around the block's forward, which a full graph cannot hold. Those run eagerly; the resident ones are
        # compiled exactly as `compile_repeated_blocks` compiles every block.
        for block in transformer.transformer_blocks:
            if not offloaded(block):
                block.compile(fullgraph=True, dynamic=None)
    route_compiled_blocks(transformer)


def set_kernel_tuning(enabled: bool) -> None:
    """Inductor's coordinate-descent tuning of each generated kernel's block sizes, on or off (process-wide: inductor
    has one configuration). torchao's fp8 recipe had turned it on, with every direction checked, as a side effect of
    quantising; the measurements before session j all ran with it. It runs when a kernel first runs, so at start-up,
    where it was most of the compiling on an H200 (bench/NOTES.md, sessions i and j)."""
    import torch._inductor.config as inductor

    inductor.coordinate_descent_tuning = enabled
    inductor.coordinate_descent_check_all_directions = enabled


def route_compiled_blocks(transformer: nn.Module) -> None:
    """Put `Routed` in front of each compiled block: eager in a thread inside `eager_in_this_thread`, and the sequence
    length marked dynamic before the compiled call."""
    for block in transformer.transformer_blocks:
        compiled = getattr(block, "_compiled_call_impl", None)
        if compiled is not None and not isinstance(compiled, Routed):
            block._compiled_call_impl = Routed(compiled, block._call_impl, mark=mark_sequence_dynamic)


def blocks_compiled(transformer: nn.Module) -> bool:
    return any(getattr(block, "_compiled_call_impl", None) is not None for block in transformer.transformer_blocks)


def offloaded(module: nn.Module) -> bool:
    """Whether diffusers' group offloading streams (part of) `module`."""
    return any(hasattr(part, "_diffusers_hook") for part in module.modules())


def warmup_requests(
    checkpoints: Iterable[str],
    sizes: Iterable[tuple[int, int]] = WARMUP_SIZES,
    steps: int = WARMUP_STEPS,
    batch_sizes: Iterable[int] = WARMUP_BATCH_SIZES,
) -> list[GenerationRequest]:
    """The short generations of a warm-up: every size with both prompt lengths, then the first size with each larger
    batch; each on every checkpoint, at its own default guidance (Raw's runs guided, as a user's would)."""
    sizes = list(sizes)
    runs = [(width, height, prompt, 1) for width, height in sizes for prompt in WARMUP_PROMPTS]
    runs += [(*sizes[0], WARMUP_PROMPTS[0], count) for count in batch_sizes if count > 1]
    return [
        GenerationRequest(
            prompt=prompt, checkpoint=key, steps=steps, width=width, height=height, seed=0, num_images=count
        )
        for width, height, prompt, count in runs
        for key in checkpoints
    ]


def compile_order(requests: Iterable[GenerationRequest]) -> list[GenerationRequest]:
    """The warm-up's shapes in the order to compile them: a non-square image first. torch.compile gives sizes that are
    equal on the first call one symbol ("duck sizing"), so a square first decode would make the VAE's kernels
    square-only and a later non-square image compile them again; non-square first, one set serves both."""
    return sorted(requests, key=lambda request: request.width == request.height)


def allow_recompiles_per_device(devices: int) -> None:
    """Room for every device's graphs in torch.compile's per-function cache. The repeated blocks share one compiled
    function, and its guards include the device of its inputs, so each GPU of a worker pool (krea2/workers.py) adds
    its own entries (the warm-up's shapes and batch sizes); past the limit torch runs the blocks uncompiled for good."""
    import torch._dynamo

    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, PER_DEVICE_RECOMPILES * devices)
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 32 * PER_DEVICE_RECOMPILES * devices)


def compiled_graph_count() -> int:
    """Graphs torch.compile has compiled in this process so far (dynamo's own counter): the warm-up logs how many
    each of its shapes added, to show which shapes compile something and which only reuse."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def compile_times_table() -> str:
    """dynamo's time per compilation phase so far (its own table): where a start-up's compiling time went. Only a log
    line: a torch that lacks or changed this private helper gets a note instead of a failed warm-up."""
    try:
        from torch._dynamo.utils import compile_times

        return compile_times(repr="str", aggregate=True)
    except Exception as error:  # noqa: BLE001 - diagnostics never stop the warm-up
        return f"(not available: {type(error).__name__}: {error})"


# ------------------------------------------------------------------------------------------ compiling beside requests
# The app compiles in a background thread while users' requests run (`ModelManager.warm_up`). torch's own switch for
# "run eagerly instead of compiling", `torch.compiler.set_stance`, is process-wide and would stop that thread's
# compilation too; dynamo's frame hook is per thread, so a call that never enters a compiled wrapper never meets
# dynamo. `Routed` stands in front of each compiled function of the project and picks per thread.
_this_thread = threading.local()


@contextlib.contextmanager
def eager_in_this_thread() -> Iterator[None]:
    """Inside, every `Routed` function called from this thread runs its eager original (nothing compiles, nothing is
    looked up in dynamo's caches); other threads are unaffected."""
    previous = getattr(_this_thread, "eager", False)
    _this_thread.eager = True
    try:
        yield
    finally:
        _this_thread.eager = previous


def eager_here() -> bool:
    return getattr(_this_thread, "eager", False)


class Routed:
    """A compiled function that runs `eager` instead in a thread inside `eager_in_this_thread`; `mark` (if any) sees
    the arguments before the compiled call."""

    def __init__(
        self,
        compiled: Callable[..., Any],
        eager: Callable[..., Any],
        mark: Callable[[tuple, dict], None] | None = None,
    ) -> None:
        self.compiled, self.eager, self.mark = compiled, eager, mark

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if eager_here():
            return self.eager(*args, **kwargs)
        if self.mark is not None:
            self.mark(args, kwargs)
        return self.compiled(*args, **kwargs)


def mark_sequence_dynamic(args: tuple, kwargs: dict) -> None:
    """Mark every dimension of a block's inputs that has the sequence's length (the hidden states', the rotary
    tables'; never a batched tensor's first dimension, never a last, feature, dimension, whatever its size) as dynamic
    before the first compilation, so that one graph serves every prompt and image size. Left to itself, torch.compile
    compiles the first shape statically and compiles again, dynamically, at the second: on an H200 each compilation
    of the fp8 block took 70-90 s of a cold start (`bench/results/2026-12-03T0427_NVIDIA-H200_startup_cold.log`).
    `maybe_mark_dynamic`, not `mark_dynamic`: a dimension the graph turns out to need static stays static instead of
    raising.

    The batch stays as torch leaves it (a batch of 1 specialised, so several images compile the block once more):
    marked unbacked, as the VAE's kernels are, the fp8 block failed to compile on an H200 ("Could not guard on
    data-dependent expression Ne(u1, 1)", `bench/results/2026-12-03T1245_NVIDIA-H200_startup_unbacked-batch.log`)."""
    hidden = args[0] if args else kwargs.get("hidden_states")
    if not isinstance(hidden, torch.Tensor) or hidden.dim() < 2:
        return
    batch, length = hidden.shape[:2]
    for value in (*args, *kwargs.values()):
        for tensor in value if isinstance(value, tuple | list) else (value,):
            if not isinstance(tensor, torch.Tensor):
                continue
            batched = tensor.dim() >= 3 and tensor.shape[0] == batch
            for dim in range(int(batched), tensor.dim() - 1):
                if tensor.shape[dim] == length:
                    torch._dynamo.maybe_mark_dynamic(tensor, dim)
