// livepose dashboard: one websocket, camera tiles, a three.js 3D view, latency and status.
import * as THREE from "three";
import { OrbitControls } from "/static/vendor/three/OrbitControls.js";

const token = new URLSearchParams(location.search).get("token");
const q = token ? `?token=${encodeURIComponent(token)}` : "";
const $ = (id) => document.getElementById(id);
// What tests (and curious users) can read: window.livepose.
const probe = { tiles: {}, frames: {}, instances: {}, stale: {}, poses: 0, statuses: 0, renders: 0, meta: null };
window.livepose = probe;
probe.showDrift = (d) => onDrift(d);  // tests: draw the banner from a status's drift list

let meta = null;
const tiles = {};
const history = [];  // [{p50, p99, inf}] one per status message (2 per second)

// ------------------------------------------------------------------ tiles
// several animals: one colour per track id (fusion.multi), on the tiles and in the 3D view
const PALETTE = [0xffd54f, 0x4fc3f7, 0xef5350, 0x66bb6a, 0xab47bc, 0xff7043, 0x26c6da, 0xd4e157];
const cssColour = (hex) => `#${hex.toString(16).padStart(6, "0")}`;

function confColour(c) {  // red (0) → yellow → green (1)
  const h = Math.max(0, Math.min(1, c)) * 120;
  return `hsl(${h}, 90%, 50%)`;
}

function makeTile(cam) {
  const div = document.createElement("div");
  div.className = "tile";
  div.id = `tile-${cam}`;
  const canvas = document.createElement("canvas");
  canvas.width = 160; canvas.height = 128;
  const stats = document.createElement("div");
  stats.className = "stats";
  stats.innerHTML = `<span class="name"></span><span class="fps"></span><span class="drops"></span>` +
    `<span class="desync"></span><span class="exposure"></span>`;
  stats.querySelector(".name").textContent = cam;
  div.append(canvas, stats);
  $("tiles").append(div);
  tiles[cam] = { canvas, ctx: canvas.getContext("2d"), stats };
  probe.tiles[cam] = 0;
}

async function onTile(buf) {
  const view = new DataView(buf);
  const n = view.getUint32(0, true);
  const head = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, n)));
  const t = tiles[head.cam];
  if (!t) return;
  const img = await createImageBitmap(new Blob([new Uint8Array(buf, 4 + n)], { type: "image/jpeg" }));
  if (t.canvas.width !== head.w || t.canvas.height !== head.h) {
    t.canvas.width = head.w; t.canvas.height = head.h;
  }
  const g = t.ctx;
  g.drawImage(img, 0, 0);
  img.close();
  if (head.inst) {  // several animals: every instance, its skeleton in its individual's colour
    for (const ins of head.inst) {  // dots too: confidence is their opacity
      const known = ins.id !== null && ins.id !== undefined;
      const colour = known ? cssColour(PALETTE[ins.id % PALETTE.length]) : "#ffffff";
      drawKeypoints(g, ins.kp, colour, colour);
    }
    probe.instances[head.cam] = head.inst.map((ins) => ins.id);
  } else {
    drawKeypoints(g, head.kp || [], "rgba(255,255,255,0.55)", null);
  }
  if (head.kp_stale) {  // this camera's keypoints stopped arriving (or never came)
    const label = `no keypoints for ${head.kp_age_s.toFixed(0)} s`;
    g.font = "bold 11px sans-serif";
    g.fillStyle = "rgba(0,0,0,0.6)";
    g.fillRect(2, head.h - 17, g.measureText(label).width + 8, 15);
    g.fillStyle = "#ff8a65";
    g.fillText(label, 6, head.h - 6);
  }
  probe.stale[head.cam] = Boolean(head.kp_stale);
  probe.tiles[head.cam] += 1;
  probe.frames[head.cam] = head.frame_id;
}

// kp: [[x, y, conf] | [null, null, null]]; dots in dotColour (opacity: confidence), or
// coloured by confidence when it is null
function drawKeypoints(g, kp, boneColour, dotColour) {
  if (meta && kp.length) {
    g.lineWidth = 1.5;
    g.strokeStyle = boneColour;
    for (const [a, b] of meta.skeleton) {
      const i = meta.keypoints.indexOf(a), j = meta.keypoints.indexOf(b);
      const p = kp[i], r = kp[j];
      if (!p || !r || p[0] === null || r[0] === null) continue;
      g.beginPath(); g.moveTo(p[0], p[1]); g.lineTo(r[0], r[1]); g.stroke();
    }
  }
  for (const p of kp) {
    if (p[0] === null) continue;
    g.fillStyle = dotColour || confColour(p[2]);
    g.globalAlpha = dotColour ? 0.35 + 0.65 * Math.max(0, Math.min(1, p[2])) : 1;
    g.beginPath(); g.arc(p[0], p[1], 2, 0, 2 * Math.PI); g.fill();
  }
  g.globalAlpha = 1;
}

// ------------------------------------------------------------------ 3D view
const view3d = { scene: null, renderer: null, camera: null, controls: null, joints: [], bones: null };

function init3d() {
  const el = $("view3d");
  let renderer;
  try {
    renderer = new THREE.WebGLRenderer({ antialias: true, preserveDrawingBuffer: true });
  } catch (e) {
    el.textContent = `3D view unavailable: ${e.message}`;
    return;
  }
  renderer.setPixelRatio(window.devicePixelRatio || 1);
  renderer.setSize(el.clientWidth, el.clientHeight);
  renderer.setClearColor(0x0f1216);
  el.append(renderer.domElement);
  const scene = new THREE.Scene();
  const camera = new THREE.PerspectiveCamera(45, el.clientWidth / el.clientHeight, 1, 20000);
  camera.up.set(0, 0, 1);
  const r = (meta && meta.arena_radius) || 250;
  camera.position.set(r * 2.2, -r * 2.2, r * 1.8);
  const controls = new OrbitControls(camera, renderer.domElement);
  controls.target.set(0, 0, 20);
  controls.update();
  scene.add(new THREE.AmbientLight(0xffffff, 0.8));
  const grid = new THREE.GridHelper(r * 2, 10, 0x3a4350, 0x262c34);
  grid.rotation.x = Math.PI / 2;
  scene.add(grid);
  const ring = new THREE.Mesh(new THREE.RingGeometry(r - 1.5, r + 1.5, 96),
    new THREE.MeshBasicMaterial({ color: 0x4a5668, side: THREE.DoubleSide }));
  scene.add(ring);
  scene.add(new THREE.AxesHelper(40));
  for (const [name, c] of Object.entries((meta && meta.camera_centers) || {})) {
    const body = new THREE.Mesh(new THREE.BoxGeometry(24, 24, 24),
      new THREE.MeshBasicMaterial({ color: 0x4fc3f7, wireframe: true }));
    body.position.set(c[0], c[1], c[2]);
    body.name = name;
    scene.add(body);
    const g = new THREE.BufferGeometry().setFromPoints(
      [new THREE.Vector3(c[0], c[1], c[2]), new THREE.Vector3(0, 0, 20)]);
    scene.add(new THREE.Line(g, new THREE.LineBasicMaterial({ color: 0x2d5d75 })));
    const far = Math.hypot(c[0], c[1], c[2]) * 2.0;  // every camera in view
    if (far > camera.position.length()) camera.position.setLength(far);
  }
  const J = meta ? meta.keypoints.length : 0;
  const sphere = new THREE.SphereGeometry(4, 12, 8);
  for (let j = 0; j < J; j++) {
    const m = new THREE.Mesh(sphere, new THREE.MeshBasicMaterial({ color: 0xffd54f }));
    m.visible = false;
    scene.add(m);
    view3d.joints.push(m);
  }
  const E = meta ? meta.skeleton.length : 0;
  const bones = new THREE.BufferGeometry();
  bones.setAttribute("position", new THREE.BufferAttribute(new Float32Array(E * 6), 3));
  view3d.bones = bones;
  scene.add(new THREE.LineSegments(bones, new THREE.LineBasicMaterial({ color: 0xffffff })));
  Object.assign(view3d, { scene, renderer, camera, controls });
  new ResizeObserver(() => {
    renderer.setSize(el.clientWidth, el.clientHeight);
    camera.aspect = el.clientWidth / el.clientHeight;
    camera.updateProjectionMatrix();
  }).observe(el);
  const loop = () => {
    controls.update();
    renderer.render(scene, camera);
    probe.renders += 1;
    requestAnimationFrame(loop);
  };
  loop();
}


function drawSkeleton(joints, bones, xyz) {
  xyz.forEach((p, j) => {
    const m = joints[j];
    if (!m) return;
    m.visible = p[0] !== null;
    if (m.visible) m.position.set(p[0], p[1], p[2]);
  });
  const pos = bones.attributes.position;
  meta.skeleton.forEach(([a, b], e) => {
    const p = xyz[meta.keypoints.indexOf(a)], r = xyz[meta.keypoints.indexOf(b)];
    const ok = p && r && p[0] !== null && r[0] !== null;
    const s = ok ? p : [0, 0, 0], t = ok ? r : [0, 0, 0];
    pos.setXYZ(2 * e, s[0], s[1], s[2]);
    pos.setXYZ(2 * e + 1, t[0], t[1], t[2]);
  });
  pos.needsUpdate = true;
}

function individual(id) {  // the meshes of one track id, made on first sight
  view3d.individuals = view3d.individuals || {};
  if (view3d.individuals[id]) return view3d.individuals[id];
  const colour = PALETTE[id % PALETTE.length];
  const sphere = new THREE.SphereGeometry(4, 12, 8);
  const joints = meta.keypoints.map(() => {
    const m = new THREE.Mesh(sphere, new THREE.MeshBasicMaterial({ color: colour }));
    m.visible = false;
    view3d.scene.add(m);
    return m;
  });
  const bones = new THREE.BufferGeometry();
  bones.setAttribute("position",
    new THREE.BufferAttribute(new Float32Array(meta.skeleton.length * 6), 3));
  const lines = new THREE.LineSegments(bones, new THREE.LineBasicMaterial({ color: colour }));
  view3d.scene.add(lines);
  view3d.individuals[id] = { joints, bones, lines };
  return view3d.individuals[id];
}

function onPose(msg) {
  probe.poses += 1;
  const inds = msg.individuals || [];
  if (inds.length > 1) $("ids-form").hidden = false;  // several animals: offer the swap
  if (!view3d.scene) return;
  const seen = new Set(inds.map((i) => i.id));
  for (const [id, g] of Object.entries(view3d.individuals || {})) {
    if (!seen.has(Number(id))) {
      g.joints.forEach((m) => { m.visible = false; });
      g.lines.visible = false;
    }
  }
  if (inds.length) {  // several animals: each in its colour, the single pose hidden
    view3d.joints.forEach((m) => { m.visible = false; });
    drawSkeleton(view3d.joints, view3d.bones, meta.keypoints.map(() => [null, null, null]));
    for (const ind of inds) {
      const g = individual(ind.id);
      g.lines.visible = true;
      drawSkeleton(g.joints, g.bones, ind.xyz);
    }
    return;
  }
  drawSkeleton(view3d.joints, view3d.bones, msg.xyz);
}

// ------------------------------------------------------------------ status
const fmt = (v, d = 2) => (v === null || v === undefined ? "–" : Number(v).toFixed(d));

function rows(tbody, data) {
  tbody.replaceChildren(...data.map((cells) => {
    const tr = document.createElement("tr");
    for (const c of cells) { const td = document.createElement("td"); td.textContent = c; tr.append(td); }
    return tr;
  }));
}

function plot() {
  const c = $("latplot"), g = c.getContext("2d");
  const W = c.width, H = c.height;
  g.clearRect(0, 0, W, H);
  const period = meta ? 1000 / meta.fps : 33;
  const ymax = Math.max(period * 1.2, ...history.map((h) => h.p99 || 0)) * 1.1;
  const y = (v) => H - (v / ymax) * (H - 12) - 2;
  g.fillStyle = "#9fb0c2"; g.font = "10px sans-serif";
  g.fillText(`${ymax.toFixed(0)} ms`, 4, 10);
  const line = (key, colour) => {
    g.strokeStyle = colour; g.beginPath();
    history.forEach((h, i) => {
      const v = key === "period" ? period : h[key];
      if (v === null || v === undefined) return;
      const x = (i / Math.max(1, history.length - 1)) * W;
      i ? g.lineTo(x, y(v)) : g.moveTo(x, y(v));
    });
    g.stroke();
  };
  line("period", "#777"); line("inf", "#aed581"); line("p50", "#4fc3f7"); line("p99", "#ff8a65");
}

function onStatus(s) {
  probe.statuses += 1;
  probe.status = s;
  const f = s.frames;
  $("summary").textContent = `${fmt(f.fused_fps, 1)} fused/s · up ${fmt(s.uptime_s, 0)} s · ${s.clients} viewer(s)`;
  rows($("frames").tBodies[0], [
    ["triggered", f.triggered], ["fused", f.fused], ["skipped", f.skipped],
    ["incomplete", f.incomplete], ["in flight", f.in_flight], ["frames dropped", f.dropped_frames],
  ]);
  rows($("latency").tBodies[0], Object.entries(s.latency_ms).map(([k, v]) => [k, fmt(v.p50), fmt(v.p99)]));
  const tot = s.latency_ms.total || {}, inf = s.latency_ms.inference || {};
  history.push({ p50: tot.p50, p99: tot.p99, inf: inf.p50 });
  if (history.length > 120) history.shift();
  plot();
  for (const [cam, c] of Object.entries(s.cameras)) {
    const t = tiles[cam];
    if (!t) continue;
    const st = t.stats;
    st.querySelector(".fps").textContent = `${fmt(c.fps, 1)} fps`;
    const drops = st.querySelector(".drops");
    drops.textContent = `drops ${c.dropped}+${c.lost_in_transport}`;
    drops.classList.toggle("warn", c.dropped + c.lost_in_transport > 0);
    const de = st.querySelector(".desync");
    de.textContent = `desync ${fmt(c.desync_ms)} ms`;
    de.classList.toggle("warn", !!c.desync);
    st.querySelector(".exposure").textContent = c.exposure_us ? `exp ${fmt(c.exposure_us, 0)} µs` : "exp –";
  }
  const rec = s.recording || {};
  const rs = $("record-status");
  if (rec.available === false) rs.textContent = "recording control unavailable";
  else if (rec.available) rs.textContent = rec.recording ? `recording → ${rec.session}` : `not recording${rec.session ? ` (closing ${rec.session})` : ""}`;
  rs.classList.toggle("rec", !!rec.recording);
  // video lost per camera (its encoder's counters: lapped by the ring, never seen, write errors)
  const lost = Object.entries(rec.video || {}).filter(([, v]) => v.rec_lost || v.rec_errors || (rec.recording && v.state !== "running"));
  if (rec.available && lost.length) {
    rs.textContent += " · VIDEO LOST: " + lost.map(([cam, v]) => `${cam} ${v.rec_lost || 0}` +
      ` (lapped ${v.rec_lapped || 0}, gap ${v.rec_gap || 0}, errors ${v.rec_errors || 0}${v.state !== "running" ? `, encoder ${v.state}` : ""})`).join(", ");
  }
  rs.classList.toggle("warn", lost.length > 0);
  const feed = $("feed");
  const seen = Number(feed.dataset.seq || 0);
  for (const e of s.feed.filter((e) => e.seq > seen)) {
    const li = document.createElement("li");
    li.className = e.level;
    li.textContent = `${new Date(e.t * 1000).toLocaleTimeString()} ${e.proc}: ${e.msg}`;
    feed.prepend(li);
    feed.dataset.seq = e.seq;
  }
  while (feed.children.length > 200) feed.lastChild.remove();
  onCalibration(s.calibration);
  onDrift(s.drift);
}

// ------------------------------------------------------------------ calibration
function drawGrid(canvas, grid) {  // coverage: where the board's corners have been seen
  const rowsN = grid.length, colsN = rowsN ? grid[0].length : 0;
  canvas.width = 8 * Math.max(colsN, 1); canvas.height = 8 * Math.max(rowsN, 1);
  const g = canvas.getContext("2d");
  const top = Math.max(1, ...grid.flat());
  grid.forEach((row, r) => row.forEach((v, c) => {
    g.fillStyle = v > 0 ? `rgba(102, 187, 106, ${0.35 + 0.65 * v / top})` : "#262c34";
    g.fillRect(c * 8 + 0.5, r * 8 + 0.5, 7, 7);
  }));
}

function onCalibration(cal) {
  const panel = $("calib-panel");
  panel.hidden = !cal;
  if (!cal) return;
  probe.calibration = cal;
  const t = cal.targets || {};
  const states = { collecting: "collecting — move the board", solving: "enough views: solving…",
                   done: "done", failed: "failed" };
  $("calib-state").textContent = `· ${states[cal.state] || cal.state || ""}`;
  const res = cal.result || {};
  $("calib-summary").textContent = cal.state === "done"
    ? `${res.toml} written, reprojection ${fmt(res.reproj_px, 3)} px (report ${res.report})`
    : cal.state === "failed" ? `error: ${res.error}`
    : `${cal.board || ""} · frame-sets ${cal.frames}, kept ${cal.kept} · wanted per camera: ` +
      `${t.views} views covering ${Math.round(100 * (t.coverage || 0))}%, pairs sharing ${t.pair_views}`;
  const box = $("calib-cams");
  for (const c of cal.cameras) {
    let row = box.querySelector(`[data-cam="${CSS.escape(c.name)}"]`);
    if (!row) {
      row = document.createElement("div");
      row.className = "calib-cam"; row.dataset.cam = c.name;
      row.innerHTML = `<canvas></canvas><div><span class="name"></span> <span class="views"></span>
        <span class="cov"></span> <span class="rp"></span><div class="warn msg"></div></div>`;
      row.querySelector(".name").textContent = c.name;
      box.append(row);
    }
    drawGrid(row.querySelector("canvas"), c.grid || []);
    const v = row.querySelector(".views");
    v.textContent = `${c.views}/${t.views} views`; v.className = `views ${c.views >= t.views ? "met" : ""}`;
    const cov = row.querySelector(".cov");
    cov.textContent = `coverage ${Math.round(100 * c.coverage)}%`;
    cov.className = `cov ${c.coverage >= t.coverage ? "met" : ""}`;
    row.querySelector(".rp").textContent = `reprojection ${c.reproj_px == null ? "–" : fmt(c.reproj_px) + " px"}`;
    const pic = (cal.pictures || {})[c.name];
    row.querySelector(".msg").textContent = c.message ? c.message + (pic ? ` (what the detector saw: ${pic})` : "") : "";
  }
  const tb = $("calib-pairs").tBodies[0];
  rows(tb, cal.pairs.map(([a, b, n]) => [`${a} – ${b}`, n]));
  cal.pairs.forEach(([, , n], i) => tb.rows[i].cells[1].classList.toggle("met", n >= t.pair_views));
}

function onDrift(drift) {  // fusion named a camera whose calibration no longer fits
  const b = $("drift-banner");
  b.hidden = !drift || drift.length === 0;
  if (b.hidden) return;
  b.textContent = "⚠ Calibration drift: " + drift.map((d) =>
    `camera ${d.camera} moved ${fmt(d.shift_px, 1)} px (≈ ${fmt(d.angle_deg, 2)}°) since the start ` +
    `of the run (frame ${d.frame_id})`).join("; ") +
    " — recalibrate it (livepose calibrate refine SESSION --camera CAM).";
}

// ------------------------------------------------------------------ recording
async function record(action, name) {
  const r = await fetch(`/api/record${q}`, {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify(name ? { action, name } : { action }),
  });
  const body = await r.json().catch(() => ({}));
  $("record-status").textContent = r.ok ? `${action}: ${body.session || "ok"}` : `error: ${body.error || r.status}`;
  probe.lastRecord = { status: r.status, body };
}
$("record-form").addEventListener("submit", (ev) => { ev.preventDefault(); record("start", $("session-name").value); });
$("record-stop").addEventListener("click", () => record("stop"));

// ------------------------------------------------------------------ identities (several animals)
async function swapIds(a, b) {
  const r = await fetch(`/api/ids${q}`, {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ action: "swap", a, b }),
  });
  const body = await r.json().catch(() => ({}));
  $("ids-status").textContent = r.ok ? `swapped ${a} ⇄ ${b}` : `error: ${body.error || r.status}`;
  probe.lastIds = { status: r.status, body };
}
$("ids-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  swapIds(Number($("ids-a").value), Number($("ids-b").value));
});

// ------------------------------------------------------------------ websocket
function connect() {
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws${q}`);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => { $("conn").textContent = "live"; $("conn").className = "ok"; };
  ws.onclose = () => {
    $("conn").textContent = "disconnected — retrying"; $("conn").className = "bad";
    setTimeout(connect, 1000);
  };
  ws.onmessage = (ev) => {
    if (typeof ev.data !== "string") { onTile(ev.data); return; }
    const msg = JSON.parse(ev.data);
    if (msg.type === "meta") {
      if (!meta) {
        meta = msg; probe.meta = msg;
        $("run-name").textContent = msg.name;
        msg.cameras.forEach(makeTile);
        init3d();
      }
    } else if (msg.type === "pose") onPose(msg);
    else if (msg.type === "status") onStatus(msg);
  };
}
connect();
