// BioPilot dashboard: the fleet overview, live plots (uPlot) from SSE streams against the recipe's reference band,
// the operator's changes on the time axis, controls, incidents, agent chat, replay.
// No build step: plain browser JavaScript; the token travels in the http-only cookie set by /login.
// Every element is built with textContent, never innerHTML: ids, run names and incident fields come from the
// API and the broker, and markup in them must stay text (the Content-Security-Policy refuses inline script too).
"use strict";

const FAULTS = ["overfeed", "underfeed", "do_limitation", "ph_excursion", "temperature_spike", "sensor_drift",
                "sensor_stuck", "sensor_dropout", "contamination"];
const SIGNALS = ["do_pct", "ph", "temp_c", "agitation_rpm", "air_sccm", "o2_sccm", "co2_sccm", "base_ml", "feed_ml",
                 "volume_l", "our_mmol_l_h", "cer_mmol_l_h", "capacitance_pf_cm"];
const PANELS = [
  {title: "DO (% air sat.)", series: ["do_pct"]},
  {title: "pH", series: ["ph"]},
  {title: "temperature (°C)", series: ["temp_c"]},
  {title: "OUR / CER (mmol/L/h)", series: ["our_mmol_l_h", "cer_mmol_l_h"]},
  {title: "gas flows (sccm)", series: ["air_sccm", "o2_sccm", "co2_sccm"]},
  {title: "feed / base (mL, cumulative)", series: ["feed_ml", "base_ml"]},
  {title: "capacitance (pF/cm)", series: ["capacitance_pf_cm"]},
  {title: "agitation (rpm)", series: ["agitation_rpm"]},
  {title: "volume (L)", series: ["volume_l"]},
  {title: "assays (points) and soft sensors (lines): VCD (e6/mL), glucose (g/L), titer (g/L)",
   assays: ["vcd_e6_per_ml", "glucose_g_l", "titer_g_l"], soft: ["vcd_e6_per_ml_est", "glucose_g_l_est"]},
];
const COLOURS = ["#1f6feb", "#d92d20", "#079455", "#f79009"];
const SEVERITIES = ["info", "warning", "critical"];        // incident classes the style sheet knows
const STATUSES = ["open", "updated", "resolved"];
const MAX_POINTS = 5000;

const state = {
  reactor: null, follow: true, paused: false, dirty: true,
  data: {},        // reactor -> {run, t: [], signals: {name: []}, assays: {t: [], name: []}}
  incidents: {},   // incident_id -> latest incident event
  alerts: [],
  chunks: {},      // incident_id -> [chunk]
  focus: null,     // incident shown in the agent panel
  plots: [],
  refs: {},        // reactor -> {run, ref: GET .../reference, annotations: [], hashes: ""}
  fleet: [],       // rows of GET /api/fleet
  bandPoints: 0,   // reference points drawn since the last render
};
const FLEET_STATUSES = ["critical", "warning", "normal"];
const SOURCES = {default: "the shipped golden batch", twin: "normal twin runs of this recipe",
                 learned: "learned from the plant's own normal batches"};

function bufferFor(reactor) {
  if (!state.data[reactor]) {
    const signals = Object.fromEntries(SIGNALS.map((s) => [s, []]));
    state.data[reactor] = {run: null, t: [], signals, assays: {t: [], vcd_e6_per_ml: [], glucose_g_l: [], titer_g_l: []},
                           soft: {t: [], vcd_e6_per_ml_est: [], glucose_g_l_est: []}};
    refreshReactors();
  }
  return state.data[reactor];
}

function onTick(event) {
  const b = bufferFor(event.reactor_id);
  const newRun = b.run !== event.run_id;
  if (b.run && newRun) {  // a new batch: start its curves afresh
    b.t.length = 0; SIGNALS.forEach((s) => (b.signals[s].length = 0));
    Object.values(b.assays).forEach((a) => (a.length = 0));
    b.soft = {t: [], vcd_e6_per_ml_est: [], glucose_g_l_est: []};
  }
  b.run = event.run_id;
  b.t.push(...event.t);
  SIGNALS.forEach((s) => b.signals[s].push(...event.signals[s]));
  if (b.t.length > MAX_POINTS) {
    const cut = b.t.length - MAX_POINTS;
    b.t.splice(0, cut); SIGNALS.forEach((s) => b.signals[s].splice(0, cut));
  }
  if (event.reactor_id === state.reactor) {
    state.dirty = true; $("run").textContent = event.run_id;
    if (newRun) refreshReference();  // the new batch's recipe and band
  }
}

function onAssay(event) {
  const a = bufferFor(event.reactor_id).assays;
  a.t.push(event.t);
  ["vcd_e6_per_ml", "glucose_g_l", "titer_g_l"].forEach((k) => a[k].push(event.values[k] ?? null));
  if (event.reactor_id === state.reactor) state.dirty = true;
}

// ---- plots -------------------------------------------------------------------------------------------
function shadePlugin() {
  return {hooks: {drawClear: (u) => {
    const ctx = u.ctx, top = u.bbox.top, height = u.bbox.height;
    ctx.save();
    for (const inc of Object.values(state.incidents)) {
      if (inc.reactor_id !== state.reactor) continue;
      const x0 = u.valToPos(Date.parse(inc.start_ts) / 1000, "x", true);
      const end = inc.end_ts ? Date.parse(inc.end_ts) / 1000 : u.scales.x.max;
      const x1 = u.valToPos(end, "x", true);
      ctx.fillStyle = inc.severity === "critical" ? "rgba(217,45,32,0.14)" : "rgba(247,144,9,0.16)";
      ctx.fillRect(x0, top, Math.max(x1 - x0, 2), height);
    }
    ctx.restore();
  }}};
}

// each signal against its recipe's reference band (GET /api/reactors/{id}/reference), under the data: the golden
// trajectory (dashed), the twin residual's limits (shaded: a drift held beyond them alarms within about a day)
// and the golden detector's alarm limits (dotted); the operator's changes as labelled vertical lines
function visibleBand(ref, name, x0, x1) {
  const band = ref?.signals?.[name];
  if (!band) return null;
  const t = ref.age_min.map((a) => ref.run_start_t + a * 60);
  let i0 = t.findIndex((v) => v >= x0); if (i0 < 0) return null;
  let i1 = t.length - 1; while (i1 > i0 && t[i1] > x1) i1--;
  i0 = Math.max(0, i0 - 1); i1 = Math.min(t.length - 1, i1 + 1);
  return {t: t.slice(i0, i1 + 1), band: Object.fromEntries(Object.entries(band).map(([k, v]) => [k, v.slice(i0, i1 + 1)]))};
}

// the operator's changes to the selected reactor's run (its recipe at the start is listed, not marked)
function changes() {
  return (state.refs[state.reactor]?.annotations || []).filter((a) => a.kind !== "recipe");
}

function bandPlugin(panel) {
  const line = (u, ctx, xs, ys, colour, dash, width) => {
    ctx.beginPath(); ctx.setLineDash(dash); ctx.strokeStyle = colour; ctx.lineWidth = width;
    xs.forEach((x, i) => { const px = u.valToPos(x, "x", true), py = u.valToPos(ys[i], "y", true);
      i ? ctx.lineTo(px, py) : ctx.moveTo(px, py); });
    ctx.stroke();
  };
  return {hooks: {drawClear: (u) => {
    const ref = state.refs[state.reactor]?.ref;
    if (!ref || u.scales.x.min == null) return;
    const ctx = u.ctx;
    ctx.save();
    ctx.beginPath(); ctx.rect(u.bbox.left, u.bbox.top, u.bbox.width, u.bbox.height); ctx.clip();
    (panel.series || []).forEach((name, k) => {
      const seen = visibleBand(ref, name, u.scales.x.min, u.scales.x.max);
      if (!seen) return;
      const {t, band} = seen, colour = COLOURS[k];
      ctx.beginPath();
      t.forEach((x, i) => { const px = u.valToPos(x, "x", true), py = u.valToPos(band.sustained_upper[i], "y", true);
        i ? ctx.lineTo(px, py) : ctx.moveTo(px, py); });
      for (let i = t.length - 1; i >= 0; i--) ctx.lineTo(u.valToPos(t[i], "x", true), u.valToPos(band.sustained_lower[i], "y", true));
      ctx.closePath(); ctx.globalAlpha = 0.13; ctx.fillStyle = colour; ctx.fill(); ctx.globalAlpha = 1;
      line(u, ctx, t, band.lower, colour + "99", [2, 3], 1);
      line(u, ctx, t, band.upper, colour + "99", [2, 3], 1);
      line(u, ctx, t, band.median, colour + "bb", [6, 4], 1.2);
      state.bandPoints += t.length;
      document.body.dataset.band = String(state.bandPoints);  // for the browser test: the band is drawn
    });
    ctx.setLineDash([4, 3]); ctx.strokeStyle = "#7a5af8"; ctx.fillStyle = "#5925dc"; ctx.lineWidth = 1.5;
    ctx.font = `${11 * devicePixelRatio}px system-ui, sans-serif`;
    for (const a of changes()) {
      if (a.t < u.scales.x.min || a.t > u.scales.x.max) continue;
      const x = u.valToPos(a.t, "x", true);
      ctx.beginPath(); ctx.moveTo(x, u.bbox.top); ctx.lineTo(x, u.bbox.top + u.bbox.height); ctx.stroke();
      const width = ctx.measureText(a.text).width;  // left of the line where the right has no room
      const right = u.bbox.left + u.bbox.width;
      ctx.fillText(a.text, x + 4 + width > right ? Math.max(u.bbox.left, x - 4 - width) : x + 4, u.bbox.top + 12 * devicePixelRatio);
    }
    ctx.restore();
  }}};
}

// the y range holds the data, the golden trajectory and the twin residual's limits (the alarm limits only where
// they fall inside: they are wide)
function yRange(panel) {
  return (u, lo, hi) => {
    const ref = state.refs[state.reactor]?.ref, b = state.data[state.reactor];
    if (ref && b && b.t.length) {
      for (const name of panel.series || []) {
        const seen = visibleBand(ref, name, b.t[0], b.t[b.t.length - 1]);
        if (!seen) continue;
        for (const v of [...seen.band.sustained_lower, ...seen.band.sustained_upper]) {
          lo = lo == null ? v : Math.min(lo, v); hi = hi == null ? v : Math.max(hi, v);
        }
      }
    }
    if (lo == null || hi == null) return [0, 1];
    return uPlot.rangeNum(lo, hi, 0.1, true);
  };
}

function makePlots() {
  const host = $("plots");
  host.replaceChildren();
  state.plots = PANELS.map((panel) => {
    const box = el("div", {className: "plot"}, el("h3", {textContent: panel.title}));
    host.appendChild(box);
    const names = panel.series || [...panel.assays, ...panel.soft];
    const opts = {
      width: Math.max(box.clientWidth - 12, 300), height: 170, plugins: [shadePlugin(), bandPlugin(panel)],
      cursor: {drag: {x: true, y: false}},
      scales: {x: {time: true}, ...(panel.series ? {y: {range: yRange(panel)}} : {})},
      legend: {live: false},
      series: [{}, ...names.map((n, i) => {
        const assay = panel.assays && i < panel.assays.length;
        const colour = panel.assays ? COLOURS[i % panel.assays.length] : COLOURS[i];  // estimate = its assay's colour
        return {label: n, stroke: colour, width: 1.2, spanGaps: true,
                points: {show: !!assay, size: 6},
                ...(!panel.assays ? {} : assay ? {paths: () => null} : {dash: [4, 3]})};  // assays: points only
      })],
      axes: [{}, {size: 50}],
      hooks: {setSelect: [() => { state.follow = false; $("follow").checked = false; }]},
    };
    const plot = new uPlot(opts, [[], ...names.map(() => [])], box);
    return {panel, plot, box};
  });
  window.addEventListener("resize", () => state.plots.forEach((p) =>
    p.plot.setSize({width: Math.max(p.box.clientWidth - 12, 300), height: 170})));
}

function render() {
  if (state.paused || !state.dirty || !state.reactor) return;
  const b = state.data[state.reactor];
  if (!b) return;
  state.dirty = false;
  state.bandPoints = 0;
  for (const {panel, plot} of state.plots) {
    const data = panel.assays
      ? uPlot.join([[b.assays.t, ...panel.assays.map((k) => b.assays[k])],
                    [b.soft.t, ...panel.soft.map((k) => b.soft[k])]])
      : [b.t, ...panel.series.map((s) => b.signals[s])];
    plot.setData(data, state.follow);
  }
  document.body.dataset.points = String(b.t.length);  // for the browser test: live points arrived
  document.body.dataset.markers = String(changes().length);
}

// ---- reactors, incidents, agent -----------------------------------------------------------------------
async function refreshReactors() {
  let live = {};
  try { live = await api("/api/reactors"); } catch (_) {}
  const names = [...new Set([...Object.keys(live), ...Object.keys(state.data)])].sort();
  const select = $("reactor");
  const current = select.value;
  fillOptions(select, names);
  const wanted = decodeURIComponent(location.hash.slice(1));  // a link to one reactor: /#r2
  if (names.length && !names.includes(current)) selectReactor(names.includes(wanted) ? wanted : names[0]);
  else select.value = current;
}

function selectReactor(name) {
  state.reactor = name; state.dirty = true; state.follow = true; $("follow").checked = true;
  $("reactor").value = name;
  if (location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);  // a link to this reactor
  const b = state.data[name];
  $("run").textContent = b && b.run ? b.run : "";
  renderIncidents(); renderAgent(); renderFleet(); renderRecipe();
  refreshReference(true);
}

// ---- the reference band, the operator's changes, the fleet -----------------------------------------------
async function refreshReference(force = false) {
  const reactor = state.reactor, run = state.data[reactor]?.run;
  if (!reactor || !run) return;
  const path = (what) => `/api/reactors/${encodeURIComponent(reactor)}/${what}?run_id=${encodeURIComponent(run)}`;
  const known = state.refs[reactor];
  try {
    const annotations = await api(path("annotations"));
    const hashes = annotations.map((a) => a.recipe_hash).join(",");
    // the band changes only with the run or its recipe: fetched again only then
    const ref = force || !known?.ref || known.run !== run || known.hashes !== hashes ? await api(path("reference")) : known.ref;
    state.refs[reactor] = {run, ref, annotations, hashes};
    state.dirty = true;
    if (reactor === state.reactor) renderRecipe();
  } catch (_) {}  // no tick stored yet: the next refresh tries again
}

function onRecipe(event) {  // a recipe change on the wire: the flow's annotation lands in the lake shortly after
  if (event.reactor_id !== state.reactor) return;
  for (const wait of [1000, 3000, 6000]) setTimeout(refreshReference, wait);
}

function renderRecipe() {
  const known = state.refs[state.reactor], ref = known?.ref;
  $("recipe").textContent = ref ? `${ref.recipe} · ${ref.recipe_hash}` : "";
  $("band-note").textContent = ref
    ? `Reference of the run's recipe at the same culture age (${SOURCES[ref.source] || ref.source}) — dashed: golden trajectory; shaded: twin-residual limits ` +
      `(a drift held beyond them alarms within about a day); dotted: golden alarm limits (z ${ref.golden_z.toFixed(0)}); ` +
      `purple: operator changes. No band: ${Object.keys(ref.without_band).join(", ")} (the detectors see increments).`
    : "";
  const items = (known?.annotations || []).map((a) => el("li", {},
    el("span", {className: "muted", textContent: `${when(a.t)} `}), a.text,
    a.changed_by && !a.text.includes(a.changed_by) ? el("span", {className: "muted", textContent: ` · ${a.changed_by}`}) : ""));
  $("annotations").replaceChildren(...(items.length ? items : [el("li", {className: "muted", textContent: "no operator change in this run"})]));
}

function age(hours) {
  if (hours == null) return "–";
  return hours < 48 ? `${hours.toFixed(1)} h` : `${(hours / 24).toFixed(1)} d`;
}

async function refreshFleet() {
  try { state.fleet = await api("/api/fleet"); } catch (_) { return; }
  renderFleet();
}

function renderFleet() {
  const rows = state.fleet;
  $("fleet-count").textContent = `${rows.length} reactors · ${rows.filter((r) => r.status !== "normal").length} with an open incident`;
  $("fleet").querySelector("tbody").replaceChildren(...rows.map((r) => {
    const i = r.open_incident;
    const tr = el("tr", {onclick: () => { selectReactor(r.reactor_id); $("plots").scrollIntoView({behavior: "smooth"}); }},
      el("td", {}, el("b", {textContent: r.reactor_id})),
      el("td", {}, el("span", {className: "pill status", textContent: r.status})),
      el("td", {textContent: age(r.culture_age_h)}),
      el("td", {}, r.recipe, el("span", {className: "muted small", textContent: r.recipe_hash ? ` · ${r.recipe_hash}` : ""})),
      el("td", {className: "small", textContent: i ? `${i.severity} · ${[].concat(i.signals).join(", ")} · since ${when(i.start_t)}` +
        (r.open_incidents > 1 ? ` (+${r.open_incidents - 1})` : "") : "–"}),
      el("td", {className: "muted small", textContent: r.run_id}));
    if (FLEET_STATUSES.includes(r.status)) tr.classList.add(r.status);
    if (r.reactor_id === state.reactor) tr.classList.add("selected");
    tr.dataset.reactor = r.reactor_id;
    return tr;
  }));
}

function renderIncidents() {
  const list = Object.values(state.incidents).filter((i) => i.reactor_id === state.reactor)
    .sort((a, b) => (a.start_ts < b.start_ts ? 1 : -1));
  $("alert-count").textContent = `${state.alerts.filter((a) => a.reactor_id === state.reactor).length} alerts`;
  const known = (value, allowed) => (allowed.includes(value) ? [value] : []);
  $("incidents").replaceChildren(...list.map((i) => {
    const started = String(i.start_ts ?? "").slice(0, 16).replace("T", " ");
    const li = el("li", {onclick: () => { state.focus = i.incident_id; renderAgent(); }}, el("b", {textContent: i.status}),
                  ` · ${i.severity} · ${started} · ${[].concat(i.signals ?? []).join(", ")} · ${i.alert_count} alert(s)`);
    li.classList.add(...known(i.severity, SEVERITIES), ...known(i.status, STATUSES));
    li.dataset.id = i.incident_id;
    return li;
  }));
  if (!list.length) $("incidents").append(el("li", {className: "muted", textContent: "no incident on this reactor"}));
  state.dirty = true;
}

function renderAgent() {
  const mine = Object.values(state.incidents).filter((i) => i.reactor_id === state.reactor)
    .sort((a, b) => (a.start_ts < b.start_ts ? 1 : -1));
  const id = state.focus && state.incidents[state.focus]?.reactor_id === state.reactor ? state.focus : mine[0]?.incident_id;
  const box = $("agent");
  box.querySelectorAll("p.chunk").forEach((p) => p.remove());
  if (!id) return;
  for (const c of (state.chunks[id] || []).slice().sort((a, b) => a.seq - b.seq)) {
    if (!c.text) continue;
    const p = document.createElement("p");
    p.className = "chunk"; p.textContent = c.text;
    box.appendChild(p);
  }
  box.scrollTop = box.scrollHeight;
}

// ---- streams ------------------------------------------------------------------------------------------

function startStreams() {
  stream("/api/stream/telemetry", {tick: onTick, assay: onAssay, recipe: onRecipe});
  stream("/api/stream/alerts", {alert: (a) => { state.alerts.push(a); renderIncidents(); }});
  stream("/api/stream/incidents", {incident: (i) => { state.incidents[i.incident_id] = i; renderIncidents(); renderAgent(); }});
  stream("/api/stream/agents", {chunk: (c) => {
    (state.chunks[c.incident_id] ||= []).push(c);
    renderAgent();
  }});
}

// ---- controls -----------------------------------------------------------------------------------------

async function send(path, body, what) {
  try { await api(path, {method: "POST", body: JSON.stringify(body)}); say(`${what} sent to ${state.reactor}`); }
  catch (err) { say(`${what} refused: ${err.message}`, false); }
}

function reactorPath(what) { return `/api/reactors/${encodeURIComponent(state.reactor)}/${what}`; }

function wireControls() {
  fillOptions($("fault-name"), FAULTS);
  fillOptions($("fault-signal"), ["", ...SIGNALS], (s) => s || "(sensor)");
  $("reactor").onchange = (e) => selectReactor(e.target.value);
  $("follow").onchange = (e) => { state.follow = e.target.checked; state.dirty = true; };
  $("pause").onclick = () => { state.paused = !state.paused; $("pause").textContent = state.paused ? "Resume" : "Pause"; state.dirty = true; };
  $("setpoint-form").onsubmit = (e) => { e.preventDefault();
    send(reactorPath("control"), {type: "setpoint", name: $("sp-name").value, value: Number($("sp-value").value)}, "setpoint"); };
  $("feed-form").onsubmit = (e) => { e.preventDefault();
    send(reactorPath("control"), {type: "feed", volume_ml: Number($("feed-ml").value)}, "feed"); };
  $("fault-form").onsubmit = (e) => { e.preventDefault();
    const body = {fault: $("fault-name").value, magnitude: Number($("fault-mag").value), duration_h: Number($("fault-dur").value)};
    if ($("fault-signal").value) body.signal = $("fault-signal").value;
    send(reactorPath("faults"), body, `fault ${body.fault}`); };
  $("chat-form").onsubmit = (e) => { e.preventDefault(); ask($("chat-q").value); };
  $("replay-form").onsubmit = async (e) => { e.preventDefault();
    try {
      const r = await api("/api/replay", {method: "POST", body: JSON.stringify({run_id: $("replay-run").value, speed: Number($("replay-speed").value)})});
      say(`replay ${r.replay_id} started`); setTimeout(() => selectReactor(r.reactor_id), 1500);
    } catch (err) { say(`replay refused: ${err.message}`, false); } };
  $("report-link").onclick = (e) => {
    const run = state.data[state.reactor]?.run;
    if (!run) { e.preventDefault(); return; }
    $("report-link").href = `/api/reports/${encodeURIComponent(run)}?format=html`;
  };
}

async function ask(question) {
  const run = state.data[state.reactor]?.run;
  const box = $("agent");
  box.append(el("p", {className: "chunk q"}, `» ${question}`));
  try {
    await askAgents({question, run_id: run, incident_id: state.focus}, (text) => {
      box.append(el("p", {className: "chunk"}, text)); box.scrollTop = box.scrollHeight;
    });
  } catch (err) { box.append(el("p", {className: "chunk"}, `chat failed: ${err.message}`)); }
}

async function refreshSoftSensors() {
  const b = state.data[state.reactor];
  if (!b || !b.run) return;
  try {
    const soft = await api(`/api/runs/${encodeURIComponent(b.run)}/soft_sensors?max_points=600`);
    if (soft.run_id === b.run) { b.soft = soft; state.dirty = true; }
  } catch (_) {}
}

async function refreshReplays() {
  try {
    const replays = await api("/api/replay");
    $("replays").replaceChildren(...replays.map((r) => {
      const row = el("div", {}, `${r.replay_id} · ${r.run_id} · ${r.state} · ${r.published}/${r.total} `);
      if (r.state === "running" || r.state === "paused") {  // an ended replay takes no more commands
        for (const [action, symbol] of [["pause", "⏸"], ["resume", "▶"], ["stop", "⏹"]]) {
          row.append(el("button", {type: "button", title: action, textContent: symbol, onclick: () =>
            api(`/api/replay/${encodeURIComponent(r.replay_id)}/${action}`, {method: "POST"}).catch((e) => say(e.message, false))}));
        }
      }
      return row;
    }));
  } catch (_) {}
}

async function main() {
  if (!(await signIn())) return;
  wireControls();
  makePlots();
  startStreams();
  refreshReactors();
  api("/api/runs").then((runs) => fillOptions($("replay-run"), runs.map((r) => r.run_id))).catch(() => {});
  setInterval(render, 250);
  setInterval(refreshReactors, 5000);
  setInterval(refreshReplays, 2000);
  setInterval(refreshSoftSensors, 5000);
  refreshFleet();
  setInterval(refreshFleet, 5000);
  setInterval(refreshReference, 5000);
}

main();
