import pytest

from service.errors import SettingsError
from service.settings import ServeSettings, WorkerSettings, load_settings, settings_table


def test_defaults_follow_the_contract():
    settings = load_settings(ServeSettings, {"MODEL_URI": "s3://b/models/m/1/"})
    assert settings.port == 8080
    assert settings.workers >= 1
    assert settings.api_key is None


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


def test_readme_lists_every_setting():
    readme = (__import__("pathlib").Path(__file__).parents[2] / "README.md").read_text()
    for line in settings_table().splitlines()[2:]:
        variable = line.split("|")[1].strip()
        assert variable in readme, f"{variable} is not documented in the README"


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


def test_without_model_uri_serve_uses_the_model_sagemaker_unpacked(tmp_path):
    """<SAGEMAKER_BASE_DIR or /opt/ml>/model, as sagemaker_inference/environment.py says."""
    base = {"SAGEMAKER_BASE_DIR": str(tmp_path)}
    with pytest.raises(SettingsError, match="MODEL_URI is required"):
        load_settings(ServeSettings, base)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "manifest.json").write_text("{}")
    assert load_settings(ServeSettings, base).model_uri == str(tmp_path / "model")
    assert load_settings(ServeSettings, {**base, "MODEL_URI": "/m"}).model_uri == "/m"
