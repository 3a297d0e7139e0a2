"""The engine's fast-path options: what to speed up, and what of it takes effect where the weights ended up."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..placement import Placement
from ..plans import PlacementPlan


@dataclass(frozen=True)
class FastPathOptions:
    """Which speed-ups `apply` puts on the pipelines (the exact ones every pipeline gets, PAD-free text and the
    single-frame VAE decode, have no switch). All off by default; the app turns on what runs on its machine."""

    compile: bool = False  # regional compile of the repeated blocks (GPU), warmed up in the background
    fp8: bool = False  # fused projections + torchao fp8 rowwise weights+activations (GPU, compute capability >= 8.9)
    attention: str | None = None  # "flash4", "cudnn-fp8" (fp8, approximate) or a diffusers backend name (GPU)
    step_cache: float | None = None  # undistilled checkpoints: first-block cache threshold (step_cache.py); None = off
    prepare_on_cpu: bool = False  # fuse/quantise before the move to the GPU (ZeroGPU: no GPU work at start-up)
    text_graphs: bool = False  # the text encoder from CUDA graphs (GPU-resident only; text_graphs.py)
    denoiser_graphs: bool = False  # exact: compiled transformer calls from CUDA graphs, with compile only
    lora_masters: bool = False  # with fp8: keep the blocks' bf16 weights in CPU memory, for LoRAs to fold into
    kernel_tuning: bool = False  # with compile: inductor's coordinate-descent kernel tuning (a longer start-up)


def for_placement(options: FastPathOptions, placement: Placement) -> FastPathOptions:
    """The options that take effect once the weights are placed: the one place where requested options become final.

    fp8, compile, the attention kernel and CUDA graphs need the weights resident on the GPU: offloading was measured
    in bf16 with stock attention and no compile (fp8 and compile on top of group offloading were never run together),
    and CUDA graphs hold the addresses of weights that offloading moves; the CPU has none of these kernels. The
    denoiser's graphs capture compiled calls during the compile warm-up, so they come with compile only."""
    if placement != "gpu":
        options = replace(options, fp8=False, compile=False, attention=None, text_graphs=False, denoiser_graphs=False)
    return replace(options, denoiser_graphs=options.denoiser_graphs and options.compile)


def for_plan(options: FastPathOptions, plan: PlacementPlan) -> FastPathOptions:
    """The options that take effect under a placement plan (`krea2/plans.py`): today's plans as `for_placement` says;
    under a small-GPU plan every speed-up stays on that its placement allows. fp8 is the plan's (it is what makes the
    transformers fit); the text encoder's CUDA graphs need it resident; the denoiser's need every block resident
    (streamed blocks move their weights at each call), and compile runs on the resident blocks only
    (`compile_blocks`). Swapping transformers moves weights too: the manager captures fresh denoiser graphs after each
    swap (`fast_path.weights_moved`)."""
    if not plan.managed:
        return for_placement(options, plan.placement)  # type: ignore[arg-type]
    return replace(
        options,
        fp8=plan.fp8,
        text_graphs=options.text_graphs and plan.text_encoder != "streamed",
        denoiser_graphs=options.denoiser_graphs and options.compile and plan.streamed_blocks == 0,
    )
