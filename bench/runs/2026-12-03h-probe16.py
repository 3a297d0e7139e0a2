"""Session h, call 3: why the 16 GB plan fails ("cannot pin 'CUDAFloat8_e4m3fnType'", session h call 2).

The plan's own Residency on a pair of 4-block, full-width Krea 2 transformers (fp8, 2 blocks streamed by diffusers'
group offloading), a forward on the active one, a swap, a forward on the other; the full traceback of what fails.
`fixed` is the code as committed (streamed blocks handed to group offloading unpinned); `pinned_first` puts back
what failed (every block pinned by the Residency before group offloading takes the streamed ones).

    PYTHONPATH=. python bench/runs/2026-12-03h-probe16.py
"""

from __future__ import annotations

import traceback

import torch
from diffusers import Krea2Transformer2DModel

from krea2 import residency as residency_module
from krea2.plans import PlacementPlan
from krea2.residency import Residency

DEVICE = torch.device("cuda")


def transformer(seed: int) -> Krea2Transformer2DModel:
    torch.manual_seed(seed)
    with torch.device("cpu"):
        model = Krea2Transformer2DModel(num_layers=4).to(torch.bfloat16).eval()
    return model


def inputs() -> dict:
    text, side = 10, 16
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    image_ids = torch.stack([torch.zeros(side * side), ys.flatten().float(), xs.flatten().float()], dim=1)
    return {
        "hidden_states": torch.randn(1, side * side, 64, device=DEVICE, dtype=torch.bfloat16),
        "encoder_hidden_states": torch.randn(1, text, 12, 2560, device=DEVICE, dtype=torch.bfloat16),
        "timestep": torch.tensor([0.5], device=DEVICE),
        "position_ids": torch.cat([torch.zeros(text, 3), image_ids]).to(DEVICE),
    }


def pin_everything_first(self, module) -> None:
    """The Residency's `_to_cpu` before the fix, applied to the streamed blocks too."""
    module.to("cpu")
    module._apply(residency_module._pinned)


def run(name: str) -> None:
    if name == "pinned_first":
        original_stream = Residency._stream
        Residency._stream = lambda self, module: (pin_everything_first(self, module), original_stream(self, module))
    plan = PlacementPlan("swap+stream 2", fp8=True, swap=True, streamed_blocks=2, text_encoder="gpu")
    models = {"turbo": transformer(1), "raw": transformer(2)}
    residency = Residency(plan, models, torch.nn.Linear(8, 8), torch.nn.Linear(8, 8), DEVICE, active="turbo")
    try:
        residency.place(fp8=True)
        with torch.inference_mode():
            for key in ("turbo", "turbo", "raw", "turbo"):
                residency.activate(key)
                out = models[key](**inputs(), return_dict=False)[0]
                torch.cuda.synchronize()
                print(f"{name}: {key} forward ok, output finite {bool(out.isfinite().all())}", flush=True)
    except Exception:  # noqa: BLE001 - the traceback is the finding
        print(f"{name}: FAILED\n{traceback.format_exc()}", flush=True)
    finally:
        if name == "pinned_first":
            Residency._stream = original_stream


if __name__ == "__main__":
    for name in ("fixed", "pinned_first"):
        run(name)
