"""Which tests a run selects: slow ones only when asked, whatever other -m is given (tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")
SUITE = """
import pytest

def test_quick(): pass

@pytest.mark.slow
def test_slow(): pass

@pytest.mark.browser
def test_browser(): pass

@pytest.mark.browser
@pytest.mark.slow
def test_slow_browser(): pass
"""


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # the installed plugins only slow each run down
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makeini("[pytest]\nmarkers =\n    slow: slow\n    browser: browser\n")
    pytester.makepyfile(test_suite=SUITE)
    return pytester


@pytest.mark.parametrize(
    ("args", "selected"),
    [
        ((), {"test_quick", "test_browser"}),
        (("-m", "browser"), {"test_browser"}),
        (("-m", "slow"), {"test_slow", "test_slow_browser"}),
        (("-m", "browser and slow"), {"test_slow_browser"}),
        (("-m", "not browser", "--slow"), {"test_quick", "test_slow"}),
        (("--slow",), {"test_quick", "test_slow", "test_browser", "test_slow_browser"}),
    ],
)
def test_slow_tests_run_only_when_asked_for(suite, args, selected):
    result = suite.runpytest("-p", "no:cacheprovider", "-v", *args)
    passed = {line.split("::")[1].split()[0] for line in result.outlines if "::" in line and "PASSED" in line}
    assert passed == selected, result.outlines
