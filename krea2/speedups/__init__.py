"""The speed-ups, in one subpackage. `apply` (fast_path.py) puts them on the pipelines in order, as one commented
checklist; `installed` says what is on a pipeline; `FastPathOptions` and `for_placement` (options.py) are what to
apply and what of it takes effect where the weights are.

One module per speed-up: projections.py (fused projections), fp8.py (torchao fp8), attention.py (FlashAttention-4 and
the attention processor), fp8_attention.py (cuDNN fp8 attention), compile.py (regional compile and its warm-up plan),
cuda_graphs.py with text_graphs.py and denoiser_graphs.py (CUDA graphs), step_cache.py (first-block cache),
vae_decode.py (single-frame decode). PAD-free text is the pipeline's own behaviour (krea2/pipeline.py).
"""

from .fast_path import apply, installed, weights_moved
from .options import FastPathOptions, for_placement, for_plan

__all__ = ["FastPathOptions", "apply", "for_placement", "for_plan", "installed", "weights_moved"]
