"""``index.html`` of ``elan compare``: one self-contained file (styles, script and data inline; no network),
with the images as files beside it (``images/``, ``figures/``), so it works from ``file://``.

The summary tables are static HTML; the per-image tables (sortable by the gain of one model over another)
and the viewer (before/after slider or side by side, synchronised zoom and pan at pixel level, absolute
differences from the HR image) are built by ``static/compare.js`` (plain JavaScript) from the run's
results, embedded as JSON. :func:`referenced_files` lists every file the page refers to.
"""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Dict, Iterator, List

STATIC = Path(__file__).with_name('static')


def _fmt(value: Any, digits: int) -> str:
    return '–' if value is None else f'{value:.{digits}f}'


def _params(count: Any) -> str:
    if count is None:
        return '–'
    return f'{count / 1e6:.2f} M' if count >= 1e6 else f'{count / 1e3:.1f} K'


def summary_table(test_set: Dict[str, Any], models: List[Dict[str, Any]]) -> str:
    """The HTML table of one set: per model PSNR/SSIM (Y), parameters and latency of this run."""
    rows = []
    best = max((s.get('psnr', float('-inf')) for s in test_set['summary'].values()), default=None)
    for model in models:
        s = test_set['summary'].get(model['name'], {})
        cls = ' class="best"' if s.get('psnr') is not None and s.get('psnr') == best else ''
        rows.append(f'<tr{cls}><th scope="row" title="{html.escape(model["about"])}">{html.escape(model["name"])}</th>'
                    f'<td>{_fmt(s.get("psnr"), 2)}</td><td>{_fmt(s.get("ssim"), 4)}</td>'
                    f'<td>{_params(model["params"])}</td><td>{_fmt(s.get("ms"), 1)}</td>'
                    f'<td>{_fmt(s.get("ms_per_mp"), 0)}</td>'
                    f'<td>{s.get("images", 0)}/{len(test_set["images"])}</td></tr>')
    return ('<table class="summary"><thead><tr><th>model</th><th>PSNR (dB)</th><th>SSIM</th><th>parameters</th>'
            '<th>latency (ms / image)</th><th>ms / output MP</th><th>images</th></tr></thead><tbody>'
            + ''.join(rows) + '</tbody></table>')


def page_data(results: Dict[str, Any]) -> Dict[str, Any]:
    """The results with every image's files as paths relative to the page (what the script shows)."""
    data = json.loads(json.dumps(results))
    for test_set in data['sets']:
        for img in test_set['images']:
            folder = img['folder']
            img['files'] = {'GT': f'{folder}/GT.png', 'LR': f'{folder}/LR.png'}
            img['diffs'] = {}
            for model in data['models']:
                if model['name'] in img['metrics']:
                    img['files'][model['name']] = f'{folder}/{model["key"]}.png'
                    img['diffs'][model['name']] = f'{folder}/diff_{model["key"]}.png'
    return data


def referenced_files(data: Dict[str, Any]) -> Iterator[str]:
    """Every file (relative path) the page shows or links: images, differences and figures."""
    for test_set in data['sets']:
        for img in test_set['images']:
            yield from img['files'].values()
            yield from img['diffs'].values()
    yield from data.get('figures', [])


def _figures(data: Dict[str, Any]) -> str:
    pngs = [f for f in data.get('figures', []) if f.endswith('.png')]
    if not pngs:
        return ''
    items = ''.join(f'<figure><img src="{html.escape(f)}" alt="{html.escape(f)}"><figcaption>{html.escape(f)} · '
                    f'<a href="{html.escape(f[:-4])}.pdf">PDF</a></figcaption></figure>' for f in pngs)
    return f'<section id="figures"><h2>Figures</h2>{items}</section>'


def render(results: Dict[str, Any]) -> str:
    """The page's HTML for ``results`` (as :func:`elan_arch.compare.runner.compare` builds them)."""
    data = page_data(results)
    esc = html.escape
    summaries = ''.join(f'<h3>{esc(s["name"])} <small>({esc(s["source"])})</small></h3>'
                        + summary_table(s, data['models']) for s in data['sets'])
    problems = ''.join(f'<li>{esc(p)}</li>' for p in data.get('problems', []))
    problems = f'<div class="problems"><strong>Not compared:</strong><ul>{problems}</ul></div>' if problems else ''
    script_data = json.dumps(data).replace('</', '<\\/')
    meta = (f'{esc(data["date"])} · {esc(data["device"])} · {esc(data["precision"])}'
            + (f', tiles of {data["tile"]} px' if data.get('tile') else '') + f' · torch {esc(data["torch"])}')
    return f'''<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>elan compare: x{data["scale"]} super-resolution</title>
<style>
{(STATIC / 'compare.css').read_text(encoding='utf-8')}
</style>
</head>
<body>
<header>
<h1>Super-resolution x{data["scale"]}: {esc(", ".join(m["name"] for m in data["models"]))}</h1>
<p class="meta">{meta}</p>
<p class="meta"><code>{esc(data["command"])}</code></p>
<p class="meta">PSNR / SSIM: {esc(data["metrics"])} (as <code>basicsr test</code>); latency measured in this run.</p>
</header>
{problems}
<section id="summary"><h2>Summary</h2>{summaries}</section>
<section id="viewer-section"><h2>Viewer</h2><div id="viewer"></div></section>
<section id="images"><h2>Images</h2><div id="tables"></div></section>
{_figures(data)}
<script type="application/json" id="compare-data">{script_data}</script>
<script>
{(STATIC / 'compare.js').read_text(encoding='utf-8')}
</script>
</body>
</html>
'''


def write_page(path: Path, results: Dict[str, Any]) -> Path:
    """Write ``index.html`` to ``path``; returns it."""
    path.write_text(render(results), encoding='utf-8')
    return path
