"""cli.configure_runtime: the CPU fusion flag is added once, user flags and log levels are kept;
cli.run ends a command stopped at once by Ctrl-C with one line; --help shows the commands' examples
as written."""

import importlib
import subprocess
import sys

import pytest

from alignmix_jax import cli


def test_configure_adds_the_cpu_fusion_flag_once_and_keeps_user_settings(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    cli.configure_runtime()
    cli.configure_runtime()
    assert cli.os.environ["XLA_FLAGS"] == f"--xla_dump_to=/tmp/x {cli.CPU_FUSION_FLAG}"
    assert cli.os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"


def test_configure_respects_a_fusion_type_the_user_chose(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=dot")
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    cli.configure_runtime()
    assert cli.os.environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=dot"
    assert cli.os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"


def test_ctrl_c_that_stops_a_command_at_once_prints_one_line():
    code = (
        "import os, signal\n"
        "from alignmix_jax import cli\n"
        "cli.run(lambda overrides: os.kill(os.getpid(), signal.SIGINT))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 130
    assert result.stdout == ""
    assert result.stderr.startswith("interrupted (SIGINT): stopped at once")
    assert len(result.stderr.splitlines()) == 1, result.stderr


@pytest.mark.parametrize("command", ["main", "sweep", "evaluate", "visualize"])
def test_help_shows_example_commands_as_written(command):
    """absl's --help prints the module docstring: a backslash that ends a line must stay there
    (a plain string would join the lines, with a run of spaces, into one over 100 characters)."""
    doc = importlib.import_module(f"alignmix_jax.{command}").__doc__
    assert max(len(line) for line in doc.splitlines()) <= 100, doc
