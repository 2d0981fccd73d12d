// elan compare: the per-image tables and the viewer of index.html (inlined by elan_arch/compare/page.py).
// Plain JavaScript, no network: everything comes from the JSON in #compare-data and the image files beside the page.
(function () {
  'use strict';
  const data = JSON.parse(document.getElementById('compare-data').textContent);
  const models = data.models.map(function (m) { return m.name; });
  const choices = models.concat(['GT']);
  const MAX_ZOOM = 64;

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === 'text') { node.textContent = attrs[k]; } else { node.setAttribute(k, attrs[k]); }
    });
    (children || []).forEach(function (c) { node.appendChild(c); });
    return node;
  }

  function select(id, options, value) {
    const s = el('select', {id: id});
    options.forEach(function (o) { s.appendChild(el('option', {value: o, text: o})); });
    s.value = value;
    return s;
  }

  // ---------------------------------------------------------------- viewer
  const state = {set: 0, image: 0, a: models[0], b: models[models.length - 1], mode: 'slider', diff: false,
                 gain: 4, zoom: 1, x: 0, y: 0, split: 0.5, width: 0, height: 0, fitted: false};
  const viewer = document.getElementById('viewer');
  const imageSelect = el('select', {id: 'image-select'});
  data.sets.forEach(function (s, si) {
    const group = el('optgroup', {label: s.name});
    s.images.forEach(function (img, ii) { group.appendChild(el('option', {value: si + ':' + ii, text: img.name})); });
    imageSelect.appendChild(group);
  });
  const selA = select('select-a', choices, state.a);
  const selB = select('select-b', choices, state.b);
  const modeSelect = select('mode-select', ['slider', 'side by side'], 'slider');
  const diffBox = el('input', {type: 'checkbox', id: 'diff-toggle'});
  const gainRange = el('input', {type: 'range', id: 'diff-gain', min: '1', max: '32', step: '1', value: '4'});
  const splitRange = el('input', {type: 'range', id: 'split', min: '0', max: '1000', value: '500'});
  const zoomLabel = el('span', {id: 'zoom-label'});
  const buttons = ['fit', '1:1', '\u2212', '+'].map(function (t) { return el('button', {type: 'button', text: t}); });
  buttons[0].id = 'zoom-fit'; buttons[1].id = 'zoom-1'; buttons[2].id = 'zoom-out'; buttons[3].id = 'zoom-in';
  function label(text, control) { return el('label', {}, [document.createTextNode(text + ' '), control]); }
  viewer.appendChild(el('div', {class: 'controls'}, [
    label('image', imageSelect), label('left', selA), label('right', selB), label('view', modeSelect),
    label('|\u00b7 \u2212 GT|', diffBox), label('gain', gainRange), label('split', splitRange)]));
  viewer.appendChild(el('div', {class: 'controls'}, buttons.concat([zoomLabel, el('span', {class: 'hint',
    text: 'wheel: zoom at the pointer; drag: pan (both views together); drag the white line: move the split'})])));

  const imgA = el('img', {class: 'layer', id: 'img-a', alt: 'left', draggable: 'false'});
  const imgB = el('img', {class: 'layer', id: 'img-b', alt: 'right', draggable: 'false'});
  const imgB2 = el('img', {class: 'layer', id: 'img-b2', alt: 'right', draggable: 'false'});
  const clip = el('div', {class: 'clip'}, [imgB]);
  const divider = el('div', {class: 'divider', id: 'divider'});
  const tagA = el('span', {class: 'tag left'});
  const tagB = el('span', {class: 'tag right'});
  const tagB2 = el('span', {class: 'tag right'});
  const view1 = el('div', {class: 'view', id: 'view-1'}, [imgA, clip, divider, tagA, tagB]);
  const view2 = el('div', {class: 'view', id: 'view-2'}, [imgB2, tagB2]);
  viewer.appendChild(el('div', {class: 'stage'}, [view1, view2]));

  function currentImage() { return data.sets[state.set].images[state.image]; }

  function source(img, name) {
    if (state.diff && img.diffs[name]) { return img.diffs[name]; }
    return img.files[name] || img.files.GT;
  }

  function caption(img, name) {
    const m = img.metrics[name];
    const what = state.diff && name !== 'GT' ? '|' + name + ' \u2212 GT|' : name;
    if (!img.files[name]) { return name + ': not computed (GT shown)'; }
    return m ? what + '  ' + m.psnr.toFixed(2) + ' dB / ' + m.ssim.toFixed(4) : what;
  }

  function applyTransform() {
    const t = 'translate(' + state.x + 'px,' + state.y + 'px) scale(' + state.zoom + ')';
    [imgA, imgB, imgB2].forEach(function (im) { im.style.transform = t; });
    zoomLabel.textContent = 'zoom ' + Math.round(state.zoom * 100) + '%';
  }

  function applySplit() {
    const w = view1.clientWidth;
    const px = Math.round(state.split * w);
    clip.style.clipPath = 'inset(0 0 0 ' + px + 'px)';
    divider.style.left = px + 'px';
    splitRange.value = String(Math.round(state.split * 1000));
  }

  function fit() {
    if (!state.width) { return; }
    const w = view1.clientWidth; const h = view1.clientHeight;
    state.zoom = Math.min(w / state.width, h / state.height);
    state.x = Math.round((w - state.width * state.zoom) / 2);
    state.y = Math.round((h - state.height * state.zoom) / 2);
    applyTransform();
  }

  function zoomAt(factor, cx, cy) {
    const z = Math.min(MAX_ZOOM, Math.max(0.05, state.zoom * factor));
    state.x = Math.round(cx - (cx - state.x) * z / state.zoom);
    state.y = Math.round(cy - (cy - state.y) * z / state.zoom);
    state.zoom = z;
    applyTransform();
  }

  function show() {
    const img = currentImage();
    if (!img) { return; }
    const side = state.mode !== 'slider';
    view2.style.display = side ? '' : 'none';
    clip.style.display = divider.style.display = tagB.style.display = side ? 'none' : '';
    imgA.src = source(img, state.a);
    imgB.src = imgB2.src = source(img, state.b);
    [imgA, imgB, imgB2].forEach(function (im) {
      const isDiff = state.diff && im.getAttribute('src') !== img.files.GT;
      im.style.filter = isDiff ? 'brightness(' + state.gain + ')' : '';
    });
    tagA.textContent = caption(img, state.a);
    tagB.textContent = tagB2.textContent = caption(img, state.b);
    if (state.width !== img.width || state.height !== img.height) {
      state.width = img.width; state.height = img.height; fit();
    }
    applySplit();
    applyTransform();
    imageSelect.value = state.set + ':' + state.image;
    document.querySelectorAll('table.images tbody tr').forEach(function (tr) {
      tr.classList.toggle('current', tr.dataset.key === state.set + ':' + state.image);
    });
  }

  imageSelect.addEventListener('change', function () {
    const parts = imageSelect.value.split(':');
    state.set = Number(parts[0]); state.image = Number(parts[1]); show();
  });
  selA.addEventListener('change', function () { state.a = selA.value; show(); });
  selB.addEventListener('change', function () { state.b = selB.value; show(); });
  modeSelect.addEventListener('change', function () {
    state.mode = modeSelect.value === 'slider' ? 'slider' : 'side'; show(); fit();
  });
  diffBox.addEventListener('change', function () { state.diff = diffBox.checked; show(); });
  gainRange.addEventListener('input', function () { state.gain = Number(gainRange.value); show(); });
  splitRange.addEventListener('input', function () { state.split = Number(splitRange.value) / 1000; applySplit(); });
  buttons[0].addEventListener('click', fit);
  buttons[1].addEventListener('click', function () { zoomAt(1 / state.zoom, view1.clientWidth / 2, view1.clientHeight / 2); });
  buttons[2].addEventListener('click', function () { zoomAt(0.5, view1.clientWidth / 2, view1.clientHeight / 2); });
  buttons[3].addEventListener('click', function () { zoomAt(2, view1.clientWidth / 2, view1.clientHeight / 2); });

  [view1, view2].forEach(function (view) {
    view.addEventListener('wheel', function (ev) {
      ev.preventDefault();
      const r = view.getBoundingClientRect();
      zoomAt(ev.deltaY < 0 ? 1.25 : 0.8, ev.clientX - r.left, ev.clientY - r.top);
    }, {passive: false});
    let drag = null;
    view.addEventListener('pointerdown', function (ev) {
      const r = view.getBoundingClientRect();
      drag = {splitting: ev.target === divider, x0: ev.clientX, y0: ev.clientY, x: state.x, y: state.y, left: r.left};
      view.classList.add('dragging');
      if (view.setPointerCapture) { try { view.setPointerCapture(ev.pointerId); } catch (e) { /* synthetic */ } }
    });
    view.addEventListener('pointermove', function (ev) {
      if (!drag) { return; }
      if (drag.splitting) {
        state.split = Math.min(1, Math.max(0, (ev.clientX - drag.left) / view1.clientWidth));
        applySplit();
      } else {
        state.x = Math.round(drag.x + ev.clientX - drag.x0);
        state.y = Math.round(drag.y + ev.clientY - drag.y0);
        applyTransform();
      }
    });
    ['pointerup', 'pointercancel'].forEach(function (type) {
      view.addEventListener(type, function () { drag = null; view.classList.remove('dragging'); });
    });
  });
  window.addEventListener('resize', applySplit);

  // ---------------------------------------------------------------- per-image tables
  const tables = document.getElementById('tables');
  data.sets.forEach(function (s, si) {
    const over = select('gain-a-' + si, models, models[models.length - 1]);
    const under = select('gain-b-' + si, models, models[0]);
    tables.appendChild(el('h3', {text: s.name + ' (' + s.images.length + ' images)'}));
    tables.appendChild(el('div', {class: 'controls'}, [label('gain of', over), label('over', under),
      el('span', {class: 'hint', text: 'click a column to sort, a row to view the image'})]));
    const table = el('table', {class: 'images', id: 'images-' + si});
    const head = el('tr');
    const columns = [{title: '#', key: function (r) { return r.index; }},
                     {title: 'image', key: function (r) { return r.img.name; }},
                     {title: 'HR size', key: function (r) { return r.img.width * r.img.height; }}];
    models.forEach(function (m) {
      columns.push({title: m + ' PSNR', model: m, key: function (r) { return r.img.metrics[m] ? r.img.metrics[m].psnr : -Infinity; }});
      columns.push({title: m + ' SSIM', model: m, key: function (r) { return r.img.metrics[m] ? r.img.metrics[m].ssim : -Infinity; }});
    });
    columns.push({title: 'gain (dB)', gain: true, key: function (r) { return gain(r.img); }});
    function gain(img) {
      const a = img.metrics[over.value]; const b = img.metrics[under.value];
      return a && b ? a.psnr - b.psnr : NaN;
    }
    const sort = {column: 0, dir: 1};
    columns.forEach(function (c, ci) {
      const th = el('th', {class: 'sortable', text: c.title});
      th.addEventListener('click', function () {
        sort.dir = sort.column === ci ? -sort.dir : (c.gain || c.model ? -1 : 1);
        sort.column = ci; render();
      });
      head.appendChild(th);
    });
    const body = el('tbody');
    table.appendChild(el('thead', {}, [head]));
    table.appendChild(body);
    tables.appendChild(table);
    const rows = s.images.map(function (img, ii) { return {img: img, index: ii + 1}; });

    function cell(text, cls) { return el('td', {text: text, class: cls || ''}); }

    function render() {
      const key = columns[sort.column].key;
      rows.sort(function (p, q) {
        const a = key(p); const b = key(q);
        if (a === b || (a !== a && b !== b)) { return p.index - q.index; }
        if (a !== a) { return 1; }
        if (b !== b) { return -1; }
        return (a < b ? -1 : 1) * sort.dir;
      });
      head.childNodes.forEach(function (th, ci) {
        th.classList.toggle('sorted-asc', ci === sort.column && sort.dir > 0);
        th.classList.toggle('sorted-desc', ci === sort.column && sort.dir < 0);
      });
      columns[columns.length - 1].title = 'gain of ' + over.value + ' over ' + under.value + ' (dB)';
      head.lastChild.textContent = columns[columns.length - 1].title;
      body.textContent = '';
      rows.forEach(function (r) {
        const img = r.img;
        const best = Math.max.apply(null, models.map(function (m) { return img.metrics[m] ? img.metrics[m].psnr : -Infinity; }));
        const tr = el('tr', {}, [cell(String(r.index)), cell(img.name, 'name'), cell(img.width + '\u00d7' + img.height)]);
        tr.dataset.key = si + ':' + (r.index - 1);
        models.forEach(function (m) {
          const v = img.metrics[m];
          tr.appendChild(cell(v ? v.psnr.toFixed(2) : (img.errors[m] ? 'failed' : '\u2013'), v && v.psnr === best ? 'best-cell' : ''));
          tr.appendChild(cell(v ? v.ssim.toFixed(4) : '\u2013'));
          if (!v && img.errors[m]) { tr.lastChild.previousSibling.title = img.errors[m]; }
        });
        const g = gain(img);
        tr.appendChild(cell(g === g ? (g >= 0 ? '+' : '') + g.toFixed(2) : '\u2013', g > 0 ? 'pos' : (g < 0 ? 'neg' : '')));
        tr.addEventListener('click', function () {
          state.set = si; state.image = r.index - 1; show();
          document.getElementById('viewer-section').scrollIntoView();
        });
        body.appendChild(tr);
      });
      show();
    }
    over.addEventListener('change', render);
    under.addEventListener('change', render);
    render();
  });
  if (!data.sets.length || !currentImage()) {
    viewer.appendChild(el('p', {text: 'No image was compared.'}));
  } else {
    show();
  }
  window.elanCompare = {state: state, data: data, show: show, fit: fit};
}());
