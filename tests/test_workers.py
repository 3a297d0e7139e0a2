"""Several workers (krea2/workers.py), each a real ModelManager on the demo checkpoints, on the CPU: requests go to the
worker that holds their checkpoint, run at the same time on different workers (Compare's two sides too), are
cancelled one by one, all land in one history, and a worker that fails leaves the others serving.

"At the same time" is proven, not timed: `rendezvous` makes every generation's first transformer call wait for the
other's at a barrier, which only passes when both are inside a transformer at once (on one worker it times out)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import pytest
import torch

from krea2 import Cancelled, GenerationRequest, NotReady
from krea2.loading import PipelineLoader
from krea2.manager import ModelManager
from krea2.plans import PlacementPlan
from krea2.workers import WorkerPool
from storage import HistoryStore
from studio.service import DoneEvent, StepEvent, StudioService

SMALL = {"width": 256, "height": 256, "seed": 3}
FAST = {**SMALL, "steps": 1, "guidance": 0.0}  # Raw unguided: one transformer call per step, as Turbo
SWAP = PlacementPlan("swap", swap=True, text_encoder="gpu")  # one transformer "on the GPU", the other parked


def demo_manager(demo_sources, **options) -> ModelManager:
    return ModelManager(PipelineLoader(demo_sources, torch.float32), device="cpu", demo=True, **options)


def started(pool: WorkerPool) -> WorkerPool:
    pool.start(background=False)
    assert pool.wait_ready(0)
    return pool


@pytest.fixture(scope="module")
def pool(demo_sources) -> WorkerPool:
    return started(WorkerPool([demo_manager(demo_sources), demo_manager(demo_sources)]))


@pytest.fixture
def service(pool, tmp_path) -> Iterator[StudioService]:
    store = HistoryStore(tmp_path / "data").open()
    yield StudioService(pool, store)
    store.close()


@contextlib.contextmanager
def rendezvous(pool: WorkerPool, parties: int = 2, timeout: float = 20) -> Iterator[threading.Barrier]:
    """Every generation's first transformer call (one per thread) waits at a barrier of `parties`: it passes only
    when that many generations are inside a transformer at the same moment, else BrokenBarrierError."""
    barrier = threading.Barrier(parties, timeout=timeout)
    arrived: set[int] = set()

    def meet(_module, _args, _kwargs):
        if threading.get_ident() not in arrived:
            arrived.add(threading.get_ident())
            barrier.wait()

    handles = [pipe.transformer.register_forward_pre_hook(meet, with_kwargs=True)
               for worker in pool.workers for pipe in worker.manager.pipes.values()]  # fmt: skip
    try:
        yield barrier
    finally:
        for handle in handles:
            handle.remove()


def in_threads(*calls) -> list:
    """Run each call in its own thread; their results (or exceptions) in order."""
    results: list = [None] * len(calls)

    def run(index, call):
        try:
            results[index] = call()
        except Exception as error:  # noqa: BLE001 - returned for the test to look at
            results[index] = error

    threads = [threading.Thread(target=run, args=(index, call)) for index, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


# ------------------------------------------------------------------------------------------------ routing
def test_requests_go_to_the_worker_holding_their_checkpoint(demo_sources):
    """Under a swapping plan each worker holds one transformer at a time: once Raw is on worker 1 and Turbo on worker 0,
    each request goes where its checkpoint is, so the whole run costs one swap, not one per switch."""
    pool = started(WorkerPool([demo_manager(demo_sources, plan=SWAP), demo_manager(demo_sources, plan=SWAP)]))
    first, second = (worker.manager.residency for worker in pool.workers)
    assert first.active == second.active == "turbo"

    ran_on = []
    for checkpoint in ("turbo", "raw", "raw", "raw", "turbo"):
        served = [worker.served for worker in pool.workers]
        pool.generate(GenerationRequest(prompt="a red circle", checkpoint=checkpoint, **FAST))
        ran_on.append(next(w.index for w in pool.workers if w.served > served[w.index]))
    # Worker 0 took the first Turbo; Raw went to the idle worker 1 (neither held it) and stays there, although
    # worker 1 has served more than worker 0 by the fourth request; Turbo is still on worker 0.
    assert ran_on == [0, 1, 1, 1, 0]
    assert (first.active, second.active) == ("turbo", "raw")
    assert (first.swaps, second.swaps) == (0, 1)


def test_a_busy_worker_is_passed_over_and_a_request_waits_only_when_all_are_busy(pool):
    with rendezvous(pool):  # the two first requests occupy both workers at once
        results = in_threads(
            lambda: pool.generate(GenerationRequest(prompt="one", checkpoint="turbo", **FAST)),
            lambda: pool.generate(GenerationRequest(prompt="two", checkpoint="turbo", **FAST)),
        )
    assert all(not isinstance(result, Exception) for result in results), results
    assert not any(worker.busy for worker in pool.workers)


# ------------------------------------------------------------------------------------------------ side by side
@contextlib.contextmanager
def transformer_spans(pool: WorkerPool) -> Iterator[dict[int, list[list[float]]]]:
    """Every transformer call's [start, end] (time.monotonic), by the thread (the generation) that made it."""
    spans: dict[int, list[list[float]]] = {}

    def enter(_module, _args, _kwargs):
        spans.setdefault(threading.get_ident(), []).append([time.monotonic(), float("inf")])

    def leave(_module, _args, _kwargs, _output):
        spans[threading.get_ident()][-1][1] = time.monotonic()

    handles = []
    for worker in pool.workers:
        for pipe in worker.manager.pipes.values():
            handles.append(pipe.transformer.register_forward_pre_hook(enter, with_kwargs=True))
            handles.append(pipe.transformer.register_forward_hook(leave, with_kwargs=True))
    try:
        yield spans
    finally:
        for handle in handles:
            handle.remove()


def overlap_s(first: list[list[float]], second: list[list[float]]) -> float:
    """How long the two generations' transformer calls ran at the same time, in seconds."""
    return sum(max(0.0, min(a_end, b_end) - max(a_start, b_start)) for a_start, a_end in first for b_start, b_end
               in second)  # fmt: skip


@pytest.mark.parametrize("workers", [1, 2])
def test_two_requests_run_at_the_same_time_only_on_two_workers(demo_sources, pool, workers):
    """Measured from the transformer calls' timestamps: on two workers the two generations' calls overlap in time; on
    one they never do (the manager runs one at a time), whatever the thread scheduling. With two, the rendezvous
    makes the overlap certain rather than likely."""
    chosen = pool if workers == 2 else started(WorkerPool([demo_manager(demo_sources)]))
    meet = rendezvous(chosen) if workers == 2 else contextlib.nullcontext()
    requests = [GenerationRequest(prompt=f"{key} at once", checkpoint=key, **{**FAST, "steps": 2}) for key in
                ("turbo", "raw")]  # fmt: skip
    with transformer_spans(chosen) as spans, meet:
        results = in_threads(*[lambda request=request: chosen.generate(request) for request in requests])
    assert all(not isinstance(result, Exception) for result in results), results
    first, second = spans.values()
    assert len(first) == len(second) == 2  # one call per step each
    assert (overlap_s(first, second) > 0) == (workers == 2)


def test_compare_runs_raw_and_turbo_side_by_side_into_one_comparison(service, pool):
    raw = GenerationRequest(prompt="a blue square", checkpoint="raw", steps=3, guidance=0.0, **SMALL)
    turbo = raw.with_checkpoint("turbo", steps=2)
    with rendezvous(pool):  # passes only if Raw and Turbo are in their transformers at once
        events = list(service.compare(raw, turbo, "compare-session"))
    done = [event for event in events if isinstance(event, DoneEvent)]
    assert sorted(event.label for event in done) == ["raw", "turbo"]
    steps = [(event.label, event.step) for event in events if isinstance(event, StepEvent)]
    assert sorted(steps) == [("raw", 1), ("raw", 2), ("raw", 3), ("turbo", 1), ("turbo", 2)]
    rows = service.store.page().items
    assert len(rows) == 2 and len({row.comparison_id for row in rows}) == 1 and rows[0].comparison_id
    assert {row.status for row in rows} == {"ok"} and {row.seed for row in rows} == {3}
    assert service.concurrent_generations == 2


# ------------------------------------------------------------------------------------------------ cancel, history
def collect(stream, into: list, first_step: threading.Event) -> None:
    try:
        for event in stream:
            into.append(event)
            if isinstance(event, StepEvent):
                first_step.set()
    except Exception as error:  # noqa: BLE001 - the test looks at it
        into.append(error)
    first_step.set()


def test_cancel_stops_only_its_own_generation(service):
    long = GenerationRequest(prompt="cancel me", checkpoint="raw", steps=100, guidance=0.0, **SMALL)
    other = GenerationRequest(prompt="finish me", checkpoint="raw", steps=6, guidance=0.0, **SMALL)
    cancelled, finished = [], []
    started_long, started_other = threading.Event(), threading.Event()
    threads = [
        threading.Thread(target=collect, args=(service.generate(long, "alice"), cancelled, started_long)),
        threading.Thread(target=collect, args=(service.generate(other, "bob"), finished, started_other)),
    ]
    for thread in threads:
        thread.start()
    assert started_long.wait(60) and started_other.wait(60)
    assert service.cancel("alice")
    for thread in threads:
        thread.join(120)
    assert isinstance(cancelled[-1], Cancelled)
    assert len([event for event in cancelled if isinstance(event, StepEvent)]) < 100
    assert isinstance(finished[-1], DoneEvent)  # bob's ran all its steps on the other worker
    assert [event.step for event in finished if isinstance(event, StepEvent)] == list(range(1, 7))
    rows = {row.prompt: row.status for row in service.store.page().items}
    assert rows == {"cancel me": "cancelled", "finish me": "ok"}


def until(condition, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_request_waiting_for_a_worker_can_be_cancelled(pool):
    cancel = threading.Event()
    with rendezvous(pool, parties=3, timeout=60) as barrier:  # both workers held inside a generation
        held = [threading.Thread(target=in_threads, args=(lambda: pool.generate(GenerationRequest(prompt="held",
                                                                                                  **FAST)),))
                for _ in range(2)]  # fmt: skip
        for thread in held:
            thread.start()
        assert until(lambda: barrier.n_waiting == 2)
        waiter = threading.Thread(target=lambda: waited.extend(in_threads(lambda: pool.generate(
            GenerationRequest(prompt="never runs", **FAST), cancel_event=cancel))))  # fmt: skip
        waited: list = []
        waiter.start()
        assert until(lambda: len(pool._waiting) == 1)  # queued: no worker is free
        cancel.set()
        waiter.join(30)
        barrier.abort()  # let the two held generations go (they fail at the broken barrier)
        for thread in held:
            thread.join(30)
    assert isinstance(waited[0], Cancelled)
    assert not pool._waiting and not any(worker.busy for worker in pool.workers)


def test_every_worker_writes_to_the_one_history(service):
    prompts = [f"user {n}" for n in range(5)]
    results = in_threads(*[
        lambda prompt=prompt: list(service.generate(GenerationRequest(prompt=prompt, **FAST), f"session {prompt}"))
        for prompt in prompts
    ])  # fmt: skip
    assert all(not isinstance(result, Exception) for result in results), results
    rows = service.store.page(limit=20).items
    assert sorted(row.prompt for row in rows) == prompts and {row.status for row in rows} == {"ok"}
    assert all(service.store.absolute(row.images[0].path).is_file() for row in rows)


# ------------------------------------------------------------------------------------------------ failures
def test_a_worker_that_failed_to_load_is_passed_over(demo_sources):
    broken = ModelManager(PipelineLoader({**demo_sources, "turbo": "/nonexistent/turbo"}, torch.float32),
                          device="cpu", demo=True)  # fmt: skip
    pool = started(WorkerPool([broken, demo_manager(demo_sources)]))
    for n in range(2):
        pool.generate(GenerationRequest(prompt=f"served {n}", **FAST))
    assert [worker.served for worker in pool.workers] == [0, 2]
    status = pool.status()
    assert status.checkpoints["turbo"].state == "ready"
    assert "worker 0: " in status.summary() and "failed" in status.summary().split("‖")[1]


def test_a_worker_whose_device_fails_is_taken_out_and_the_others_serve(demo_sources):
    pool = started(WorkerPool([demo_manager(demo_sources), demo_manager(demo_sources)]))

    def device_error(_module, _args, _kwargs):
        raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered")

    pool.workers[1].manager.pipes["turbo"].transformer.register_forward_pre_hook(device_error, with_kwargs=True)
    pool.generate(GenerationRequest(prompt="worker 0", **FAST))  # worker 0 (lowest index)
    with pytest.raises(torch.AcceleratorError):
        pool.generate(GenerationRequest(prompt="worker 1", **FAST))  # worker 1 (served least): its device fails
    assert pool.workers[1].lost and "out of service" in pool.status().summary().lower()
    results = in_threads(*[lambda: pool.generate(GenerationRequest(prompt="after", **FAST))] * 2)
    assert all(not isinstance(result, Exception) for result in results), results
    assert [worker.served for worker in pool.workers] == [3, 1]


def test_imports_are_screened_with_the_classifier_of_a_worker_in_service(demo_sources):
    """A history import is screened by the pool's policy: not a lost worker's (its card failed, its classifier with
    it), and one whose classifier is ready before one whose classifier failed to load."""
    from krea2.content_filter import ContentPolicy, ImageClassifierFilter

    policies = [ContentPolicy(ImageClassifierFilter("some/classifier", ("nsfw",), 0.5), required=True) for _ in "abc"]
    pool = WorkerPool([demo_manager(demo_sources, content_policy=policy) for policy in policies])  # not started
    assert pool.content_policy is policies[0]  # all loading: the first
    pool.workers[0].lost = "CUDA error: an illegal memory access was encountered"
    assert pool.content_policy is policies[1]
    policies[1].state, policies[2].state = "failed", "ready"
    assert pool.content_policy is policies[2]
    policies[2].state = "failed"
    assert pool.content_policy is policies[1]  # none ready: the first in service, whose sentence says why


def test_a_checkpoint_no_worker_has_is_refused_at_once(demo_sources):
    pool = WorkerPool([demo_manager(demo_sources), demo_manager(demo_sources)])  # not started: still loading
    with pytest.raises(NotReady, match="loading; try again"):
        pool.generate(GenerationRequest(prompt="too early", **FAST))
    assert not pool._waiting


# ------------------------------------------------------------------------------------------------ settings and wiring
def test_the_devices_setting_picks_the_workers():
    from studio.devices import choose_devices
    from studio.settings import SettingError

    assert choose_devices(None, cuda_count=0) == ["cpu"]  # no GPU: one CPU worker, as before
    assert choose_devices(None, cuda_count=2) == ["cuda:0", "cuda:1"]  # auto: every visible GPU
    assert choose_devices(("cuda:1",), cuda_count=2) == ["cuda:1"]
    assert choose_devices(("cpu", "cpu"), cuda_count=0) == ["cpu", "cpu"]
    with pytest.raises(SettingError, match="KREA2_DEVICES names cuda:2, but this machine has 2 CUDA devices"):
        choose_devices(("cuda:0", "cuda:2"), cuda_count=2)
    with pytest.raises(SettingError, match="no CUDA GPU"):
        choose_devices(("cuda:0",), cuda_count=0)


def test_one_device_builds_todays_manager_and_several_a_pool(tmp_path):
    from krea2.content_filter import ContentPolicy, ImageClassifierFilter
    from krea2.lora_library import LoraLibrary
    from studio.devices import build_engine
    from studio.settings import Settings

    loras = LoraLibrary(tmp_path / "loras")
    policy = ContentPolicy(ImageClassifierFilter("some/classifier", ("nsfw",), 0.5), required=True)
    one = build_engine(Settings(demo=True), loras=loras, content_policy=policy, cuda_count=0)
    assert type(one) is ModelManager and one.device == torch.device("cpu") and one.content_policy is policy
    assert one.concurrent_generations == 1

    pool = build_engine(Settings(demo=True, devices=("cpu", "cpu")), loras=loras, content_policy=policy, cuda_count=0)
    assert isinstance(pool, WorkerPool) and pool.concurrent_generations == 2
    managers = [worker.manager for worker in pool.workers]
    assert [manager.device.type for manager in managers] == ["cpu", "cpu"]
    assert all(manager.loras is loras for manager in managers)  # one LoRA folder for every worker
    # Each worker loads its own classifier (onto its own device); the rules are the same.
    first, second = (manager.content_policy for manager in managers)
    assert first is policy and second.classifier is not policy.classifier
    assert (second.required, second.classifier.source, second.classifier.blocking_labels) == (True, "some/classifier",
                                                                                               ("nsfw",))  # fmt: skip


def test_the_page_and_the_api_run_as_many_generations_at_once_as_there_are_workers(pool, manager, tmp_path):
    from ui.layout import build_ui

    store = HistoryStore(tmp_path / "data").open()
    try:
        for engine, expected in ((pool, 2), (manager, 1)):
            blocks = build_ui(StudioService(engine, store))
            limits = {(fn.api_name, fn.concurrency_limit) for fn in blocks.fns.values() if fn.concurrency_id == "gpu"}
            assert {"generate", "compare", "compare_loras"} <= {name for name, _ in limits}
            assert {limit for _, limit in limits} == {expected}
    finally:
        store.close()


def test_the_api_answers_raw_first_when_turbo_finished_first(pool, service):
    """Side by side, Turbo's 8 steps end long before Raw's 52: the /compare endpoint still answers in its documented
    order (images Raw then Turbo, infos by checkpoint). Raw is held at its first step until Turbo's row is recorded,
    so Turbo surely finishes first."""
    from ui.layout import build_ui

    blocks = build_ui(service)
    compare = next(fn.fn for fn in blocks.fns.values() if fn.api_name == "compare")
    turbo_recorded = lambda: any(row.checkpoint == "turbo" and row.status == "ok"  # noqa: E731
                                 for row in service.store.page().items)  # fmt: skip

    def hold_raw(_module, _args, _kwargs):
        assert until(turbo_recorded, timeout=60)

    handles = [worker.manager.pipes["raw"].transformer.register_forward_pre_hook(hold_raw, with_kwargs=True)
               for worker in pool.workers]  # fmt: skip
    try:
        *_progress, (images, infos) = compare("a green star", "", 5, 256, 256, 2, 0.0, 1)
    finally:
        for handle in handles:
            handle.remove()
    assert list(infos) == ["raw", "turbo"]
    assert [infos[key]["checkpoint"] for key in infos] == ["raw", "turbo"]
    assert [caption.split()[0] for _path, caption in images] == ["raw", "turbo"]
    assert sorted((row.checkpoint, row.status) for row in service.store.page().items) == [("raw", "ok"),
                                                                                          ("turbo", "ok")]  # fmt: skip


def test_each_manager_makes_its_own_gpu_current_for_its_work(demo_sources):
    """CUDA's current device is per thread, and code that says just "cuda" means it: a worker's generation, warm-up and
    loading run under its own GPU (entering the context needs a GPU; which one it picks is checked here)."""
    loader = PipelineLoader(demo_sources, torch.float32)
    second = ModelManager(loader, device="cuda:1").on_device()
    assert isinstance(second, torch.cuda.device) and second.idx == 1
    for device in ("cpu", "cuda"):  # the CPU, and the single-GPU app's "cuda": nothing changes
        assert isinstance(ModelManager(loader, device=device).on_device(), contextlib.nullcontext)


def test_each_tab_cancels_its_own_run_when_one_page_runs_both(service):
    """With two workers one page can run a Generate and a Compare at once; the Compare tab's Cancel stops the
    Compare, and the Generate goes on."""
    from ui.handlers import Handlers

    handlers = Handlers(service)
    outputs: dict[str, list] = {"generate": [], "compare": []}
    stepped = {"generate": threading.Event(), "compare": threading.Event()}

    def consume(name, stream):
        for update in stream:
            outputs[name].append(update)
            if "Step" in str(update[0] if name == "compare" else update[1]):
                stepped[name].set()

    generate = handlers.generate("a red circle", "", "raw", 6, 0.0, 256, 256, 3, False, 1, [], None)
    compare = handlers.compare("a blue square", "", 4, False, 256, 256, 100, 0.0, 1, None)
    threads = [threading.Thread(target=consume, args=item) for item in (("generate", generate), ("compare", compare))]
    for thread in threads:
        thread.start()
    assert stepped["generate"].wait(60) and stepped["compare"].wait(60)  # both running, one per worker
    assert handlers.cancel_compare(None) == "**Cancelling…**"
    for thread in threads:
        thread.join(120)
    assert outputs["compare"][-1][0] == "**Cancelled**"
    assert outputs["generate"][-1][1].startswith("**Done**")
