"""The scheduled-campaign flow and `matloop serve` / `matloop ui` argument handling
(no server is started here; tests/flows/test_server_e2e.py runs them for real)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from matloop.cli import app
from matloop.flows.deploy import FLOW_NAME, _campaign_label, load_campaign, scheduled_campaign

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deployments" / "campaigns" / "scheduled-na-cl.yaml"


def test_flow_takes_a_path_not_a_configuration():
    assert scheduled_campaign.name == FLOW_NAME == "matloop-scheduled"
    assert set(scheduled_campaign.parameters.properties) == {
        "config_path", "rounds", "store", "output"
    }
    assert _campaign_label(str(CONFIG)) == "scheduled-na-cl"
    assert _campaign_label("/no/such/file.yaml") == "file"


def test_load_campaign_overrides(tmp_path):
    config = load_campaign(CONFIG, store=f"monty://{tmp_path}/s", output=str(tmp_path))
    assert config.store == f"monty://{tmp_path}/s" and config.output == str(tmp_path)
    assert load_campaign(CONFIG).store.startswith("${MATLOOP_STORE_URI")


def test_prefect_yaml_deploys_the_flow_with_limits():
    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    for deployment in spec["deployments"]:
        assert deployment["entrypoint"] == "matloop.flows.deploy:scheduled_campaign"
        assert deployment["concurrency_limit"]["limit"] == 1
        assert deployment["work_pool"]["name"] == "matloop"
        assert (ROOT / deployment["parameters"]["config_path"]).is_file()
        assert "password" not in str(deployment["parameters"]).lower()
    queues = {d["work_pool"]["work_queue_name"] for d in spec["deployments"]}
    assert queues == {"cpu", "gpu"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "exactly one of --cron or --interval"),
        (["--cron", "0 * * * *", "--interval", "60"], "exactly one of"),
        (["--cron", "61 * * *"], "not a valid cron expression"),
        (["--interval", "0"], "--interval must be positive"),
        (["--interval", "60", "--rounds", "0"], "--rounds must be at least 1"),
        (["--interval", "60", "--store", "mongodb://u:pw@h/db"], "has a password in it"),
    ],
)
def test_serve_rejects_bad_arguments(args, message):
    result = CliRunner().invoke(app, ["serve", str(CONFIG), *args])
    assert result.exit_code == 2
    assert message in result.output


def test_ui_and_serve_are_commands():
    result = CliRunner().invoke(app, ["--help"])
    assert "serve" in result.output and "ui" in result.output
