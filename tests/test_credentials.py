"""Secrets in storage_options only by ${NAME} reference, resolved per process, never recorded."""

from pathlib import Path

import pytest

from pipelines.credentials import literal_secrets, resolve
from pipelines.errors import ManifestError, RunError
from pipelines.manifest_loader import load_manifest
from pipelines.provenance import manifest_record
from pipelines.sources import filesystem

MANIFEST = """\
name: tiny
seed: 3
source: {{uri: "s3://shelves/in", storage_options: {source_options}}}
masks: [{{kind: boxes, count: [1, 2]}}]
inpainter: {{kind: telea, radius: 3}}
output: {{uri: "s3://synth/out", storage_options: {output_options}}}
"""


def write(tmp_path: Path, source_options: str = "{}", output_options: str = "{}") -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(MANIFEST.format(source_options=source_options, output_options=output_options))
    return path


def test_references_resolve_from_the_given_environment_including_nested_options():
    options = {
        "key": "${KEY_ID}",
        "endpoint_url": "http://${HOST}:8333",
        "client_kwargs": {"aws_session_token": "${TOKEN}"},
        "anon": False,
    }
    env = {"KEY_ID": "AKIA1", "HOST": "127.0.0.1", "TOKEN": "tok"}
    assert resolve(options, env) == {
        "key": "AKIA1",
        "endpoint_url": "http://127.0.0.1:8333",
        "client_kwargs": {"aws_session_token": "tok"},
        "anon": False,
    }
    assert options["key"] == "${KEY_ID}"  # the manifest's own mapping is left as written


def test_an_unset_variable_is_named_and_no_value_leaks():
    with pytest.raises(RunError) as err:
        resolve({"secret": "${SYNTHFILL_TEST_UNSET}", "key": "${SET}"}, {"SET": "visible-value"})
    assert "${SYNTHFILL_TEST_UNSET}" in str(err.value)
    assert "storage_options.secret" in str(err.value)
    assert "visible-value" not in str(err.value)


def test_filesystem_resolves_references_at_open_time(monkeypatch):
    monkeypatch.setenv("SYNTHFILL_TEST_ENDPOINT", "http://127.0.0.1:1")
    fs, path = filesystem(
        "s3://bucket/x", {"endpoint_url": "${SYNTHFILL_TEST_ENDPOINT}", "anon": True}
    )
    assert path == "bucket/x"
    assert fs.endpoint_url == "http://127.0.0.1:1"


@pytest.mark.parametrize(
    "options, expected",
    [
        ({"secret": "hunter2"}, ["so.secret"]),
        (
            {"client_kwargs": {"aws_secret_access_key": "x"}},
            ["so.client_kwargs.aws_secret_access_key"],
        ),
        ({"token": "abc"}, ["so.token"]),
        ({"token": "anon"}, []),  # gcsfs: an authentication method, not a secret
        ({"token": "/etc/gcp/service-account.json"}, []),  # a credentials file's path
        ({"secret": "${S3_SECRET}", "key": "AKIA-not-secret"}, []),
        ({"endpoint_url": "http://minio:9000", "anon": True}, []),
        ({"secret": "hunter2${X}"}, ["so.secret"]),  # only a whole reference hides nothing
        ({"token": {"type": "service_account", "private_key": "-----BEGIN"}}, ["so.token"]),
        (
            {"s3_additional_kwargs": {"SSECustomerKey": "k"}},
            ["so.s3_additional_kwargs.SSECustomerKey"],
        ),
        (
            {"client_kwargs": {"headers": {"Authorization": "Bearer x"}}},
            ["so.client_kwargs.headers.Authorization"],
        ),
        ({"credential": "x"}, ["so.credential"]),  # adlfs
        ({"config_kwargs": {"retries": {"max_attempts": 3}}, "version_aware": True}, []),
    ],
)
def test_literal_secrets_are_found(options, expected):
    assert literal_secrets(options, "so") == expected


def test_manifest_with_a_literal_secret_is_refused_and_says_how_to_fix(tmp_path):
    with pytest.raises(ManifestError) as err:
        load_manifest(write(tmp_path, output_options="{secret: plain-text-secret}"))
    message = str(err.value)
    assert "output.storage_options.secret" in message
    assert "${" in message and "AWS_PROFILE" in message
    assert "plain-text-secret" not in message


def test_a_literal_secret_given_by_set_is_refused_too(tmp_path):
    with pytest.raises(ManifestError):
        load_manifest(write(tmp_path), ["source.storage_options.secret=plain-text-secret"])


def test_the_run_record_keeps_references_and_redacts_everything_else(tmp_path):
    loaded = load_manifest(
        write(
            tmp_path,
            source_options="{key: '${SRC_KEY}', secret: '${SRC_SECRET}', profile: nightly}",
            output_options="{endpoint_url: 'http://minio:9000'}",
        ),
        ["output.storage_options.secret=${OUT_SECRET}"],
    )
    record = manifest_record(loaded)
    resolved = record["resolved"]
    assert resolved["source"]["storage_options"] == {
        "key": "${SRC_KEY}",
        "secret": "${SRC_SECRET}",
        "profile": "<redacted>",
    }
    assert resolved["output"]["storage_options"]["endpoint_url"] == "http://minio:9000"
    assert record["overrides"] == ["output.storage_options.secret=${OUT_SECRET}"]


def test_a_reference_unset_where_workers_run_stops_the_run_instead_of_quarantining(
    ray_local, tmp_path, tiny_manifest, monkeypatch
):
    # Set for the driver only: the session's Ray workers started before it existed, as the
    # nodes of a cluster that lack a variable would. Every read would fail the same way, so
    # the run stops with the cause rather than quarantining every item as read_error.
    from pipelines.run import run_manifest

    monkeypatch.setenv("SF_TEST_DRIVER_ONLY", "1")
    path = tiny_manifest(count=2)
    loaded = load_manifest(path, ["source.storage_options={auto_mkdir: '${SF_TEST_DRIVER_ONLY}'}"])
    with pytest.raises(RunError, match=r"\$\{SF_TEST_DRIVER_ONLY\}") as err:
        run_manifest(loaded)
    assert "quarantined" not in str(err.value)
    assert not (tmp_path / "out" / "_COMMITTED").exists()


@pytest.mark.parametrize(
    "given, recorded",
    [
        (
            "source.storage_options.client_kwargs={headers: {X-Api: abc}, region_name: eu}",
            'source.storage_options.client_kwargs={"headers": "<redacted>", "region_name": "eu"}',
        ),
        (
            "source.storage_options={endpoint_url: 'http://m:9', profile: p}",
            'source.storage_options={"endpoint_url": "http://m:9", "profile": "<redacted>"}',
        ),
        ("output.storage_options.profile=nightly", "output.storage_options.profile=<redacted>"),
        (
            "output.storage_options.endpoint_url=http://m:9",
            "output.storage_options.endpoint_url=http://m:9",
        ),
    ],
)
def test_overrides_are_recorded_with_nested_values_redacted(given, recorded):
    from pipelines.provenance import redact_override

    assert redact_override(given) == recorded
