import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from storage import HistoryStore
from storage.pnginfo import read_parameters
from studio import cli

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


def parsed(*args: str):
    return cli.build_parser().parse_args(["generate", *args])


def test_cli_text_to_image_takes_the_default_size_side_by_side():
    """The default size fills only the sides not given; with an image, the image's size rules instead."""
    demo = cli.request_of(parsed("--prompt", "x"), (256, 256))
    assert (demo.width, demo.height) == (256, 256)
    wide = cli.request_of(parsed("--prompt", "x", "--width", "512"), (256, 256))
    assert (wide.width, wide.height) == (512, 256)
    real = cli.request_of(parsed("--prompt", "x"), (1024, 1024))
    assert (real.width, real.height) == (1024, 1024)


def test_cli_bad_input_is_exit_2_and_one_line(capsys):
    """In-process: the parser and the request's validation, before anything loads."""
    for args in (["--prompt", "  "], ["--prompt", "x", "--steps", "0"], ["--prompt", "x", "--width", "1000"]):
        assert cli.run(parsed(*args), environ={}) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    for args in (["--prompt", "x", "--checkpoint", "sdxl"], ["--steps", "4"]):  # refused by the parser itself
        with pytest.raises(SystemExit) as caught:
            parsed(*args)
        err = capsys.readouterr().err
        assert caught.value.code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: "), err


def test_cli_out_is_checked_before_the_run_and_a_failed_write_says_where_the_image_is(tmp_path, capsys, monkeypatch,
                                                                                      demo_sources):  # fmt: skip
    """`--out` naming a folder stopped with IsADirectoryError's traceback after the run; a hostile pass then got a
    PNG inside `c.jpg`, an image made and thrown away (`--no-history` alone) and an unwritable path found only after
    the run. Each is bad input now, found before anything loads. A write that fails after the run is one line that
    says the generation is kept."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    for args, starts in ((["--out", str(tmp_path)], "error: --out: is a folder"),
                         (["--out", str(tmp_path / "c.jpg")], "error: --out: must end in .png"),
                         (["--no-history"], "error: --out: is needed with --no-history"),
                         (["--out", str(blocker / "fox.png")], "error: --out: cannot be written there")):  # fmt: skip
        assert cli.run(parsed("--prompt", "x", *args), environ={}) == 2
        err = capsys.readouterr().err
        assert err.startswith(starts) and len(err.strip().splitlines()) == 1, err
    env = {"KREA2_DATA_DIR": str(tmp_path / "data"), "KREA2_DEMO_CHECKPOINTS": str(Path(demo_sources["turbo"]).parent)}
    args = ("--demo", "--prompt", "a fox", "--steps", "1", "--width", "256", "--height", "256")
    import storage.files

    real = storage.files.atomic_file

    def disk_full(path, suffix=""):  # full for --out alone: the history's copy is written
        if path == tmp_path / "fox.png":
            raise OSError(28, "No space left on device")
        return real(path, suffix)

    with monkeypatch.context() as patched:
        patched.setattr(storage.files, "atomic_file", disk_full)
        assert cli.run(parsed(*args, "--out", str(tmp_path / "fox.png")), environ=env) == 1
    err = capsys.readouterr().err
    assert err == f"error: --out {tmp_path / 'fox.png'} could not be written (No space left on device). The image is " \
                  "in the history as generation 1.\n", err  # fmt: skip
    assert not (tmp_path / "fox.png").exists()


def test_cli_out_takes_every_image_of_a_batch(tmp_path, capsys, demo_sources):
    """With --no-history, --out was the only copy and held the first image alone: the second was made and lost."""
    env = {"KREA2_DEMO_CHECKPOINTS": str(Path(demo_sources["turbo"]).parent)}
    args = ("--demo", "--prompt", "a fox", "--steps", "1", "--width", "256", "--height", "256", "--seed", "4")
    assert cli.run(parsed(*args, "--num-images", "2", "--no-history", "--out", str(tmp_path / "n.png")), env) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["paths"] == line["out_paths"] == [str(tmp_path / "n.png"), str(tmp_path / "n-2.png")]
    assert line["seeds"] == [4, 5] and "Seed: 5" in read_parameters(tmp_path / "n-2.png")["parameters"]
    # A second batch to the same name would write over n-2.png, which --out did not name: refused before the run
    # (n.png itself is written over, as --out always did).
    assert cli.run(parsed(*args, "--num-images", "2", "--no-history", "--out", str(tmp_path / "n.png")), env) == 2
    assert capsys.readouterr().err.startswith("error: --out: would write the batch's other images over n-2.png")
    # Bad input found first, so nothing is made for it: not even --out's folder (review).
    assert cli.run(parsed(*args, "--steps", "9999", "--out", str(tmp_path / "new" / "deep" / "a.png")), env) == 2
    assert not (tmp_path / "new").exists()


def test_cli_bad_engine_setting_is_exit_2_and_one_line(capsys):
    for name, value in (("KREA2_STEP_CACHE", "fast"), ("KREA2_ATTENTION", "flash5"), ("KREA2_PLACEMENT", "tpu")):
        assert cli.run(parsed("--demo", "--prompt", "x"), environ={name: value}) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith(f"error: {name} must "), err


def test_cli_process_refuses_bad_input_with_exit_2_and_one_line(tmp_path):
    """One real process: `python -m studio` turns a refusal into exit status 2 and one line on stderr."""
    done = run_cli("generate", "--prompt", "  ", env={**os.environ, "KREA2_DATA_DIR": str(tmp_path / "data")})
    assert done.returncode == 2 and done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1


def test_cli_prints_absolute_paths_and_no_library_noise(tmp_path, demo_sources):
    """Relative --out and data folder: every printed path is absolute (one was relative), and stderr holds none of
    torchao's CUDA-extension failures, torch deprecation warnings or progress bars. Without --width and --height the
    demo checkpoints draw at their own 256², as the page opens (1024² took minutes on a CPU and drew nothing)."""
    env = {**os.environ, "KREA2_DATA_DIR": "data", "KREA2_DEMO_CHECKPOINTS": str(Path(demo_sources["turbo"]).parent),
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    args = ["generate", "--demo", "--prompt", "a fox", "--steps", "1"]
    done = subprocess.run([sys.executable, "-m", "studio", *args, "--out", "out/fox.png"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    line = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(line["paths"]) == 2 and all(Path(p).is_absolute() and Path(p).exists() for p in line["paths"])
    assert line["path"] == str(tmp_path / "out" / "fox.png")
    assert Image.open(line["path"]).size == (256, 256)
    for noise in ("torchao", "_C_", "deprecated", "%|", "it/s]"):
        assert noise not in done.stderr, done.stderr


def test_cli_img2img_records_its_source_and_says_so_in_the_png(tmp_path, demo_sources):
    from PIL import Image

    init = tmp_path / "init.jpg"
    Image.new("RGB", (300, 260), (230, 200, 20)).save(init, quality=95)
    env = {
        **os.environ,
        "KREA2_DATA_DIR": str(tmp_path / "data"),
        "KREA2_DEMO_CHECKPOINTS": str(Path(demo_sources["turbo"]).parent),
    }
    args = ["generate", "--demo", "--prompt", "a red circle", "--seed", "3", "--image", str(init), "--strength", "0.5"]
    done = run_cli(*args, env=env)
    assert done.returncode == 0, done.stderr
    line = json.loads(done.stdout.strip().splitlines()[-1])
    assert line["notes"] == ["resized from 300×260 to 304×256"]
    store = HistoryStore(tmp_path / "data").open()
    row = store.get(line["generation_id"])
    assert (row.mode, row.strength, row.width, row.height) == ("img2img", 0.5, 304, 256)
    assert store.load_source(row.source_sha256).size == (304, 256)  # stored once, under its content address
    text = read_parameters(store.absolute(row.images[0].path))["parameters"]
    assert "Denoising strength: 0.5" in text and f"Init image hash: {row.source_sha256[:10]}" in text


def test_cli_bad_image_input_is_exit_2_and_one_line(tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    good = tmp_path / "good.png"
    from PIL import Image

    Image.new("RGB", (256, 256)).save(good)
    cases = (
        ["--image", str(broken)],
        ["--image", str(tmp_path / "missing.png")],
        ["--image", str(good), "--strength", "abc"],
        ["--image", str(good), "--strength", "0"],
        ["--strength", "0.5"],
        ["--image", str(good), "--outpaint", "1,2"],
        ["--image", str(good), "--outpaint", "²,0,0,0"],  # passed str.isdigit(), then failed in int()
        ["--image", str(good), "--feather", "²"],
        ["--image", str(good), "--outpaint", "9" * 5000 + ",0,0,0"],  # past int()'s 4,300-digit limit
        ["--image", str(good), "--mask", str(good)],  # an all-black mask: nothing to repaint
        ["--image", str(good), "--width", "512"],  # one side alone was dropped without a word (review)
    )
    for extra in cases:
        assert cli.run(parsed("--prompt", "x", *extra), environ={}) == 2, extra
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), (extra, err)
    assert "height: must be given with width when there is an image" in err
