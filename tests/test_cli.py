import json
import os
import subprocess
import sys
from pathlib import Path

from storage import HistoryStore
from storage.pnginfo import read_parameters

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "studio", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_cli_twice_is_pixel_identical_and_recorded(tmp_path, demo_sources):
    env = {
        **os.environ,
        "KREA2_DATA_DIR": str(tmp_path / "data"),
        "KREA2_DEMO_CHECKPOINTS": str(Path(demo_sources["turbo"]).parent),
    }
    outs = []
    for name in ("a.png", "b.png"):
        args = ["generate", "--demo", "--prompt", "a red fox in the snow", "--seed", "7", "--width", "256"]
        done = run_cli(*args, "--height", "256", "--out", str(tmp_path / name), env=env)
        assert done.returncode == 0, done.stderr
        outs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert outs[0]["seed"] == 7 and outs[0]["demo"] is True and set(outs[0]["timings"]) >= {"total_ms"}
    store = HistoryStore(tmp_path / "data").open()
    assert store.count() == 2
    stored = store.absolute(store.get(outs[0]["generation_id"]).images[0].path)
    assert "Seed: 7" in read_parameters(stored)["parameters"]


def test_cli_bad_input_is_exit_2_and_one_line(tmp_path):
    env = {**os.environ, "KREA2_DATA_DIR": str(tmp_path / "data")}
    for args in (["--prompt", "  "], ["--prompt", "x", "--steps", "0"], ["--prompt", "x", "--checkpoint", "sdxl"]):
        done = run_cli("generate", *args, env=env)
        assert done.returncode == 2
        assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("error:")


def test_cli_bad_engine_setting_is_exit_2_and_one_line(tmp_path):
    base = {**os.environ, "KREA2_DATA_DIR": str(tmp_path / "data")}
    for name, value in (("KREA2_STEP_CACHE", "fast"), ("KREA2_ATTENTION", "flash5")):
        done = run_cli("generate", "--demo", "--prompt", "x", env={**base, name: value})
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith(f"error: {name}")  # (torchao may log import noise)


def test_cli_prints_absolute_paths_and_no_library_noise(tmp_path, demo_sources):
    """Relative --out and data folder: every printed path is absolute (one was relative), and stderr holds none of
    torchao's CUDA-extension failures, torch deprecation warnings or progress bars."""
    env = {**os.environ, "KREA2_DATA_DIR": "data", "KREA2_DEMO_CHECKPOINTS": str(Path(demo_sources["turbo"]).parent),
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    args = ["generate", "--demo", "--prompt", "a fox", "--steps", "1", "--width", "256", "--height", "256"]
    done = subprocess.run([sys.executable, "-m", "studio", *args, "--out", "out/fox.png"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    line = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(line["paths"]) == 2 and all(Path(p).is_absolute() and Path(p).exists() for p in line["paths"])
    assert line["path"] == str(tmp_path / "out" / "fox.png")
    for noise in ("torchao", "_C_", "deprecated", "%|", "it/s]"):
        assert noise not in done.stderr, done.stderr
