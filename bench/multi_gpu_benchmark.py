"""Several GPUs (issue 20), at full size with random weights: workers side by side, and one image across GPUs. Run on a
machine with two GPUs, one process per GPU:

    torchrun --nproc-per-node 2 bench/multi_gpu_benchmark.py --out bench/results

Sections (`--sections`; rank 0 runs the first two alone while the other ranks wait, all ranks run the third):

1. compare: Compare 1024² (Raw 52 guided steps and Turbo 8, one seed) on one GPU, where one manager runs the two one
   after the other, and on two, where a pool of two workers (krea2/workers.py) runs them side by side as the service
   does (`studio.service.run_side_by_side`) [two GPUs: the slower side's time, not the sum].
2. throughput: 8 concurrent Turbo 1024² requests (8 threads, as 8 users) on a pool of 1 worker and of 2: the wall
   time for all 8, images per second, and each request's latency (waiting included).
3. context_parallel: Turbo 2048² and Raw 1024² on one GPU (rank 0 alone) and with Ulysses attention over all ranks
   (krea2/context_parallel.py, the app's KREA2_CONTEXT_PARALLEL=ulysses path) [Turbo 2048² on 2 GPUs ≥ 1.7 times one];
   the largest pixel difference between the two images of each seed; a cancel from rank 0 that must stop every rank
   after the same step (the counts of each rank's transformer calls are compared); then torch.compile on top, which
   the app leaves off under context parallelism until this run shows it works (its error, if any, is recorded).

Both sections 1-2 and 3 run the fast path the app would: sections 1-2 with compile, fp8 and CUDA graphs (each worker
warmed up first), section 3 with what runs under context parallelism (`for_context_parallel`: fp8, diffusers' SDPA
dispatch, no compile) on both sides of the comparison.

    torchrun --nproc-per-node 2 bench/multi_gpu_benchmark.py --smoke --out /tmp/smoke

runs the same script on the CPU with the demo checkpoints, two CPU workers and two gloo ranks, small and short
(tests/test_multi_gpu_benchmark_smoke.py does, so it cannot rot between GPU sessions); its numbers mean nothing. Run
without torchrun, the script does sections 1-2 and says why it skipped 3.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import statistics
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.benchmark import CUDA, PROMPT, InMemoryLoader, build_full_size, environment, result_path, sync
from krea2.checkpoints import RAW, TURBO
from krea2.context_parallel import (
    ContextParallelManager,
    ProcessGroup,
    for_context_parallel,
    ready_everywhere,
    refusal,
)
from krea2.errors import Cancelled
from krea2.loading import PipelineLoader
from krea2.manager import ModelManager
from krea2.request import GenerationRequest
from krea2.speedups import FastPathOptions
from krea2.speedups.compile import allow_recompiles_per_device, compile_blocks
from krea2.workers import WorkerPool
from studio.service import run_side_by_side

log = logging.getLogger("bench.multi_gpu")
SECTIONS = ("compare", "throughput", "context-parallel")
TARGETS = {"cp_turbo2048_speedup_min": 1.7}
FULL = {"side": 1024, "cp_side": {"turbo": 2048, "raw": 1024}, "users": 8, "max_steps": None}
SMOKE = {"side": 256, "cp_side": {"turbo": 256, "raw": 256}, "users": 4, "max_steps": 2}


# ------------------------------------------------------------------------------------------------ building
def build(device: torch.device, smoke: bool) -> InMemoryLoader:
    """Turbo's pipeline and Raw's transformer on `device`: full size with random weights, or the demo checkpoints."""
    if smoke:
        from krea2.demo import demo_checkpoints

        loader = PipelineLoader(demo_checkpoints(), torch.float32)
        return InMemoryLoader(loader.load_full(TURBO), loader.load_transformer(RAW))
    return InMemoryLoader(*build_full_size(str(device)))


def app_options(smoke: bool) -> FastPathOptions:
    """The fast path as the app puts it on a GPU (compile, fp8 where it runs, CUDA graphs; SDPA attention, which
    runs everywhere); nothing of it on the CPU."""
    if smoke or not CUDA:
        return FastPathOptions()
    fp8 = torch.cuda.get_device_capability() >= (8, 9)
    return FastPathOptions(compile=True, fp8=fp8, text_graphs=True, denoiser_graphs=True)


def started(manager: ModelManager) -> ModelManager:
    manager.start(background=False)
    status = manager.status()
    if any(s.state != "ready" for s in status.checkpoints.values()):
        raise RuntimeError(status.summary())
    return manager


def request(checkpoint: str, side: int, seed: int, limits: dict, prompt: str = PROMPT) -> GenerationRequest:
    spec = RAW if checkpoint == RAW.key else TURBO
    steps = spec.default_steps if limits["max_steps"] is None else min(spec.default_steps, limits["max_steps"])
    return GenerationRequest(prompt=prompt, checkpoint=checkpoint, width=side, height=side, steps=steps, seed=seed)


def warm(manager: ModelManager, requests: list[GenerationRequest]) -> float:
    """Compile and capture for these shapes before timing (the app's warm-up does the same at start-up)."""
    start = time.perf_counter()
    if manager.options.compile:
        sizes = tuple(dict.fromkeys((r.width, r.height) for r in requests))
        manager.warm_up(sizes=sizes, batch_sizes=(1,))
    for req in requests:
        manager.generate(req)
    sync()
    return time.perf_counter() - start


def pool_of(count: int, devices, loaders, options: FastPathOptions, smoke: bool) -> WorkerPool:
    """A started pool of `count` workers, one per device, as the app builds it (studio/devices.py)."""
    pool = WorkerPool([ModelManager(loaders[i], device=str(devices[i]), options=options, demo=smoke)
                       for i in range(count)])  # fmt: skip
    pool.start(background=False)
    if pool.status().checkpoints[RAW.key].state != "ready" or any(worker.lost for worker in pool.workers):
        raise RuntimeError(pool.status().summary())
    return pool


def free(*managers) -> None:
    for manager in managers:
        manager.pipes.clear()
    gc.collect()
    if CUDA:
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------ 1. compare
def compare_section(devices: list[torch.device], loaders: list[InMemoryLoader], smoke: bool, repeats: int) -> dict:
    """Compare on one GPU (sequential) and on two (side by side): wall time per Compare, and each side's own time."""
    limits = SMOKE if smoke else FULL
    options = app_options(smoke)
    pair = [request(RAW.key, limits["side"], 1, limits), request(TURBO.key, limits["side"], 1, limits)]
    out: dict = {"side": limits["side"], "steps": {r.checkpoint: r.steps for r in pair}}
    for count in (1, 2):
        pool = pool_of(count, devices, loaders, options, smoke)
        managers = [worker.manager for worker in pool.workers]
        out[f"gpus{count}_warmup_s"] = sum(warm(manager, pair) for manager in managers)
        walls, sides = [], []
        for _ in range(repeats):
            results: dict = {}

            def run(label: str, req: GenerationRequest, pool=pool, results=results) -> None:
                results[label] = pool.generate(req).timings.total_s

            sync()
            start = time.perf_counter()
            if count == 1:
                for req in pair:
                    run(req.checkpoint, req)
            else:
                run_side_by_side([(req.checkpoint, req) for req in pair], run)
            sync()
            walls.append(time.perf_counter() - start)
            sides.append(results)
        out[f"gpus{count}_compare_s"] = statistics.median(walls)
        out[f"gpus{count}_runs_s"] = walls
        for key in (RAW.key, TURBO.key):
            out[f"gpus{count}_{key}_s"] = statistics.median(side[key] for side in sides)
        free(*managers)
    out["speedup"] = out["gpus1_compare_s"] / out["gpus2_compare_s"]
    out["gpus2_vs_slower_side"] = out["gpus2_compare_s"] / max(out["gpus2_raw_s"], out["gpus2_turbo_s"])
    log.info("Compare: %s", out)
    return out


def in_parallel(calls) -> list:
    results: list = [None] * len(calls)

    def run(index: int, call) -> None:
        results[index] = call()

    threads = [threading.Thread(target=run, args=(i, call)) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


# ------------------------------------------------------------------------------------------------ 2. throughput
def throughput_section(devices: list[torch.device], loaders: list[InMemoryLoader], smoke: bool, repeats: int) -> dict:
    """N users at once, Turbo: on a pool of one worker and of two."""
    limits = SMOKE if smoke else FULL
    users = limits["users"]
    options = app_options(smoke)
    out: dict = {"side": limits["side"], "users": users}
    for count in (1, 2):
        pool = pool_of(count, devices, loaders, options, smoke)
        managers = [worker.manager for worker in pool.workers]
        for manager in managers:
            warm(manager, [request(TURBO.key, limits["side"], 1, limits)])
        walls, latencies = [], []
        for _ in range(repeats):
            requests = [request(TURBO.key, limits["side"], seed, limits) for seed in range(users)]

            def user(req: GenerationRequest, pool=pool) -> float:
                start = time.perf_counter()
                pool.generate(req)
                sync()
                return time.perf_counter() - start

            start = time.perf_counter()
            latencies += in_parallel([lambda req=req: user(req) for req in requests])
            walls.append(time.perf_counter() - start)
        wall = statistics.median(walls)
        out[f"workers{count}"] = {
            "wall_s": wall, "runs_s": walls, "images_per_s": users / wall,
            "latency_median_s": statistics.median(latencies), "latency_max_s": max(latencies),
            "served": [worker.served for worker in pool.workers],
        }  # fmt: skip
        free(*managers)
    out["throughput_ratio"] = out["workers2"]["images_per_s"] / out["workers1"]["images_per_s"]
    log.info("Throughput: %s", out)
    return out


# ------------------------------------------------------------------------------------------------ 3. context parallel
@contextlib.contextmanager
def counted_calls(manager: ModelManager):
    """How many times this rank's transformers ran (every rank must run exactly as many: the collectives pair up)."""
    calls = [0]
    handles = [pipe.transformer.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
               for pipe in manager.pipes.values()]  # fmt: skip
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def even_prompt(manager: ModelManager, side: int) -> str:
    """PROMPT, or PROMPT with a few commas, so text plus image tokens split evenly in two: gloo (the CPU smoke run)
    cannot gather unequal slices. The GPU run keeps PROMPT as it is (NCCL gathers unequal slices)."""
    image_tokens = (side // 16) ** 2
    for extra in range(8):
        prompt = PROMPT + "," * extra
        if (manager.encode(prompt)[0].shape[1] + image_tokens) % 2 == 0:
            return prompt
    return PROMPT


def cp_request(key: str, side: int, limits: dict, prompt: str, smoke: bool) -> GenerationRequest:
    """A context-parallel case's request. The smoke run's Raw is unguided: its negative prompt's token count can be
    odd, which gloo cannot split (see `even_prompt`)."""
    req = request(key, side, 1, limits, prompt)
    return replace(req, guidance=0.0) if smoke else req


def timed_generation(manager: ModelManager, req: GenerationRequest) -> tuple[float, np.ndarray]:
    sync()
    start = time.perf_counter()
    result = manager.generate(req)
    sync()
    return time.perf_counter() - start, np.asarray(result.images[0], dtype=np.int16)


def context_parallel_section(group: ProcessGroup, smoke: bool, repeats: int, cases: list[str]) -> dict:
    """One GPU (rank 0) against Ulysses over every rank, on the same pipelines and options."""
    limits = SMOKE if smoke else FULL
    options = for_context_parallel(app_options(smoke))
    loader = build(group.device, smoke)
    out: dict = {"ranks": group.size, "cases": {}}
    single_images: dict[str, np.ndarray] = {}
    if group.lead:  # 1. one GPU, the same fast path
        single = started(ModelManager(loader, device=str(group.device), options=options, demo=smoke))
        out["fast_path"] = single.status().fast_path
        for key in cases:
            prompt = even_prompt(single, limits["cp_side"][key]) if smoke else PROMPT
            req = cp_request(key, limits["cp_side"][key], limits, prompt, smoke)
            warm(single, [req])
            runs = [timed_generation(single, req) for _ in range(repeats)]
            single_images[key] = runs[-1][1]
            times = [t for t, _ in runs]
            out["cases"][key] = {"side": req.width, "steps": req.steps, "guidance": req.guidance, "prompt": prompt,
                                 "text_tokens": int(single.encode(prompt)[0].shape[1]),
                                 "single_s": statistics.median(times), "single_runs_s": times}  # fmt: skip
        free(single)
    torch.distributed.barrier(group=group.control)

    # 2. Ulysses over every rank: rank 0 sends, the others follow (the app's path).
    manager = started(ContextParallelManager(loader, device=str(group.device), options=options, demo=smoke,
                                             group=group))  # fmt: skip
    ready_everywhere(manager, group)
    with counted_calls(manager) as calls:
        if group.lead:
            out["cp_fast_path"] = manager.status().fast_path
            for key in cases:
                case = out["cases"][key]
                req = cp_request(key, case["side"], limits, case["prompt"], smoke)
                warm(manager, [req])
                runs = [timed_generation(manager, req) for _ in range(repeats)]
                case["cp_s"], case["cp_runs_s"] = statistics.median(t for t, _ in runs), [t for t, _ in runs]
                case["speedup"] = case["single_s"] / case["cp_s"]
                case["cp_vs_single_max_abs_pixel"] = int(np.abs(runs[-1][1] - single_images[key]).max())
            out["cancel"] = cancel_check(manager, request(TURBO.key, limits["cp_side"]["turbo"], 2, limits,
                                                          out["cases"][cases[0]]["prompt"]))  # fmt: skip
            manager.stop_followers()
        else:
            manager.follow()
    out["transformer_calls_per_rank"] = all_ranks(group, calls[0])
    out["ranks_in_step"] = len(set(out["transformer_calls_per_rank"])) == 1

    # 3. torch.compile on top, every rank alike (the app leaves it off under context parallelism until this works).
    out["compiled"] = compiled_on_top(manager, group, limits, out if group.lead else None, cases, repeats)
    if group.lead and "turbo" in out["cases"]:
        out["meets_targets"] = {"cp_turbo2048_speedup": out["cases"]["turbo"]["speedup"] >=
                                TARGETS["cp_turbo2048_speedup_min"]}  # fmt: skip
    return out


def cancel_check(manager: ContextParallelManager, req: GenerationRequest) -> dict:
    """A cancel from rank 0's second step preview: Cancelled on rank 0, and the group still works afterwards."""
    cancel = threading.Event()
    steps: list[int] = []

    def on_step(step: int, *_):
        steps.append(step)
        if step == 2:
            cancel.set()

    try:
        manager.generate(replace(req, steps=max(req.steps, 4)), on_step=on_step, cancel_event=cancel)
        cancelled = False
    except Cancelled:
        cancelled = True
    after, _ = timed_generation(manager, req)
    return {"cancelled": cancelled, "last_step_seen": max(steps), "next_generation_s": after}


def all_ranks(group: ProcessGroup, value: int) -> list[int]:
    gathered: list = [None] * group.size
    torch.distributed.all_gather_object(gathered, value, group=group.control)
    return gathered


def compiled_on_top(manager, group: ProcessGroup, limits: dict, out: dict | None, cases: list[str], repeats: int):
    if not CUDA:
        return {"skipped": "no compile on the CPU"}
    error = None
    try:
        for pipe in manager.pipes.values():
            compile_blocks(pipe.transformer)
    except Exception as caught:  # noqa: BLE001 - what the run is for: does it compile?
        error = f"{type(caught).__name__}: {caught}"
    errors = all_ranks(group, error is not None)
    if any(errors):
        return {"error": error or "failed on another rank"}
    result: dict = {}
    if group.lead:
        try:
            for key in cases:
                case = out["cases"][key]
                req = cp_request(key, case["side"], limits, case["prompt"], smoke=False)
                result[f"{key}_warmup_s"] = warm(manager, [req])
                runs = [timed_generation(manager, req)[0] for _ in range(repeats)]
                result[f"{key}_cp_s"] = statistics.median(runs)
                result[f"{key}_speedup"] = case["single_s"] / result[f"{key}_cp_s"]
        except Exception as caught:  # noqa: BLE001 - recorded: the app keeps compile off until this passes
            result["error"] = f"{type(caught).__name__}: {str(caught)[:500]}"
        manager.stop_followers()
    else:
        manager.follow()
    return result


# ------------------------------------------------------------------------------------------------ main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--cp-cases", default="turbo,raw", help="context parallel: turbo (2048²), raw (1024²)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run that checks the script, not the speed")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sections = [name.strip() for name in args.sections.split(",") if name.strip()]
    if unknown := set(sections) - set(SECTIONS):
        print(f"error: unknown sections {', '.join(sorted(unknown))} (choose from {', '.join(SECTIONS)})",
              file=sys.stderr)  # fmt: skip
        return 2
    cuda_count = torch.cuda.device_count() if CUDA else 0
    if not args.smoke and cuda_count < 2:
        print(f"error: the multi-GPU benchmark needs 2 CUDA GPUs (this machine has {cuda_count}), or --smoke",
              file=sys.stderr)  # fmt: skip
        return 2
    torch.backends.cuda.matmul.allow_tf32 = True
    group = ProcessGroup.launched()
    if not CUDA and group.size > 1:
        # diffusers' enable_parallelism picks each rank's device as `rank % torch.accelerator.device_count()`, a
        # division by zero without an accelerator; the smoke run's ranks have one "device" each, the CPU.
        torch.accelerator.device_count = lambda: 1
    if group.device is None:  # not started by torchrun: sections 1-2 only
        group = replace(group, device=torch.device("cuda:0" if CUDA else "cpu"))
    devices = [torch.device(f"cuda:{i}") for i in range(2)] if CUDA else [torch.device("cpu")] * 2
    env = environment()
    env["gpus"] = cuda_count
    payload: dict = {"environment": env, "repeats": args.repeats, "sections": sections, "targets": TARGETS}
    path = result_path(args.out, env, f"multi-gpu-x{max(cuda_count, 1)}_{'-'.join(sections)}")

    def save() -> None:  # after every section: a run cut short keeps what it measured
        if group.lead:
            payload["command"] = "python " + " ".join(sys.argv)
            path.write_text(json.dumps(payload, indent=2))

    if group.lead and {"compare", "throughput"} & set(sections):
        if app_options(args.smoke).compile:
            allow_recompiles_per_device(2)
        loaders = [build(device, args.smoke) for device in devices]
        for name, section in (("compare", compare_section), ("throughput", throughput_section)):
            if name in sections:
                payload[name] = section(devices, loaders, args.smoke, args.repeats)
                save()
        del loaders
        torch._dynamo.reset()  # drop what sections 1-2 compiled (and the weights it refers to)
        gc.collect()
        if CUDA:
            torch.cuda.empty_cache()
    if "context-parallel" in sections:
        reason = refusal("ulysses", group.size, cuda_count if CUDA else group.size)
        if reason is not None:
            payload["context_parallel"] = {"skipped": reason}
        else:
            if group.size > 1:
                # Rank 0 has freed sections 1-2's GPU memory. On the control group, which has no timeout: sections 1-2
                # may take longer than NCCL's.
                torch.distributed.barrier(group=group.control)
            cases = [case.strip() for case in args.cp_cases.split(",") if case.strip()]
            payload["context_parallel"] = context_parallel_section(group, args.smoke, args.repeats, cases)
        save()
    if group.size > 1:
        torch.distributed.destroy_process_group()
    if group.lead:
        print(json.dumps(payload, indent=2))
        log.info("Results: %s", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
