"""`pipeline`: build synthetic training data from real images by inpainting.

Thin glue over ``pipelines``: parse arguments, print, map errors to exit codes
(0 ok, 1 run failed, 2 invalid input).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from pipelines.errors import ManifestError, RunError

if TYPE_CHECKING:
    from pipelines.audit import AuditReport
    from pipelines.manifest import Manifest, OutputSpec
    from pipelines.manifest_loader import LoadedManifest
    from pipelines.run import RunSummary
    from pipelines.train import TrainSummary

app = typer.Typer(
    help=(
        "synthfill: make synthetic training data from real images by inpainting.\n\n"
        "A YAML manifest names the source images, the mask generators, the inpainter, the number "
        "of seeded variants and the output dataset. Start with `pipeline validate` and "
        "`pipeline plan`, then `pipeline run`. `pipeline schema` prints every manifest field."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True, soft_wrap=True)  # errors keep whole paths on one line (grep, copy)
out = Console()

ManifestArg = Annotated[
    Path, typer.Argument(help="Manifest YAML file, e.g. manifests/retail_shelf.yaml.")
]
LimitOpt = Annotated[
    int | None, typer.Option(min=1, help="Only the first N sources (sorted by image_id).")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        metavar="KEY=VALUE",
        help="Override a field, e.g. --set compute.actors=4 --set output.uri=s3://bucket/out (repeatable; VALUE is YAML).",
    ),
]


def _load(manifest: Path, overrides: list[str] | None) -> LoadedManifest:
    from pipelines.manifest_loader import load_manifest

    try:
        return load_manifest(manifest, overrides or [])
    except ManifestError as exc:
        err.print(
            f"[bold red]invalid manifest[/] {manifest}\n  {exc.path}: {exc.message}",
            highlight=False,
        )
        if exc.hint:
            err.print(f"  hint: {exc.hint}", highlight=False)
        raise typer.Exit(2) from None


@app.command()
def validate(manifest: ManifestArg, set_: SetOpt = None) -> None:
    """Check a manifest without running anything; exit 2 naming the first bad field."""
    loaded = _load(manifest, set_)
    out.print(
        f"[green]ok[/] {manifest}: {loaded.manifest.name} (manifest_sha256 {loaded.fingerprint[:12]})"
    )


@app.command()
def plan(
    manifest: ManifestArg,
    set_: SetOpt = None,
    limit: LimitOpt = None,
) -> None:
    """Show what a run would do: sources found, rows to write, output location. No compute."""
    from pipelines.planning import plan_run
    from pipelines.run import check_weights
    from pipelines.sink import DatasetSink
    from pipelines.status import pending_status

    loaded = _load(manifest, set_)
    m = loaded.manifest
    try:
        planned = plan_run(loaded, limit)
    except RunError as exc:
        err.print(f"[bold red]cannot plan:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    try:
        latest = DatasetSink(m.output, "plan").check_target(repair=False)
        target = "empty: version 1 will hold every source"
        if latest is not None:
            work = pending_status(loaded)
            target = (
                f"version {latest.version}; the next run processes {work['processing']} "
                f"sources ({work['new']} new, {work['changed']} changed, {work['retried']} "
                f"retried), keeps {work['unchanged']}, drops {work['removed']}"
            )
            if not work["carried_over"]:
                target += " (new recipe or --overwrite: nothing is kept)"
    except RunError as exc:
        target = f"[yellow]{exc}[/]"
    table = Table(title=f"plan: {m.name}", show_header=False)
    table.add_row("source", m.source.uri)
    counts = planned.listing
    if counts.inventory:
        table.add_row("inventory", counts.inventory)
        table.add_row(
            "inventory keys",
            f"{counts.found} read: {counts.outside_root} outside source.uri (skipped), "
            f"{counts.not_matching} not matching glob/extensions, {counts.duplicates} repeated",
        )
    table.add_row("sources found", str(planned.sources.num_rows))
    for image_id in planned.sources["image_id"][:3].to_pylist():
        table.add_row("", image_id)
    table.add_row(
        "with annotations",
        f"{planned.annotated} (unmatched annotation ids: {planned.unmatched_annotations})",
    )
    table.add_row("masks", " + ".join(s.kind for s in m.masks))
    for spec in m.inpainters:
        table.add_row("inpainter", f"{spec.label} ({spec.kind})")
    try:
        for label, sha in check_weights(m).items():
            table.add_row("", f"{label} weights_sha256 {sha}")
    except RunError as exc:
        table.add_row("weights", f"[yellow]{exc}[/]")
    table.add_row("variants", str(m.variants))
    table.add_row("rows to write", str(planned.rows_expected * len(m.inpainters)))
    table.add_row("output", f"{m.output.uri} ({m.output.format})")
    table.add_row("output state", target)
    table.add_row(
        "compute",
        f"{m.compute.actors} actors x {m.compute.cpus_per_actor} CPU, {m.compute.gpus_per_actor} GPU, batch {m.compute.batch_size}",
    )
    out.print(table)


@app.command()
def run(
    manifest: ManifestArg,
    set_: SetOpt = None,
    limit: LimitOpt = None,
    address: Annotated[
        str | None,
        typer.Option(help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)."),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Process every source again (a new version keeping no rows), not only new and changed ones.",
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as one JSON document on stdout.")
    ] = False,
) -> None:
    """Run a manifest: process new and changed sources, commit the dataset's next version.

    The first run builds version 1. Later runs (a nightly job) process only sources that are new or changed since the latest version and commit the next one; with nothing to do they exit 0 as "up_to_date". A run killed part way is resumed by the next run with the same manifest. `pipeline status` shows versions and pending work.
    """
    from pipelines.run import run_manifest

    loaded = _load(manifest, [*(set_ or []), *(["output.overwrite=true"] if overwrite else [])])
    try:
        with ProgressBar(loaded.manifest.name) as progress:
            summary = run_manifest(loaded, limit=limit, address=address, progress=progress)
    except RunError as exc:
        err.print(f"[bold red]run failed:[/] {exc}", highlight=False)
        if as_json:
            print(
                json.dumps({"name": loaded.manifest.name, "status": "failed", "message": str(exc)})
            )
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps(summary.as_dict(), indent=2))
    else:
        _print_summary(summary)
    if summary.status == "up_to_date":
        err.print(f"up to date: {summary.message}", highlight=False)
    elif summary.status != "committed":
        err.print(f"[bold red]run failed:[/] {summary.message}", highlight=False)
        raise typer.Exit(1)


@app.command()
def status(
    target: Annotated[
        str,
        typer.Argument(
            help="A dataset (folder or URL, e.g. s3://bucket/synth) or a manifest YAML: "
            "with a manifest its output is shown, plus the sources a run would process now."
        ),
    ],
    set_: SetOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print everything as one JSON document on stdout.")
    ] = False,
) -> None:
    """Show a dataset's committed versions, interrupted runs and pending work."""
    from pipelines.manifest import OutputSpec
    from pipelines.status import dataset_status, pending_status

    is_manifest = target.endswith((".yaml", ".yml")) and Path(target).is_file()
    loaded = _load(Path(target), set_) if is_manifest else None
    output = loaded.manifest.output if loaded else OutputSpec(uri=target)
    try:
        report = dataset_status(output)
        if loaded is not None:
            report["pending"] = pending_status(loaded)
    except RunError as exc:
        err.print(f"[bold red]cannot read the dataset:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        _print_status(report)


DatasetArg = Annotated[
    str,
    typer.Argument(
        help="A dataset (folder or URL, e.g. s3://bucket/synth) or the manifest that writes it "
        "(its storage options are then used to read the dataset, sources and weights)."
    ),
]


def _dataset(target: str, set_: list[str] | None) -> tuple[OutputSpec, Manifest | None]:
    from pipelines.manifest import OutputSpec

    if target.endswith((".yaml", ".yml")) and Path(target).is_file():
        manifest = _load(Path(target), set_).manifest
        return manifest.output, manifest
    return OutputSpec(uri=target), None


@app.command()
def audit(
    target: DatasetArg,
    reproduce: Annotated[
        int,
        typer.Option(
            min=0,
            help="Also make N randomly chosen rows again from their index rows alone and compare "
            "(bit-identical for CPU fills; GPU fills within PSNR 40 dB).",
        ),
    ] = 0,
    seed: Annotated[
        int | None, typer.Option(help="Seed for choosing the --reproduce rows (default: random).")
    ] = None,
    device: Annotated[str, typer.Option(help="Where --reproduce runs model fills.")] = "cpu",
    trusted_key: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="PEM Ed25519 public key the run record must be signed with (output.sign_record).",
        ),
    ] = None,
    set_: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Prove a committed dataset is what its records say; exit 1 on any mismatch.

    Re-hashes every output and mask against the index, checks the index against the Merkle root
    and file hashes in the run record, that every recipe and weights file still hashes to what
    rows name, and whether sources changed since (drift: reported, not a failure).
    """
    from pipelines.audit import audit_dataset

    output, manifest = _dataset(target, set_)
    try:
        with ProgressBar("audit", unit="files") as bar:
            report = audit_dataset(
                output,
                manifest=manifest,
                reproduce=reproduce,
                seed=seed,
                device=device,
                trusted_key=trusted_key.read_bytes() if trusted_key else None,
                progress=lambda check, done, total: bar(done, total),
            )
    except RunError as exc:
        err.print(f"[bold red]cannot audit:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps(report.as_dict(), indent=2, default=str))
    else:
        _print_audit(report)
    if not report.passed:
        raise typer.Exit(1)


def _print_audit(report: AuditReport) -> None:
    table = Table(title=f"audit of {report.dataset} version {report.version} ({report.rows} rows)")
    for column in ("check", "status", "figures", "s"):
        table.add_column(column)
    colours = {"pass": "green", "fail": "bold red", "drift": "yellow", "skipped": "dim"}
    for name, figures in report.checks.items():
        status = figures["status"]
        shown = {k: v for k, v in figures.items() if k not in ("status", "seconds", "positions")}
        table.add_row(
            name,
            f"[{colours.get(status, 'white')}]{status}[/]",
            ", ".join(f"{k} {v if k == 'note' else str(v)[:16]}" for k, v in shown.items()),
            str(figures["seconds"]),
        )
    out.print(table)
    for f in report.findings:
        line = f"{f.severity:5} {f.check:9} {f.subject}: {f.detail}"
        out.print(line, highlight=False, markup=False, soft_wrap=True)  # one grep-able line
    verdict = "[green]passed[/]" if report.passed else "[bold red]FAILED[/]"
    out.print(f"audit {verdict}")


@app.command()
def lineage(
    target: DatasetArg,
    image_id: Annotated[str, typer.Argument(help="The source's image_id, e.g. shelf_07.jpg.")],
    variant: Annotated[int | None, typer.Option(help="Only this variant.")] = None,
    inpainter: Annotated[
        str | None, typer.Option(help="Only this inpainter (when several are compared).")
    ] = None,
    set_: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the chain as JSON.")] = False,
    prov: Annotated[
        bool, typer.Option("--prov", help="Print each row's W3C PROV-JSON document instead.")
    ] = False,
) -> None:
    """How an output was made: source -> masks -> inpainter -> augmentation -> output.

    Each step with its parameters, seed and hashes, the run and recipe behind it, and a Merkle
    proof that the row is the one the run record committed.
    """
    from pipelines.audit import open_committed
    from pipelines.lineage import lineage as trace

    output, _ = _dataset(target, set_)
    try:
        found = trace(open_committed(output), image_id, variant, inpainter)
    except RunError as exc:
        err.print(f"[bold red]no lineage:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    if prov:
        documents = [step["prov"] for step in found["chains"]]
        print(json.dumps(documents[0] if len(documents) == 1 else documents, indent=2))
        return
    if as_json:
        print(json.dumps(found, indent=2, default=str))
        return
    for step in found["chains"]:
        _print_chain(found, step)


def _print_chain(found: dict, step: dict) -> None:
    import yaml

    row, run, proof = step["row"], step["run"], step["proof"]
    out.print(
        f"[bold]{found['image_id']}[/] variant {row['variant']} ({row['split']}), "
        f"version {found['version']}, run {run['run_id']}, code {run['code_version']}",
        highlight=False,
    )
    source, masks, fill, output = step["source"], step["masks"], step["inpainter"], step["output"]
    boxes = len(source["annotations"]["boxes"] or [])
    lines = [
        ("source", f"{source['uri']}  sha256 {source['sha256'][:16]}…  {boxes} annotated boxes"),
        (
            "masks",
            f"{masks['kind']}  seed {masks['seed']}  {masks['fraction']:.1%} of pixels  "
            f"reached {json.dumps(masks['reached'])}  sha256 {masks['sha256'][:16]}…",
        ),
        (
            "inpaint",
            f"{fill['label']} {json.dumps(fill['params'])}  weights "
            f"{(fill['weights_sha256'] or 'none (classical)')[:16]}  on {fill['device']}",
        ),
        ("augment", json.dumps(step["augment"]) if step["augment"] else "none"),
        ("output", f"{output['uri']}  sha256 {output['sha256'][:16]}…  {output['size']}"),
    ]
    for name, text in lines:
        out.print(f"  {name:8} {text}", highlight=False)
    if proof:
        ok = "[green]verified[/]" if proof["verified"] else "[bold red]DOES NOT VERIFY[/]"
        out.print(
            f"  proof    leaf {proof['leaf_index']} of {proof['leaves']}, {len(proof['path'])} "
            f"hashes to root {proof['root'][:16]}…: {ok}"
        )
    recipe = step["recipe"]
    out.print(f"  recipe   manifest_sha256 {recipe['manifest_sha256']}", highlight=False)
    if recipe["excerpt"]:
        text = yaml.safe_dump(recipe["excerpt"], sort_keys=False, default_flow_style=None)
        out.print("\n".join("    " + line for line in text.splitlines()), highlight=False)


def _print_status(report: dict) -> None:
    table = Table(title=f"versions of {report['uri']}")
    for column in ("version", "committed", "run", "items ok", "quarantined", "rows", "recipe"):
        table.add_column(column)
    for v in report["versions"]:
        mark = " (latest)" if v["version"] == report["latest"] else ""
        fresh = " new recipe" if v.get("new_generation") else ""
        table.add_row(
            f"{v['version']}{mark}",
            v["committed_at"][:19],
            v["run_id"],
            str(v["items_ok"]),
            str(v["items_quarantined"]),
            str(v["rows"]),
            v["manifest_sha256"][:12] + fresh,
        )
    out.print(table if report["versions"] else "no committed version yet")
    if report["latest"] is not None and report["pointer"] != report["latest"]:
        out.print(
            f"_COMMITTED still names version {report['pointer']} (a run died after committing "
            f"{report['latest']}); readers see {report['pointer']} until the next run fixes it"
        )
    for run in report["interrupted"]:
        state = "failed" if run["failed"] else "interrupted"
        out.print(
            f"{state} run {run['run_id']} (base version {run.get('base')}): {run['parts']} "
            f"parts, {run['rows']} rows saved; a run with the same recipe resumes from them"
        )
    pending = report.get("pending")
    if pending:
        out.print(
            f"pending: {pending['pending']} of {pending['listed']} sources to process "
            f"({pending['new']} new, {pending['changed']} changed, {pending['retried']} "
            f"retried after a transient quarantine); {pending['unchanged']} unchanged, "
            f"{pending['removed']} gone from the source"
            + (
                ""
                if pending["carried_over"] or report["latest"] is None
                else "; the recipe changed, so the next version is built from scratch"
            )
        )


Gate = Annotated[float | None, typer.Option(help="Overrides the manifest's qc gate.")]


@app.command()
def evaluate(
    target: DatasetArg,
    features: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="A TorchScript feature extractor (images in, one vector each out: e.g. "
            "Inception's pool features) for FID, KID and P-IDS/U-IDS. None is downloaded.",
        ),
    ] = None,
    input_size: Annotated[int, typer.Option(help="Side the extractor takes images at.")] = 299,
    device: Annotated[str, typer.Option(help="Where the extractor runs.")] = "cpu",
    limit: Annotated[
        int | None, typer.Option(min=1, help="Only the first N sources (a quick look).")
    ] = None,
    max_leak: Gate = None,
    max_seam: Gate = None,
    min_masked_psnr: Gate = None,
    min_diversity: Gate = None,
    set_: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Measure the fills of a committed dataset: per row, per source, per mask-area bin.

    Per row: masked PSNR/SSIM against the real content the hole covered, leak outside the
    hole, seam score at its boundary, blank outputs; per source: diversity of its variants; per
    dataset (with --features): FID, KID, P-IDS/U-IDS. QC gates (the manifest's qc: section or
    the options) mark failing rows rejected. Writes evaluation/metrics.parquet and summary.json
    beside the version.
    """
    from pipelines.evaluate import evaluate_dataset
    from pipelines.manifest import QcSpec

    output, manifest = _dataset(target, set_)
    given = {"max_leak": max_leak, "max_seam": max_seam, "min_masked_psnr": min_masked_psnr}
    given["min_diversity"] = min_diversity
    base = manifest.qc if manifest is not None else QcSpec()
    gates = QcSpec(**{**base.model_dump(), **{k: v for k, v in given.items() if v is not None}})
    try:
        extractor = _extractor(features, input_size, device) if features else None
        with ProgressBar("evaluate", unit="rows") as bar:
            done = evaluate_dataset(
                output, manifest, extractor=extractor, gates=gates, limit=limit, progress=bar
            )
    except (RunError, ValueError) as exc:
        err.print(f"[bold red]cannot evaluate:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps(done.summary, indent=2))
        return
    _print_evaluation(done.summary)
    out.print(f"metrics: {done.metrics_uri}\nsummary: {done.summary_uri}", soft_wrap=True)


def _extractor(path: Path, input_size: int, device: str):  # noqa: ANN202
    from inpaint_ops.distribution import FeatureExtractor

    return FeatureExtractor(str(path), input_size=input_size, device=device)


def _print_evaluation(summary: dict) -> None:
    columns = ("bin", "rows", "PSNR dB", "SSIM", "seam", "diversity", "leak", "FID", "rejected")
    keys = ("masked_psnr", "masked_ssim", "seam", "diversity", "leak_mean", "fid")
    for label, figures in summary["by_inpainter"].items():
        table = Table(title=f"{label}: {figures['rows']} rows, {figures['compared']} compared")
        for column in columns:
            table.add_column(column, justify="left" if column == "bin" else "right")
        for name, row in [("all", figures), *figures["bins"].items()]:
            cells = ["-" if row.get(k) is None else f"{row[k]:.3f}" for k in keys]
            table.add_row(name, str(row["rows"]), *cells, str(row["rejected"]))
        out.print(table)
    reasons = ", ".join(f"{n} {r}" for r, n in summary["rejected_by_reason"].items())
    out.print(
        f"{summary['ok']} ok, {summary['rejected']} rejected" + (f" ({reasons})" if reasons else "")
    )


@app.command()
def preview(
    target: DatasetArg,
    sources: Annotated[int, typer.Option(min=1, help="Sources on the contact sheet.")] = 8,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            file_okay=False,
            help="Write here (a local folder) instead of beside the version.",
        ),
    ] = None,
    set_: SetOpt = None,
) -> None:
    """A contact sheet (source | masks | each variant) and a self-contained HTML report.

    The report holds the sheet, the evaluation by mask-area bin (run first when the version
    has none) and the run's throughput over time; one file, nothing fetched when opened.
    """
    from pipelines.preview import preview_dataset

    output, manifest = _dataset(target, set_)
    try:
        done = preview_dataset(output, manifest, sources=sources, out=out_dir)
    except (RunError, ValueError) as exc:
        err.print(f"[bold red]cannot preview:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    out.print(f"contact sheet: {done.sheet_uri}\nreport: {done.report_uri}", soft_wrap=True)


@app.command()
def train(
    manifest: ManifestArg,
    set_: SetOpt = None,
    steps: Annotated[
        int | None, typer.Option(min=1, help="Train until this many steps in all (train.steps).")
    ] = None,
    minutes: Annotated[
        float | None,
        typer.Option(min=0.01, help="Stop after this many minutes in all (train.minutes)."),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            help="Checkpoint path (relative to the current folder) or URL ending in "
            ".safetensors; default train.output, relative to the manifest."
        ),
    ] = None,
    fresh: Annotated[
        bool,
        typer.Option("--fresh", help="Ignore a saved resume state and start from scratch."),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the model card as JSON on stdout.")
    ] = False,
) -> None:
    """Train a maskaware model on the manifest's own images and masks (self-supervised).

    Reads the manifest's source, holes crops with its mask generators plus large free-form
    holes, and learns to give the pixels back. Writes the weights (.safetensors), a model card
    (.card.json) and a resume state every few minutes and when stopped (Ctrl-C): run the same
    command again to go on. Point a manifest's inpainter at the weights:
    {kind: maskaware, weights: <output>, weights_sha256: <printed hash>}.
    """
    from pipelines.train import train_model
    from pipelines.train_spec import TrainSpec

    loaded = _load(manifest, set_)
    spec = loaded.manifest.train or TrainSpec()
    if output is not None and "://" not in output:
        output = str(Path(output).resolve())  # on the command line: relative to where you are
    updates = {"steps": steps, "minutes": minutes, "output": output}
    spec = spec.model_copy(update={k: v for k, v in updates.items() if v is not None})
    try:
        with ProgressBar(loaded.manifest.name, unit="steps", with_loss=True) as progress:
            summary = train_model(
                loaded, spec, fresh=fresh, progress=lambda d, t, loss: progress(d, t, loss)
            )
    except RunError as exc:
        err.print(f"[bold red]training failed:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps(summary.card, indent=2))
    else:
        _print_training(summary)
    if summary.stopped == "interrupted":
        raise typer.Exit(130)


def _print_training(summary: TrainSummary) -> None:
    card = summary.card
    table = Table(title=f"training: {summary.stopped}", show_header=False)
    if summary.resumed_from:
        table.add_row("resumed from step", str(summary.resumed_from))
    table.add_row("steps", f"{card['steps']} (+{summary.steps_done} now)")
    table.add_row("minutes", f"{card['elapsed_s'] / 60:.1f}")
    table.add_row("images", f"{summary.images} (held out: {summary.held_out})")
    if card["loss"]:
        table.add_row("loss (smoothed)", f"{card['loss']['smoothed']:.4f}")
    if card["held_out_hole_l1"] is not None:
        table.add_row("held-out hole L1", f"{card['held_out_hole_l1']:.4f}")
    table.add_row("weights", summary.output)
    table.add_row("weights_sha256", card["weights_sha256"])
    out.print(table)
    if summary.stopped == "interrupted":
        err.print("stopped: the checkpoint is saved; run the same command to resume")


@app.command()
def schema() -> None:
    """Print the JSON Schema of manifests (point your editor's YAML plugin at it)."""
    from pipelines.manifest_loader import manifest_json_schema

    print(json.dumps(manifest_json_schema(), indent=2))


@app.command()
def samples(
    dest: Annotated[Path, typer.Argument(help="Folder to write the bundled samples into.")] = Path(
        "samples"
    ),
    only: Annotated[
        list[str] | None,
        typer.Option(help="Only this folder: shelves, photos, aerial or cxr (repeatable)."),
    ] = None,
) -> None:
    """Regenerate the bundled sample images (shelves are procedural; photos, tiles and X-rays are converted from packages of the `samples` extra)."""
    from pipelines.samples import FOLDERS, MissingSampleSource, write_samples

    unknown = sorted(set(only or ()) - set(FOLDERS))
    if unknown:
        err.print(
            f"[bold red]unknown sample folder[/] {', '.join(unknown)}; choose from {', '.join(FOLDERS)}"
        )
        raise typer.Exit(2)
    try:
        counts = write_samples(dest, only=set(only) if only else None)
    except MissingSampleSource as exc:
        err.print(f"[bold red]cannot write samples:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    for folder, count in counts.items():
        out.print(f"{folder}: {count} files")


class ProgressBar:
    """A progress bar on stderr, silent when stderr is not a terminal."""

    def __init__(self, name: str, unit: str = "items", with_loss: bool = False) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn(f"[bold]{name}[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(unit),
            *([TextColumn("loss {task.fields[loss]}")] if with_loss else []),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=True,
        )
        self._task = self._bar.add_task(name, total=None, loss="-")

    def __enter__(self) -> Callable[..., None]:
        self._bar.start()
        return self._update

    def _update(self, done: int, total: int, loss: float | None = None) -> None:
        fields = {"loss": f"{loss:.4f}"} if loss is not None else {}
        self._bar.update(self._task, completed=done, total=total, **fields)

    def __exit__(self, *exc_info: object) -> None:
        self._bar.stop()


def _print_summary(summary: RunSummary) -> None:
    table = Table(title=f"{summary.name}: {summary.status}", show_header=False)
    if summary.version is not None:
        base = ""
        if summary.base_version and summary.base_version != summary.version:
            base = f" (from version {summary.base_version})"
        table.add_row("version", f"{summary.version}{base}")
    table.add_row("sources listed", str(summary.items_listed))
    if summary.items_unchanged or summary.items_removed:
        table.add_row("unchanged, kept", str(summary.items_unchanged))
        table.add_row("gone from source, dropped", str(summary.items_removed))
    if summary.new_generation:
        table.add_row("", "the recipe changed: every source done again")
    if summary.items_resumed:
        table.add_row("resumed", f"{summary.items_resumed} items kept from an interrupted run")
    if summary.status == "up_to_date":
        table.add_row("output", summary.output_uri)
        out.print(table)
        return
    table.add_row("items in", str(summary.items_in))
    table.add_row("items ok", str(summary.items_ok))
    table.add_row("items quarantined", str(summary.items_quarantined))
    for reason, count in summary.quarantine_reasons.items():
        table.add_row("", f"{reason}: {count}")
    table.add_row("rows written", str(summary.rows_written))
    table.add_row("images written/s", f"{summary.images_per_s:.2f}")
    table.add_row("wall time", f"{summary.wall_s:.1f} s")
    table.add_row("output", summary.output_uri)
    out.print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
