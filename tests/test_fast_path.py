"""The fast path's checklist (`speedups.apply`), what it reports (`installed`), the options it takes (`for_placement`)
and the manager's warm-up, on tiny real components on the CPU."""

import threading

import pytest
import torch

from krea2 import GenerationRequest
from krea2.checkpoints import RAW
from krea2.demo import build_demo_pipeline, build_transformer
from krea2.loading import build_pipeline_sharing
from krea2.pipeline import Krea2StudioPipeline
from krea2.speedups import FastPathOptions, apply, for_placement, installed
from krea2.speedups.compile import compile_order, warmup_requests
from krea2.speedups.step_cache import step_cache_of

CPU = torch.device("cpu")
SMALL = {"width": 256, "height": 256}
EVERYTHING = FastPathOptions(
    compile=True, fp8=True, attention="flash4", step_cache=0.05, text_graphs=True, denoiser_graphs=True
)


def studio_pipe(*, is_distilled: bool) -> Krea2StudioPipeline:
    return Krea2StudioPipeline.from_pipeline(build_demo_pipeline(transformer_seed=3, is_distilled=is_distilled))


@pytest.mark.parametrize("placement", ["offload", "cpu"])
def test_only_resident_gpu_weights_get_the_gpu_speed_ups(placement):
    assert for_placement(EVERYTHING, placement) == FastPathOptions(step_cache=0.05)
    assert for_placement(EVERYTHING, "gpu") == EVERYTHING


def test_denoiser_graphs_come_with_compile_only():
    assert not for_placement(FastPathOptions(denoiser_graphs=True), "gpu").denoiser_graphs
    assert for_placement(FastPathOptions(denoiser_graphs=True, compile=True), "gpu").denoiser_graphs


def test_the_step_cache_goes_on_undistilled_pipelines_only():
    raw, turbo = studio_pipe(is_distilled=False), studio_pipe(is_distilled=True)
    apply([raw, turbo], FastPathOptions(step_cache=0.05), placement="cpu", device=CPU)
    assert step_cache_of(raw.transformer).threshold == 0.05 and step_cache_of(turbo.transformer) is None
    assert installed(raw) == ["single-frame VAE decode and encode", "step cache 0.05"]
    assert installed(turbo) == ["single-frame VAE decode and encode"]


def test_applying_again_keeps_what_is_on():
    """A second `apply` (the benchmark's next mode) must not rebuild what is there: a new compiled function or
    attention processor would throw compiled code away, a new step cache its state."""
    pipe = studio_pipe(is_distilled=False)
    options = FastPathOptions(compile=True, step_cache=0.1, text_graphs=True)
    apply([pipe], options, placement="cpu", device=CPU)
    decoder, cache, graphs = pipe.vae.frame_decoder, step_cache_of(pipe.transformer), pipe.text_graphs
    compiled_blocks = [block._compiled_call_impl for block in pipe.transformer.transformer_blocks]
    apply([pipe], options, placement="cpu", device=CPU)
    assert pipe.vae.frame_decoder is decoder and decoder.ops.is_compiled
    assert step_cache_of(pipe.transformer) is cache and pipe.text_graphs is graphs
    assert [block._compiled_call_impl for block in pipe.transformer.transformer_blocks] == compiled_blocks
    assert installed(pipe) == [
        "single-frame VAE decode and encode (compiled)",
        "step cache 0.1",
        "text encoder CUDA graphs",
        "compiled blocks",
    ]
    apply([pipe], FastPathOptions(step_cache=0.1), placement="cpu", device=CPU)  # text graphs off again
    assert pipe.text_graphs is None


def test_kernel_tuning_is_the_fast_paths_switch_not_torchaos_side_effect():
    """Inductor's coordinate-descent tuning follows `kernel_tuning` when compile is on (most of an H200 restart's
    compiling), and quantising to fp8 no longer switches it on for the process behind the app's back."""
    import torch._inductor.config as inductor

    from krea2.speedups.fp8 import fp8_config

    # inductor's own patcher puts both options back afterwards. Not monkeypatch: it finds no instance attribute on
    # torch's config module, so its undo deletes the option, which torch then reports as not existing for the rest of
    # the worker (test_compile_routing's VAE-kernel test, run after this one, then counted extra graphs).
    with inductor.patch(coordinate_descent_tuning=inductor.coordinate_descent_tuning,
                        coordinate_descent_check_all_directions=False):  # fmt: skip
        assert fp8_config().set_inductor_config is False
        pipe = studio_pipe(is_distilled=True)
        for tuning in (False, True, False):
            apply([pipe], FastPathOptions(compile=True, kernel_tuning=tuning), placement="cpu", device=CPU)
            assert inductor.coordinate_descent_tuning is tuning
            assert inductor.coordinate_descent_check_all_directions is tuning


def test_pipelines_sharing_an_encoder_share_its_graphs():
    turbo = studio_pipe(is_distilled=True)
    other = build_transformer(seed=4)
    raw = Krea2StudioPipeline.from_pipeline(build_pipeline_sharing(turbo, other, RAW))
    apply([turbo, raw], FastPathOptions(text_graphs=True), placement="cpu", device=CPU)
    assert turbo.text_graphs is not None and raw.text_graphs is turbo.text_graphs


def test_warm_up_runs_every_planned_shape_holding_the_gpu(manager, monkeypatch):
    """The public warm-up runs the compile plan (every size and batch, each checkpoint, in `compile_order`: a
    non-square image first) and holds the generation lock throughout, so no user request runs between its shapes."""
    monkeypatch.setattr(manager, "_warmup", manager._warmup)  # the session's manager: its status back afterwards
    ran = []
    original = manager._generate

    def recording(pipe, request, on_step, cancel_event):
        ran.append((request.checkpoint, request.width, request.height, request.num_images, request.steps))
        assert manager._generate_lock.locked()
        return original(pipe, request, on_step, cancel_event)

    monkeypatch.setattr(manager, "_generate", recording)
    sizes, batches = ((256, 256), (256, 320)), (1, 2)
    seconds = manager.warm_up(sizes=sizes, steps=1, batch_sizes=batches)
    planned = compile_order(warmup_requests(manager.pipes, sizes, 1, batches))
    assert ran == [(r.checkpoint, r.width, r.height, r.num_images, r.steps) for r in planned]
    assert {(w, h) for _, w, h, _, _ in ran} == set(sizes) and {n for *_, n, _ in ran} == set(batches)
    assert {key for key, *_ in ran} == set(manager.pipes)
    assert seconds > 0 and manager.status().warmup == "ready"
    assert not manager._generate_lock.locked()


def test_a_request_waits_for_the_warm_up(manager, monkeypatch):
    started, release = threading.Event(), threading.Event()
    original = manager._generate

    def slow_first(pipe, request, on_step, cancel_event, image_filter=None):
        started.set()
        release.wait(30)
        return original(pipe, request, on_step, cancel_event, image_filter=image_filter)

    monkeypatch.setattr(manager, "_generate", slow_first)
    monkeypatch.setattr(manager, "_warmup", manager._warmup)
    warm = threading.Thread(target=manager.warm_up, kwargs={"sizes": ((256, 256),), "steps": 1, "batch_sizes": (1,)})
    warm.start()
    assert started.wait(30)
    finished = []
    user = threading.Thread(
        target=lambda: finished.append(manager.generate(GenerationRequest(prompt="after", steps=1, seed=1, **SMALL)))
    )
    user.start()
    user.join(0.5)
    assert not finished  # the warm-up holds the GPU
    release.set()
    warm.join(60)
    user.join(60)
    assert len(finished) == 1
