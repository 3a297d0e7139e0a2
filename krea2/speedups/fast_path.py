"""The fast path as one checklist: `apply` puts every speed-up on the pipelines in the order they need, and
`installed` says what is on a pipeline now.

Each step is one call with its switch and why it is there. The order is not a convention but a dependency chain:
fusion before fp8 (the fused weights are what gets quantised), both before the attention processor (which reads the
fused projection) and before compilation (which traces the final modules), and the denoiser's CUDA graphs last, since
they record the kernels and weight addresses of everything before them. That is also why graphs are dropped first, in
this one place: any step below changes what a captured graph would replay.

Every step leaves a module that already has its change alone, so applying more options later (the benchmark's modes)
adds to what is there; only the denoiser's graphs are always captured afresh.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from ..placement import Placement, apply_placement, unique_modules
from .attention import KERNEL_NAMES, attention_in_use, install_fast_attention
from .compile import blocks_compiled, compile_blocks, set_kernel_tuning
from .denoiser_graphs import denoiser_graphs_of, drop_denoiser_graphs, install_denoiser_graphs
from .fp8 import fp8_layers, fp8_quantized, quantize_fp8
from .options import FastPathOptions
from .projections import fuse_projections, projections_fused
from .step_cache import install_step_cache, step_cache_of
from .text_graphs import TextEncoderGraphs
from .vae_decode import (
    single_frame_decode_of,
    single_frame_encode_of,
    use_single_frame_decode,
    use_single_frame_encode,
)

if TYPE_CHECKING:
    from ..pipeline import Krea2StudioPipeline
    from ..residency import Residency

log = logging.getLogger(__name__)


def apply(
    pipes: Sequence[Krea2StudioPipeline],
    options: FastPathOptions,
    *,
    placement: Placement,
    device: torch.device,
    residency: Residency | None = None,
) -> None:
    """Put the fast path `options` asks for on `pipes` (which may share components: each is changed once) and place
    their weights, as `placement` says or, under a small-GPU plan, as its `residency` does. `options` are final:
    `for_placement(requested, placement)` / `for_plan(requested, plan)` decided what can run where."""
    transformers = _unique([pipe.transformer for pipe in pipes])
    vaes = _unique([pipe.vae for pipe in pipes])

    # 0. Drop the denoiser's CUDA graphs (the one place they are invalidated): every step below changes the kernels or
    #    weights they replay. Step 8 captures fresh ones.
    for transformer in transformers:
        drop_denoiser_graphs(transformer)

    # 1. Single-frame VAE decode and encode (img2img's init image), always (exact): one frame through causal 3D
    #    convolutions is 2D convolutions with the kernels' last time slice, in channels_last, without the video
    #    VAE's feature cache. With compile, the norm+SiLU and residual adds of both run as fused kernels (one set).
    for vae in vaes:
        use_single_frame_decode(vae, compiled=options.compile)
        use_single_frame_encode(vae, compiled=options.compile)

    # 2. First-block step cache (`step_cache`), undistilled checkpoints only: Raw's many guided steps change slowly
    #    enough to reuse the blocks' residual; Turbo's 8 distilled steps do not. Approximate.
    if options.step_cache is not None:
        for pipe in pipes:
            if not pipe.config.is_distilled:
                install_step_cache(pipe.transformer, options.step_cache)

    # 3. Fused projections, then fp8 weights+activations (`fp8`): fp8 tensor cores run the GEMMs at twice bf16's rate;
    #    fusing first means each block input is quantised once instead of four times. Before the move with
    #    `prepare_on_cpu` (ZeroGPU: no GPU at start-up), else on the GPU after it (step 4), where quantising takes
    #    seconds and the bf16 weights fit by the placement rule. With `lora_masters`, the bf16 weights are kept in CPU
    #    memory in between: LoRAs fold into those and are quantised with them (krea2/lora_fold.py says why).
    if options.fp8 and options.prepare_on_cpu:
        _fuse_and_quantize(transformers, options.lora_masters)

    # 4. Place the weights: on the GPU, streamed from CPU memory (offload), or on the CPU. Under a small-GPU plan the
    #    residency places them, fusing and quantising block by block on the GPU on the way (the bf16 weights do not
    #    fit there at once), streaming the plan's blocks, and parking the inactive transformers in CPU RAM.
    if residency is not None:
        residency.place(fp8=options.fp8)
    else:
        apply_placement(unique_modules(list(pipes)), placement, device)
    if options.fp8 and not options.prepare_on_cpu:
        _fuse_and_quantize(transformers, options.lora_masters)

    # 5. Attention (`attention`): FlashAttention-4 or cuDNN's fp8 kernel through our processor, which fused projections
    #    need too (also those a pre-quantised fp8 checkpoint was loaded with); or a diffusers attention backend by name.
    kernel = options.attention if options.attention in KERNEL_NAMES else None
    backend = options.attention if options.attention not in KERNEL_NAMES else None
    for transformer in transformers:
        if options.fp8 or kernel or projections_fused(transformer):
            install_fast_attention(transformer, kernel)
        if backend:
            transformer.set_attention_backend(backend)

    # 6. The text encoder from CUDA graphs (`text_graphs`), one set per encoder: encoding a prompt is launch-bound.
    for encoder, sharing in _group_by_text_encoder(pipes).items():
        graphs = None
        if options.text_graphs:
            graphs = next((pipe.text_graphs for pipe in sharing if pipe.text_graphs is not None), None)
            graphs = graphs or TextEncoderGraphs(
                encoder, sharing[0].text_encoder_select_layers, pad_id=sharing[0].tokenizer.pad_token_id or 0
            )
        for pipe in sharing:
            pipe.text_graphs = graphs

    # 7. Regional compilation of the repeated blocks (`compile`): one compiled graph for all 28 blocks of both
    #    checkpoints; it compiles lazily, so the manager's warm-up runs the common shapes first. Blocks a plan streams
    #    run eagerly. `kernel_tuning`: inductor's coordinate-descent search over each kernel's block sizes, which
    #    torchao's fp8 recipe used to switch on for the process (set here instead, in the open). Off by default: on
    #    an H200 it was most of a start-up's compile time and bought no measurable speed (bench/NOTES.md, session j).
    if options.compile:
        set_kernel_tuning(options.kernel_tuning)
        for transformer in transformers:
            compile_blocks(transformer)

    # 8. Whole denoiser calls from CUDA graphs (`denoiser_graphs`, with compile): the launch gaps between a compiled
    #    step's ~600 kernels. Raw and Turbo never run at the same time, so they share one memory pool.
    if options.denoiser_graphs:
        pool = torch.cuda.graph_pool_handle() if device.type == "cuda" else None
        for transformer in transformers:
            install_denoiser_graphs(transformer, pool)


def weights_moved(transformers: dict[str, torch.nn.Module], moved_in: str, options: FastPathOptions) -> None:
    """After a swap (`krea2/residency.py`) the weights sit at new addresses: every transformer's denoiser graphs
    replay old ones, so they are dropped, and the transformer moved in gets fresh ones (captured on its next calls)."""
    for transformer in transformers.values():
        drop_denoiser_graphs(transformer)
    if options.denoiser_graphs:
        transformer = transformers[moved_in]
        install_denoiser_graphs(transformer, torch.cuda.graph_pool_handle() if torch.cuda.is_available() else None)


def installed(pipe: Krea2StudioPipeline) -> list[str]:
    """What of the fast path is on `pipe` now, read from the modules themselves, in `apply`'s order."""
    transformer = pipe.transformer
    names = []
    if decode := single_frame_decode_of(pipe.vae):
        encode = " and encode" if single_frame_encode_of(pipe.vae) else ""
        names.append(f"single-frame VAE decode{encode}" + (" (compiled)" if decode == "compiled" else ""))
    if (cache := step_cache_of(transformer)) is not None:
        names.append(f"step cache {cache.threshold:g}")
    if projections_fused(transformer):
        names.append("fused projections")
    if fp8_quantized(transformer):
        names.append("fp8")
    if attention := attention_in_use(transformer):
        names.append(attention)
    if pipe.text_graphs is not None and pipe.text_graphs.disabled_reason is None:
        names.append("text encoder CUDA graphs")
    if blocks_compiled(transformer):
        names.append("compiled blocks")
    if (graphs := denoiser_graphs_of(transformer)) is not None and graphs.disabled_reason is None:
        names.append("denoiser CUDA graphs")
    return names


def _fuse_and_quantize(transformers: list[torch.nn.Module], lora_masters: bool) -> None:
    """Fuse and quantise; LoRAs folded in are taken out first (fusion copies the weights: it must copy the
    checkpoint's) and folded in again after."""
    from ..lora_fold import patcher_of

    for transformer in transformers:
        patcher = patcher_of(transformer, create=lora_masters)
        folded = patcher.unfold_all() if patcher is not None else []
        fuse_projections(transformer)
        if patcher is not None:
            patcher.drop_stale_masters()
            if lora_masters and not fp8_quantized(transformer):
                patcher.keep_masters(fp8_layers(transformer))
        quantize_fp8(transformer)
        if patcher is not None and folded:
            patcher.fold(folded)


def _unique(modules: list) -> list:
    return list({id(module): module for module in modules}.values())


def _group_by_text_encoder(pipes: Sequence[Krea2StudioPipeline]) -> dict[torch.nn.Module, list[Krea2StudioPipeline]]:
    groups: dict[torch.nn.Module, list[Krea2StudioPipeline]] = {}  # modules hash by identity
    for pipe in pipes:
        groups.setdefault(pipe.text_encoder, []).append(pipe)
    return groups
