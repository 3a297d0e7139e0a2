"""LoRAs on the fast path, at full size (random weights): what a LoRA costs per image, what a change of LoRAs costs,
whether anything recompiles, and whether memory grows. Run on a CUDA GPU:

    python bench/lora_benchmark.py --out bench/results

What it measures, in this order (issue 16's targets in brackets):

1. bf16, eager: final latents of Turbo 1024² without and with LoRA A (the reference).
2. The fast path (+ fused projections + fp8, bf16 masters kept for LoRAs), recompiled and warmed up like the app:
   the same latents, so fp8 + LoRA is compared with bf16 + LoRA beside fp8 with bf16 [within fp8's own tolerance].
3. Turbo 1024², 8 steps, end to end: without LoRAs, then with one rank-32 LoRA folded in [<= 1.05x].
4. Switching between two rank-32 LoRA sets ({A 0.8} and {B 0.8, A 0.3}), each switch timed alone (the fold, LoRAs
   already read), and the first use of each (reading and checking the file as well) [<= 2 s].
5. 20 load/unload cycles (read A, fold A, read B, fold B, unfold, with an image each cycle): GPU memory allocated and
   reserved and the process's resident memory after each [no growth].

Throughout 3-5, torch.compile's count of compiled graphs and the denoiser's CUDA-graph captures must not move: a
LoRA change recompiles and recaptures nothing.

The LoRAs are random rank-32 updates of every linear layer of the 28 blocks (attention q/k/v/gate/out, MLP
gate/up/down), saved as diffusers-format `.safetensors` files in a LoRA folder and read through the app's own
library, as a user's would be.

    python bench/lora_benchmark.py --smoke --out /tmp/smoke

runs the same script on the CPU with the demo checkpoints (no compile, no fp8: the CPU has neither), small and short,
so it cannot rot between GPU sessions (tests/test_lora_benchmark_smoke.py); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.benchmark import (
    CUDA,
    PROMPT,
    InMemoryLoader,
    build_full_size,
    build_smoke,
    environment,
    rel_l2,
    sync,
    write_result,
)
from krea2.checkpoints import TURBO
from krea2.lora_library import LoraLibrary
from krea2.manager import ModelManager
from krea2.request import GenerationRequest
from krea2.speedups import FastPathOptions
from krea2.speedups.denoiser_graphs import denoiser_graphs_of

log = logging.getLogger("bench.loras")
TARGETS = {"one_lora_ratio_max": 1.05, "switch_max_s": 2.0, "memory_growth_gb_max": 0.05}
FULL = {"side": 1024, "steps": TURBO.default_steps, "rank": 32, "cycles": 20}
SMOKE = {"side": 256, "steps": 2, "rank": 4, "cycles": 3}
# Each LoRA update's norm against its weight's. The first run's updates (2% of a unit-norm factor, about 3% of the
# weights) changed the final latents less than fp8 does (relative L2 0.0037 against 0.0047, H200, 2026-12-02), so
# "fp8 + LoRA matches bf16 + LoRA" said nothing about the LoRA: at 0.25 its change stands well clear of fp8's error.
RELATIVE_UPDATE = 0.25
BLOCK_LAYERS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_gate", "attn.to_out.0", "ff.gate", "ff.up", "ff.down")


def write_random_lora(path: Path, transformer: torch.nn.Module, rank: int, seed: int) -> int:
    """A random rank-`rank` LoRA over every linear layer of the blocks, in diffusers' format (bf16, as trainers save
    it), each update RELATIVE_UPDATE of its weight's norm. Returns its size in bytes."""
    from safetensors.torch import save_file

    device = "cuda" if CUDA else "cpu"
    generator = torch.Generator(device).manual_seed(seed)
    tensors = {}
    for index in range(len(transformer.transformer_blocks)):
        for layer in BLOCK_LAYERS:
            module = f"transformer_blocks.{index}.{layer}"
            weight = transformer.get_submodule(module).weight.to(device, torch.float32)
            down = torch.randn(rank, weight.shape[1], generator=generator, device=device) / weight.shape[1] ** 0.5
            up = torch.randn(weight.shape[0], rank, generator=generator, device=device)
            up *= RELATIVE_UPDATE * float(weight.norm() / (up @ down).norm())
            tensors[f"transformer.{module}.lora_A.weight"] = down.to(torch.bfloat16).cpu()
            tensors[f"transformer.{module}.lora_B.weight"] = up.to(torch.bfloat16).cpu()
    save_file(tensors, path)
    return path.stat().st_size


def request(side: int, steps: int, loras=()) -> GenerationRequest:
    return GenerationRequest(prompt=PROMPT, checkpoint=TURBO.key, width=side, height=side, steps=steps, seed=1,
                             loras=loras)  # fmt: skip


def final_latents(manager: ModelManager, req: GenerationRequest) -> torch.Tensor:
    """The denoised latents of `req` with its LoRAs folded in (the VAE and 8-bit rounding would hide the difference)."""
    manager.fold_loras(req)
    pipe = manager.pipes[req.checkpoint]
    with torch.inference_mode():
        return pipe(**manager.pipeline_inputs(req), generator=[torch.Generator("cpu").manual_seed(1)],
                    output_type="latent").images.float().cpu()  # fmt: skip


def timed_generations(manager: ModelManager, req: GenerationRequest, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        manager.prompt_cache.clear()  # end to end: the text encoder runs every time, as in bench/benchmark.py
        sync()
        start = time.perf_counter()
        manager.generate(req)
        sync()
        times.append(time.perf_counter() - start)
    return times


def compiled_state(manager: ModelManager) -> dict[str, int]:
    """What a recompile or a recapture would change: torch.compile's compiled graphs, the denoisers' captures."""
    from torch._dynamo.utils import counters

    captures = sum(graphs.graphs.misses for pipe in manager.pipes.values()
                   if (graphs := denoiser_graphs_of(pipe.transformer)) is not None)  # fmt: skip
    return {"compiled_graphs": int(counters["stats"]["unique_graphs"]), "denoiser_graph_captures": int(captures)}


def memory_now() -> dict[str, float]:
    """GPU memory allocated and reserved, and the process's resident memory (the CPU masters and LoRAs live there)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    rss_gb = pages * os.sysconf("SC_PAGE_SIZE") / 1e9
    if not CUDA:
        return {"allocated_gb": 0.0, "reserved_gb": 0.0, "rss_gb": rss_gb}
    return {"allocated_gb": torch.cuda.memory_allocated() / 1e9, "reserved_gb": torch.cuda.memory_reserved() / 1e9,
            "rss_gb": rss_gb}  # fmt: skip


def benchmark(smoke: bool, repeats: int, progress: Callable[[dict], None] = lambda results: None) -> dict:
    """The five measurements; `progress` gets the results so far after each stage and each cycle, so a run stopped
    by a device call's time limit still leaves what it measured (a GPU run of 2026-12-02 lost everything in its
    last cycles)."""
    sizes = SMOKE if smoke else FULL
    side, steps, rank = sizes["side"], sizes["steps"], sizes["rank"]
    turbo, raw_transformer = build_smoke() if smoke else build_full_size("cuda")
    folder = Path(tempfile.mkdtemp(prefix="krea2-lora-bench-"))
    lora_bytes = {name: write_random_lora(folder / f"{name}.safetensors", turbo.transformer, rank, seed)
                  for name, seed in (("A", 1), ("B", 2))}  # fmt: skip
    results: dict = {"side": side, "steps": steps, "lora": {"rank": rank, "layers": len(BLOCK_LAYERS) *
                     len(turbo.transformer.transformer_blocks), "bytes": lora_bytes}, "targets": TARGETS}  # fmt: skip

    # 1. bf16, eager (the reference: compiling it would only cost a warm-up), LoRA masters on: the fast path below
    # keeps them through quantising.
    bf16_options = FastPathOptions(lora_masters=True)
    manager = ModelManager(InMemoryLoader(turbo, raw_transformer), placement="gpu" if CUDA else "cpu",
                           options=bf16_options, loras=LoraLibrary(folder))  # fmt: skip
    manager.start(background=False)
    warm = ((side, side),)
    with_a = request(side, steps, ["A:0.8"])
    bf16 = {"none": final_latents(manager, request(side, steps)), "lora": final_latents(manager, with_a)}
    progress(results)

    # 2. The fast path: fused projections + fp8 where the GPU has it; compiled and warmed up afresh, as the app does.
    fast = replace(bf16_options, compile=CUDA, text_graphs=CUDA, denoiser_graphs=CUDA,
                   fp8=CUDA and torch.cuda.get_device_capability() >= (8, 9))  # fmt: skip
    manager.apply_fast_path(fast)
    results["fast_path"] = manager.status().fast_path
    if CUDA:
        torch._dynamo.reset()
        results["fast_warmup_s"] = manager.warm_up(sizes=warm, batch_sizes=(1,))
    fast_latents = {"none": final_latents(manager, request(side, steps)), "lora": final_latents(manager, with_a)}
    results["errors"] = {
        "fast_vs_bf16_final_latent_rel_l2": rel_l2(fast_latents["none"], bf16["none"]),
        "fast_lora_vs_bf16_lora_final_latent_rel_l2": rel_l2(fast_latents["lora"], bf16["lora"]),
        "lora_effect_final_latent_rel_l2": rel_l2(bf16["lora"], bf16["none"]),  # how big the change being kept is
        # the LoRA's change on the fast path against on bf16: fp8 keeps what the LoRA does, not only the picture
        "fast_lora_change_vs_bf16_lora_change_rel_l2": rel_l2(
            fast_latents["lora"] - fast_latents["none"], bf16["lora"] - bf16["none"]
        ),
    }

    progress(results)

    # 3. One LoRA's cost per image: the fold is done before timing (the first generation with it), as in use.
    before = compiled_state(manager)
    timed_generations(manager, request(side, steps), 1)  # LoRA folded out again, warm
    no_lora = timed_generations(manager, request(side, steps), repeats)
    timed_generations(manager, with_a, 1)
    one_lora = timed_generations(manager, with_a, repeats)
    case = {"no_lora_s": statistics.median(no_lora), "no_lora_runs_s": no_lora,
            "one_lora_s": statistics.median(one_lora), "one_lora_runs_s": one_lora}  # fmt: skip
    case["one_lora_ratio"] = case["one_lora_s"] / case["no_lora_s"]
    results["turbo"] = case
    progress(results | {"compiled_before": before, "compiled_now": compiled_state(manager)})

    # 4. Switching sets: the first use of each reads its file; after that, the fold alone.
    sets = [request(side, steps, ["A:0.8"]), request(side, steps, ["B:0.8", "A:0.3"])]
    manager.clear_lora_cache()
    manager.fold_loras(request(side, steps))
    case["first_use_s"] = []
    for req in sets:
        start = time.perf_counter()
        manager.fold_loras(req)
        sync()
        case["first_use_s"].append(time.perf_counter() - start)
    switches = [manager.fold_loras(sets[k % 2]) for k in range(2 * max(repeats, 2))]
    case["switch_runs_s"] = [report.seconds for report in switches]
    case["switch_s"], case["switch_max_s"] = statistics.median(case["switch_runs_s"]), max(case["switch_runs_s"])
    case["layers_per_switch"] = [report.layers_changed for report in switches]
    case["switch_then_image_s"] = timed_generations(manager, sets[0], 1)[0]
    results["turbo"] = case
    progress(results)

    # 5. Load/unload cycles: the files read afresh each cycle, an image each cycle.
    cycles = []
    for _ in range(sizes["cycles"]):
        manager.clear_lora_cache()
        manager.fold_loras(sets[0])
        manager.fold_loras(sets[1])
        manager.generate(sets[1])
        manager.fold_loras(request(side, steps))
        gc.collect()
        sync()
        cycles.append(memory_now())
        progress(
            results | {"memory_cycles": cycles, "compiled_before": before, "compiled_now": compiled_state(manager)}
        )
    results["memory_cycles"] = cycles
    growth = {key: cycles[-1][key] - cycles[0][key] for key in cycles[0]}
    results["memory_growth_gb"] = growth
    after = compiled_state(manager)
    results["compiled_before"], results["compiled_after"] = before, after

    results["meets_targets"] = {
        "one_lora_ratio": case["one_lora_ratio"] <= TARGETS["one_lora_ratio_max"],
        "switch_max_s": case["switch_max_s"] <= TARGETS["switch_max_s"],
        "no_memory_growth": max(growth["allocated_gb"], growth["reserved_gb"]) <= TARGETS["memory_growth_gb_max"],
        "no_recompile_or_recapture": after == before,
    }
    log.info("LoRA benchmark: %s", json.dumps({"turbo": case, "meets_targets": results["meets_targets"]}))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run that checks the script, not the speed")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not args.smoke and not CUDA:
        print("error: the LoRA benchmark needs a CUDA GPU (or --smoke)", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = True
    env = environment()
    partial = Path(args.out) / "loras-partial.json"  # replaced by the result file once the run ends
    partial.parent.mkdir(parents=True, exist_ok=True)

    written = []

    def progress(results: dict) -> None:
        partial.write_text(json.dumps({"environment": env, "partial": True, **results}, indent=1, default=str))
        written.append(len(results))

    payload = {"environment": env, "repeats": args.repeats, **benchmark(args.smoke, args.repeats, progress)}
    payload["partial_writes"] = len(written)  # stages 1-4 and each cycle
    partial.unlink(missing_ok=True)
    write_result(args.out, payload, "loras")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
