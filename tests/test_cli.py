from __future__ import annotations

import json
import time

import pytest

from typer.testing import CliRunner

from matloop.cli import app

runner = CliRunner()


def test_help_is_fast_and_lists_the_commands():
    import subprocess
    import sys

    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "matloop.cli", "--help"], capture_output=True,
                         text=True, check=True)
    assert time.perf_counter() - started < 10
    for command in ("run", "status", "export", "train", "sample"):
        assert command in out.stdout


def test_run_refuses_a_bad_config_before_any_work(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("name: demo\nchemical_space: {elements: [Ca, Qq]}\nbudget: {rounds: 0}\n")
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 2
    assert "chemical_space.elements: unknown element symbol(s): Qq" in result.output
    assert "budget.rounds" in result.output
    assert not (tmp_path / "matloop-store").exists()


@pytest.mark.slow
def test_train_then_sample_writes_cifs(shared_data, tmp_path):
    checkpoint = tmp_path / "cvae.pt"
    result = runner.invoke(app, [
        "train", "crystal_cvae", str(shared_data / "perov_5" / "val.csv.gz"), "-o",
        str(checkpoint), "--property", "dir_gap", "--epochs", "20", "--limit", "100",
    ])
    assert result.exit_code == 0, result.output
    assert checkpoint.is_file()
    out = tmp_path / "cifs"
    result = runner.invoke(app, ["sample", str(checkpoint), "-o", str(out), "-n", "7",
                                 "--condition", "dir_gap=1.5:2.5", "--seed", "3"])
    assert result.exit_code == 0, result.output
    cifs = sorted(out.glob("*.cif"))
    assert len(cifs) == 7
    from pymatgen.core import Structure

    from matloop.generators.torch_common import file_sha256
    from matloop.soundness import unsound_reason

    back = [Structure.from_file(c) for c in cifs]
    assert all(1 <= len(s) <= 5 for s in back)
    assert all(unsound_reason(s) is None for s in back)
    record = json.loads((out / "sample.json").read_text())
    assert record["seed"] == 3 and record["written"] == 7
    assert record["checkpoint_sha256"] == file_sha256(checkpoint)
    assert record["temperature"] == 0.5  # the model's default
    assert record["conditions"] == {"dir_gap": [1.5, 2.5]}
    assert "UserWarning" not in result.output


def test_train_and_sample_name_their_mistakes(tmp_path):
    result = runner.invoke(app, ["train", "gpt", str(tmp_path / "x.csv"), "-o", "m.pt"])
    assert result.exit_code == 2 and "unknown model 'gpt'" in result.output
    result = runner.invoke(app, ["train", "crystal_vae", str(tmp_path / "x.csv"), "-o", "m.pt"])
    assert result.exit_code == 2 and "training data not found" in result.output
    result = runner.invoke(app, ["sample", str(tmp_path / "none.pt"), "-o", str(tmp_path)])
    assert result.exit_code == 2 and "checkpoint not found" in result.output
