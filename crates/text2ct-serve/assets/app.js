// text2ct serve: the page. Talks to the JSON API of this server only (docs/serve.md) and shows
// volumes with NiiVue (niivue.umd.js, embedded). `window.t2c` exposes the page's state to tests.
'use strict';
(function () {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const token = params.get('token');
  const auth = token ? { Authorization: 'Bearer ' + token } : {};
  const withToken = (u) => (token ? u + (u.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(token) : u);
  const t2c = (window.t2c = { ready: false, loaded: { a: null, b: null }, job: null, lastStatus: null });
  let nvA = null;
  let nvB = null;
  let current = null; // the running job's id
  let source = null; // its EventSource

  async function api(path, opts = {}) {
    const headers = Object.assign({}, opts.headers || {}, auth);
    if (opts.body) headers['Content-Type'] = 'application/json';
    const r = await fetch(path, Object.assign({}, opts, { headers }));
    let body = null;
    try {
      body = await r.json();
    } catch (_) {
      body = null;
    }
    if (!r.ok) throw new Error((body && body.error) || r.status + ' ' + r.statusText);
    return body;
  }

  function say(msg, isError) {
    const s = $('status');
    s.textContent = msg;
    s.className = isError ? 'error' : '';
  }

  // ---- viewer -------------------------------------------------------------------------------
  function makeViewer() {
    return new niivue.Niivue({
      backColor: [0, 0, 0, 1],
      show3Dcrosshair: true,
      crosshairColor: [0.2, 0.8, 1, 0.8],
      crosshairWidth: 1,
      multiplanarLayout: niivue.MULTIPLANAR_TYPE.GRID,
      logLevel: 'error',
      dragAndDropEnabled: false,
      isColorbar: false,
      multiplanarShowRender: niivue.SHOW_RENDER.ALWAYS,
    });
  }

  function viewers() {
    return [nvA, nvB].filter((nv) => nv && nv.volumes.length > 0);
  }

  function applyLayout(nv) {
    const v = $('layout').value;
    const st = {
      mpr3d: nv.sliceTypeMultiplanar,
      axial: nv.sliceTypeAxial,
      coronal: nv.sliceTypeCoronal,
      sagittal: nv.sliceTypeSagittal,
      render: nv.sliceTypeRender,
    }[v];
    nv.opts.multiplanarShowRender = niivue.SHOW_RENDER.ALWAYS;
    nv.setSliceType(st);
  }

  function applyWindow() {
    const w = Math.max(1, Number($('ww').value) || 1);
    const l = Number($('wl').value) || 0;
    for (const nv of viewers()) {
      nv.volumes[0].cal_min = l - w / 2;
      nv.volumes[0].cal_max = l + w / 2;
      nv.updateGLVolume();
    }
  }

  function sliderPos() {
    return [Number($('sx').value) / 1000, Number($('sy').value) / 1000, Number($('sz').value) / 1000];
  }

  function applySliders() {
    const p = sliderPos();
    for (const nv of viewers()) {
      nv.scene.crosshairPos = p.slice();
      nv.drawScene();
    }
  }

  // A click in one viewer moves the sliders and the other viewer (linked slice position).
  function follow(nv) {
    nv.onLocationChange = () => {
      const p = nv.scene.crosshairPos;
      $('sx').value = Math.round(p[0] * 1000);
      $('sy').value = Math.round(p[1] * 1000);
      $('sz').value = Math.round(p[2] * 1000);
      for (const other of viewers()) {
        if (other !== nv) {
          other.scene.crosshairPos = [p[0], p[1], p[2]];
          other.drawScene();
        }
      }
    };
  }

  async function viewerB() {
    if (!nvB) {
      $('pane-b').hidden = false;
      $('compare').checked = true;
      nvB = makeViewer();
      await nvB.attachToCanvas($('gl-b'));
      follow(nvB);
      applyLayout(nvB);
    }
    return nvB;
  }

  async function show(pane, vid, title) {
    const nv = pane === 'b' ? await viewerB() : nvA;
    const w = Math.max(1, Number($('ww').value) || 1);
    const l = Number($('wl').value) || 0;
    say('loading ' + vid + ' …');
    await nv.loadVolumes([
      {
        url: '/api/volumes/' + encodeURIComponent(vid) + '.nii.gz',
        headers: auth,
        name: vid + '.nii.gz',
        colormap: 'gray',
        cal_min: l - w / 2,
        cal_max: l + w / 2,
        trustCalMinMax: true,
      },
    ]);
    applyLayout(nv);
    applyWindow();
    applySliders();
    $('title-' + pane).textContent = pane.toUpperCase() + ': ' + (title || vid);
    t2c.loaded[pane] = vid;
    say('showing ' + vid);
    if (pane === 'a') {
      try {
        const sc = await api('/api/volumes/' + encodeURIComponent(vid) + '/sidecar.json');
        $('sidecar').textContent = JSON.stringify(sc, null, 2);
      } catch (e) {
        $('sidecar').textContent = String(e.message || e);
      }
    }
  }

  // ---- generation ---------------------------------------------------------------------------
  function numberOrNull(id) {
    const v = $(id).value.trim();
    return v === '' ? null : Number(v);
  }

  function updateProgress(s) {
    t2c.lastStatus = s;
    const steps = Math.max(1, s.steps);
    const frac = s.state === 'done' ? 1 : (s.volume + Math.min(s.step, steps) / steps) / Math.max(1, s.count);
    $('progress').value = frac;
    let msg = 'job ' + s.id + ': ' + s.phase;
    if (s.phase === 'sampling') msg += ' step ' + s.step + '/' + s.steps;
    if (s.count > 1) msg += ' (volume ' + (s.volume + 1) + '/' + s.count + ')';
    if (s.error) msg += ': ' + s.error;
    say(msg, s.state === 'failed');
  }

  async function finished(s) {
    current = null;
    $('go').disabled = false;
    $('cancel').disabled = true;
    await refreshGallery();
    if (s.state === 'done' && s.volumes.length > 0) {
      await show('a', s.volumes[0], s.prompt);
      if (s.volumes.length > 1 && $('compare').checked) await show('b', s.volumes[1], s.prompt + ' (seed ' + (s.seed + 1) + ')');
      say('job ' + s.id + ' done: ' + s.volumes.join(', '));
    }
  }

  function watchJob(id) {
    if (source) source.close();
    source = new EventSource(withToken('/api/jobs/' + encodeURIComponent(id) + '/events'));
    source.addEventListener('status', (e) => {
      const s = JSON.parse(e.data);
      updateProgress(s);
      if (s.state === 'done' || s.state === 'failed' || s.state === 'cancelled') {
        source.close();
        source = null;
        finished(s).catch((err) => say(String(err.message || err), true));
      }
    });
    source.onerror = () => {
      // The stream ends after the final event; anything else: ask once more.
      if (source) {
        source.close();
        source = null;
        api('/api/jobs/' + encodeURIComponent(id))
          .then((s) => (s.state === 'queued' || s.state === 'running' ? watchJob(id) : (updateProgress(s), finished(s))))
          .catch((err) => say(String(err.message || err), true));
      }
    };
  }

  async function generate() {
    const body = { prompt: $('prompt').value };
    const neg = $('negative').value.trim();
    if (neg) body.negative_prompt = neg;
    for (const [k, id] of [['seed', 'seed'], ['steps', 'steps'], ['guidance', 'guidance'], ['count', 'count']]) {
      const v = numberOrNull(id);
      if (v !== null) body[k] = v;
    }
    body.sampler = $('sampler').value;
    $('go').disabled = true;
    try {
      const r = await api('/api/generate', { method: 'POST', body: JSON.stringify(body) });
      current = r.id;
      t2c.job = r.id;
      $('cancel').disabled = false;
      $('progress').value = 0;
      updateProgress(r.status);
      watchJob(r.id);
    } catch (e) {
      $('go').disabled = false;
      say(String(e.message || e), true);
    }
  }

  async function cancel() {
    if (!current) return;
    try {
      const s = await api('/api/jobs/' + encodeURIComponent(current), { method: 'DELETE' });
      updateProgress(s);
    } catch (e) {
      say(String(e.message || e), true);
    }
  }

  // ---- gallery ------------------------------------------------------------------------------
  function link(text, href) {
    const a = document.createElement('a');
    a.textContent = text;
    a.href = withToken(href);
    a.setAttribute('download', '');
    return a;
  }

  async function refreshGallery() {
    const list = await api('/api/volumes');
    const g = $('gallery');
    g.textContent = '';
    if (list.length === 0) g.textContent = 'nothing generated in this output folder yet';
    for (const v of list) {
      const base = '/api/volumes/' + encodeURIComponent(v.id);
      const item = document.createElement('div');
      item.className = 'item';
      const img = document.createElement('img');
      img.src = withToken(base + '/preview.png');
      img.alt = 'preview of ' + v.id;
      item.appendChild(img);
      const meta = document.createElement('div');
      meta.className = 'meta';
      const p = document.createElement('div');
      p.className = 'prompt';
      p.textContent = v.prompt;
      p.title = v.prompt;
      meta.appendChild(p);
      const info = document.createElement('div');
      info.textContent = 'seed ' + v.seed + ', ' + v.steps + ' steps, w ' + v.guidance + ' — ' + v.id;
      meta.appendChild(info);
      const buttons = document.createElement('div');
      for (const pane of ['a', 'b']) {
        const b = document.createElement('button');
        b.type = 'button';
        b.textContent = pane.toUpperCase();
        b.title = 'show in viewer ' + pane.toUpperCase();
        b.dataset.vid = v.id;
        b.dataset.pane = pane;
        b.addEventListener('click', () => show(pane, v.id, v.prompt + ' (seed ' + v.seed + ')').catch((e) => say(String(e.message || e), true)));
        buttons.appendChild(b);
      }
      buttons.appendChild(link('NIfTI', base + '.nii.gz'));
      buttons.appendChild(link('DICOM', base + '/dicom.zip'));
      buttons.appendChild(link('PNG', base + '/preview.png'));
      buttons.appendChild(link('JSON', base + '/sidecar.json'));
      meta.appendChild(buttons);
      item.appendChild(meta);
      g.appendChild(item);
    }
  }

  // ---- opening a CT under --data-root -------------------------------------------------------
  async function browse(dir) {
    const r = await api('/api/files?dir=' + encodeURIComponent(dir));
    const b = $('browser');
    b.textContent = '';
    const add = (text, fn) => {
      const d = document.createElement('div');
      d.textContent = text;
      d.addEventListener('click', () => fn().catch((e) => say(String(e.message || e), true)));
      b.appendChild(d);
    };
    if (dir) {
      add('[up] ..', () => browse(dir.split('/').slice(0, -1).join('/')));
      add('[open this folder as a DICOM series]', () => openPath(dir));
    }
    for (const e of r.entries) {
      const path = dir ? dir + '/' + e.name : e.name;
      if (e.kind === 'dir') add('[folder] ' + e.name, () => browse(path));
      else add('[NIfTI] ' + e.name, () => openPath(path));
    }
  }

  async function openPath(path) {
    $('open-path').value = path;
    say('opening ' + path + ' …');
    const r = await api('/api/open', { method: 'POST', body: JSON.stringify({ path }) });
    await show('a', r.id, path);
    $('sidecar').textContent = JSON.stringify(r.info, null, 2);
  }

  // ---- start --------------------------------------------------------------------------------
  async function start() {
    nvA = makeViewer();
    await nvA.attachToCanvas($('gl-a'));
    follow(nvA);
    const info = await api('/api/info');
    $('model-info').textContent = 'model ' + info.model + ' — ' + info.trained_on;
    $('steps').placeholder = info.defaults.steps;
    $('guidance').placeholder = info.defaults.guidance;
    $('sampler').value = info.defaults.sampler;
    $('open-off').hidden = info.data_root;
    $('open-on').hidden = !info.data_root;
    $('go').addEventListener('click', generate);
    $('cancel').addEventListener('click', cancel);
    $('refresh').addEventListener('click', () => refreshGallery().catch((e) => say(String(e.message || e), true)));
    $('layout').addEventListener('change', () => {
      for (const nv of [nvA, nvB]) if (nv) applyLayout(nv);
    });
    for (const b of document.querySelectorAll('.presets button')) {
      b.addEventListener('click', () => {
        $('ww').value = b.dataset.w;
        $('wl').value = b.dataset.l;
        for (const o of document.querySelectorAll('.presets button')) o.classList.toggle('active', o === b);
        applyWindow();
      });
    }
    $('ww').addEventListener('input', applyWindow);
    $('wl').addEventListener('input', applyWindow);
    for (const id of ['sx', 'sy', 'sz']) $(id).addEventListener('input', applySliders);
    $('compare').addEventListener('change', async () => {
      if ($('compare').checked) await viewerB();
      else $('pane-b').hidden = true;
      if (nvB && !$('pane-b').hidden) nvB.resizeListener();
    });
    for (const b of [$('r-mip'), $('r-dvr')]) {
      b.addEventListener('click', () => {
        const vid = t2c.loaded.a;
        if (!vid) return say('show a volume in viewer A first', true);
        const img = $('render');
        say('rendering ' + b.dataset.mode + ' of ' + vid + ' …');
        img.onload = () => say(b.dataset.mode.toUpperCase() + ' of ' + vid + ': 4 views, front, left, back, right');
        img.onerror = () => say('rendering failed', true);
        img.src = withToken('/api/volumes/' + encodeURIComponent(vid) + '/render.png?mode=' + b.dataset.mode + '&angles=4');
        img.hidden = false;
      });
    }
    $('open-go').addEventListener('click', () => openPath($('open-path').value.trim()).catch((e) => say(String(e.message || e), true)));
    if (info.data_root) await browse('');
    await refreshGallery();
    $('w-lung').classList.add('active');
    // For tests: where the crosshair is and the window of viewer A.
    t2c.crosshair = () => Array.from(nvA.scene.crosshairPos);
    t2c.window = () => (nvA.volumes.length ? [nvA.volumes[0].cal_min, nvA.volumes[0].cal_max] : null);
    t2c.ready = true;
    say('ready');
  }

  start().catch((e) => say('could not start: ' + (e.message || e), true));
})();
