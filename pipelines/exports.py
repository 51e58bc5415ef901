"""A run record in the standard lineage formats: OpenLineage run events and W3C PROV-JSON.

Both are written beside the record (``openlineage.jsonl``, ``prov.json``), for a committed
version and for a failed run alike, so lineage tools (Marquez, DataHub, OpenMetadata, PROV
toolkits) can take in how every version was made without knowing synthfill's own record.
Only run-level facts go in: a night may have 100 M rows (``pipeline lineage --prov`` gives one
row's document).
"""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import quote

OPENLINEAGE = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent"
_FACETS = "https://openlineage.io/spec/facets"
FACET_SCHEMAS = {
    "processing_engine": f"{_FACETS}/1-1-1/ProcessingEngineRunFacet.json#/$defs/ProcessingEngineRunFacet",
    "errorMessage": f"{_FACETS}/1-0-1/ErrorMessageRunFacet.json#/$defs/ErrorMessageRunFacet",
    "jobType": f"{_FACETS}/2-0-4/JobTypeJobFacet.json#/$defs/JobTypeJobFacet",
    "version": f"{_FACETS}/1-0-1/DatasetVersionDatasetFacet.json#/$defs/DatasetVersionDatasetFacet",
    "outputStatistics": f"{_FACETS}/1-0-2/OutputStatisticsOutputDatasetFacet.json"
    "#/$defs/OutputStatisticsOutputDatasetFacet",
}
SYNTHFILL_FACET = "https://synthfill.dev/spec/facets/1-0-0/SynthfillRunFacet.json"
# OpenLineage run ids are UUIDs; ours are readable. A fixed namespace makes the mapping stable.
RUN_NAMESPACE = uuid.UUID("6f1d3c2a-5b8e-4f0a-9c1e-2d7b8a9e4f60")
JOB_NAMESPACE = "synthfill"


def run_exports(record: dict[str, Any]) -> dict[str, bytes]:
    """File name -> bytes of every standard export of a run record."""
    return {"openlineage.jsonl": run_events(record), "prov.json": prov_document(record)}


def producer(record: dict[str, Any]) -> str:
    return f"https://synthfill.dev/producer/{record.get('code_version', 'unknown')}"


def openlineage_run_id(run_id: str) -> str:
    return str(uuid.uuid5(RUN_NAMESPACE, run_id))


def dataset_name(uri: str) -> tuple[str, str]:
    """(namespace, name) as OpenLineage's naming spec has them for object stores and files."""
    if "://" in uri and not uri.startswith("file://"):
        scheme, rest = uri.split("://", 1)
        bucket, _, path = rest.partition("/")
        return f"{scheme}://{bucket}", path.rstrip("/") or "/"
    return "file", uri.removeprefix("file://").rstrip("/") or "/"


def run_events(record: dict[str, Any]) -> bytes:
    """JSON lines: the START event and the terminal one (COMPLETE, or FAIL with the reason)."""
    start = _event(record, "START", record["started_at"])
    failed = record.get("status") == "failed"
    end = _event(record, "FAIL" if failed else "COMPLETE", record["finished_at"])
    if failed:
        message = record.get("summary", {}).get("message") or "the run failed"
        end["run"]["facets"]["errorMessage"] = {
            **_facet(record, "errorMessage"),
            "message": message,
            "programmingLanguage": "PYTHON",
        }
    else:
        end["outputs"] = [_output(record)]
    return "".join(json.dumps(e, sort_keys=True) + "\n" for e in (start, end)).encode()


def _facet(record: dict[str, Any], name: str) -> dict[str, str]:
    return {"_producer": producer(record), "_schemaURL": FACET_SCHEMAS[name]}


def _event(record: dict[str, Any], kind: str, when: str) -> dict[str, Any]:
    resolved = record["manifest"]["resolved"]
    summary = record.get("summary", {})
    synthfill = {
        "_producer": producer(record),
        "_schemaURL": SYNTHFILL_FACET,
        "run_id": record["run_id"],
        "manifest_sha256": record["manifest_sha256"],
        "seed": resolved["seed"],
        **{k: summary[k] for k in ("items_in", "items_ok", "items_quarantined") if k in summary},
    }
    engine = {**_facet(record, "processing_engine"), "name": "synthfill"}
    engine["version"] = record.get("code_version", "unknown")
    job_type = {**_facet(record, "jobType"), "processingType": "BATCH", "integration": "SYNTHFILL"}
    return {
        "eventType": kind,
        "eventTime": when,
        "producer": producer(record),
        "schemaURL": OPENLINEAGE,
        "run": {
            "runId": openlineage_run_id(record["run_id"]),
            "facets": {"processing_engine": engine, "synthfill": synthfill},
        },
        "job": {
            "namespace": JOB_NAMESPACE,
            "name": record["name"],
            "facets": {"jobType": {**job_type, "jobType": "JOB"}},
        },
        "inputs": _inputs(record),
        "outputs": [_dataset(resolved["output"]["uri"])],
    }


def _dataset(uri: str) -> dict[str, Any]:
    namespace, name = dataset_name(uri)
    return {"namespace": namespace, "name": name, "facets": {}}


def _inputs(record: dict[str, Any]) -> list[dict[str, Any]]:
    sources = [_dataset(record["manifest"]["resolved"]["source"]["uri"])]
    weights = [_dataset(w["uri"]) for w in (record.get("weights") or {}).values()]
    return sources + weights


def _output(record: dict[str, Any]) -> dict[str, Any]:
    out = _dataset(record["manifest"]["resolved"]["output"]["uri"])
    if record.get("version") is not None:
        out["facets"]["version"] = {
            **_facet(record, "version"),
            "datasetVersion": str(record["version"]),
        }
    rows = (record.get("integrity") or {}).get("leaves")
    if rows is not None:
        stats = {**_facet(record, "outputStatistics"), "rowCount": rows, "fileCount": 2 * rows}
        out["outputFacets"] = {"outputStatistics": stats}
    return out


PROV_PREFIXES = {
    "synthfill": "https://synthfill.dev/ns/prov#",
    "xsd": "http://www.w3.org/2001/XMLSchema#",
}


def _uri(value: str) -> dict[str, str]:
    return {"$": value, "type": "xsd:anyURI"}


def _qname(name: str) -> dict[str, str]:
    """A typed qualified name (a bare string would read back as a plain literal)."""
    return {"$": name, "type": "prov:QUALIFIED_NAME"}


def _prefixes(record: dict[str, Any]) -> dict[str, str]:
    root = record["manifest"]["resolved"]["output"]["uri"].rstrip("/")
    base = root if "://" in root else f"file://{root}"
    # An IRI namespace: spaces and non-ASCII in a folder name are percent-encoded.
    return {**PROV_PREFIXES, "ds": quote(base, safe=":/@%+,;=~!$&'()*") + "/#"}


def prov_document(record: dict[str, Any]) -> bytes:
    """W3C PROV-JSON of one run: what it used, what it generated, which software did it."""
    resolved, run = record["manifest"]["resolved"], f"ds:run-{record['run_id']}"
    agent = "ds:synthfill"
    entity: dict[str, Any] = {
        "ds:source": {
            "prov:type": _qname("prov:Collection"),
            "synthfill:uri": _uri(resolved["source"]["uri"]),
        },
        f"ds:recipe-{record['manifest_sha256'][:16]}": {
            "synthfill:sha256": record["manifest_sha256"],
            "prov:location": _uri(f"recipes/{record['manifest_sha256']}.json"),
        },
    }
    for label, weights in (record.get("weights") or {}).items():
        entity[f"ds:weights-{label}"] = {
            "synthfill:sha256": weights["sha256"],
            "synthfill:uri": _uri(weights["uri"]),
        }
    used = list(entity)
    generated = []
    if record.get("version") is not None:
        version = f"ds:version-{record['version']}"
        integrity = record.get("integrity") or {}
        entity[version] = {
            "prov:type": _qname("prov:Collection"),
            "synthfill:uri": _uri(resolved["output"]["uri"]),
            "synthfill:rows": integrity.get("leaves", 0),
            "synthfill:merkle_root": integrity.get("merkle_root", ""),
        }
        generated.append(version)
    doc: dict[str, Any] = {
        "prefix": _prefixes(record),
        "entity": entity,
        "activity": {run: _activity(record)},
        "agent": {agent: _software(record)},
        "wasAssociatedWith": {"_:assoc": {"prov:activity": run, "prov:agent": agent}},
    }
    _relations(doc, run, used, generated, agent)
    return json.dumps(doc, indent=2, sort_keys=True).encode()


def _activity(record: dict[str, Any]) -> dict[str, Any]:
    activity = {
        "prov:startTime": record["started_at"],
        "synthfill:run_id": record["run_id"],
        "synthfill:status": record.get("status", "unknown"),
        "synthfill:seed": record["manifest"]["resolved"]["seed"],
    }
    if record.get("finished_at"):
        activity["prov:endTime"] = record["finished_at"]
    return activity


def _software(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "prov:type": _qname("prov:SoftwareAgent"),
        "synthfill:code_version": record.get("code_version", "unknown"),
    }


def _relations(
    doc: dict[str, Any], run: str, used: list[str], generated: list[str], agent: str
) -> None:
    doc["used"] = {
        f"_:used{i}": {"prov:activity": run, "prov:entity": e} for i, e in enumerate(used)
    }
    if not generated:  # a failed run generated nothing
        return
    doc["wasGeneratedBy"] = {
        f"_:gen{i}": {"prov:entity": e, "prov:activity": run} for i, e in enumerate(generated)
    }
    doc["wasDerivedFrom"] = {
        f"_:der{i}-{j}": {"prov:generatedEntity": g, "prov:usedEntity": u, "prov:activity": run}
        for i, g in enumerate(generated)
        for j, u in enumerate(used)
    }
    doc["wasAttributedTo"] = {
        f"_:attr{i}": {"prov:entity": e, "prov:agent": agent} for i, e in enumerate(generated)
    }


def row_prov(row: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """PROV-JSON of one index row: source image -> (masks, fill, augmentation) -> output."""
    made = f"ds:make-{row['output_sha256'][:16]}"
    source, output = (
        f"ds:source-{row['source_sha256'][:16]}",
        f"ds:output-{row['output_sha256'][:16]}",
    )
    mask = f"ds:mask-{row['mask_sha256'][:16]}"
    entity = {
        source: {
            "synthfill:uri": _uri(row["source_uri"]),
            "synthfill:sha256": row["source_sha256"],
        },
        mask: {"synthfill:uri": _uri(row["mask_uri"]), "synthfill:sha256": row["mask_sha256"]},
        output: {
            "synthfill:uri": _uri(row["output_uri"]),
            "synthfill:sha256": row["output_sha256"],
        },
        f"ds:recipe-{row['manifest_sha256'][:16]}": {"synthfill:sha256": row["manifest_sha256"]},
    }
    if row.get("weights_sha256"):
        entity[f"ds:weights-{row['weights_sha256'][:16]}"] = {
            "synthfill:sha256": row["weights_sha256"]
        }
    activity = {
        "synthfill:seed": row["seed"],
        "synthfill:variant": row["variant"],
        "synthfill:mask_kind": row["mask_kind"],
        "synthfill:inpainter": row["inpainter"],
        "synthfill:run_id": row["run_id"],
    }
    doc = {
        "prefix": _prefixes(record),
        "entity": entity,
        "activity": {made: activity},
        "agent": {"ds:synthfill": _software(record)},
        "wasAssociatedWith": {"_:assoc": {"prov:activity": made, "prov:agent": "ds:synthfill"}},
    }
    inputs = [e for e in entity if e not in (mask, output)]
    _relations(doc, made, inputs, [mask, output], "ds:synthfill")
    return doc
