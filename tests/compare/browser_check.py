"""Drive an ``elan compare`` page in headless Chromium (Debian's ``/usr/bin/chromium`` through Python playwright,
no browser download): what tests/compare/test_compare_browser.py checks, and the screenshot in docs/compare.md.

    python tests/compare/browser_check.py OUT/index.html SCREENSHOT.png   # checks, then a screenshot
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

CHROMIUM = '/usr/bin/chromium'
ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
        '--disable-component-update', '--no-first-run']


def unavailable() -> Optional[str]:
    """Why the browser cannot run here (None when it can)."""
    if not (os.path.isfile(CHROMIUM) or shutil.which('chromium')):
        return f'no {CHROMIUM}: `make install-browser` installs Debian\'s chromium package'
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "no Python playwright: pip install -e '.[test]' installs it"
    return None


# Every image the page can show (the viewer's images of every set, image and model, their differences, the
# figures), loaded by the page itself: [src, naturalWidth] of each.
LOAD_ALL = '''async () => {
  const d = window.elanCompare.data;
  const srcs = [];
  d.sets.forEach(s => s.images.forEach(i => { srcs.push(...Object.values(i.files), ...Object.values(i.diffs)); }));
  srcs.push(...(d.figures || []).filter(f => f.endsWith('.png')));
  const sizes = await Promise.all(srcs.map(src => new Promise(done => {
    const im = new Image();
    im.onload = () => done([src, im.naturalWidth]);
    im.onerror = () => done([src, 0]);
    im.src = src;
  })));
  return sizes;
}'''


def check_page(page_path: Path, screenshot: Optional[Path] = None) -> Dict[str, Any]:
    """Open ``page_path`` from ``file://`` and exercise it; returns what was seen (the test asserts on it):
    ``errors`` (console errors, page errors, failed requests), ``images`` ([src, naturalWidth] of every image
    the page can show), ``document_images`` (those in the page after loading), the viewer's state and image
    transforms before and after dragging the divider, wheel-zooming and panning, side-by-side and difference
    modes, and the gain column after sorting by it."""
    from playwright.sync_api import sync_playwright

    seen: Dict[str, Any] = {'errors': []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM if os.path.isfile(CHROMIUM) else shutil.which('chromium'),
                                    args=ARGS)
        try:
            page = browser.new_page(viewport={'width': 1280, 'height': 900})
            page.on('console', lambda m: seen['errors'].append(f'console: {m.text}') if m.type == 'error' else None)
            page.on('pageerror', lambda e: seen['errors'].append(f'page error: {e}'))
            page.on('requestfailed', lambda r: seen['errors'].append(f'request failed: {r.url}'))
            page.goto(Path(page_path).resolve().as_uri())
            page.wait_for_load_state('load')
            seen['images'] = page.evaluate(LOAD_ALL)
            seen['document_images'] = page.evaluate(
                '() => Array.from(document.images).map(i => [i.getAttribute("src"), i.complete && i.naturalWidth])')
            state = '() => Object.assign({}, window.elanCompare.state)'
            transforms = '() => ["img-a", "img-b", "img-b2"].map(id => document.getElementById(id).style.transform)'
            seen['rendering'] = page.evaluate('() => getComputedStyle(document.getElementById("img-a")).imageRendering')
            page.locator('#viewer-section').scroll_into_view_if_needed()
            seen['start'] = page.evaluate(state)
            seen['clip_start'] = page.evaluate('() => document.querySelector(".view .clip").style.clipPath')
            box = page.locator('#divider').bounding_box()
            page.mouse.move(box['x'] + box['width'] / 2, box['y'] + 40)
            page.mouse.down()
            page.mouse.move(box['x'] - 150, box['y'] + 40, steps=5)
            page.mouse.up()
            seen['after_split'] = page.evaluate(state)
            seen['clip_after'] = page.evaluate('() => document.querySelector(".view .clip").style.clipPath')
            view = page.locator('#view-1').bounding_box()
            cx, cy = view['x'] + view['width'] * 0.7, view['y'] + view['height'] / 2
            page.mouse.move(cx, cy)
            for _ in range(3):
                page.mouse.wheel(0, -120)
            page.wait_for_timeout(100)
            seen['after_zoom'] = page.evaluate(state)
            page.mouse.move(cx, cy)
            page.mouse.down()
            page.mouse.move(cx - 60, cy - 30, steps=4)
            page.mouse.up()
            seen['after_pan'] = page.evaluate(state)
            seen['transforms'] = page.evaluate(transforms)
            page.select_option('#mode-select', 'side by side')
            seen['side_visible'] = page.locator('#view-2').is_visible()
            seen['side_transforms'] = page.evaluate(transforms)
            page.select_option('#mode-select', 'slider')
            page.check('#diff-toggle')
            seen['diff_src'] = page.evaluate('() => [document.getElementById("img-a").getAttribute("src"), '
                                             'document.getElementById("img-b").getAttribute("src")]')
            page.uncheck('#diff-toggle')
            page.locator('#images-0 thead th').last.click()
            seen['gains'] = page.evaluate('() => Array.from(document.querySelectorAll("#images-0 tbody tr"))'
                                          '.map(tr => tr.lastChild.textContent)')
            if screenshot is not None:
                page.evaluate('() => { window.scrollTo(0, 0); window.elanCompare.fit(); }')
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return seen


def problems(seen: Dict[str, Any]) -> List[str]:
    """What is wrong in ``check_page``'s observations (empty when the page works)."""
    found = list(seen['errors'])
    found += [f'image did not load: {src}' for src, width in seen['images'] + seen['document_images'] if not width]
    if seen['rendering'] != 'pixelated':
        found.append(f'image-rendering is {seen["rendering"]}, not pixelated')
    if not seen['after_split']['split'] < seen['start']['split'] or seen['clip_after'] == seen['clip_start']:
        found.append('dragging the divider did not move the split')
    if not seen['after_zoom']['zoom'] > seen['start']['zoom'] * 1.5:
        found.append('the wheel did not zoom in')
    if (seen['after_pan']['x'], seen['after_pan']['y']) == (seen['after_zoom']['x'], seen['after_zoom']['y']):
        found.append('dragging did not pan')
    if len(set(seen['transforms'])) != 1 or len(set(seen['side_transforms'])) != 1 or not seen['side_visible']:
        found.append(f'the views are not zoomed and panned together: {seen["transforms"]} {seen["side_transforms"]}')
    if not all('/diff_' in src for src in seen['diff_src']):
        found.append(f'difference view shows {seen["diff_src"]}')
    gains = [float(g) for g in seen['gains'] if g not in ('\u2013', '')]
    if gains != sorted(gains, reverse=True):
        found.append(f'sorting by gain gave {seen["gains"]}')
    return found


if __name__ == '__main__':
    why = unavailable()
    if why:
        sys.exit(f'browser_check: {why}')
    result = check_page(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None)
    wrong = problems(result)
    print('\n'.join(wrong) or f'page OK: {len(result["images"])} images load, slider, zoom, pan, differences, sorting')
    sys.exit(1 if wrong else 0)
