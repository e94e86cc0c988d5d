from pathlib import Path

import pytest

from service.__main__ import main
from service.errors import SettingsError
from service.server import _startup_line
from service.settings import (
    TABLE_END,
    TABLE_START,
    ServeSettings,
    WorkerSettings,
    load_settings,
    settings_table,
)

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_follow_the_contract():
    settings = load_settings(ServeSettings, {"MODEL_URI": "s3://b/models/m/1/"})
    assert settings.port == 8080
    assert settings.workers >= 1
    assert settings.api_key is None


def test_batching_leaves_the_request_threads_as_they_are():
    def settings(**env: str) -> ServeSettings:
        return load_settings(ServeSettings, {"MODEL_URI": "s3://b/models/m/1/", **env})

    assert settings().threads == 1
    batching = settings(BATCH_MAX_ROWS="64")
    assert batching.threads == 1
    assert settings(BATCH_MAX_ROWS="64", THREADS="2").threads == 2
    assert "x 1 threads, adaptive batching up to 64 rows (a queued request waits at most 2 ms)" in (
        _startup_line(batching, 2, "model m version 1")
    )
    assert settings().batch_max_rows == 64, "batching is on by default"
    assert "batching" not in _startup_line(settings(BATCH_MAX_ROWS="0"), 2, "model m version 1")


def test_missing_model_uri_names_the_variable():
    with pytest.raises(SettingsError, match="MODEL_URI is required"):
        load_settings(ServeSettings, {})


@pytest.mark.parametrize(
    ("name", "value", "accepted"),
    [
        ("PORT", "http", "TCP port"),
        ("PORT", "70000", "TCP port"),
        ("WORKERS", "0", "processes"),
        ("MAX_REQUEST_MB", "-1", "MB"),
        ("LOG_LEVEL", "LOUD", "DEBUG, INFO"),
    ],
)
def test_invalid_serve_values_say_what_is_accepted(name, value, accepted):
    with pytest.raises(SettingsError) as caught:
        load_settings(ServeSettings, {"MODEL_URI": "/m", name: value})
    assert name in caught.value.message
    assert accepted in caught.value.message


def test_worker_needs_queue_and_bucket():
    with pytest.raises(SettingsError) as caught:
        load_settings(WorkerSettings, {"MODEL_URI": "/m"})
    assert "JOB_QUEUE_URL is required" in caught.value.message
    assert "OUTPUT_BUCKET is required" in caught.value.message


def test_worker_output_format_is_checked():
    env = {"MODEL_URI": "/m", "JOB_QUEUE_URL": "q", "OUTPUT_BUCKET": "b", "OUTPUT_FORMAT": "xml"}
    with pytest.raises(SettingsError, match="OUTPUT_FORMAT"):
        load_settings(WorkerSettings, env)


def test_worker_reads_booleans_and_numbers():
    env = {
        "MODEL_URI": "/m",
        "JOB_QUEUE_URL": "q",
        "OUTPUT_BUCKET": "b",
        "JOIN_INPUT": "true",
        "IDLE_SECONDS": "2.5",
    }
    settings = load_settings(WorkerSettings, env)
    assert settings.join_input is True
    assert settings.idle_seconds == 2.5


def readme_settings_block(text: str) -> str:
    return text.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0].strip("\n")


def test_the_readme_settings_table_is_the_generated_one_whole():
    """Every row, every column: a description, default or variable changed in
    service/settings.py and not regenerated into the README fails here."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme.count(TABLE_START) == 1 and readme.count(TABLE_END) == 1
    assert readme_settings_block(readme) == settings_table(), (
        "regenerate it: python -m service settings --readme README.md"
    )


def test_the_table_has_a_row_for_every_setting_of_both_commands():
    rows = settings_table().splitlines()[2:]
    variables = [row.split("|")[1].strip().strip("`") for row in rows]
    names = {*ServeSettings.model_fields, *WorkerSettings.model_fields}
    assert sorted(variables) == sorted(name.upper() for name in names)


def test_settings_readme_rewrites_a_drifted_table_and_keeps_the_rest(tmp_path, capsys):
    readme = tmp_path / "README.md"
    drifted = settings_table().replace("`8080`", "`9090`")
    readme.write_text(f"# Title\n\n{TABLE_START}\n{drifted}\n{TABLE_END}\n\nafter\n")
    assert main(["settings", "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert readme_settings_block(text) == settings_table()
    assert text.startswith("# Title\n\n") and text.endswith(f"{TABLE_END}\n\nafter\n")
    assert main(["settings"]) == 0
    assert capsys.readouterr().out == settings_table() + "\n"


def test_settings_readme_without_the_markers_fails_and_writes_nothing(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# no table here\n")
    assert main(["settings", "--readme", str(readme)]) == 2
    assert "no <!-- generated" in capsys.readouterr().err
    assert readme.read_text() == "# no table here\n"


def test_sagemaker_variables_set_ours_and_win(monkeypatch, tmp_path):
    """The inference toolkit's names (sagemaker_inference/parameters.py): SageMaker sets
    them on the container, so they win over ours."""
    env = {
        "MODEL_URI": "/m",
        "PORT": "9000",
        "SAGEMAKER_BIND_TO_PORT": "9123",
        "SAGEMAKER_MODEL_SERVER_WORKERS": "3",
        "SAGEMAKER_MAX_PAYLOAD_IN_MB": "20",
        "SAGEMAKER_MODEL_SERVER_TIMEOUT": "30",
    }
    settings = load_settings(ServeSettings, env)
    assert (settings.port, settings.workers, settings.max_request_mb) == (9123, 3, 20.0)
    assert settings.timeout_seconds == 30.0
    env["SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS"] = "45"
    assert load_settings(ServeSettings, env).timeout_seconds == 45.0


def test_the_default_answer_type_is_a_type_the_server_writes():
    env = {"MODEL_URI": "/m"}
    assert load_settings(ServeSettings, env).default_accept == "application/json"
    env["DEFAULT_ACCEPT"] = "application/jsonlines"
    env["SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT"] = "Text/CSV; charset=utf-8"
    assert load_settings(ServeSettings, env).default_accept == "text/csv"
    env["SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT"] = "image/png"
    with pytest.raises(SettingsError, match="'image/png' is not a type the server writes"):
        load_settings(ServeSettings, env)


def test_without_model_uri_serve_uses_the_model_sagemaker_unpacked(tmp_path):
    """<SAGEMAKER_BASE_DIR or /opt/ml>/model, as sagemaker_inference/environment.py says."""
    base = {"SAGEMAKER_BASE_DIR": str(tmp_path)}
    with pytest.raises(SettingsError, match="MODEL_URI is required"):
        load_settings(ServeSettings, base)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "manifest.json").write_text("{}")
    assert load_settings(ServeSettings, base).model_uri == str(tmp_path / "model")
    assert load_settings(ServeSettings, {**base, "MODEL_URI": "/m"}).model_uri == "/m"
