"""Regional compilation of the transformer blocks, and the warm-up that compiles them before any user waits.

diffusers' `compile_repeated_blocks`: every `Krea2TransformerBlock` shares one compiled graph, so compiling takes
seconds instead of minutes, and Raw reuses what Turbo compiled (same block class; weights are inputs).
"""

from __future__ import annotations

from collections.abc import Iterable

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
        return
    # A small-GPU plan streams some blocks with group offloading (`krea2/residency.py`): its hooks move weights in
    # Python around the block's forward, which a full graph cannot hold. Those run eagerly; the resident ones are
    # compiled exactly as `compile_repeated_blocks` compiles every block.
    for block in transformer.transformer_blocks:
        if not offloaded(block):
            block.compile(fullgraph=True, dynamic=None)


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


def allow_recompiles_per_device(devices: int) -> None:
    """Room for every device's graphs in torch.compile's per-function cache. The repeated blocks share one compiled
    function, and its guards include the device of its inputs, so each GPU of a worker pool (krea2/workers.py) adds
    its own entries (the warm-up's shapes and batch sizes); past the limit torch runs the blocks uncompiled for good."""
    import torch._dynamo

    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, PER_DEVICE_RECOMPILES * devices)
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 32 * PER_DEVICE_RECOMPILES * devices)
