"""runtime.configure: the CPU fusion flag is added once, user flags and log levels are kept."""

from alignmix_jax import runtime


def test_configure_adds_the_cpu_fusion_flag_once_and_keeps_user_settings(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    runtime.configure()
    runtime.configure()
    assert runtime.os.environ["XLA_FLAGS"] == f"--xla_dump_to=/tmp/x {runtime.CPU_FUSION_FLAG}"
    assert runtime.os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"


def test_configure_respects_a_fusion_type_the_user_chose(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=dot")
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    runtime.configure()
    assert runtime.os.environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=dot"
    assert runtime.os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"
