// Vigie's console: one page, four views, no build step. Leaflet (L) and uPlot are globals
// loaded by index.html from /assets/vendor. Everything the page shows comes from /api.
const $ = (id) => document.getElementById(id);
const state = { me: null, config: null, alerts: new Map(), lastId: 0, unseen: 0, page: 'map' };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith('on')) node.addEventListener(k.slice(2), v); else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c ?? ''));
  return node;
}

async function api(path, options = {}) {
  const init = { credentials: 'same-origin', ...options };
  if (options.body !== undefined) {
    init.method = init.method || 'POST';
    init.headers = { 'Content-Type': 'application/json', ...(options.headers || {}) };
    init.body = JSON.stringify(options.body);
  }
  const response = await fetch('/api' + path, init);
  if (response.status === 401) { showLogin(); throw new Error('log in first'); }
  if (options.raw) return response;
  const json = await response.json();
  if (!response.ok) throw new Error(json.error || response.statusText);
  return json;
}

// ---- login ----
function showLogin() { $('app').hidden = true; $('login').hidden = false; }
$('login-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const f = new FormData(e.target);
  const body = f.get('api_key') ? { api_key: f.get('api_key') } : { user: f.get('user'), password: f.get('password') };
  try { await api('/login', { body }); $('login-error').textContent = ''; start(); }
  catch (err) { $('login-error').textContent = err.message; }
});
$('logout').addEventListener('click', async () => { await api('/logout', { body: {} }); location.reload(); });

// ---- pages ----
function show(page) {
  state.page = page;
  for (const p of document.querySelectorAll('.page')) p.hidden = p.id !== 'page-' + page;
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', a.dataset.page === page);
  if (page === 'map') { map.invalidateSize(); }
  if (page === 'overview') loadOverview();
  if (page === 'sql') loadSchema();
  if (page === 'audit') loadAudit();
  if (page === 'alerts') { state.unseen = 0; updateTitle(); }
}
window.addEventListener('hashchange', () => show(location.hash.slice(1) || 'map'));

// ---- map ----
const map = L.map('map', { worldCopyJump: true, preferCanvas: false }).setView([48.85, 2.35], 11);
const drones = new Map();
const alertLayer = L.layerGroup().addTo(map);
const densityLayer = L.layerGroup().addTo(map);
let trackLayer = L.layerGroup().addTo(map);
let grid = null;

function drawGrid() {
  if (grid) grid.remove();
  grid = L.layerGroup();
  const b = map.getBounds();
  const span = Math.max(b.getNorth() - b.getSouth(), 1e-6);
  const step = [10, 5, 1, 0.5, 0.1, 0.05, 0.01, 0.005, 0.001].find((s) => span / s >= 4) || 0.001;
  const style = { color: '#b9c3cf', weight: 1, interactive: false };
  for (let lat = Math.floor(b.getSouth() / step) * step; lat <= b.getNorth(); lat += step) grid.addLayer(L.polyline([[lat, b.getWest()], [lat, b.getEast()]], style));
  for (let lon = Math.floor(b.getWest() / step) * step; lon <= b.getEast(); lon += step) grid.addLayer(L.polyline([[b.getSouth(), lon], [b.getNorth(), lon]], style));
  grid.addTo(map);
}

function plainBackground(why) {
  $('map-note').textContent = why;
  drawGrid();
  map.on('moveend', drawGrid);
}

async function setupMap() {
  const config = state.config;
  if (config.tile_url) {
    let failures = 0;
    const tiles = L.tileLayer(config.tile_url, { maxZoom: 19 }).addTo(map);
    tiles.on('tileerror', () => {
      failures += 1;
      if (failures === 3) { tiles.remove(); plainBackground('The tile server does not answer: plain background (lat/lon grid).'); }
    });
    tiles.on('tileload', () => { failures = 0; });
  } else {
    plainBackground(config.outline
      ? 'No tile server is set (--console-tile-url): plain background (the force\'s outline and a lat/lon grid).'
      : 'No tile server is set (--console-tile-url): plain background (lat/lon grid).');
  }
  if (config.outline) {
    try { L.geoJSON(await api('/outline'), { style: { color: '#556', weight: 2, fill: false, className: 'outline' } }).addTo(map); } catch (e) { console.warn(e); }
  }
}

function droneColour(d, staleAfter) {
  if (d.open_alerts > 0) return '#d7263d';
  if (d.age_seconds > staleAfter) return '#8a94a3';
  return '#1f6feb';
}

let fitted = false;
async function refreshDrones() {
  const minutes = $('range').value;
  const data = await api('/drones/latest?minutes=' + minutes);
  const seen = new Set();
  for (const d of data.drones) {
    seen.add(d.drone_id);
    const colour = droneColour(d, data.stale_after_seconds);
    let marker = drones.get(d.drone_id);
    if (!marker) {
      marker = L.circleMarker([d.latitude, d.longitude], { radius: 7, weight: 2 }).addTo(map);
      marker.on('click', () => showTrack(d.drone_id));
      drones.set(d.drone_id, marker);
    }
    marker.setLatLng([d.latitude, d.longitude]);
    marker.setStyle({ color: colour, fillColor: colour, fillOpacity: 0.7 });
    marker.getElement()?.setAttribute('data-drone', d.drone_id);
    marker.getElement()?.setAttribute('data-status', colour === '#d7263d' ? 'alert' : colour === '#8a94a3' ? 'stale' : 'normal');
    marker.bindTooltip(`${d.drone_id} · seq ${d.seq} · ${d.time}`);
  }
  for (const [id, marker] of drones) if (!seen.has(id)) { marker.remove(); drones.delete(id); }
  if (!fitted && data.drones.length) {
    fitted = true;
    map.fitBounds(L.latLngBounds(data.drones.map((d) => [d.latitude, d.longitude])).pad(0.2));
    // For the benchmark (bench/console.py): when the first drones were drawn.
    requestAnimationFrame(() => performance.mark('vigie:map-drawn'));
  }
}

async function refreshDensity() {
  densityLayer.clearLayers();
  if (!$('density-on').checked) return;
  const data = await api('/density?minutes=' + $('range').value);
  const max = Math.max(1, ...data.cells.map((c) => c.sightings));
  const size = data.cell_degrees;
  for (const c of data.cells) {
    densityLayer.addLayer(L.rectangle([[c.lat, c.lon], [c.lat + size, c.lon + size]], {
      stroke: false, fillColor: '#ff7b00', fillOpacity: 0.15 + 0.5 * (c.sightings / max), interactive: false,
    }));
  }
}

async function showTrack(drone, around) {
  const query = around ? `from=${encodeURIComponent(around[0])}&to=${encodeURIComponent(around[1])}` : 'minutes=' + $('range').value;
  const data = await api(`/drones/${encodeURIComponent(drone)}/track?${query}`);
  trackLayer.clearLayers();
  const points = data.points.map((p) => [p.latitude, p.longitude]);
  if (!points.length) return;
  L.polyline(points, { color: '#0b7a75', weight: 3 }).addTo(trackLayer);
  const cursor = L.circleMarker(points[points.length - 1], { radius: 6, color: '#0b7a75', fillOpacity: 1 }).addTo(trackLayer);
  const slider = $('track-slider');
  slider.max = points.length - 1; slider.value = points.length - 1;
  $('track-drone').textContent = drone; $('track-box').hidden = false;
  const move = () => { const p = data.points[slider.value]; cursor.setLatLng([p.latitude, p.longitude]); $('track-time').textContent = p.time; };
  slider.oninput = move; move();
}

$('range').addEventListener('change', () => { refreshDrones(); refreshDensity(); });
$('density-on').addEventListener('change', refreshDensity);

// ---- alerts ----
function updateTitle() {
  const open = [...state.alerts.values()].filter((a) => !a.state).length;
  $('unacked').textContent = open ? String(open) : '';
  document.title = open ? `(${open}) Vigie` : 'Vigie';
}

function beep() {
  try {
    const ctx = new AudioContext(); const o = ctx.createOscillator(); o.frequency.value = 880;
    o.connect(ctx.destination); o.start(); o.stop(ctx.currentTime + 0.15);
  } catch (e) { /* no audio device */ }
}

// Alerts kept in the page (the newest; older ones stay in the feed's SQL).
const KEPT_ALERTS = 5000;
// Live alerts and events arriving together are drawn once, at the next frame.
let pendingRender = null;
function scheduleRender() {
  if (pendingRender) return;
  pendingRender = { fresh: new Set() };
  requestAnimationFrame(() => {
    const { fresh } = pendingRender; pendingRender = null;
    renderFeed(); refreshAlertMarkers(fresh);
    // For the benchmark (bench/console.py): when each live alert was drawn.
    for (const id of fresh) performance.mark('vigie:alert-drawn', { detail: { id, raised_at: state.alerts.get(id)?.raised_at } });
  });
}

function renderFeed() {
  const [rule, drone, citizen] = ['f-rule', 'f-drone', 'f-citizen'].map((id) => $(id).value.toLowerCase());
  const rows = [...state.alerts.values()].sort((a, b) => b.id - a.id)
    .filter((a) => a.rule.toLowerCase().includes(rule) && a.drone_id.toLowerCase().includes(drone) && a.citizen.toLowerCase().includes(citizen))
    .slice(0, 500)
    .map((a) => el('tr', { 'data-alert': a.id, class: a.state ? '' : 'new', onclick: () => flyTo(a) },
      el('td', {}, String(a.id)), el('td', {}, a.time), el('td', {}, a.rule), el('td', {}, a.drone_id),
      el('td', {}, a.citizen), el('td', {}, Number(a.score).toFixed(3)),
      el('td', { class: 'state' }, a.state ? `${a.state} by ${a.state_by}${a.note ? ': ' + a.note : ''}` : 'new'),
      el('td', {}, ...(a.state === 'resolve' ? [] : [
        el('button', { class: 'ack', onclick: (e) => { e.stopPropagation(); act(a.id, 'ack'); } }, 'Ack'),
        el('button', { class: 'resolve', onclick: (e) => { e.stopPropagation(); act(a.id, 'resolve'); } }, 'Resolve'),
      ]))));
  $('feed').replaceChildren(...rows);
  updateTitle();
}

async function act(id, action) {
  const note = prompt(action === 'ack' ? 'Acknowledge: note (optional)' : 'Resolve: note (optional)') ?? '';
  try { applyEvent(await api(`/alerts/${id}/ack`, { body: { action, note } })); }
  catch (e) { alert(e.message); }
}

// An alert's state is its newest event: one that arrives late (from another node, or twice)
// changes nothing.
function applyEvent(event) {
  const a = state.alerts.get(event.alert_id);
  if (!a || (a.state_at && Date.parse(a.state_at) > Date.parse(event.state_at))) return;
  Object.assign(a, { state: event.state, state_by: event.state_by, state_at: event.state_at, note: event.note });
  scheduleRender();
}

// One marker per open alert, added and removed as alerts come and go (not redrawn each time).
const alertMarkers = new Map();
function refreshAlertMarkers(fresh = new Set()) {
  for (const [id, m] of alertMarkers) {
    const a = state.alerts.get(id);
    if (!a || a.state === 'resolve') { alertLayer.removeLayer(m); alertMarkers.delete(id); }
  }
  for (const a of state.alerts.values()) {
    if (a.state === 'resolve' || alertMarkers.has(a.id)) continue;
    const m = L.circleMarker([a.latitude, a.longitude], { radius: 9, color: '#d7263d', weight: 3, fill: false, className: fresh.has(a.id) ? 'pulse' : '' });
    m.on('click', () => flyTo(a));
    alertLayer.addLayer(m);
    alertMarkers.set(a.id, m);
  }
}

async function flyTo(a) {
  location.hash = 'map';
  map.flyTo([a.latitude, a.longitude], 15);
  const t = Date.parse(a.time);
  showTrack(a.drone_id, [new Date(t - 10 * 60e3).toISOString(), new Date(t + 10 * 60e3).toISOString()]);
  let words = '';
  try { const d = await api('/alerts/' + a.id); words = (d.report?.words || []).join(', '); } catch (e) { words = e.message; }
  L.popup().setLatLng([a.latitude, a.longitude])
    .setContent(el('div', { class: 'alert-popup' }, el('b', {}, a.citizen), ` score ${Number(a.score).toFixed(3)}`, el('br'),
      `${a.rule} · drone ${a.drone_id} · ${a.time}`, el('br'), `words: ${words || '—'}`)).openOn(map);
}

let lastBeep = 0;
function addAlert(a, live) {
  state.alerts.set(a.id, { state: null, state_by: null, note: null, ...a });
  state.lastId = Math.max(state.lastId, a.id);
  if (state.alerts.size > KEPT_ALERTS) state.alerts.delete(state.alerts.keys().next().value);
  if (live) {
    state.unseen += 1;
    const banner = $('banner'); banner.textContent = `Alert ${a.id}: ${a.citizen} (score ${Number(a.score).toFixed(2)}) near drone ${a.drone_id}`;
    banner.hidden = false;
    // At most one beep a second, however many alerts arrive.
    if (Date.now() - lastBeep > 1000) { lastBeep = Date.now(); beep(); }
    scheduleRender(); pendingRender.fresh.add(a.id);
  }
}

async function loadAlerts() {
  const data = await api('/alerts?limit=500');
  for (const a of data.alerts.reverse()) addAlert(a, false);
  renderFeed(); refreshAlertMarkers();
}

function subscribe() {
  // The browser resends the last `id:` as Last-Event-ID when it reconnects by itself.
  const source = new EventSource('/api/alerts/stream?from_id=' + (state.lastId + 1));
  source.addEventListener('alert', (e) => { const a = JSON.parse(e.data); if (!state.alerts.has(a.id)) addAlert(a, true); });
  source.addEventListener('alert-event', (e) => applyEvent(JSON.parse(e.data)));
  source.addEventListener('reload', () => loadAlerts());
  source.addEventListener('failed', () => { source.close(); setTimeout(subscribe, 1000); });
  source.onerror = () => { if (source.readyState === EventSource.CLOSED) setTimeout(subscribe, 1000); };
  state.source = source;
}
for (const id of ['f-rule', 'f-drone', 'f-citizen']) $(id).addEventListener('input', renderFeed);

// ---- charts ----
function chart(target, columns, rows) {
  target.replaceChildren();
  if (!rows.length || columns.length < 2) return;
  const numeric = columns.map((c, i) => i > 0 && rows.every((r) => r[i] === null || typeof r[i] === 'number'));
  const series = columns.map((c, i) => i).filter((i) => numeric[i]);
  if (!series.length) return;
  const timeLike = rows.every((r) => typeof r[0] === 'string' && !Number.isNaN(Date.parse(r[0])) && /\d{4}-\d\d-\d\d/.test(r[0]));
  const x = timeLike ? rows.map((r) => Date.parse(r[0]) / 1000) : rows.map((r, i) => i);
  const palette = ['#1f6feb', '#d7263d', '#0b7a75', '#ff7b00', '#6f42c1'];
  const opts = {
    width: Math.max(400, target.clientWidth || 800), height: 260,
    scales: { x: { time: timeLike } },
    axes: [timeLike ? {} : { values: (u, ticks) => ticks.map((t) => rows[t] ? String(rows[t][0]) : '') }, {}],
    series: [{ label: columns[0].name }, ...series.map((i, k) => ({
      label: columns[i].name, stroke: palette[k % 5], fill: timeLike ? undefined : palette[k % 5] + '88',
      paths: timeLike ? undefined : uPlot.paths.bars({ size: [0.6, 60] }),
    }))],
  };
  target.dataset.kind = timeLike ? 'line' : 'bar';
  target.dataset.values = JSON.stringify(series.map((i) => rows.map((r) => r[i])));
  new uPlot(opts, [x, ...series.map((i) => rows.map((r) => r[i]))], target);
}

// ---- overview ----
function reportLinks() {
  const day = $('report-day').value;
  $('report-pdf').href = '/api/report?day=' + day;
  $('report-html').href = '/api/report?format=html&day=' + day;
}
$('report-day').valueAsDate = new Date(Date.now() - 864e5);
$('report-day').addEventListener('change', reportLinks);
reportLinks();

async function loadOverview() {
  const data = await api('/overview');
  const f = data.figures || {};
  const fig = (label, value, id) => el('div', { class: 'figure', id }, el('b', {}, value == null ? '—' : String(value)), label);
  $('figures').replaceChildren(
    fig('active drones (5 min)', f.active_drones, 'fig-drones'),
    fig('reports / min', f.reports_per_minute == null ? null : Number(f.reports_per_minute).toFixed(1), 'fig-rate'),
    fig('alerts today', f.alerts_today, 'fig-alerts'),
    fig('report delay (s, receipt − report time)', f.ingest_lag_seconds == null ? null : Number(f.ingest_lag_seconds).toFixed(2), 'fig-lag'));
  const cols = (name) => [{ name: 'hour' }, { name }];
  // Every hour of the last 24, empty ones included.
  const byHour = new Map(data.hourly.map((h) => [Date.parse(h.hour), h]));
  const now = new Date(); now.setUTCMinutes(0, 0, 0);
  const hours = [...Array(24).keys()].map((i) => now.getTime() - (23 - i) * 3600e3);
  const series = (name) => hours.map((t) => [new Date(t).toISOString(), byHour.get(t)?.[name] ?? 0]);
  chart($('chart-reports'), cols('reports'), series('reports'));
  chart($('chart-alerts'), cols('alerts'), series('alerts'));
  $('areas').replaceChildren(el('tr', {}, el('th', {}, 'cell'), el('th', {}, 'low-score sightings'), el('th', {}, 'reports')),
    ...data.top_areas.map((a) => el('tr', {}, el('td', {}, a.cell), el('td', {}, String(a.low_score_sightings)), el('td', {}, String(a.reports)))));
}

// ---- SQL ----
const PAGE = 50;
let result = null;
async function loadSchema() {
  if ($('schema').childElementCount) return;
  const data = await api('/schema');
  $('schema').replaceChildren(...data.tables.map((t) => el('details', {}, el('summary', {}, t.name),
    ...t.columns.map((c) => el('div', {}, `${c.name} `, el('small', {}, c.type))))));
  loadSaved(); renderHistory();
}

function renderResult(page) {
  const { columns, rows } = result;
  const slice = rows.slice(page * PAGE, (page + 1) * PAGE);
  $('sql-result').replaceChildren(el('tr', {}, ...columns.map((c) => el('th', {}, c.name))),
    ...slice.map((r) => el('tr', {}, ...r.map((v) => el('td', {}, v === null ? 'NULL' : typeof v === 'object' ? JSON.stringify(v) : String(v))))));
  const pages = Math.ceil(rows.length / PAGE);
  $('pager').replaceChildren(...(pages > 1 ? [
    el('button', { onclick: () => renderResult(Math.max(0, page - 1)) }, '‹'), ` page ${page + 1} / ${pages} `,
    el('button', { onclick: () => renderResult(Math.min(pages - 1, page + 1)) }, '›')] : []));
}

async function runSql() {
  const sql = $('sql-text').value;
  $('sql-error').textContent = ''; $('sql-status').textContent = 'running…';
  try {
    result = await api('/sql', { body: { sql } });
    $('sql-status').textContent = `${result.row_count} rows${result.truncated ? ` (capped at ${state.config.max_rows})` : ''} in ${result.elapsed_ms.toFixed(1)} ms`;
    renderResult(0);
    chart($('sql-chart'), result.columns, result.rows);
    remember(sql);
  } catch (e) {
    $('sql-status').textContent = ''; $('sql-error').textContent = e.message;
    $('sql-result').replaceChildren(); $('sql-chart').replaceChildren();
  }
}

function remember(sql) {
  const key = 'vigie-history-' + state.me.tenant;
  const history = [sql, ...JSON.parse(localStorage.getItem(key) || '[]').filter((s) => s !== sql)].slice(0, 50);
  localStorage.setItem(key, JSON.stringify(history)); renderHistory();
}
function renderHistory() {
  const history = JSON.parse(localStorage.getItem('vigie-history-' + state.me.tenant) || '[]');
  $('history').replaceChildren(el('option', { value: '' }, 'history'), ...history.map((s) => el('option', { value: s }, s.slice(0, 80))));
}
async function loadSaved(list) {
  const queries = list || (await api('/queries')).queries;
  $('saved').replaceChildren(el('option', { value: '' }, 'saved queries'), ...queries.map((q) => el('option', { value: q.sql }, q.name)));
}
$('history').addEventListener('change', (e) => { if (e.target.value) $('sql-text').value = e.target.value; });
$('saved').addEventListener('change', (e) => { if (e.target.value) $('sql-text').value = e.target.value; });
$('save').addEventListener('click', async () => {
  const name = prompt('Save this query for the whole tenant as:');
  if (name) loadSaved((await api('/queries', { body: { name, sql: $('sql-text').value } })).queries);
});
$('run').addEventListener('click', runSql);
$('sql-text').addEventListener('keydown', (e) => { if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); runSql(); } });
$('csv').addEventListener('click', async () => {
  const response = await api('/sql', { body: { sql: $('sql-text').value }, headers: { Accept: 'text/csv' }, raw: true });
  if (!response.ok) { $('sql-error').textContent = (await response.json()).error; return; }
  const link = el('a', { href: URL.createObjectURL(await response.blob()), download: 'vigie-result.csv' });
  link.click();
});

// ---- audit ----
async function loadAudit() {
  const data = await api('/audit?limit=200');
  $('audit').replaceChildren(el('tr', {}, ...data.columns.map((c) => el('th', {}, c.name))),
    ...data.rows.map((r) => el('tr', {}, ...r.map((v) => el('td', {}, v === null ? '' : String(v))))));
}

// ---- start ----
async function start() {
  state.config = await api('/config');
  try { state.me = await api('/me'); } catch (e) { return; }
  $('login').hidden = true; $('app').hidden = false;
  $('who').textContent = `${state.me.name} (${state.me.role}, tenant ${state.me.tenant})`;
  $('audit-link').hidden = state.me.role !== 'admin';
  show(location.hash.slice(1) || 'map');
  await setupMap();
  await Promise.all([refreshDrones(), refreshDensity(), loadAlerts()]);
  subscribe();
  setInterval(() => refreshDrones().catch(console.warn), 2000);
  setInterval(() => refreshDensity().catch(console.warn), 30000);
  document.body.dataset.ready = 'true';
}
start();
