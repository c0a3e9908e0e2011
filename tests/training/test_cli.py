"""``msir-train`` refuses in one line with the exit code of the problem's class (msir_core.exit_codes.ExitCode)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from msir_core.exit_codes import ExitCode
from training.cli import app

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "cnn" / "cnn5_cifar10.yaml"


def refusal(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, args, env=env)
    return result.exit_code, result.output


def test_missing_dataset_is_one_line_with_the_data_exit_code(tmp_path: Path) -> None:
    code, output = refusal(["--config", str(CONFIG), "--data-root", str(tmp_path / "nowhere")])
    assert code == ExitCode.DATA, output
    assert output.strip().count("\n") == 0 and output.startswith("msir-train: ") and "nowhere" in output
    assert "Traceback" not in output


def test_bad_config_is_one_line_with_the_usage_exit_code(tmp_path: Path) -> None:
    code, output = refusal(["--config", str(tmp_path / "missing.yaml")])
    assert code == ExitCode.USAGE, output
    assert output.startswith("msir-train: ") and "missing.yaml" in output and "Traceback" not in output


def test_debug_log_level_adds_the_traceback(tmp_path: Path) -> None:
    code, output = refusal(
        ["--config", str(CONFIG), "--data-root", str(tmp_path / "nowhere")], env={"MSIR_LOG_LEVEL": "debug"}
    )
    assert code == ExitCode.DATA and "Traceback" in output, output
