"""The preview's HTML report: one self-contained file (images inlined, charts as inline SVG).

Nothing is fetched when it opens: no script, font or style from anywhere else, so it can be
attached to a ticket or opened from a bucket. A small inline script counts the images that
decoded and sets ``data-images-loaded`` on the body (what the rendering test reads).
"""

from __future__ import annotations

import base64
import math
from html import escape
from typing import Any

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
METRICS = {
    "masked_psnr": "masked PSNR (dB, higher is closer to the real content)",
    "masked_ssim": "masked SSIM (1 is identical)",
    "seam": "seam score (about 1: no visible seam)",
    "diversity": "diversity (1 - mean pairwise MS-SSIM of variants)",
}
W, H, PAD = 560, 220, 40

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1200px;color:#222}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}td,th{padding:3px 10px;border-bottom:1px solid #eee;
text-align:right}td:first-child,th:first-child{text-align:left}.charts{display:flex;
flex-wrap:wrap;gap:16px}.sheet{max-width:100%;border:1px solid #ddd}.muted{color:#777}
"""
_SCRIPT = """
window.addEventListener('load',function(){var n=0;document.querySelectorAll('img').forEach(
function(i){if(i.complete&&i.naturalWidth>0){n++;}});document.body.dataset.imagesLoaded=n;});
"""


def render_report(
    record: dict[str, Any], summary: dict[str, Any], metrics: list[dict[str, Any]], sheet: bytes
) -> bytes:
    labels = list(summary["by_inpainter"])
    bins = sorted({r["area_bin"] for r in metrics}, key=lambda b: int(b.split("-")[0]))
    parts = [
        f"<h1>{escape(record['name'])}: version {summary['version']}</h1>",
        _facts(record, summary),
        "<h2>Contact sheet</h2>",
        '<p class="muted">Per source: the source and each variant\'s mask (red); below, each '
        "inpainter's output of that variant.</p>",
        f'<img class="sheet" alt="contact sheet" src="data:image/png;base64,'
        f'{base64.b64encode(sheet).decode()}">',
        "<h2>Quality by mask-area bin</h2>",
        _table(summary),
        '<div class="charts">',
        _bars("rows per mask-area bin", bins, _counts(metrics, labels, bins), labels),
        *(_bars(t, bins, _means(summary, labels, bins, k), labels) for k, t in METRICS.items()),
        "</div>",
        "<h2>Distributions</h2>",
        '<div class="charts">',
        *(_histogram(t, metrics, k, labels) for k, t in METRICS.items()),
        "</div>",
        "<h2>Throughput</h2>",
        _timeline(record.get("timeline")),
    ]
    body = "\n".join(parts)
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{escape(record['name'])} preview</title><style>{_STYLE}</style>"
        f"<script>{_SCRIPT}</script></head><body>{body}</body></html>"
    ).encode()


def _facts(record: dict[str, Any], summary: dict[str, Any]) -> str:
    run = record.get("summary") or {}
    facts = {
        "run": record["run_id"],
        "rows": summary["rows"],
        "ok / rejected": f"{summary['ok']} / {summary['rejected']}",
        "items in / quarantined": f"{run.get('items_in')} / {run.get('items_quarantined')}",
        "images per second": run.get("images_per_s"),
        "recipe sha256": record.get("manifest_sha256", "")[:16] + "…",
    }
    rows = "".join(
        f"<tr><td>{escape(k)}</td><td>{escape(str(v))}</td></tr>" for k, v in facts.items()
    )
    return f"<table>{rows}</table>"


def _table(summary: dict[str, Any]) -> str:
    keys = ("rows", "masked_psnr", "masked_ssim", "seam", "diversity", "leak_mean", "fid")
    head = "".join(f"<th>{k}</th>" for k in ("inpainter", "bin", *keys, "rejected"))
    lines = []
    for label, figures in summary["by_inpainter"].items():
        for name, row in [("all", figures), *figures["bins"].items()]:
            cells = "".join(f"<td>{_fmt(row.get(k))}</td>" for k in (*keys, "rejected"))
            lines.append(f"<tr><td>{escape(label)}</td><td>{name}</td>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(lines)}</table>"


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else escape(str(value))


def _counts(metrics: list[dict[str, Any]], labels: list[str], bins: list[str]) -> list[list]:
    return [
        [sum(r["inpainter"] == s and r["area_bin"] == b for r in metrics) for b in bins]
        for s in labels
    ]


def _means(summary: dict[str, Any], labels: list[str], bins: list[str], key: str) -> list[list]:
    found = summary["by_inpainter"]
    return [[(found[s]["bins"].get(b) or {}).get(key) for b in bins] for s in labels]


def _bars(title: str, categories: list[str], series: list[list], labels: list[str]) -> str:
    values = [v for line in series for v in line if v is not None and math.isfinite(v)]
    top = max(values, default=1.0) or 1.0
    slot = (W - 2 * PAD) / max(1, len(categories))
    width = slot * 0.8 / max(1, len(series))
    shapes = []
    for s, line in enumerate(series):
        for c, value in enumerate(line):
            if value is None or not math.isfinite(value):
                continue
            height = (H - 2 * PAD) * value / top
            x = PAD + c * slot + slot * 0.1 + s * width
            shapes.append(
                f'<rect x="{x:.1f}" y="{H - PAD - height:.1f}" width="{width:.1f}" '
                f'height="{height:.1f}" fill="{PALETTE[s % 6]}"><title>{escape(labels[s])} '
                f"{categories[c]}: {value:.4g}</title></rect>"
            )
    ticks = [
        f'<text x="{PAD + (c + 0.5) * slot:.1f}" y="{H - PAD + 14}" font-size="10" '
        f'text-anchor="middle">{name}</text>'
        for c, name in enumerate(categories)
    ]
    return _svg(title, shapes + ticks, top, labels)


def _histogram(title: str, metrics: list[dict[str, Any]], key: str, labels: list[str]) -> str:
    values = {s: [r[key] for r in metrics if r["inpainter"] == s] for s in labels}
    finite = {s: [v for v in vs if v is not None and math.isfinite(v)] for s, vs in values.items()}
    every = [v for vs in finite.values() for v in vs]
    if not every:
        return f'<p class="muted">{escape(title)}: no rows to show.</p>'
    low, high, edges = min(every), max(every), 12
    span = (high - low) or 1.0
    series = []
    for s in labels:
        counts = [0] * edges
        for v in finite[s]:
            counts[min(edges - 1, int((v - low) / span * edges))] += 1
        series.append(counts)
    names = [f"{low + span * i / edges:.3g}" for i in range(edges)]
    return _bars(f"{title}: rows by value", names, series, labels)


def _timeline(timeline: dict[str, list[float]] | None) -> str:
    if not timeline or len(timeline.get("t_s", [])) < 2:
        return '<p class="muted">This run recorded no throughput timeline.</p>'
    ts, done = timeline["t_s"], timeline["items_done"]
    end, total = max(ts) or 1.0, max(done) or 1.0
    points = " ".join(
        f"{PAD + (W - 2 * PAD) * t / end:.1f},{H - PAD - (H - 2 * PAD) * n / total:.1f}"
        for t, n in zip(ts, done, strict=True)
    )
    line = f'<polyline points="{points}" fill="none" stroke="{PALETTE[0]}" stroke-width="2"/>'
    rate = done[-1] / ts[-1] if ts[-1] else 0.0
    axis = f'<text x="{W - PAD}" y="{H - PAD + 14}" font-size="10" text-anchor="end">{end:.1f} s</text>'
    title = f"items done over time ({rate:.2f} items/s overall, Ray start-up included)"
    return _svg(title, [line, axis], total, ["items done"])


def _svg(title: str, shapes: list[str], top: float, labels: list[str]) -> str:
    legend = "".join(
        f'<rect x="{PAD + 130 * i}" y="6" width="10" height="10" fill="{PALETTE[i % 6]}"/>'
        f'<text x="{PAD + 14 + 130 * i}" y="15" font-size="11">{escape(label)}</text>'
        for i, label in enumerate(labels)
    )
    frame = (
        f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="#999"/>'
        f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{H - PAD}" stroke="#999"/>'
        f'<text x="{PAD - 4}" y="{PAD + 4}" font-size="10" text-anchor="end">{top:.3g}</text>'
        f'<text x="{PAD - 4}" y="{H - PAD}" font-size="10" text-anchor="end">0</text>'
    )
    return (
        f'<figure><svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
        f'role="img" aria-label="{escape(title)}">{legend}{frame}{"".join(shapes)}</svg>'
        f"<figcaption>{escape(title)}</figcaption></figure>"
    )
