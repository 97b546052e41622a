// activecad annotation viewer: answers the active-learning queue in the browser.
//
// Plain ES module, no framework, no bundler. NiiVue (vendor/niivue/niivue.umd.js, loaded by a
// classic <script> before this module) draws the axial, coronal and sagittal views with WebGL2;
// this module draws the marks (model detections, findings) on a 2D canvas laid over them and
// talks to the activecad API with the user's token (Authorization header, never the URL).

const { Niivue, SHOW_RENDER, SLICE_TYPE } = globalThis.niivue;

const TOKEN_KEY = 'activecad.token';

// Window presets, as width/level in HU (lung W1500/L-600, mediastinum W350/L50).
const PRESETS = {
  lung: { width: 1500, level: -600 },
  mediastinum: { width: 350, level: 50 },
};

// The circle drawn for a detection whose model gave no diameter, mm.
const UNKNOWN_DIAMETER_MM = 6;

// ---------------------------------------------------------------------------------------------
// Coordinates.
//
// activecad's world frame is ITK / LUNA16 world mm, LPS+ (x grows to the patient's left, y to
// posterior, z to superior): the frame of annotations.csv, of the API and of the database.
// The server writes the volume with SimpleITK, whose NIfTI sform is RAS+ (x to the right, y to
// anterior), and NiiVue reports and draws points in that sform's mm. The two frames differ by a
// half turn about z, so a NiiVue point (x, y, z) is the world point (-x, -y, z) and back.
// Every point that crosses between NiiVue and the API goes through these two functions.
// ---------------------------------------------------------------------------------------------

/** NiiVue mm (RAS+, NIfTI sform) -> activecad world mm (LPS+, LUNA16/ITK). */
export function rasToWorld(ras) {
  return [-ras[0], -ras[1], ras[2]];
}

/** activecad world mm (LPS+, LUNA16/ITK) -> NiiVue mm (RAS+, NIfTI sform). */
export function worldToRas(world) {
  return [-world[0], -world[1], world[2]];
}

// A 2D tile of NiiVue's multiplanar layout shows the RAS point p on screen axes
// axial: (x, y | depth z), coronal: (x, z | depth y), sagittal: (y, z | depth x),
// as NiiVue's swizzleVec3MM does.
function rasToTileAxes(ras, axCorSag) {
  if (axCorSag === SLICE_TYPE.CORONAL) return [ras[0], ras[2], ras[1]];
  if (axCorSag === SLICE_TYPE.SAGITTAL) return [ras[1], ras[2], ras[0]];
  return [ras[0], ras[1], ras[2]];
}

function tileAxesToRas(s, axCorSag) {
  if (axCorSag === SLICE_TYPE.CORONAL) return [s[0], s[2], s[1]];
  if (axCorSag === SLICE_TYPE.SAGITTAL) return [s[2], s[0], s[1]];
  return [s[0], s[1], s[2]];
}

function is2DTile(tile) {
  return tile.axCorSag <= SLICE_TYPE.SAGITTAL && tile.AxyzMxy.length >= 4;
}

// A tile's left and width in canvas pixels; a negative width means NiiVue mirrors the tile
// (radiological convention), as in NiiVue's screenXY2TextureFrac.
function tileBox(tile) {
  let [left, top, width, height] = tile.leftTopWidthHeight;
  const mirrored = width < 0;
  if (mirrored) {
    left += width;
    width = -width;
  }
  return { left, top, width, height, mirrored };
}

// The depth of the tile's plane (mm on its depth axis) under in-plane point (a, b).
function planeDepth(tile, a, b) {
  const v = tile.AxyzMxy;
  return v[2] + v[4] * (b - v[1]) - v[3] * (a - v[0]);
}

/**
 * Canvas pixel (device pixels, as NiiVue's canvas.width) -> { ras, tile } for the 2D tile under
 * it, or null outside every 2D tile. The depth is the tile's current slice.
 */
export function canvasToRas(nv, px, py) {
  for (const tile of nv.screenSlices) {
    if (!is2DTile(tile)) continue;
    const box = tileBox(tile);
    if (px < box.left || px > box.left + box.width || py < box.top || py > box.top + box.height) {
      continue;
    }
    let fx = (px - box.left) / box.width;
    if (box.mirrored) fx = 1 - fx;
    const fy = 1 - (py - box.top) / box.height;
    const a = tile.leftTopMM[0] + fx * tile.fovMM[0];
    const b = tile.leftTopMM[1] + fy * tile.fovMM[1];
    return { ras: tileAxesToRas([a, b, planeDepth(tile, a, b)], tile.axCorSag), tile };
  }
  return null;
}

/**
 * RAS point -> { x, y, depth, pxPerMm } on a 2D tile: canvas pixel of its projection onto the
 * tile's plane, and its distance (mm) from that plane.
 */
export function rasToCanvas(tile, ras) {
  const s = rasToTileAxes(ras, tile.axCorSag);
  const box = tileBox(tile);
  let fx = (s[0] - tile.leftTopMM[0]) / tile.fovMM[0];
  const fy = (s[1] - tile.leftTopMM[1]) / tile.fovMM[1];
  if (box.mirrored) fx = 1 - fx;
  return {
    x: box.left + fx * box.width,
    y: box.top + (1 - fy) * box.height,
    depth: s[2] - planeDepth(tile, s[0], s[1]),
    pxPerMm: box.width / Math.abs(tile.fovMM[0]),
    inside: fx >= 0 && fx <= 1 && fy >= 0 && fy <= 1,
  };
}

// ---------------------------------------------------------------------------------------------
// State and API.
// ---------------------------------------------------------------------------------------------

const state = {
  token: null,
  me: null,
  queue: null,
  lease: null,
  scan: null,
  detections: [],
  findings: [],
  selectedId: null,
  mode: 'navigate', // 'navigate' | 'add' | 'move'
  preset: 'lung',
  busy: false,
};

const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

function formatDetail(detail) {
  if (Array.isArray(detail)) {
    // FastAPI's 422: [{loc: [...], msg: ...}, ...]
    return detail.map((d) => `${(d.loc || []).slice(1).join('.') || 'body'}: ${d.msg}`).join('; ');
  }
  return typeof detail === 'string' ? detail : JSON.stringify(detail);
}

async function api(method, path, body, { raw = false } = {}) {
  const headers = { Authorization: `Bearer ${state.token}` };
  const init = { method, headers, cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) {
    let detail = response.statusText;
    try {
      detail = formatDetail((await response.json()).detail);
    } catch {
      // not JSON: keep the status text
    }
    if (response.status === 401) signOut(`The server refused the token (401): ${detail}`);
    throw new ApiError(response.status, detail);
  }
  if (raw) return response;
  if (response.status === 204) return null;
  return response.json();
}

function say(message, { error = false } = {}) {
  const status = $('status');
  status.textContent = message;
  status.classList.toggle('error', error);
}

function fail(what, err) {
  const detail = err instanceof ApiError ? `${err.status}: ${err.message}` : String(err);
  say(`${what} failed (${detail})`, { error: true });
  console.error(what, err);
}

function setState(name) {
  document.body.dataset.state = name;
}

// ---------------------------------------------------------------------------------------------
// NiiVue.
// ---------------------------------------------------------------------------------------------

let nv = null;
const glCanvas = $('gl');
const marksCanvas = $('marks');

async function initViewer() {
  nv = new Niivue({
    backColor: [0, 0, 0, 1],
    crosshairColor: [1, 0.3, 0.3, 0.55],
    // With isSliceMM NiiVue draws the 2D cursor as 3D lines; a width in percent of the field
    // of view keeps them about 1-2 screen pixels wide whatever the scan's size and voxels.
    crosshairWidth: 0.3,
    crosshairWidthUnit: 'percent',
    show3Dcrosshair: false,
    isOrientCube: false,
    isColorbar: false,
    // CT is read in radiological convention: the patient's right on the screen's left.
    isRadiologicalConvention: true,
    // Slices in world mm (oblique scans are resliced), so a NiiVue mm is always sform mm.
    isSliceMM: true,
    multiplanarShowRender: SHOW_RENDER.NEVER,
    // The axial view is the one read slice by slice: it gets most of the space.
    heroImageFraction: 0.6,
    heroSliceType: SLICE_TYPE.AXIAL,
    loadingText: '',
    // NiiVue's own hot keys (view mode, clip plane) would fight ours.
    viewModeHotKey: 'Unused',
    clipPlaneHotKey: 'Unused',
    cycleClipPlaneHotKey: 'Unused',
    logLevel: 'warn',
  });
  await nv.attachToCanvas(glCanvas);
  nv.setSliceType(nv.sliceTypeMultiplanar);
  // Every NiiVue redraw (slice change, zoom, pan, resize) redraws the marks on top.
  const drawScene = nv.drawScene.bind(nv);
  nv.drawScene = (...args) => {
    const result = drawScene(...args);
    drawMarks();
    return result;
  };
  nv.onLocationChange = (location) => {
    if (location && location.mm) {
      const w = rasToWorld(location.mm);
      $('item-cursor').textContent = w.map((v) => v.toFixed(1)).join(', ');
    }
  };
  glCanvas.addEventListener('click', onViewClick);
}

function setWindow(preset) {
  state.preset = preset;
  for (const button of document.querySelectorAll('[data-preset]')) {
    button.classList.toggle('active', button.dataset.preset === preset);
  }
  if (!nv || nv.volumes.length === 0) return;
  const { width, level } = PRESETS[preset];
  const volume = nv.volumes[0];
  volume.cal_min = level - width / 2;
  volume.cal_max = level + width / 2;
  nv.updateGLVolume();
}

function moveCursorTo(world) {
  if (!nv || nv.volumes.length === 0) return;
  nv.scene.crosshairPos = nv.mm2frac(worldToRas(world));
  nv.createOnLocationChange();
  nv.drawScene();
}

function eventToCanvasPixel(event) {
  const rect = glCanvas.getBoundingClientRect();
  return [
    ((event.clientX - rect.left) * glCanvas.width) / rect.width,
    ((event.clientY - rect.top) * glCanvas.height) / rect.height,
  ];
}

async function onViewClick(event) {
  if (!state.lease || nv.volumes.length === 0) return;
  const [px, py] = eventToCanvasPixel(event);
  const hit = canvasToRas(nv, px, py);
  if (!hit) return;
  const world = rasToWorld(hit.ras);
  if (state.mode === 'add') {
    setMode('navigate');
    await addFinding(world, defaultDiameter());
  } else if (state.mode === 'move') {
    setMode('navigate');
    await moveFinding(state.selectedId, world);
  } else {
    const near = findingNear(hit.tile, px, py);
    if (near) select(near.id);
  }
}

function findingNear(tile, px, py) {
  let best = null;
  for (const finding of state.findings) {
    const p = rasToCanvas(tile, worldToRas([finding.x, finding.y, finding.z]));
    const r = Math.max(finding.diameter_mm / 2, 1);
    if (Math.abs(p.depth) > r) continue;
    const distance = Math.hypot(p.x - px, p.y - py);
    if (distance <= r * p.pxPerMm + 6 && (!best || distance < best.distance)) {
      best = { id: finding.id, distance };
    }
  }
  return best;
}

// ---------------------------------------------------------------------------------------------
// Marks: circles of the mark's diameter where its sphere cuts each view's slice.
// ---------------------------------------------------------------------------------------------

function drawMarks() {
  if (marksCanvas.width !== glCanvas.width || marksCanvas.height !== glCanvas.height) {
    marksCanvas.width = glCanvas.width;
    marksCanvas.height = glCanvas.height;
  }
  const ctx = marksCanvas.getContext('2d');
  ctx.clearRect(0, 0, marksCanvas.width, marksCanvas.height);
  if (!nv || nv.volumes.length === 0 || !state.lease) return;
  const dpr = glCanvas.width / Math.max(glCanvas.clientWidth, 1);
  const styles = getComputedStyle(document.documentElement);
  const colours = {
    detection: styles.getPropertyValue('--detection').trim(),
    mine: styles.getPropertyValue('--mine').trim(),
    other: styles.getPropertyValue('--other').trim(),
  };
  for (const tile of nv.screenSlices) {
    if (!is2DTile(tile)) continue;
    const box = tileBox(tile);
    ctx.save();
    ctx.beginPath();
    ctx.rect(box.left, box.top, box.width, box.height);
    ctx.clip();
    for (const d of state.detections) {
      drawMark(ctx, tile, d, d.diameter_mm ?? UNKNOWN_DIAMETER_MM, colours.detection, d.probability.toFixed(2), {
        dashed: true,
        labelBelow: false,
        dpr,
      });
    }
    for (const f of state.findings) {
      const mine = state.me && f.author === state.me.name;
      drawMark(ctx, tile, f, f.diameter_mm, mine ? colours.mine : colours.other, `#${f.id}`, {
        selected: f.id === state.selectedId,
        labelBelow: true,
        dpr,
      });
    }
    ctx.restore();
  }
}

// Detections are labelled above-right of their circle and findings below-right, so a finding
// placed on a detection keeps both labels readable.
function drawMark(ctx, tile, point, diameter, colour, label, options) {
  const { dashed = false, selected = false, labelBelow = false, dpr } = options;
  const p = rasToCanvas(tile, worldToRas([point.x, point.y, point.z]));
  const r = Math.max(diameter / 2, 1);
  if (Math.abs(p.depth) > r) return;
  const radius = Math.max(Math.sqrt(r * r - p.depth * p.depth) * p.pxPerMm, 3 * dpr);
  ctx.strokeStyle = colour;
  ctx.fillStyle = colour;
  ctx.lineWidth = (selected ? 2.5 : 1.5) * dpr;
  ctx.setLineDash(dashed ? [4 * dpr, 3 * dpr] : []);
  ctx.beginPath();
  ctx.arc(p.x, p.y, radius, 0, 2 * Math.PI);
  ctx.stroke();
  ctx.setLineDash([]);
  ctx.font = `${Math.round(11 * dpr)}px system-ui, sans-serif`;
  ctx.textBaseline = labelBelow ? 'top' : 'bottom';
  ctx.fillText(label, p.x + radius + 2 * dpr, labelBelow ? p.y + radius * 0.7 : p.y - radius * 0.7);
}

// ---------------------------------------------------------------------------------------------
// Panel.
// ---------------------------------------------------------------------------------------------

function fmt(v, digits = 1) {
  return Number(v).toFixed(digits);
}

function renderProgress() {
  const q = state.queue;
  if (!q) return;
  $('progress').hidden = false;
  $('progress-project').textContent = q.project;
  $('progress-cycle').textContent = `cycle ${q.cycle}`;
  $('progress-bar').max = Math.max(q.total, 1);
  $('progress-bar').value = q.answered;
  $('progress-text').textContent = `${q.answered} / ${q.total} answered · ${q.leased} leased`;
}

function renderItem() {
  const lease = state.lease;
  $('item-series').textContent = lease ? lease.seriesuid : '—';
  $('item-rank').textContent = lease && lease.rank !== null ? String(lease.rank) : '—';
  $('item-score').textContent =
    lease && lease.score !== null && lease.score !== undefined ? fmt(lease.score, 4) : '—';
  renderLeaseClock();
  const has = Boolean(lease);
  for (const id of ['add-finding', 'submit', 'no-nodule']) $(id).disabled = !has || state.busy;
  $('next').disabled = state.busy;
}

function renderLeaseClock() {
  const lease = state.lease;
  if (!lease) {
    $('item-lease').textContent = '—';
    return;
  }
  const left = Math.round((Date.parse(lease.expires_at) - Date.now()) / 1000);
  $('item-lease').textContent =
    left > 0
      ? `#${lease.lease_id}, ${Math.floor(left / 60)}:${String(left % 60).padStart(2, '0')} left`
      : `#${lease.lease_id}, expired: press n`;
}

function li(classes, onClick) {
  const item = document.createElement('li');
  item.className = classes;
  if (onClick) item.addEventListener('click', onClick);
  return item;
}

function span(className, text) {
  const s = document.createElement('span');
  s.className = className;
  s.textContent = text;
  return s;
}

function button(text, title, onClick) {
  const b = document.createElement('button');
  b.type = 'button';
  b.textContent = text;
  b.title = title;
  b.addEventListener('click', (event) => {
    event.stopPropagation();
    onClick();
  });
  return b;
}

function renderDetections() {
  const list = $('detections');
  list.replaceChildren();
  $('detections-count').textContent = `(${state.detections.length})`;
  state.detections.forEach((d, i) => {
    const item = li('detection', () => moveCursorTo([d.x, d.y, d.z]));
    item.dataset.index = String(i);
    item.append(span('title', `p = ${fmt(d.probability, 2)}`), span('size', d.diameter_mm === null ? '⌀ —' : `⌀ ${fmt(d.diameter_mm)} mm`));
    item.append(span('where', `${fmt(d.x)}, ${fmt(d.y)}, ${fmt(d.z)}`));
    const edit = document.createElement('div');
    edit.className = 'edit';
    edit.append(
      button('Accept as finding', 'add a finding at this detection', () =>
        addFinding([d.x, d.y, d.z], d.diameter_mm ?? defaultDiameter()),
      ),
    );
    item.append(edit);
    list.append(item);
  });
}

function renderFindings() {
  const list = $('findings');
  list.replaceChildren();
  $('findings-count').textContent = `(${state.findings.length})`;
  for (const f of state.findings) {
    const mine = state.me && f.author === state.me.name;
    const item = li(`${mine ? 'mine' : 'other'}${f.id === state.selectedId ? ' selected' : ''}`, () => {
      select(f.id);
      moveCursorTo([f.x, f.y, f.z]);
    });
    item.dataset.findingId = String(f.id);
    item.append(span('title', `#${f.id} ${f.author}`), span('status', f.status));
    item.append(span('where', `${fmt(f.x)}, ${fmt(f.y)}, ${fmt(f.z)} mm`));
    if (mine && state.lease) {
      const edit = document.createElement('div');
      edit.className = 'edit';
      const diameter = document.createElement('input');
      diameter.type = 'number';
      diameter.min = '1';
      diameter.step = '0.5';
      diameter.value = String(f.diameter_mm);
      diameter.title = 'diameter (mm)';
      diameter.addEventListener('click', (event) => event.stopPropagation());
      diameter.addEventListener('change', () =>
        patchFinding(f.id, { diameter_mm: Number(diameter.value) }),
      );
      const malignancy = document.createElement('select');
      malignancy.title = 'malignancy (1 = highly unlikely … 5 = highly suspicious)';
      for (const value of ['', '1', '2', '3', '4', '5']) {
        const option = document.createElement('option');
        option.value = value;
        option.textContent = value === '' ? 'malignancy —' : `malignancy ${value}`;
        malignancy.append(option);
      }
      malignancy.value = f.malignancy === null || f.malignancy === undefined ? '' : String(f.malignancy);
      malignancy.addEventListener('click', (event) => event.stopPropagation());
      malignancy.addEventListener('change', () =>
        patchFinding(f.id, { malignancy: malignancy.value === '' ? null : Number(malignancy.value) }),
      );
      edit.append(
        span('label', '⌀'),
        diameter,
        malignancy,
        button('Move', 'move: then click the new centre (m)', () => {
          select(f.id);
          setMode('move');
        }),
        button('Delete', 'delete this finding (Del)', () => deleteFinding(f.id)),
      );
      item.append(edit);
    }
    list.append(item);
  }
}

function renderAll() {
  renderProgress();
  renderItem();
  renderDetections();
  renderFindings();
  if (nv) nv.drawScene();
}

function select(id) {
  state.selectedId = id;
  renderFindings();
  if (nv) nv.drawScene();
  loadSimilar(id);
}

// The k indexed nodules most like the selected finding (GET /api/similar), when the server
// was started with an index (activecad serve --index): where they are, their size and the
// readers' mean malignancy.
async function loadSimilar(id) {
  const section = $('similar-section');
  const f = state.findings.find((g) => g.id === id);
  if (!state.me || !state.me.similar_search || !f || !state.scan) {
    section.hidden = true;
    return;
  }
  const params = new URLSearchParams({ seriesuid: state.scan.seriesuid, x: f.x, y: f.y, z: f.z, k: 4 });
  let found;
  try {
    found = await api('GET', `/api/similar?${params}`);
  } catch (err) {
    section.hidden = true;
    return;
  }
  const list = $('similar');
  list.replaceChildren();
  $('similar-for').textContent = `(finding #${f.id})`;
  for (const n of found) {
    const item = li('similar', () => {});
    const rating = n.malignancy === null ? 'malignancy —' : `malignancy ${fmt(n.malignancy, 2)}`;
    item.append(span('title', `${n.rank}. ${rating}`), span('size', `⌀ ${fmt(n.diameter_mm)} mm`));
    item.append(span('where', `…${n.seriesuid.slice(-8)} · ${fmt(n.x)}, ${fmt(n.y)}, ${fmt(n.z)} · d ${fmt(n.distance, 3)}`));
    list.append(item);
  }
  section.hidden = false;
}

function setMode(mode) {
  if (mode !== 'navigate' && !state.lease) return;
  if (mode === 'move' && !ownFinding(state.selectedId)) {
    say('Select one of your findings first (click it in the list), then press m.', { error: true });
    return;
  }
  state.mode = mode;
  $('add-finding').classList.toggle('active', mode === 'add');
  const banner = $('mode-banner');
  banner.hidden = mode === 'navigate';
  banner.textContent =
    mode === 'add'
      ? 'Click the centre of the finding (Esc cancels)'
      : `Click the new centre of finding #${state.selectedId} (Esc cancels)`;
  glCanvas.style.cursor = mode === 'navigate' ? '' : 'crosshair';
}

function ownFinding(id) {
  return state.findings.find((f) => f.id === id && state.me && f.author === state.me.name);
}

function defaultDiameter() {
  const value = Number($('default-diameter').value);
  return Number.isFinite(value) && value > 0 ? value : 6;
}

// ---------------------------------------------------------------------------------------------
// Actions.
// ---------------------------------------------------------------------------------------------

async function busy(what, fn) {
  if (state.busy) return;
  state.busy = true;
  renderItem();
  try {
    await fn();
  } catch (err) {
    if (err instanceof ApiError && err.status === 409) {
      say(`${what}: your lease on this scan was lost (${err.message}). Press n for the next scan.`, {
        error: true,
      });
    } else {
      fail(what, err);
    }
  } finally {
    state.busy = false;
    renderItem();
  }
}

async function refreshQueue() {
  state.queue = await api('GET', '/api/queue');
  renderProgress();
  return state.queue;
}

async function loadScan(seriesuid) {
  const encoded = encodeURIComponent(seriesuid);
  const [scan, detections, findings, volume] = await Promise.all([
    api('GET', `/api/scans/${encoded}`),
    api('GET', `/api/scans/${encoded}/detections`),
    api('GET', `/api/findings?seriesuid=${encoded}`),
    api('GET', `/api/scans/${encoded}/volume.nii.gz`, undefined, { raw: true }).then((r) =>
      r.arrayBuffer(),
    ),
  ]);
  state.scan = scan;
  state.detections = [...detections].sort((a, b) => b.probability - a.probability);
  state.findings = findings;
  const { width, level } = PRESETS[state.preset];
  // The token stays out of NiiVue: we fetch the bytes ourselves (uncached) and hand NiiVue the
  // buffer as its url (loadVolumes passes an ArrayBuffer url through; it drops `buffer`).
  await nv.loadVolumes([
    {
      url: volume,
      name: `${seriesuid}.nii.gz`,
      cal_min: level - width / 2,
      cal_max: level + width / 2,
      trustCalMinMax: true,
    },
  ]);
  setWindow(state.preset);
}

async function openLease(lease) {
  state.lease = lease;
  state.selectedId = null;
  setMode('navigate');
  setState('loading');
  renderItem();
  say(`Loading ${lease.seriesuid} …`);
  await loadScan(lease.seriesuid);
  const top = state.detections[0];
  if (top) moveCursorTo([top.x, top.y, top.z]);
  setState('ready');
  renderAll();
  say(`Scan ${lease.seriesuid} (rank ${lease.rank}): add findings (f) and submit (a), or no nodule (x).`);
  glCanvas.focus();
}

function clearScan() {
  state.lease = null;
  state.scan = null;
  state.detections = [];
  state.findings = [];
  state.selectedId = null;
  if (nv && nv.volumes.length > 0) nv.removeVolume(nv.volumes[0]);
  setState('idle');
  renderAll();
}

async function next() {
  await busy('Next scan', async () => {
    const lease = await api('POST', '/api/queue/next');
    if (lease === null) {
      clearScan();
      await refreshQueue();
      say('Nothing left to answer in this query. Thank you.');
      return;
    }
    await openLease(lease);
    await refreshQueue();
  });
}

async function addFinding(world, diameter) {
  if (!state.lease) return;
  await busy('Adding the finding', async () => {
    const finding = await api('POST', '/api/findings', {
      lease_id: state.lease.lease_id,
      x: world[0],
      y: world[1],
      z: world[2],
      diameter_mm: diameter,
      malignancy: null,
    });
    state.findings.push(finding);
    state.selectedId = finding.id;
    renderAll();
    say(`Finding #${finding.id} at ${world.map((v) => fmt(v)).join(', ')} mm (world), ⌀ ${fmt(diameter)} mm.`);
  });
}

async function patchFinding(id, change) {
  await busy('Changing the finding', async () => {
    const finding = await api('PATCH', `/api/findings/${id}`, change);
    state.findings = state.findings.map((f) => (f.id === id ? finding : f));
    renderAll();
    say(`Finding #${id} changed.`);
  });
}

async function moveFinding(id, world) {
  await patchFinding(id, { x: world[0], y: world[1], z: world[2] });
}

async function deleteFinding(id) {
  await busy('Deleting the finding', async () => {
    await api('DELETE', `/api/findings/${id}`);
    state.findings = state.findings.filter((f) => f.id !== id);
    if (state.selectedId === id) state.selectedId = null;
    renderAll();
    say(`Finding #${id} deleted (kept in its history).`);
  });
}

async function submit(noNodule) {
  if (!state.lease) return;
  const mine = state.findings.filter((f) => state.me && f.author === state.me.name);
  if (!noNodule && mine.length === 0) {
    say('No finding to submit: add one (f), or press x if this scan has no nodule.', { error: true });
    return;
  }
  if (noNodule && mine.length > 0) {
    say('You marked findings on this scan: delete them before answering "no nodule", or submit (a).', {
      error: true,
    });
    return;
  }
  const lease = state.lease;
  let submitted = false;
  await busy('Submitting', async () => {
    await api('POST', `/api/leases/${lease.lease_id}/submit`, { no_nodule: noNodule });
    submitted = true;
  });
  if (!submitted) return;
  clearScan();
  say(
    noNodule
      ? `Scan ${lease.seriesuid} answered: no nodule.`
      : `Scan ${lease.seriesuid} answered with ${mine.length} finding(s).`,
  );
  document.body.dataset.lastSubmitted = lease.seriesuid;
  await next();
}

// ---------------------------------------------------------------------------------------------
// Sign-in and keyboard.
// ---------------------------------------------------------------------------------------------

function signOut(message = '') {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  state.me = null;
  $('workspace').hidden = true;
  $('user').hidden = true;
  $('progress').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = message;
  setState('signed-out');
}

async function signIn(token) {
  state.token = token;
  try {
    state.me = await api('GET', '/api/me');
  } catch (err) {
    signOut(err instanceof ApiError ? `Sign-in failed (${err.status}: ${err.message}).` : String(err));
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  $('login').hidden = true;
  $('workspace').hidden = false;
  $('user').hidden = false;
  $('user-name').textContent = `${state.me.name} (${state.me.role})`;
  setState('idle');
  if (!nv) await initViewer();
  renderAll();
  try {
    const queue = await refreshQueue();
    if (queue.mine && queue.mine.length > 0) {
      await busy('Opening your leased scan', () => openLease(queue.mine[0]));
    } else {
      say('Signed in. Press n for the next scan of the query.');
    }
  } catch (err) {
    fail('Reading the queue', err);
  }
}

function onKey(event) {
  const target = event.target;
  if (target instanceof HTMLInputElement || target instanceof HTMLSelectElement) return;
  if (event.ctrlKey || event.metaKey || event.altKey || !state.me) return;
  const actions = {
    n: () => next(),
    a: () => submit(false),
    x: () => submit(true),
    f: () => setMode(state.mode === 'add' ? 'navigate' : 'add'),
    m: () => setMode('move'),
    1: () => setWindow('lung'),
    2: () => setWindow('mediastinum'),
    Escape: () => setMode('navigate'),
    // Delete only: Backspace is too easily hit by accident to throw a finding away.
    Delete: () => ownFinding(state.selectedId) && deleteFinding(state.selectedId),
  };
  const action = actions[event.key];
  if (!action) return;
  event.preventDefault();
  action();
}

function main() {
  $('login-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const token = $('token-input').value.trim();
    $('token-input').value = '';
    if (token) signIn(token);
  });
  $('sign-out').addEventListener('click', () => {
    clearScan();
    signOut('Signed out.');
  });
  $('preset-lung').addEventListener('click', () => setWindow('lung'));
  $('preset-mediastinum').addEventListener('click', () => setWindow('mediastinum'));
  $('add-finding').addEventListener('click', () => setMode(state.mode === 'add' ? 'navigate' : 'add'));
  $('submit').addEventListener('click', () => submit(false));
  $('no-nodule').addEventListener('click', () => submit(true));
  $('next').addEventListener('click', () => next());
  document.addEventListener('keydown', onKey);
  setInterval(renderLeaseClock, 1000);
  setInterval(() => state.me && refreshQueue().catch(() => {}), 30000);
  setWindow(state.preset);
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) signIn(saved);
}

// For tests and debugging in the console: the NiiVue instance and the page state.
globalThis.activecadViewer = {
  get nv() {
    return nv;
  },
  state,
  rasToWorld,
  worldToRas,
  canvasToRas,
  rasToCanvas,
};

main();
