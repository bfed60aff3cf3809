"""cli.configure_runtime: the CPU fusion flag is added once, user flags and log levels are kept;
cli.run ends a command stopped at once by Ctrl-C with one line."""

import subprocess
import sys

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
