"""The denoiser's CUDA-graph bookkeeping on a tiny real Krea 2 transformer. The CPU has no CUDA graphs, so `capture`
is replaced by a stand-in whose replay re-runs the captured function into the same static output: what a graph does,
minus the GPU. What is checked is ours: static inputs refreshed on every call, one capture per shape on its second call,
outputs that never alias, the first capture checked against eager, and every way back to eager."""

import pytest
import torch
from diffusers import Krea2Pipeline

import krea2.speedups.denoiser_graphs as denoiser_graphs
from krea2.demo import TEXT_HIDDEN, TEXT_LAYERS, build_transformer
from krea2.speedups.denoiser_graphs import denoiser_graphs_of, drop_denoiser_graphs, install_denoiser_graphs
from krea2.speedups.step_cache import install_step_cache


class ReplayedFunction:
    """A CPU stand-in for a captured graph: `replay` runs the function again and writes into the static output."""

    def __init__(self, fn, output: torch.Tensor, corrupt: bool = False) -> None:
        self.fn, self.output, self.corrupt = fn, output, corrupt

    def replay(self) -> None:
        # A CUDA graph writes its output's memory directly, whatever the caller's autograd mode: the same here, also
        # for an output captured under inference_mode and replayed outside it.
        with torch.inference_mode():
            self.output.copy_(self.fn() + (1.0 if self.corrupt else 0.0))


@pytest.fixture
def captures(monkeypatch):
    """Counts captures; `captures.corrupt = True` makes replays wrong, `captures.fail = True` makes capture raise
    (`fail_quietly`: with an empty message)."""

    class Captures:
        count, corrupt, fail, fail_quietly = 0, False, False, False

    def fake_capture(fn, device, *, warmups=0, pool=None):
        if Captures.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        if Captures.fail_quietly:
            raise RuntimeError()
        Captures.count += 1
        output = fn().clone()
        return ReplayedFunction(fn, output, Captures.corrupt), output

    monkeypatch.setattr(denoiser_graphs, "capture", fake_capture)
    monkeypatch.setattr(denoiser_graphs.DenoiserGraphs, "device_types", ("cpu",))
    return Captures


def inputs(seed: int, text_tokens: int = 5, batch: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(batch, 16, 64, generator=generator),
        "encoder_hidden_states": torch.randn(batch, text_tokens, len(TEXT_LAYERS), TEXT_HIDDEN, generator=generator),
        "timestep": torch.rand(batch, generator=generator),
        "position_ids": Krea2Pipeline.prepare_position_ids(text_tokens, 4, 4, "cpu"),
    }


def pair():
    """The same weights twice: one transformer plain, one with graphs."""
    return build_transformer(seed=3).eval(), build_transformer(seed=3).eval()


def run(transformer, kwargs: dict) -> torch.Tensor:
    with torch.no_grad():
        return transformer(**kwargs, return_dict=False)[0]


def test_replays_follow_each_calls_inputs(captures):
    plain, graphed = pair()
    install_denoiser_graphs(graphed)
    for seed in range(4):  # eager, capture, replay, replay: new latents and timestep every call, as in denoising
        torch.testing.assert_close(run(graphed, inputs(seed)), run(plain, inputs(seed)), rtol=1e-6, atol=1e-6)
    assert captures.count == 1
    assert denoiser_graphs_of(graphed).checked


def test_one_graph_per_shape_captured_on_its_second_call(captures):
    _, graphed = pair()
    graphs = install_denoiser_graphs(graphed)
    for tokens in (5, 7, 5, 7, 5):
        run(graphed, inputs(0, text_tokens=tokens))
    run(graphed, inputs(0, batch=2))
    assert captures.count == 2 and len(graphs.graphs) == 2


def test_outputs_never_alias_the_static_buffer(captures):
    """Raw calls the transformer twice per step with the same shape (prompt, then negative prompt): the first result
    must survive the second replay."""
    plain, graphed = pair()
    install_denoiser_graphs(graphed)
    run(graphed, inputs(0))
    first = run(graphed, inputs(1))
    second = run(graphed, inputs(2))
    torch.testing.assert_close(first, run(plain, inputs(1)), rtol=1e-6, atol=1e-6)
    assert first.data_ptr() != second.data_ptr()


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        ("corrupt", "graph disagreed with eager"),
        ("fail", "capture failed (RuntimeError: operation not permitted"),
        ("fail_quietly", "capture failed (RuntimeError)"),
    ],
)
def test_a_bad_capture_turns_graphs_off_and_eager_carries_on(captures, failure, reason):
    plain, graphed = pair()
    setattr(captures, failure, True)
    graphs = install_denoiser_graphs(graphed)
    for seed in range(3):
        torch.testing.assert_close(run(graphed, inputs(seed)), run(plain, inputs(seed)), rtol=1e-6, atol=1e-6)
    assert graphs.disabled_reason.startswith(reason) and len(graphs.graphs) == 0


def test_masked_calls_and_the_step_cache_stay_eager(captures):
    _, graphed = pair()
    install_denoiser_graphs(graphed)
    masked = {**inputs(0), "encoder_attention_mask": torch.tensor([[True, True, True, False, False]])}
    for _ in range(3):
        run(graphed, masked)
    install_step_cache(graphed, threshold=0.0)  # skipping blocks is a CPU decision per call: no graph can replay it
    for seed in range(3):
        run(graphed, inputs(seed))
    assert captures.count == 0


def test_apply_drops_captured_graphs_first_and_installs_fresh_ones(captures):
    """Every step of `speedups.apply` may change what a captured graph replays, so apply drops the old graphs before
    its first step and, where asked, puts fresh ones on as its last: the next calls capture again."""
    from krea2.demo import build_demo_pipeline
    from krea2.pipeline import Krea2StudioPipeline
    from krea2.speedups import FastPathOptions, apply

    pipe = Krea2StudioPipeline.from_pipeline(build_demo_pipeline(transformer_seed=3))
    transformer, cpu = pipe.transformer, torch.device("cpu")
    old = install_denoiser_graphs(transformer)
    run(transformer, inputs(0))
    run(transformer, inputs(1))  # captures
    assert captures.count == 1 and len(old.graphs) == 1

    apply([pipe], FastPathOptions(compile=True, denoiser_graphs=True), placement="cpu", device=cpu)
    fresh = denoiser_graphs_of(transformer)
    assert fresh is not None and fresh is not old and len(fresh.graphs) == 0
    with torch.compiler.set_stance("force_eager"):  # the compiled blocks, without paying for compilation on a CPU
        run(transformer, inputs(0))
        run(transformer, inputs(1))
    assert captures.count == 2  # captured again, not replayed from the graph of the unchanged transformer

    apply([pipe], FastPathOptions(), placement="cpu", device=cpu)
    assert denoiser_graphs_of(transformer) is None
    drop_denoiser_graphs(transformer)  # nothing installed: a no-op
    run(transformer, inputs(0))


def test_return_dict_matches_the_stock_forward(captures):
    plain, graphed = pair()
    install_denoiser_graphs(graphed)
    with torch.no_grad():
        for seed in range(3):
            torch.testing.assert_close(graphed(**inputs(seed)).sample, plain(**inputs(seed)).sample)


def test_denoiser_graphs_default_on_a_resident_gpu_only():
    from studio.runtime import fast_path_options
    from studio.settings import Settings

    assert fast_path_options(Settings(), cuda=True, demo=False).denoiser_graphs
    assert not fast_path_options(Settings(), cuda=False, demo=True).denoiser_graphs
    assert not fast_path_options(Settings(denoiser_graphs=False), cuda=True, demo=False).denoiser_graphs
    assert not fast_path_options(Settings(), cuda=True, demo=False, prepare_on_cpu=True).denoiser_graphs


def test_a_graph_captured_under_inference_mode_replays_outside_it(captures):
    """The LoRA benchmark's first calls ran under inference_mode and the app's next ones under no_grad: the static
    inputs must be normal tensors, or the replay's copy into them raises (as it did on the H200)."""
    plain, graphed = pair()
    install_denoiser_graphs(graphed)
    with torch.inference_mode():
        for seed in range(2):  # eager, then the capture
            graphed(**inputs(seed), return_dict=False)
    assert captures.count == 1
    torch.testing.assert_close(run(graphed, inputs(5)), run(plain, inputs(5)))  # a replay, under no_grad
