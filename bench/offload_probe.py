"""Where does GPU memory go under `--placement offload`? Prints, after each phase of a Turbo and a Raw generation
on a 24 GB-capped GPU, how many GB of each component's parameters are resident on the GPU.

    python bench/offload_probe.py
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.benchmark import CASES, InMemoryLoader, build_full_size, run_ours
from krea2.manager import ModelManager


def resident(manager: ModelManager) -> str:
    parts = {
        "turbo.transformer": manager.pipes["turbo"].transformer,
        "raw.transformer": manager.pipes["raw"].transformer,
        "text_encoder": manager.pipes["turbo"].text_encoder,
        "vae": manager.pipes["turbo"].vae,
    }
    gb = {
        name: sum(p.numel() * p.element_size() for p in m.parameters() if p.device.type == "cuda") / 1e9
        for name, m in parts.items()
    }
    allocated = torch.cuda.memory_allocated() / 1e9
    gc.collect()
    after_gc = torch.cuda.memory_allocated() / 1e9
    census: dict[tuple, list[int]] = {}
    for obj in gc.get_objects():
        try:
            if isinstance(obj, torch.Tensor) and obj.is_cuda:
                key = (tuple(obj.shape), str(obj.dtype), type(obj).__name__)
                entry = census.setdefault(key, [0, 0])
                entry[0] += 1
                entry[1] += obj.numel() * obj.element_size()
        except Exception:  # noqa: BLE001 - some objects raise on isinstance/attribute access
            continue
    top = sorted(census.items(), key=lambda kv: -kv[1][1])[:6]
    tensors = "; ".join(f"{k[0]} {k[1]} x{n} = {b / 1e9:.2f} GB" for k, (n, b) in top)
    params = ", ".join(f"{k} {v:.2f}" for k, v in gb.items())
    return f"allocated {allocated:.2f} GB, after gc {after_gc:.2f} GB | params on GPU: {params} | live: {tensors}"


def main() -> None:
    turbo, raw = build_full_size("cuda")
    for module in (turbo.transformer, turbo.text_encoder, turbo.vae, raw):
        module.to("cpu")
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(24 * 1024**3 / torch.cuda.get_device_properties(0).total_memory)
    manager = ModelManager(InMemoryLoader(turbo, raw), placement="offload", device="cuda")
    manager.start(background=False)
    print("after placement:", resident(manager), flush=True)
    for name in ("turbo1024", "raw1024", "raw1024"):
        case = {**CASES[name], "steps": 1}
        try:
            run_ours(manager, case, seed=1)
            print(f"after {name}:", resident(manager), flush=True)
        except Exception as error:  # noqa: BLE001
            print(f"{name} failed: {str(error).splitlines()[0][:160]}", flush=True)
            print("at failure:", resident(manager), flush=True)


if __name__ == "__main__":
    main()
