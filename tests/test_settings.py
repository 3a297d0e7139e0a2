"""Every setting is defined once (studio/settings.py), documented by the README table generated from it, read with
one rule (flag > environment variable > default) and parsed strictly; nothing else reads the environment."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import app
from studio import cli
from studio.settings import (
    FOLDER,
    README_END,
    REPO_OR_FOLDER,
    SOURCE,
    SWITCH,
    TEXT,
    SettingError,
    Settings,
    load_settings,
    markdown,
    table,
)

ROOT = Path(__file__).resolve().parents[1]


def generate_args(*extra: str):
    return cli.build_parser().parse_args(["generate", "--prompt", "a fox", *extra])


def test_readme_settings_table_is_the_generated_one():
    """The README holds `python -m studio.settings --markdown` verbatim: a setting added, renamed or re-described
    without regenerating it fails here."""
    readme = (ROOT / "README.md").read_text()
    assert markdown() in readme, "README settings table is stale: run `python -m studio.settings --markdown`"
    assert readme.count(README_END) == 1, "the README's settings section ends twice (a merge left a copy behind)"


def test_every_setting_is_described_once():
    described = table()
    assert [name for name, _ in described] == list(Settings.__dataclass_fields__)  # no field outside the table
    envs = [spec.env for _, spec in described]
    flags = [spec.flag for _, spec in described if spec.flag]
    assert len(set(envs)) == len(envs) and len(set(flags)) == len(flags)
    for _name, spec in described:
        assert spec.help and spec.default_text and spec.kind.values
        assert f"`{spec.env}`" in markdown()


ANY_TEXT = (TEXT, FOLDER, SOURCE, REPO_OR_FOLDER)  # any text names one; using it says what is wrong


@pytest.mark.parametrize("name", [name for name, spec in table() if spec.kind not in ANY_TEXT])
def test_a_value_a_setting_cannot_take_is_an_error_naming_its_variable(name):
    spec = dict(table())[name]
    with pytest.raises(SettingError) as caught:
        load_settings({spec.env: "ture?"})
    assert str(caught.value).startswith(f"{spec.env} must ")


def test_compile_typo_is_an_error_not_off():
    """KREA2_COMPILE=ture used to read as "off" without a word."""
    with pytest.raises(SettingError) as caught:
        load_settings({"KREA2_COMPILE": "ture"})
    assert str(caught.value) == "KREA2_COMPILE must be one of 1, true, yes, on, 0, false, no, off, got 'ture'"
    assert load_settings({"KREA2_COMPILE": "TRUE"}).compile is True
    assert load_settings({"KREA2_COMPILE": "off"}).compile is False
    assert load_settings({"KREA2_COMPILE": " "}).compile is None  # empty: unset, on where it pays


def test_compile_typo_stops_the_cli_and_the_app_with_one_line(capsys):
    assert cli.run(generate_args("--demo"), environ={"KREA2_COMPILE": "ture"}) == 2
    assert capsys.readouterr().err == (
        "error: KREA2_COMPILE must be one of 1, true, yes, on, 0, false, no, off, got 'ture'\n"
    )
    with pytest.raises(SettingError, match=r"^KREA2_COMPILE must be one of"):
        app.read_settings([], environ={"KREA2_COMPILE": "ture"})


@pytest.mark.parametrize("read", ["cli", "app"])
def test_placement_flag_then_environment_then_default(read):
    """`python -m krea2 --placement` had a default of its own that overwrote KREA2_PLACEMENT."""

    def placement(flags: list[str], environ: dict[str, str]) -> str:
        if read == "cli":
            return load_settings(environ, generate_args(*flags)).placement
        return app.read_settings(flags, environ).placement

    assert placement([], {}) == "auto"
    assert placement([], {"KREA2_PLACEMENT": "offload"}) == "offload"
    assert placement(["--placement", "gpu"], {"KREA2_PLACEMENT": "offload"}) == "gpu"


def test_flags_win_and_unknown_flag_values_are_refused(capsys):
    settings = app.read_settings(["--port", "8000", "--demo"], {"KREA2_PORT": "9000", "KREA2_DEMO": "0"})
    assert (settings.port, settings.demo) == (8000, True)
    assert app.read_settings([], {"KREA2_PORT": "9000"}).port == 9000
    with pytest.raises(SystemExit) as caught:
        app.read_settings(["--port", "http"], {})
    assert caught.value.code == 2 and "argument --port: must be a whole number, got 'http'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["generate", "--prompt", "x", "--placement", "tpu"])
    assert "argument --placement: must be one of auto, gpu, offload, cpu, got 'tpu'" in capsys.readouterr().err


def test_values_come_typed_and_secrets_are_not_echoed():
    settings = load_settings({
        "KREA2_AUTH": "alice:s3cret:pass", "KREA2_ALLOWED_ORIGINS": "https://a.example/, http://b.example:8080",
        "KREA2_STEP_CACHE": "0.05", "KREA2_DATA_DIR": "~/krea", "SPACE_ID": "someone/studio",
    })  # fmt: skip
    assert settings.auth == ("alice", "s3cret:pass")
    assert settings.allowed_origins == ("https://a.example", "http://b.example:8080")
    assert settings.step_cache == 0.05 and settings.data_dir == Path("~/krea").expanduser()
    assert settings.server_host == "0.0.0.0" and Settings().server_host == "127.0.0.1"
    with pytest.raises(SettingError) as caught:
        load_settings({"KREA2_AUTH": "alice-s3cret"})
    assert str(caught.value) == "KREA2_AUTH must look like user:password"  # the password is not quoted back
    assert SWITCH.parse("Yes") is True


def environment_reads(path: Path) -> list[int]:
    """Lines of `path` that read the process environment (`os.environ` other than assigning to it, `os.getenv`)."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os":
            if node.attr == "getenv":
                lines.append(node.lineno)
            elif node.attr == "environ":
                parent = parents.get(node)
                assigned = isinstance(parent, ast.Subscript) and isinstance(parent.ctx, ast.Store)
                if not assigned:
                    lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            lines += [node.lineno for alias in node.names if alias.name in ("environ", "getenv")]
    return lines


# Where the environment may still be read, and why.
ENVIRONMENT_READERS = {
    "studio/settings.py": "the settings table",
    "krea2/demo.py": "KREA2_DEMO_CHECKPOINTS when no folder is passed: the app passes the setting's folder (the "
    "module is the demo model's, left as it is while the model is retrained)",
}


def test_only_the_settings_table_reads_the_environment():
    files = [ROOT / "app.py", *(p for top in ("krea2", "storage", "studio", "ui") for p in (ROOT / top).rglob("*.py"))]
    readers = {str(p.relative_to(ROOT)): lines for p in files if (lines := environment_reads(p))}
    assert set(readers) == set(ENVIRONMENT_READERS), readers


def test_the_database_url_is_one_the_history_can_use():
    """A hostile pass and its review: an unknown dialect, an async driver or a driver that is not installed printed
    a traceback at the first query; each is one sentence naming the variable, before anything starts."""
    assert load_settings({"KREA2_DATABASE_URL": "sqlite:////tmp/x.db"}).database_url == "sqlite:////tmp/x.db"
    assert load_settings({"KREA2_DATABASE_URL": "postgresql+psycopg://u@h/db"}).database_url
    for url in ("garbage://x", "mysql://u@h/db", "sqlite+aiosqlite:///x.db", "not a url"):
        with pytest.raises(SettingError, match=r"^KREA2_DATABASE_URL must be a SQLite or PostgreSQL SQLAlchemy URL"):
            load_settings({"KREA2_DATABASE_URL": url})
    with pytest.raises(SettingError, match=r"^KREA2_DATABASE_URL names the driver pysqlcipher, which is not installed"):
        load_settings({"KREA2_DATABASE_URL": "sqlite+pysqlcipher:///x.db"})
