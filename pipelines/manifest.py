"""The manifest: a declarative, validated description of one dataset build.

Frozen pydantic models with ``extra="forbid"``; mask and inpainter choices are discriminated
unions on ``kind`` (the union is the registry). Everything is validated before any compute.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import fsspec
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StrictBool,
    StrictInt,
    field_validator,
    model_serializer,
    model_validator,
)

from inpaint_ops.inpainters import InpainterKind, InpainterSpec
from inpaint_ops.masks import MaskKind
from pipelines.credentials import is_reference, literal_secrets
from pipelines.dicom import DicomSpec
from pipelines.train_spec import TrainSpec

_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# .dcm is not a default: adding it would change the fingerprint of every existing manifest.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp")


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _known_protocol(uri: str) -> str:
    if "://" in uri:
        protocol = uri.split("://", 1)[0]
        if protocol not in fsspec.available_protocols():
            raise ValueError(
                f"unknown storage protocol {protocol!r}; use a local path or one of "
                "s3://, gs://, az://, file://, http(s)://"
            )
    return uri


KnownUri = Annotated[str, AfterValidator(_known_protocol)]


class SourceSpec(_Spec):
    """Where the real images come from."""

    uri: KnownUri = Field(
        description="Folder of images: a local path (relative to the manifest) or any fsspec URL (s3://, gs://, az://, file://)."
    )
    glob: str = Field(
        "**/*",
        description="Glob under `uri` selecting the images; `image_id` is the path relative to `uri`.",
    )
    extensions: tuple[str, ...] = Field(
        IMAGE_EXTENSIONS,
        description="Only files with these (case-insensitive) extensions are items; add .dcm for DICOM files.",
    )
    annotations: KnownUri | None = Field(
        None,
        description="Boxes joined by image_id: COCO JSON (.json), SKU-110K CSV (.csv) or Parquet (.parquet) with the SKU-110K columns.",
    )
    inventory: KnownUri | None = Field(
        None,
        description="Read the objects from an inventory instead of listing `uri` (for buckets of millions of objects): an S3 Inventory manifest.json (CSV or Parquet), or a .csv/.csv.gz/.parquet table with a header naming a key (or name) column and optionally size, etag and bucket (e.g. a GCS inventory report). Keys are object keys in the bucket of `uri` (absolute paths on a local disk); keys outside `uri` are skipped and counted, `glob` and `extensions` apply as for a listing. Read with `storage_options`.",
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Passed to fsspec (e.g. {endpoint_url: ...}). Credentials come from the environment (AWS_* variables, AWS_PROFILE, instance roles) or by reference: {secret: ${MY_S3_SECRET}} is read from the environment where it is used; a secret written literally is refused.",
    )
    max_pixels: int = Field(
        100_000_000,
        gt=0,
        description="Images declaring more pixels than this are quarantined (too_many_pixels) before decoding.",
    )
    dicom: DicomSpec = Field(
        default_factory=DicomSpec,
        description="How DICOM files (recognised by their bytes, whatever their name) become pixels: window, output bits, burned-in annotations. Their tags are never copied anywhere.",
    )
    pseudonymize: StrictBool = Field(
        False,
        description="Replace file and folder names, which can carry patient data (DOE_JOHN_19600101.dcm), by keyed pseudonyms: each path segment becomes 32 hex digits of HMAC-SHA256(pseudonym_key, the path up to it), the extension is kept. image_id, source_uri, keys, error details and log lines then name only the pseudonym; the same key gives the same ids every run, so incremental runs still match items. Annotations and from_files masks are still found by the real path; split.group_pattern sees the pseudonym (a pattern on the first folder still groups by it).",
    )
    pseudonym_key: str | None = Field(
        None,
        description="The HMAC key for `pseudonymize`, only as a reference to an environment variable: ${MY_PSEUDONYM_KEY} (at least 32 characters, e.g. `openssl rand -hex 32`; needed where the run is planned). A key written into the manifest is refused. Keep it secret and keep it: without it pseudonyms cannot be linked back, and with another key every item is new.",
    )

    @field_validator("extensions")
    @classmethod
    def _lower_dotted(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in value)

    @model_validator(mode="after")
    def _glob_can_match(self) -> SourceSpec:
        found = re.search(r"\.[A-Za-z0-9]+$", self.glob)
        if found and not found.group(0).lower().endswith(self.extensions):
            raise ValueError(
                f"source.glob {self.glob!r} can never match: {found.group(0).lower()} is not in "
                f"source.extensions {list(self.extensions)}; add it there"
            )
        return self

    @model_serializer(mode="wrap")
    def _omit_unused_options(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Left at their defaults, the DICOM and pseudonym options are not written, so manifests
        # that predate them keep their fingerprint (a new one would rebuild their datasets).
        data = handler(self)
        unused = {"dicom": DicomSpec(), "pseudonymize": False, "pseudonym_key": None}
        for name, default in unused.items():
            if name in data and getattr(self, name) == default:
                del data[name]
        return data

    @model_validator(mode="after")
    def _pseudonym_key_by_reference(self) -> SourceSpec:
        if self.pseudonym_key is not None and not is_reference(self.pseudonym_key):
            raise ValueError(
                "source.pseudonym_key must be a reference to an environment variable, "
                "${MY_PSEUDONYM_KEY}; a key written into the manifest would be copied to every "
                "worker and into the run record"
            )
        if self.pseudonymize and self.pseudonym_key is None:
            raise ValueError("source.pseudonymize needs source.pseudonym_key: ${MY_PSEUDONYM_KEY}")
        return self


class SplitSpec(_Spec):
    """Train/val/test assignment by a group key, so variants of one source never straddle splits."""

    train: float = Field(0.8, ge=0, le=1, description="Fraction of groups in train.")
    val: float = Field(0.1, ge=0, le=1, description="Fraction of groups in val.")
    test: float = Field(0.1, ge=0, le=1, description="Fraction of groups in test.")
    group_pattern: str | None = Field(
        None,
        description="Regex with one capture group applied to image_id giving the group (e.g. a patient or store id); default: the image_id itself.",
    )

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitSpec:
        if abs(self.train + self.val + self.test - 1.0) > 1e-6:
            raise ValueError("train + val + test must sum to 1")
        if self.group_pattern is not None:
            try:
                groups = re.compile(self.group_pattern).groups
            except re.error as exc:  # not a ValueError: pydantic would let it escape
                raise ValueError(f"group_pattern is not a valid regex: {exc}") from None
            if groups != 1:
                raise ValueError("group_pattern needs exactly one capture group")
        return self


_REFERENCE_PATTERN = r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$"


class C2paSpec(_Spec):
    """Signed C2PA manifests on every output (needs the ``c2pa`` extra on every node)."""

    certificate: str = Field(
        pattern=_REFERENCE_PATTERN,
        description="${NAME} of a variable holding the PEM certificate chain (signer first, then intermediates; a CA-issued signer, not self-signed), or its path.",
    )
    private_key: str = Field(
        pattern=_REFERENCE_PATTERN,
        description="${NAME} of a variable holding the signer's PEM private key, or its path.",
    )
    algorithm: Literal["es256", "es384", "es512", "ps256", "ps384", "ps512", "ed25519"] = Field(
        "es256", description="Signature algorithm; must match the key."
    )
    timestamp_url: str | None = Field(
        None,
        description="RFC 3161 time-stamping authority to countersign with (a network call per output); none by default.",
    )


class OutputSpec(_Spec):
    """Where and how the dataset is written."""

    uri: KnownUri = Field(
        description="Dataset folder: a local path (relative to the manifest) or any fsspec URL."
    )
    format: Literal["jpeg", "png", "webp"] = Field(
        "jpeg", description="Image format of the outputs; 16-bit inputs need png."
    )
    quality: int = Field(92, ge=1, le=100, description="JPEG/WebP quality.")
    png_level: int = Field(
        1,
        ge=0,
        le=9,
        description="PNG compression level (1 is ~4x faster than 6 for ~10% more bytes).",
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Passed to fsspec for the output; credentials as for source.storage_options.",
    )
    overwrite: StrictBool = Field(
        False,
        description="Rebuild: process every source again (a new version with no rows carried over) instead of only new and changed ones.",
    )
    keep_versions: int = Field(
        3,
        ge=1,
        description="Committed versions whose files are kept; older versions, and outputs only they point to, are removed after a commit.",
    )
    embed_images: StrictBool = Field(
        False,
        description="Hugging Face shards (data/{split}-*.parquet) carry the image and mask bytes: self-contained for the Hub or a copy elsewhere, at the cost of a second copy of every image per version. Off: they carry the paths.",
    )
    sign_record: str | None = Field(
        None,
        pattern=_REFERENCE_PATTERN,
        description="Sign each version's run record with Ed25519: a ${NAME} reference to a variable holding a PEM private key (or its path). Writes run.json.sig beside the record; `pipeline audit --trusted-key` checks it.",
    )
    c2pa: C2paSpec | None = Field(
        None,
        description="Sign every output with a C2PA manifest (content credentials a C2PA validator checks). Signed bytes differ per build, so audits compare pixels.",
    )


class QcSpec(_Spec):
    """Quality gates ``pipeline evaluate`` applies: a failing row is marked ``rejected`` in the
    evaluation's metrics, with the gate it failed (the index never changes)."""

    max_leak: float | None = Field(
        None, ge=0, description="Mean absolute change outside the hole, in 8-bit grey levels."
    )
    max_seam: float | None = Field(
        None, gt=0, description="Seam score at the hole's boundary (about 1: no visible seam)."
    )
    min_masked_psnr: float | None = Field(
        None, description="dB of the hole against the real content it covered."
    )
    min_diversity: float | None = Field(
        None,
        ge=0,
        le=1,
        description="1 - mean pairwise MS-SSIM of one source's variants (0: all the same image).",
    )
    reject_blank: StrictBool = Field(
        True, description="Reject outputs (or fills) that are one flat value, e.g. black."
    )


class ComputeSpec(_Spec):
    """How the work is spread; never changes a result."""

    actors: int = Field(2, ge=1, description="Inpainting actors (processes) in the pool.")
    gpus_per_actor: float = Field(0, ge=0, description="GPUs reserved per actor; 0 runs on CPU.")
    cpus_per_actor: float = Field(1, gt=0, description="CPUs reserved per actor.")
    batch_size: int = Field(
        4, ge=1, description="Source images per batch sent to an actor (aim for >= 0.3 s of work)."
    )
    item_timeout_s: float = Field(
        600,
        gt=0,
        description="Longest an item may take (read, fill, write); past it the worker is restarted and the item quarantined as `timeout`. A batch gets batch_size times this.",
    )
    max_item_attempts: int = Field(
        2,
        ge=1,
        description="An item that kills its worker process this many times when run on its own is quarantined as `worker_crash` (a poison image), so the run always ends.",
    )
    checkpoint_s: float = Field(
        30,
        ge=0,
        description="Finished rows are saved to staging at least this often (seconds); a run killed before its commit resumes from the last save.",
    )
    max_error_rate: float = Field(
        0.01,
        ge=0,
        le=1,
        description="The run fails at commit if more than this fraction of items is quarantined.",
    )


AugmentStep = Annotated[dict[str, dict[str, Any]], Field(min_length=1, max_length=1)]


class Manifest(_Spec):
    """One dataset build. Top-level names are a contract; see `pipeline schema`."""

    name: str = Field(pattern=_NAME_RE, description="Dataset name (letters, digits, _ . -).")
    seed: StrictInt = Field(
        ge=0,
        lt=2**63,
        description="Run seed; every variant's seed derives from it, the image_id and the variant number.",
    )
    variants: StrictInt = Field(
        1, ge=1, le=1000, description="Synthetic variants per source image."
    )
    source: SourceSpec
    masks: list[MaskKind] = Field(
        min_length=1,
        description="Mask generators; several are combined as the union of their masks.",
    )
    inpainter: InpainterKind | Annotated[list[InpainterKind], Field(min_length=1)] = Field(
        description="The fill method, or a list of them to compare side by side: each fills "
        "the same masks with the same seeds and writes its own outputs (rows name it in "
        "`inpainter`; give two of one kind distinct `name`s)."
    )
    augment: list[AugmentStep] = Field(
        default_factory=list,
        description="Optional albumentations steps, e.g. [{HorizontalFlip: {p: 0.5}}], applied jointly to image, mask and boxes after the fill.",
    )
    split: SplitSpec = Field(default_factory=SplitSpec)
    output: OutputSpec
    compute: ComputeSpec = Field(default_factory=ComputeSpec)
    qc: QcSpec = Field(
        default_factory=QcSpec,
        description="Quality gates for `pipeline evaluate` (rows failing one are marked rejected).",
    )
    train: TrainSpec | None = Field(
        None, description="How `pipeline train` fits a maskaware model to this source and masks."
    )

    @field_validator("augment")
    @classmethod
    def _known_transforms(
        cls, steps: list[dict[str, dict[str, Any]]]
    ) -> list[dict[str, dict[str, Any]]]:
        from inpaint_ops.augment import build_augmenter

        build_augmenter(steps)  # raises ValueError naming the bad step
        return steps

    @model_validator(mode="after")
    def _distinct_inpainter_labels(self) -> Manifest:
        labels = [spec.label for spec in self.inpainters]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise ValueError(
                f"inpainters listed side by side need distinct labels; {repeated} repeat: "
                "give each a `name`"
            )
        return self

    @model_validator(mode="after")
    def _secrets_by_reference(self) -> Manifest:
        found = literal_secrets(self.source.storage_options, "source.storage_options")
        found += literal_secrets(self.output.storage_options, "output.storage_options")
        for spec in self.inpainters:
            options = getattr(spec, "storage_options", {})
            found += literal_secrets(options, f"inpainter {spec.label}: storage_options")
        if found:
            raise ValueError(
                f"{', '.join(found)} holds a secret written into the manifest, which Ray would "
                "copy to every worker; leave credentials to the environment (AWS_* variables, "
                "AWS_PROFILE, instance roles) or refer to a variable: secret: ${MY_S3_SECRET}"
            )
        return self

    @property
    def inpainters(self) -> tuple[InpainterSpec, ...]:
        """The inpainters in the order listed (one, unless several are compared)."""
        if isinstance(self.inpainter, list):
            return tuple(self.inpainter)
        return (self.inpainter,)

    def recipe(self) -> dict[str, Any]:
        """Everything that decides pixels and labels, as JSON data.

        Where data lives (URIs, storage options) and how work is spread (``compute``) are left
        out, so the same recipe moved to a bucket or a cluster is the same recipe; the data
        itself is pinned per row by ``source_sha256`` (and model weights by ``weights_sha256``).
        """
        exclude = dict(_NOT_RECIPE)
        if self.output.c2pa is None:  # unsigned: the recipes (and hashes) from before c2pa existed
            exclude["output"] = {*_NOT_RECIPE["output"], "c2pa"}
        if isinstance(self.inpainter, list):
            exclude["inpainter"] = {"__all__": _NOT_RECIPE["inpainter"]}
        return self.model_dump(mode="json", exclude=exclude)

    def fingerprint(self) -> str:
        """sha256 of the recipe's canonical JSON (the ``manifest_sha256`` on every row)."""
        return hashlib.sha256(recipe_bytes(self.recipe())).hexdigest()


_NOT_RECIPE: dict[str, Any] = {
    "compute": True,
    "qc": True,  # judges rows after the fact; decides no pixel
    "train": True,  # changes the weights, whose sha256 is on every row; not this dataset's recipe
    "masks": {"__all__": {"uri"}},  # where from_files masks live
    "source": {"uri", "annotations", "inventory", "storage_options"},
    "output": {
        "uri",
        "storage_options",
        "overwrite",
        "keep_versions",
        "sign_record",
        "embed_images",
    },
    # Where weights live and how to reach them; the weights themselves are pinned per row by
    # weights_sha256 (and by the manifest's own pin, which stays in the recipe).
    "inpainter": {"weights", "storage_options"},
}


def recipe_bytes(recipe: dict[str, Any]) -> bytes:
    """The bytes a recipe is hashed as (and stored as, so the file checks against its name)."""
    return canonical_json(recipe).encode()


def canonical_json(data: Any) -> str:
    """Stable JSON text: sorted keys, no spaces, for hashing."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def resolve_uri(uri: str, base: Path) -> str:
    """A local relative path resolves against the manifest's folder; URLs stay as written."""
    if "://" in uri or uri.startswith("/"):
        return uri
    return str((base / Path(uri).expanduser()).resolve())
