"""The package's layering, checked: the pure core imports without Ray, no import circles.

``lint-imports`` (import-linter, contracts in pyproject.toml) also runs in ``.ci/run``;
running it here too makes a broken contract fail the suite with the linter's report.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import importlinter.cli

from tests.conftest import ROOT

# Modules that must work on a machine without Ray (STYLE.md: pure core, thin shells).
RAY_FREE = [
    "ray_stream",
    "ray_stream.cost",
    "ray_stream.cost_cli",
    "ray_stream.core.sequencer",
    "ray_stream.core.metadata_api",
    "ray_stream.core.segment",
    "ray_stream.kafka.handlers",
    "ray_stream.storage.url",
    "ray_stream.agent.log_service",
    "ray_stream.metadata.service",
    "ray_stream.server.kafka_server",
]


def test_layering_contracts_hold(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the contracts are in pyproject.toml
    status = importlinter.cli.lint_imports(no_cache=True, no_logo=True)
    report = capsys.readouterr().out
    assert status == importlinter.cli.EXIT_STATUS_SUCCESS, report[-4000:]
    assert "0 broken" in report


def test_layering_pure_modules_import_where_ray_is_not_installed():
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys

        class NoRay(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "ray" or name.startswith("ray."):
                    raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)")
                return None

        sys.meta_path.insert(0, NoRay())
        for module in {RAY_FREE!r}:
            importlib.import_module(module)
        leaked = sorted(m for m in sys.modules if m == "ray" or m.startswith("ray."))
        assert not leaked, leaked
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"
