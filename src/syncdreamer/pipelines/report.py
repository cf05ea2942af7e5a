"""A self-contained HTML report of a demo run (images inlined as base64; no extra dependencies).

Sections: the input image, the generated views next to the ground truth, the training loss curve (SVG from
Lightning's CSV log), the last validation grid, the mesh turntable, the metrics table and stage timings.
"""
from __future__ import annotations

import base64
import csv
import html
import math
from pathlib import Path


def _img(path: Path | None, title: str = "", width: int | None = None) -> str:
    if path is None or not Path(path).exists():
        return f"<p class='missing'>missing: {html.escape(str(path))}</p>"
    mime = {".png": "image/png", ".gif": "image/gif", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}[Path(path).suffix.lower()]
    data = base64.b64encode(Path(path).read_bytes()).decode()
    w = f" width='{width}'" if width else ""
    return f"<img src='data:{mime};base64,{data}' title='{html.escape(title)}'{w}>"


def read_loss_curve(train_dir: Path) -> dict[str, list[tuple[float, float]]]:
    """``{"train/loss": [(step, value)...], "val/loss": [...]}`` from the first ``metrics.csv`` under train_dir."""
    files = sorted(Path(train_dir).rglob("metrics.csv")) if train_dir else []
    curves: dict[str, list[tuple[float, float]]] = {"train/loss": [], "val/loss": []}
    if not files:
        return curves
    with open(files[0]) as fh:
        for row in csv.DictReader(fh):
            for key in curves:
                if row.get(key) not in (None, ""):
                    curves[key].append((float(row["step"]), float(row[key])))
    return curves


def loss_svg(curves: dict[str, list[tuple[float, float]]], width: int = 640, height: int = 260) -> str:
    """An SVG line chart of the loss curves (train as a line with a running mean, val as dots)."""
    pts = [p for c in curves.values() for p in c]
    if not pts:
        return "<p class='missing'>no loss log found</p>"
    pad = 40
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs) or 1.0
    y0, y1 = 0.0, max(ys) * 1.05 or 1.0
    sx = lambda x: pad + (x - x0) / max(x1 - x0, 1e-9) * (width - 2 * pad)  # noqa: E731
    sy = lambda y: height - pad - (y - y0) / max(y1 - y0, 1e-9) * (height - 2 * pad)  # noqa: E731
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' class='chart'>",
             f"<line x1='{pad}' y1='{height - pad}' x2='{width - pad}' y2='{height - pad}' stroke='#444'/>",
             f"<line x1='{pad}' y1='{pad}' x2='{pad}' y2='{height - pad}' stroke='#444'/>"]
    for frac in (0.0, 0.5, 1.0):
        y = y0 + frac * (y1 - y0)
        parts.append(f"<text x='4' y='{sy(y) + 4:.1f}' font-size='11'>{y:.2f}</text>")
    parts.append(f"<text x='{pad}' y='{height - 12}' font-size='11'>step {x0:.0f}</text>")
    parts.append(f"<text x='{width - pad - 60}' y='{height - 12}' font-size='11'>step {x1:.0f}</text>")
    train = curves.get("train/loss", [])
    if train:
        line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in train)
        parts.append(f"<polyline points='{line}' fill='none' stroke='#9ecae1' stroke-width='1'/>")
        k = max(1, len(train) // 10)
        smooth = [(train[i][0], sum(y for _, y in train[max(0, i - k + 1):i + 1]) / len(train[max(0, i - k + 1):i + 1]))
                  for i in range(len(train))]
        line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in smooth)
        parts.append(f"<polyline points='{line}' fill='none' stroke='#08519c' stroke-width='2'/>")
    for x, y in curves.get("val/loss", []):
        parts.append(f"<circle cx='{sx(x):.1f}' cy='{sy(y):.1f}' r='4' fill='#e6550d'/>")
    parts.append(f"<text x='{width - 250}' y='{pad - 10}' font-size='12' fill='#08519c'>train loss (running mean)</text>")
    parts.append(f"<text x='{width - 90}' y='{pad - 10}' font-size='12' fill='#e6550d'>val loss</text>")
    parts.append("</svg>")
    return "".join(parts)


def read_metrics(eval_dir: Path | None) -> tuple[list[str], list[dict]]:
    files = sorted(Path(eval_dir).glob("metrics.csv")) if eval_dir else []
    if not files:
        return [], []
    with open(files[0]) as fh:
        rows = list(csv.DictReader(fh))
    return (list(rows[0].keys()) if rows else []), rows


def _fmt(v: str) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return html.escape(str(v))
    if math.isinf(f):
        return "inf"
    return f"{f:.4g}"


def write_report(state, path: Path) -> Path:
    """Write the report for a :class:`~syncdreamer.pipelines.demo.DemoState` to ``path``."""
    views = state.views_dir
    gt = state.data_root / "target" / state.uid if state.data_root and state.uid else None
    n = 16
    gen_row = "".join(_img(views / f"{i:03d}.png" if views else None, f"generated view {i}") for i in range(n))
    gt_row = "".join(_img(gt / f"{i:03d}.png" if gt else None, f"ground truth view {i}") for i in range(n))
    val_grids = sorted((state.train_dir / "images" / "val").glob("*.png")) if state.train_dir else []
    turntable = next(iter(sorted(state.recon_dir.glob("*.gif")))) if state.recon_dir else None
    header, rows = read_metrics(state.eval_dir)
    wanted = [h for h in header if h in ("object", "sample", "status", "psnr", "fg_psnr", "ssim", "mask_iou", "lpips", "chamfer", "iou",
                                         "fscore", "error")] or header
    table = ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in wanted) + "</tr>"
             + "".join("<tr>" + "".join(f"<td>{_fmt(r.get(h, ''))}</td>" for h in wanted) + "</tr>" for r in rows)
             + "</table>") if rows else "<p class='missing'>no metrics</p>"
    summary = Path(state.eval_dir) / "summary.md" if state.eval_dir else None
    timings = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.0f} s</td></tr>" for k, v in state.timings.items())
    doc = f"""<!doctype html>
<html><head><meta charset='utf-8'><title>SyncDreamer demo report</title>
<style>
body {{ font-family: sans-serif; margin: 24px; max-width: 1400px; }}
.row {{ display: grid; grid-template-columns: repeat(16, 1fr); gap: 2px; margin-bottom: 4px; }}
.row img {{ width: 100%; image-rendering: pixelated; border: 1px solid #ddd; box-sizing: border-box; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
.missing {{ color: #b00; }} .note {{ color: #555; font-size: 90%; }}
</style></head><body>
<h1>SyncDreamer demo: image &rarr; 16 views &rarr; mesh</h1>
<p class='note'>The whole pipeline on a CPU with the tiny model trained for a few minutes on procedural objects
(<code>experiment=smoke</code>). It checks that every stage works end to end; a model this small and this briefly
trained does not produce good views, so the numbers below are not a quality claim (see experiments/protocol.md
for the paper's protocol and numbers).</p>
<h2>Input</h2>
<p>Held-out object <code>{html.escape(str(state.uid))}</code>, input view elevation {state.elevation_deg} deg.</p>
{_img(state.input_png, "input", 192)}
<h2>Generated views (top) and ground truth (bottom)</h2>
<p class='note'>View i at azimuth i &times; 22.5 deg, elevation 30 deg; view 0 is the input's azimuth.</p>
<div class='row'>{gen_row}</div><div class='row'>{gt_row}</div>
<h2>Training loss</h2>
{loss_svg(read_loss_curve(state.train_dir))}
<h3>Last validation grid</h3>
{_img(val_grids[-1] if val_grids else None, "validation", 900)}
<h2>Mesh turntable (NeuS, fast preset)</h2>
{_img(turntable, "turntable", 256)}
<h2>Metrics</h2>
{table}
<pre>{html.escape(summary.read_text()) if summary and summary.exists() else ''}</pre>
<h2>Timings</h2>
<table>{timings}</table>
<p class='note'>Files: {html.escape(str(state.out))}</p>
</body></html>
"""
    Path(path).write_text(doc)
    return Path(path)
