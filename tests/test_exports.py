"""OpenLineage run events and W3C PROV-JSON, checked against their published schemas.

The OpenLineage core and facet schemas are vendored in tests/schemas (see its README); the
PROV-JSON schema ships with the ``prov`` package. Formats (uuid, uri, date-time) are checked,
and each validator is shown to reject a broken document, so the checks can fail.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
from conftest import manifest_text, photo_like
from referencing import Registry, Resource

from pipelines.codec import encode_image
from pipelines.exports import FACET_SCHEMAS, openlineage_run_id, row_prov
from pipelines.manifest_loader import load_manifest

SCHEMAS = Path(__file__).parent / "schemas"
FORMATS = jsonschema.Draft202012Validator.FORMAT_CHECKER


@pytest.fixture(scope="module")
def runs(ray_local, tmp_path_factory) -> dict[str, Path]:
    """A committed run and a failed one (every item quarantined), each with its exports."""
    from pipelines.run import run_manifest

    work = tmp_path_factory.mktemp("exports")
    images = work / "images"
    images.mkdir()
    for i in range(2):
        (images / f"img_{i}.png").write_bytes(encode_image(photo_like(40, 48, seed=i), "png"))
    (images / "broken.png").write_bytes(b"not a picture")
    found = {}
    for name, rate in (("ok", "0.5"), ("failed", "0.0")):
        compute = f"compute: {{actors: 1, batch_size: 4, max_error_rate: {rate}}}"
        path = work / f"{name}.yaml"
        path.write_text(manifest_text(images, work / name, compute=compute))
        summary = run_manifest(load_manifest(path))
        assert summary.status == ("committed" if name == "ok" else "failed"), summary.message
        found[name] = work / name
    return found


def version_folder(dataset: Path) -> Path:
    marker = json.loads((dataset / "_COMMITTED").read_text())
    return dataset / marker["run_record"].rsplit("/", 1)[0]


def staging_folder(dataset: Path) -> Path:
    (folder,) = (dataset / "_staging").iterdir()
    return folder


def openlineage_validator(definition: str = "RunEvent") -> jsonschema.Validator:
    resources_ = []
    for path in SCHEMAS.glob("*.json"):
        schema = json.loads(path.read_text())
        resources_.append((schema["$id"], Resource.from_contents(schema)))
    registry = Registry().with_resources(resources_)
    core = json.loads((SCHEMAS / "openlineage-2-0-2.json").read_text())
    schema = {"$ref": f"{core['$id']}#/$defs/{definition}"}
    return jsonschema.Draft202012Validator(schema, registry=registry, format_checker=FORMATS)


def facet_validator(url: str, registry_from: jsonschema.Validator) -> jsonschema.Validator:
    return jsonschema.Draft202012Validator(
        {"$ref": url}, registry=registry_from._registry, format_checker=FORMATS
    )


def prov_validator() -> jsonschema.Validator:
    text = resources.files("prov").joinpath("tests/schemas/prov-json.schema.json").read_text()
    schema = json.loads(text)
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def test_format_checks_are_live():
    # jsonschema skips a format whose checker library is missing: these must be checked
    assert {"uuid", "uri", "date-time"} <= set(FORMATS.checkers)


def test_openlineage_events_of_a_committed_and_a_failed_run_validate(runs):
    validator = openlineage_validator()
    record = json.loads((runs["ok"] / "run.json").read_text())
    lines = (version_folder(runs["ok"]) / "openlineage.jsonl").read_text().splitlines()
    start, end = (json.loads(line) for line in lines)
    for event in (start, end):
        validator.validate(event)
    assert (start["eventType"], end["eventType"]) == ("START", "COMPLETE")
    assert start["run"]["runId"] == end["run"]["runId"] == openlineage_run_id(record["run_id"])
    assert end["outputs"][0]["name"] == str(runs["ok"]) and end["outputs"][0]["namespace"] == "file"
    assert end["outputs"][0]["facets"]["version"]["datasetVersion"] == "1"
    assert end["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"] == 4
    assert end["run"]["facets"]["synthfill"]["items_quarantined"] == 1
    # every standard facet used validates against its own published schema
    facets = {
        **end["run"]["facets"],
        **end["job"]["facets"],
        **end["outputs"][0]["facets"],
        **end["outputs"][0]["outputFacets"],
    }
    for name, url in FACET_SCHEMAS.items():
        if name in facets:
            facet_validator(url, validator).validate(facets[name])
    failed = (staging_folder(runs["failed"]) / "openlineage.jsonl").read_text().splitlines()
    fail = json.loads(failed[-1])
    validator.validate(fail)
    assert (
        fail["eventType"] == "FAIL"
        and "quarantined" in fail["run"]["facets"]["errorMessage"]["message"]
    )
    facet_validator(FACET_SCHEMAS["errorMessage"], validator).validate(
        fail["run"]["facets"]["errorMessage"]
    )


def test_the_openlineage_check_rejects_a_broken_event(runs):
    validator = openlineage_validator()
    line = (version_folder(runs["ok"]) / "openlineage.jsonl").read_text().splitlines()[0]
    event = json.loads(line)
    event["run"]["runId"] = "20261122T020000Z-abcdef12"  # our run id: not a UUID
    assert not validator.is_valid(event)
    event = json.loads(line)
    del event["producer"]
    assert not validator.is_valid(event)


def test_prov_documents_validate_and_read_back_with_the_prov_package(runs):
    from prov.model import ProvDocument

    validator = prov_validator()
    for path in (
        version_folder(runs["ok"]) / "prov.json",
        staging_folder(runs["failed"]) / "prov.json",
    ):
        document = json.loads(path.read_text())
        validator.validate(document)
        parsed = ProvDocument.deserialize(content=path.read_text(), format="json")
        kinds = {type(r).__name__ for r in parsed.get_records()}
        assert {"ProvEntity", "ProvActivity", "ProvAgent", "ProvUsage"} <= kinds
    committed = ProvDocument.deserialize(
        content=(version_folder(runs["ok"]) / "prov.json").read_text(), format="json"
    )
    kinds = {type(r).__name__ for r in committed.get_records()}
    assert {"ProvGeneration", "ProvDerivation", "ProvAttribution"} <= kinds
    broken = json.loads((version_folder(runs["ok"]) / "prov.json").read_text())
    broken["activity"] = {"ds:run": {"prov:startTime": {"$": 5}}}
    assert not validator.is_valid(broken)


def test_one_rows_prov_document_validates(runs):
    import pyarrow.parquet as pq

    record = json.loads((runs["ok"] / "run.json").read_text())
    row = pq.read_table(runs["ok"] / "index.parquet").to_pylist()[0]
    document = row_prov(row, record)
    prov_validator().validate(document)
    assert any(k.startswith("ds:output-") for k in document["entity"])
    assert document["wasDerivedFrom"]


def test_prov_reads_back_typed_and_with_an_iri_namespace(runs):
    """Collections and the software agent are typed qualified names, run times survive, and a
    dataset folder with a space and non-ASCII letters still makes a valid namespace IRI."""
    from prov.identifier import QualifiedName
    from prov.model import PROV_TYPE, ProvDocument

    from pipelines.exports import prov_document

    record = json.loads((runs["ok"] / "run.json").read_text())
    record["manifest"]["resolved"]["output"]["uri"] = "/data/shelf sets/Größe"
    text = prov_document(record).decode()
    prov_validator().validate(json.loads(text))
    parsed = ProvDocument.deserialize(content=text, format="json")
    (namespace,) = [n for n in parsed.namespaces if n.prefix == "ds"]
    assert namespace.uri == "file:///data/shelf%20sets/Gr%C3%B6%C3%9Fe/#"
    types = {
        str(r.identifier.localpart): next(iter(r.get_attribute(PROV_TYPE)), None)
        for r in parsed.get_records()
        if r.is_element()
    }
    assert isinstance(types["source"], QualifiedName) and types["source"].localpart == "Collection"
    assert isinstance(types["synthfill"], QualifiedName)
    (run,) = [r for r in parsed.get_records() if type(r).__name__ == "ProvActivity"]
    assert run.get_startTime() is not None and run.get_endTime() >= run.get_startTime()
