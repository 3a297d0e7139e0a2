"""Start-up: the app serves while the compile warm-up runs, one warm-up generation at a time and after any waiting
request, with nothing compiled in a user's time; torch's compile artifacts survive a restart."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from krea2 import GenerationRequest
from krea2.compile_cache import CompileCache
from krea2.loading import PipelineLoader
from krea2.manager import ModelManager
from krea2.speedups.compile import Routed

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"width": 256, "height": 256, "steps": 2}
WARMUP = {"sizes": ((256, 256),), "steps": 1, "batch_sizes": (1,)}  # 2 prompts x 2 checkpoints: 4 generations
# How long a test's hold may last before it counts as timed out: a loaded machine (two test workers on two cores) took
# over a minute for what a hold waits on, and a hold that timed out once let a request end early (a false failure).
HOLD_S = 600


@pytest.fixture
def fresh_manager(demo_sources) -> ModelManager:
    manager = ModelManager(PipelineLoader(demo_sources, torch.float32), device="cpu", demo=True)
    manager.start(background=False)
    return manager


def wait_until(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.01)


def held_warm_up(manager) -> tuple[threading.Thread, threading.Event]:
    """A warm-up started in a thread and held at its first generation's first step (a slow compile, as far as anyone
    can tell) until the returned event is set; returns once it is held."""
    hold, held = threading.Event(), threading.Event()

    def slow_first_step(step, total, preview):
        if not hold.is_set():
            held.set()
            hold.wait(30)

    warm_up = threading.Thread(target=manager.warm_up, kwargs={**WARMUP, "on_step": slow_first_step})
    warm_up.start()
    held.wait(30)
    return warm_up, hold


def test_requests_are_served_between_warm_up_generations(fresh_manager):
    """The first warm-up generation is held at its first step (a slow compile, as far as anyone can tell); a request
    made meanwhile waits for that one generation only, then runs before the next, and the warm-up carries on."""
    manager = fresh_manager
    warm_up, hold = held_warm_up(manager)
    status = manager.status()
    assert status.warmup == "running" and status.warmup_progress == (0, 4)
    assert "compile warm-up: running 0/4 (generating uncompiled meanwhile)" in status.summary()

    served: dict = {}

    def user() -> None:
        def record(step, total, preview):  # while this request holds the GPU
            served.setdefault("progress", manager.status().warmup_progress)

        result = manager.generate(GenerationRequest(prompt="a blue square", seed=2, **SMALL), record)
        served["image"] = np.asarray(result.images[0])

    request = threading.Thread(target=user)
    request.start()
    wait_until(lambda: manager.waiting_requests == 1)
    assert "image" not in served  # the warm-up generation holds the GPU
    hold.set()
    request.join(60)
    warm_up.join(120)
    assert served["progress"] == (1, 4)  # after the held generation, before the second one
    assert manager.status().warmup == "ready" and manager.status().warmup_progress == (4, 4)
    assert "compile warm-up: ready (full speed)" in manager.status().summary()
    again = manager.generate(GenerationRequest(prompt="a blue square", seed=2, **SMALL))
    assert np.array_equal(np.asarray(again.images[0]), served["image"])  # the same image, warm or not


def test_nothing_compiles_in_a_users_time_during_the_warm_up(fresh_manager):
    """During the warm-up a request runs under torch's `eager_on_recompile` stance: a compiled function met for the
    first time runs eagerly instead of compiling (it would hold the user for the whole compilation)."""
    from torch._dynamo.utils import counters

    manager = fresh_manager
    compiled = torch.compile(lambda x: torch.sin(x) + 1, backend="eager", fullgraph=True)
    graphs_before = counters["stats"]["unique_graphs"]
    hold, held = threading.Event(), threading.Event()

    def hold_second_generation(step, total, preview):
        if manager.status().warmup_progress[0] == 1 and not hold.is_set():
            held.set()
            hold.wait(30)

    warm_up = threading.Thread(target=manager.warm_up, kwargs={**WARMUP, "on_step": hold_second_generation})
    warm_up.start()
    held.wait(30)

    def user_step(step, total, preview):
        compiled(torch.ones(3))  # first call of a compiled function, inside a user's generation

    user = threading.Thread(target=lambda: manager.generate(GenerationRequest(prompt="a cat", **SMALL), user_step))
    user.start()
    wait_until(lambda: manager.waiting_requests == 1)
    hold.set()
    user.join(60)
    assert counters["stats"]["unique_graphs"] == graphs_before  # ran eagerly: nothing was compiled
    warm_up.join(120)
    compiled(torch.ones(3))  # after the warm-up, a request's code compiles as usual
    assert counters["stats"]["unique_graphs"] == graphs_before + 1


def test_a_damaged_compile_cache_does_not_stop_the_warm_up(fresh_manager, tmp_path):
    cache = CompileCache(tmp_path)
    cache.path.write_bytes(b"not torch's artifacts")
    fresh_manager.compile_cache = cache
    assert not cache.load()
    fresh_manager.warm_up(**WARMUP)
    assert fresh_manager.status().warmup == "ready"


def test_a_warm_up_shape_that_fails_is_skipped_named_and_the_rest_still_warm_up(fresh_manager, monkeypatch):
    """The app's background warm-up (not strict): a shape that cannot run (out of memory at one batch size on a small
    card) is named in the status line, and the warm-up goes on with the others; only when every shape fails does it
    say failed. A strict warm-up (benchmarks) stops at the failure and raises it."""
    ran: list[tuple[str, str]] = []
    generate = fresh_manager._generate

    def out_of_memory_for_the_first(pipe, request, *args, **kwargs):
        if not ran:
            ran.append(("failed", request.checkpoint))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        ran.append((request.checkpoint, request.prompt))
        return generate(pipe, request, *args, **kwargs)

    monkeypatch.setattr(fresh_manager, "_generate", out_of_memory_for_the_first)
    fresh_manager.warm_up(**WARMUP, strict=False)
    status = fresh_manager.status()
    assert status.warmup == "ready" and status.warmup_progress == (4, 4) and len(ran) == 4  # 3 ran after the failure
    assert status.warmup_skipped == ("Krea 2 Turbo 256×256, 12-word prompt: OutOfMemoryError",)
    assert "compile warm-up: ready, 1 of 4 shapes skipped (Krea 2 Turbo 256×256, 12-word prompt" in status.summary()

    ran.clear()
    with pytest.raises(torch.OutOfMemoryError):
        fresh_manager.warm_up(**WARMUP)
    assert fresh_manager.status().warmup == "failed" and ran == [("failed", "turbo")]

    monkeypatch.setattr(fresh_manager, "_generate", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no GPU")))
    fresh_manager.warm_up(**WARMUP, strict=False)
    status = fresh_manager.status()
    assert status.warmup == "failed" and len(status.warmup_skipped) == 4
    assert "compile warm-up: failed (Krea 2 Turbo 256×256, 12-word prompt: RuntimeError)" in status.summary()
    fresh_manager.warm_up(sizes=(), steps=1, batch_sizes=(1,))  # nothing to warm up has not failed
    assert fresh_manager.status().warmup == "ready" and fresh_manager.status().warmup_skipped == ()


def test_the_warm_up_compiles_beside_requests_then_captures_between_them(demo_sources):
    """With `background_compile` (a GPU's default; forced here on the CPU) the warm-up's first stage compiles without
    the GPU lock: a request made while that stage's first generation is held (a long compile, as far as anyone can
    tell) is served at once, with the project's compiled functions run eagerly in its own thread (nothing compiles
    in its time), while the warm-up's own thread compiles. Then the locked stage runs every shape, one at a time."""
    manager = ModelManager(
        PipelineLoader(demo_sources, torch.float32), device="cpu", demo=True, background_compile=True
    )
    manager.start(background=False)
    in_warm_up = Routed(torch.compile(lambda x: torch.cos(x) + 2, backend="eager", fullgraph=True), lambda x: x)
    in_request = Routed(torch.compile(lambda x: torch.sin(x) + 1, backend="eager", fullgraph=True), lambda x: x)
    stages: list[str] = []
    timed_out: list[str] = []  # a hold that ended by its (generous) timeout, not by the test: the test proves nothing
    hold, held = threading.Event(), threading.Event()

    def warm_up_step(step, total, preview):
        stages.append(manager.status().warmup_stage)
        in_warm_up(torch.ones(3))  # the warm-up's thread compiles
        if not hold.is_set():
            held.set()
            if not hold.wait(HOLD_S):
                timed_out.append("compiling generation")

    graphs_before = counters["stats"]["unique_graphs"]
    warm_up = threading.Thread(target=manager.warm_up, kwargs={**WARMUP, "on_step": warm_up_step})
    warm_up.start()
    assert held.wait(30)
    status = manager.status()
    assert status.warmup_stage == "compiling" and status.warmup_progress == (0, 4)
    assert "compile warm-up: compiling in the background 0/4 (generating uncompiled meanwhile)" in status.summary()
    request = GenerationRequest(prompt="a cat", seed=3, **SMALL)
    served = manager.generate(request, lambda step, total, preview: in_request(torch.ones(3)))
    assert not hold.is_set()  # served while the compiling generation was still held
    assert counters["stats"]["unique_graphs"] == graphs_before + 1  # the warm-up's compile; nothing in the request's
    hold.set()
    warm_up.join(HOLD_S)
    assert not timed_out
    status = manager.status()
    assert status.warmup == "ready" and status.warmup_progress == (4, 4) and status.warmup_stage == ""
    assert stages.count("compiling") == 4 and stages.count("capturing") == 4 * WARMUP["steps"]
    again = manager.generate(request)
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(served.images[0]))  # the same image, warm or not


def test_no_compilation_starts_while_a_request_waits_or_runs(demo_sources):
    """A compilation slows a request beside it (the CPU is shared), so the compiling stage starts its next shape only
    once no request waits or runs, as the locked stage does."""
    manager = ModelManager(
        PipelineLoader(demo_sources, torch.float32), device="cpu", demo=True, background_compile=True
    )
    manager.start(background=False)
    user_holds, user_in, first_shape_held, first_shape_go = (threading.Event() for _ in range(4))
    timed_out: list[str] = []  # a hold that ended by its (generous) timeout, not by the test: the test proves nothing

    def warm_up_step(step, total, preview):
        if manager.status().warmup_progress[0] == 0 and not first_shape_go.is_set():
            first_shape_held.set()
            if not first_shape_go.wait(HOLD_S):
                timed_out.append("first shape")

    def user_step(step, total, preview):
        user_in.set()
        if not user_holds.wait(HOLD_S):
            timed_out.append("request")

    warm_up = threading.Thread(target=manager.warm_up, kwargs={**WARMUP, "on_step": warm_up_step})
    warm_up.start()
    assert first_shape_held.wait(30)
    user = threading.Thread(target=lambda: manager.generate(GenerationRequest(prompt="a cat", **SMALL), user_step))
    user.start()
    assert user_in.wait(30)
    first_shape_go.set()  # the first shape ends while the request runs
    wait_until(lambda: manager.status().warmup_progress[0] == 1, timeout=HOLD_S)
    time.sleep(0.5)
    assert manager.status().warmup_progress == (1, 4) and manager.status().warmup_stage == "compiling"
    assert not timed_out  # the request was still running: its hold, not a timeout, kept the next shape back
    user_holds.set()
    user.join(HOLD_S)
    warm_up.join(HOLD_S)
    assert manager.status().warmup == "ready"


def test_a_swapping_plan_never_compiles_beside_requests(fresh_manager):
    """Under a small-GPU plan the weights move between the GPU and CPU RAM under the GPU lock: compiling beside a
    request would run on weights being moved. Asking for it does not change that."""
    fresh_manager.background_compile = True
    assert fresh_manager.compiles_beside_requests()
    fresh_manager.residency = object()  # any residency: a plan that swaps
    assert not fresh_manager.compiles_beside_requests()
    fresh_manager.residency = None
    fresh_manager.background_compile = None
    assert not fresh_manager.compiles_beside_requests()  # the CPU's default


CACHE_ROUND_TRIP = """
import json, os, sys, tempfile
os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp()  # a fresh machine's empty caches
os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp()
import torch
from torch._dynamo.utils import counters
from krea2.compile_cache import CompileCache

cache = CompileCache(sys.argv[1])
loaded = cache.load()
compiled = torch.compile(lambda x: torch.sin(x) * 2 + torch.cos(x), fullgraph=True)
compiled(torch.randn(16))
saved = cache.save()
print(json.dumps({"loaded": loaded, "saved": saved, **{k: v for k, v in counters["inductor"].items()}}))
"""


def test_compile_artifacts_round_trip_through_the_data_folder(tmp_path):
    """Run 1 compiles on an empty cache and saves torch's artifacts into the data folder; run 2, again with empty
    inductor and Triton caches (a new machine), loads them and its compilation is a cache hit."""

    def run() -> dict:
        command = [sys.executable, "-c", CACHE_ROUND_TRIP, str(tmp_path)]
        environment = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=environment)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    first = run()
    assert not first["loaded"] and first["saved"] > 0 and first.get("fxgraph_cache_miss") == 1
    [saved] = tmp_path.glob("mega-cache-torch-*.bin")
    second = run()
    assert second["loaded"] and second.get("fxgraph_cache_hit") == 1 and not second.get("fxgraph_cache_miss")
    assert saved.stat().st_size >= first["saved"]  # re-saved whole: what was loaded counts as this run's too


def test_the_service_serves_and_records_during_the_warm_up(fresh_manager, tmp_path):
    """Through the app's own service (what the UI and the API call): a generation made while a warm-up generation holds
    the GPU streams, finishes and is recorded; the status line shows the warm-up and the plan."""
    from storage import HistoryFilter, HistoryStore
    from studio.service import DoneEvent, StudioService

    store = HistoryStore(tmp_path / "data").open()
    service = StudioService(fresh_manager, store)
    warm_up, hold = held_warm_up(fresh_manager)
    line = service.status_line()
    assert "plan cpu: all weights on the CPU" in line and "compile warm-up: running 0/4" in line
    threading.Timer(0.5, hold.set).start()  # the slow warm-up step ends while the request waits
    events = list(service.generate(GenerationRequest(prompt="a green triangle", seed=4, **SMALL), session="s"))
    done = [event for event in events if isinstance(event, DoneEvent)]
    assert len(done) == 1 and done[0].generation.status == "ok" and done[0].generation.placement == "cpu"
    assert service.count(HistoryFilter()) == 1
    warm_up.join(120)
    assert "compile warm-up: ready (full speed)" in service.status_line()
    store.close()


def test_a_plan_that_runs_images_one_at_a_time_warms_up_no_larger_batch(fresh_manager, monkeypatch):
    """Under a small GPU's plan a 2-image request runs as two 1-image calls (`generation.in_parts`): the warm-up's
    2-image shapes would only repeat the 1-image ones, so they are left out (and with them, on a 24 GB card, a shape
    that did not fit)."""
    batches: list[int] = []
    hook = fresh_manager.pipes["turbo"].transformer.register_forward_pre_hook(
        lambda _module, _args, kwargs: batches.append(kwargs["hidden_states"].shape[0]), with_kwargs=True
    )
    try:
        fresh_manager.warm_up(**{**WARMUP, "batch_sizes": (1, 2)})
        assert fresh_manager.status().warmup_progress == (6, 6) and 2 in batches  # the whole batch, in one call
        batches.clear()
        monkeypatch.setattr(fresh_manager, "plan", replace(fresh_manager.plan, images_at_once=1))
        fresh_manager.warm_up(**{**WARMUP, "batch_sizes": (1, 2)})
    finally:
        hook.remove()
    assert fresh_manager.status().warmup_progress == (4, 4) and set(batches) == {1}


def test_a_second_warm_up_waits_for_the_first(demo_sources):
    """Two warm-ups at once (a benchmark's own beside the one a compiling manager starts once loaded) raced on an H200:
    one's locked stage captured CUDA graphs while the other compiled beside it, and the captures failed. With the
    compiling beside requests on (the GPU's way, here on the CPU), a second warm-up starts no generation while the
    first is held in its compile stage, and both end ready."""
    loader = PipelineLoader(demo_sources, torch.float32)
    manager = ModelManager(loader, device="cpu", demo=True, background_compile=True)
    manager.start(background=False)
    first, hold = held_warm_up(manager)
    second_stepped = threading.Event()
    second = threading.Thread(
        target=manager.warm_up, kwargs={**WARMUP, "on_step": lambda step, total, preview: second_stepped.set()}
    )
    second.start()
    assert not second_stepped.wait(5)  # a generation of its own would have made a step by now (~0.1 s each here)
    hold.set()
    first.join(HOLD_S)
    second.join(HOLD_S)
    assert second_stepped.is_set() and manager.status().warmup == "ready"
