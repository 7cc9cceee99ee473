// BioPilot dashboard: live plots (uPlot) from SSE streams, controls, incidents, agent chat, replay.
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
};

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
  if (b.run && b.run !== event.run_id) {  // a new batch: start its curves afresh
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
  if (event.reactor_id === state.reactor) { state.dirty = true; $("run").textContent = event.run_id; }
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

function makePlots() {
  const host = $("plots");
  host.replaceChildren();
  state.plots = PANELS.map((panel) => {
    const box = el("div", {className: "plot"}, el("h3", {textContent: panel.title}));
    host.appendChild(box);
    const names = panel.series || [...panel.assays, ...panel.soft];
    const opts = {
      width: Math.max(box.clientWidth - 12, 300), height: 170, plugins: [shadePlugin()],
      cursor: {drag: {x: true, y: false}},
      scales: {x: {time: true}},
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
  for (const {panel, plot} of state.plots) {
    const data = panel.assays
      ? uPlot.join([[b.assays.t, ...panel.assays.map((k) => b.assays[k])],
                    [b.soft.t, ...panel.soft.map((k) => b.soft[k])]])
      : [b.t, ...panel.series.map((s) => b.signals[s])];
    plot.setData(data, state.follow);
  }
  document.body.dataset.points = String(b.t.length);  // for the browser test: live points arrived
}

// ---- reactors, incidents, agent -----------------------------------------------------------------------
async function refreshReactors() {
  let live = {};
  try { live = await api("/api/reactors"); } catch (_) {}
  const names = [...new Set([...Object.keys(live), ...Object.keys(state.data)])].sort();
  const select = $("reactor");
  const current = select.value;
  fillOptions(select, names);
  if (names.length && !names.includes(current)) { select.value = names[0]; selectReactor(names[0]); }
  else select.value = current;
}

function selectReactor(name) {
  state.reactor = name; state.dirty = true; state.follow = true; $("follow").checked = true;
  const b = state.data[name];
  $("run").textContent = b && b.run ? b.run : "";
  renderIncidents(); renderAgent();
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
  stream("/api/stream/telemetry", {tick: onTick, assay: onAssay});
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
  const q = document.createElement("p"); q.className = "chunk q"; q.textContent = `» ${question}`; box.appendChild(q);
  try {
    const reply = await fetch("/api/chat", {method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json"}, body: JSON.stringify({question, run_id: run, incident_id: state.focus})});
    if (!reply.ok) throw new Error((await reply.json()).message || reply.status);
    const reader = reply.body.getReader(); const decoder = new TextDecoder(); let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let cut;
      while ((cut = buffer.indexOf("\r\n\r\n")) >= 0 || (cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut); buffer = buffer.slice(cut + (buffer[cut] === "\r" ? 4 : 2));
        const data = block.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("");
        if (block.includes("event: chunk") && data) {
          const p = document.createElement("p"); p.className = "chunk"; p.textContent = JSON.parse(data).text; box.appendChild(p);
          box.scrollTop = box.scrollHeight;
        }
      }
    }
  } catch (err) { const p = document.createElement("p"); p.className = "chunk"; p.textContent = `chat failed: ${err.message}`; box.appendChild(p); }
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
}

main();
