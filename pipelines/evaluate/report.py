"""``promptmine report URI``: a page and a contact sheet for a person to browse a job's results.

    promptmine report s3://bucket/eval-pez                 # -> s3://bucket/eval-pez/report.html + report.png
    promptmine report out/eval --output /tmp/r.html --limit 50 --sort caption_similarity

Reads the rows of an ``eval invert``, ``eval rewrite``, ``label`` or ``mine`` output (local or s3://)
and writes:
- an HTML page: the job's metrics (means and 95% CIs), reject reasons, and a table of rows with the
  thumbnails embedded as base64 JPEG, the prompts and the scores; click a header to sort by it.
- a PNG contact sheet (PIL): one line per row with its images side by side (target, then the image of
  each prompt column) and the prompts and scores beside them.
For a ``mine`` output the target images are read back from its input shards by key, and with
``--generator`` (e.g. ``world``) each prompt's regenerated image is shown beside its target.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import textwrap

log = logging.getLogger(__name__)

# per job kind: default sort column (descending) and the image columns with their labels, in order
KINDS = {
    "eval-invert": ("similarity", [("target_image", "target"), ("image", "prompt")]),
    "eval-rewrite": ("pick_score", [("raw_image", "raw prompt"), ("image", "rewritten")]),
    "label": ("pick_score", []),
    "mine": ("cosine", [("target_image", "target"), ("image", "regenerated")]),
}
HIDDEN = ("shard", "seconds", "token_ids")


def load_rows(out, limit: int, sort: str | None):
    """(kind, rows as pandas sorted and cut to ``limit``, total rows, metrics, reject reasons)."""
    from pipelines.jobs.markers import read_done

    manifest = out.child("_job.json")
    kind = json.loads(manifest.read_text()).get("job", "?") if manifest.exists() else "?"
    table = read_done(out, "rows")  # only shards with a done marker: never a half-finished rerun's files
    if table is None:
        raise ValueError(f"{out.uri}: no rows/ folder with Parquet files (is it a promptmine job output?)")
    df = table.to_pandas()
    metrics = json.loads(out.child("metrics.json").read_text()) if out.child("metrics.json").exists() else {}
    summary = json.loads(out.child("summary.json").read_text()) if out.child("summary.json").exists() else {}
    key = sort or KINDS.get(kind, (None, []))[0]
    if key is not None:
        if key not in df.columns:
            raise ValueError(f"--sort {key!r}: no such column (columns: {', '.join(df.columns)})")
        df = df.sort_values(key, ascending=False, na_position="last")
    return kind, df.head(limit), len(df), metrics, summary.get("reject_reasons", {})


def image_columns(kind: str, df) -> list[tuple[str, str]]:
    known = [(c, label) for c, label in KINDS.get(kind, (None, []))[1] if c in df.columns]
    extra = [(c, c[: -len("_image")]) for c in df.columns
             if c.endswith("_image") and c not in dict(known)]
    return known + extra


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "<td></td>"
    if isinstance(value, bytes):
        return f'<td><img src="data:image/jpeg;base64,{base64.b64encode(value).decode()}"></td>'
    if isinstance(value, float):
        return f'<td class="n" data-v="{value}">{value:.4f}</td>'
    if isinstance(value, int):
        return f'<td class="n" data-v="{value}">{value}</td>'
    if hasattr(value, "__len__") and not isinstance(value, str):
        return f"<td>{html.escape(', '.join(_short(v) for v in value))}</td>"
    return f"<td>{html.escape(str(value))}</td>"


def _short(v) -> str:
    try:
        return f"{float(v):.3f}"
    except (TypeError, ValueError):
        return str(v)


_SCRIPT = """
document.querySelectorAll('th').forEach((th, i) => th.onclick = () => {
  const body = th.closest('table').tBodies[0], desc = th.dataset.desc !== '1';
  const val = r => { const c = r.cells[i]; return c.dataset.v !== undefined ? parseFloat(c.dataset.v) : c.innerText; };
  [...body.rows].sort((a, b) => { const x = val(a), y = val(b);
    return (x < y ? -1 : x > y ? 1 : 0) * (desc ? -1 : 1); }).forEach(r => body.appendChild(r));
  th.dataset.desc = desc ? '1' : '0';
});
"""
_STYLE = """body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}td,th{border:1px solid #ccc;
padding:4px;vertical-align:top;max-width:28em}th{cursor:pointer;background:#eee}td.n{text-align:right;
font-family:monospace}img{width:128px;height:128px;object-fit:contain}"""


def render_html(uri: str, kind: str, df, total: int, metrics: dict, reasons: dict) -> str:
    from pipelines.evaluate.cli import format_metrics

    images = [c for c, _ in image_columns(kind, df)]
    columns = ["key", *images, *[c for c in df.columns if c not in images and c != "key" and c not in HIDDEN]]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "\n".join("<tr>" + "".join(_cell(row[c]) for c in columns) + "</tr>" for row in df.to_dict("records"))
    rejects = "".join(f"<li>{html.escape(r)}: {n}</li>" for r, n in sorted(reasons.items(), key=lambda x: -x[1]))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>promptmine report: {html.escape(uri)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(kind)}: {html.escape(uri)}</h1>"
            f"<p>{len(df)} of {total} rows shown (click a column header to sort).</p>"
            f"<h2>Metrics</h2><pre>{html.escape(format_metrics(metrics)) if metrics else 'none'}</pre>"
            f"<h2>Rejects</h2><ul>{rejects or '<li>none</li>'}</ul>"
            f"<h2>Rows</h2><table><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>"
            f"<script>{_SCRIPT}</script></body></html>")


def _score_lines(row: dict, images: list[str], width: int = 62) -> list[str]:
    """The key, each text column (up to 3 wrapped lines), then 'name value [± std]' items packed in lines."""
    texts, scores = [], []
    for c, v in row.items():
        if c in HIDDEN or c in images or c == "key" or c.endswith("_std") or v is None or isinstance(v, bytes):
            continue
        if isinstance(v, float) and v == v:
            std = row.get(f"{c}_std")
            scores.append(f"{c} {v:.3f}" + (f" ± {std:.3f}" if isinstance(std, float) and std == std else ""))
        elif isinstance(v, str):
            texts.append(f"{c}: {v}")
    lines = [str(row["key"])]
    for t in texts:
        lines += textwrap.wrap(t, width)[:3]
    line = ""
    for item in scores:
        if line and len(line) + 3 + len(item) > width:
            lines.append(line)
            line = ""
        line = f"{line}   {item}" if line else item
    return lines + ([line] if line else [])


def render_sheet(kind: str, df, thumb: int = 128, text_width: int = 470):
    """A PIL image: per row, its images (labelled) then its key, prompts and scores."""
    import io

    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=13)
    columns = image_columns(kind, df)
    line_h, pad = 16, 8
    records = df.to_dict("records")
    blocks = [_score_lines(r, [c for c, _ in columns]) for r in records]
    image_h = thumb + line_h if columns else 0  # text-only outputs (label, mine) get compact lines
    heights = [max(image_h, len(b) * line_h) + 2 * pad for b in blocks]
    width = len(columns) * (thumb + pad) + text_width + 2 * pad
    sheet = Image.new("RGB", (width, sum(heights) + 2 * pad + 1), "white")
    draw = ImageDraw.Draw(sheet)
    y = pad
    for record, lines, h in zip(records, blocks, heights):
        x = pad
        for column, label in columns:
            draw.text((x, y), label, fill="#555", font=font)
            if record.get(column):
                im = Image.open(io.BytesIO(record[column])).convert("RGB")
                scale = thumb / max(im.size)  # small thumbnails are enlarged, large ones reduced
                im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                               Image.NEAREST if scale > 1 else Image.LANCZOS)
                sheet.paste(im, (x, y + line_h))
            else:
                draw.rectangle([x, y + line_h, x + thumb - 1, y + line_h + thumb - 1], outline="#ccc")
            x += thumb + pad
        for i, line in enumerate(lines):
            draw.text((x, y + i * line_h), line, fill="black" if i else "#036", font=font)
        y += h
        draw.line([(0, y - pad // 2), (width, y - pad // 2)], fill="#ddd")
    return sheet


def cmd_report(args) -> int:
    import io

    from pipelines.cli import CLIError
    from pipelines.io.storage import StorageOptions

    if args.limit < 1:
        raise CLIError(f"--limit must be >= 1, got {args.limit}")
    options = StorageOptions.from_env(args.endpoint_url)
    try:
        out = options.resolve(args.uri)
        kind, df, total, metrics, reasons = load_rows(out, args.limit, args.sort)
        if kind == "mine":
            from pipelines.evaluate.report_images import add_mining_images

            df = add_mining_images(out, df, args.images, args.generator)
        page = options.resolve(args.output or out.child("report.html").uri)
        png = options.resolve(args.png or (page.uri[: -len(".html")] if page.uri.endswith(".html") else page.uri)
                              + ".png")
        page.write_text(render_html(args.uri, kind, df, total, metrics, reasons))
        buf = io.BytesIO()
        render_sheet(kind, df.head(args.sheet_rows)).save(buf, format="PNG")
        png.write_bytes(buf.getvalue())
    except (ValueError, OSError) as e:  # OSError: StorageError, or a generator that cannot be loaded
        raise CLIError(str(e)) from e
    print(f"report: {len(df)} of {total} rows of {kind} -> {page.uri} and {png.uri}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("report", help="HTML page + PNG contact sheet of a job's images, prompts and scores",
                       description="Render an eval invert / eval rewrite / label / mine output for browsing.")
    p.add_argument("uri", help="job output folder or s3://bucket/prefix")
    p.add_argument("--output", metavar="URI", help="HTML file to write (default URI/report.html)")
    p.add_argument("--png", metavar="URI", help="contact sheet to write (default: the HTML path with .png)")
    p.add_argument("--sort", metavar="COLUMN", help="sort rows by this column, descending (default: the main score)")
    p.add_argument("--limit", type=int, default=200, help="rows in the page (default 200)")
    p.add_argument("--sheet-rows", type=int, default=24, help="rows in the contact sheet (default 24)")
    p.add_argument("--images", metavar="URI", help="mine output: the input shards to show target images from "
                                                   "(default: the input recorded in its _job.json)")
    p.add_argument("--generator", metavar="MODEL", help="mine output: also show the image each prompt regenerates "
                                                       "(world, or a diffusers model id or folder)")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint; default: $AWS_ENDPOINT_URL")
    p.set_defaults(func=cmd_report)
