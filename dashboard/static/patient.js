// BioPilot dashboard, patient plant: the cohort overview, one patient's vitals, NEWS2 (scored by the server), INR
// with the 2-3 band and the twin's forecast band, Hb, doses, adverse events shaded, the agent's diagnosis, and
// the outcome model's risks with their intervals and explanation, and the controls (dose, hold, co-medication, an
// injected event). Same rules as app.js: no build step, text only
// (textContent, never innerHTML), the token in the http-only cookie.
"use strict";

const COLOURS = {hr_bpm: "#d92d20", rr_min: "#7a5af8", sbp_mmhg: "#1f6feb", dbp_mmhg: "#53b1fd", spo2_pct: "#079455",
                 temp_c: "#f79009", news2: "#b42318", inr: "#1d2330", twin: "#1f6feb", advised: "#079455",
                 hb_g_dl: "#c11574", taken: "#1d2330", missed: "#d92d20", amiodarone: "#f79009",
                 enzyme_inducer: "#7a5af8"};
const PANELS = [
  {key: "hr", title: "heart rate (bpm) · respiratory rate (/min)", vitals: ["hr_bpm", "rr_min"]},
  {key: "bp", title: "blood pressure (mmHg)", vitals: ["sbp_mmhg", "dbp_mmhg"]},
  {key: "spo2", title: "SpO₂ (%)", vitals: ["spo2_pct"]},
  {key: "temp", title: "temperature (°C)", vitals: ["temp_c"]},
  {key: "news2", title: "NEWS2 (5-6 urgent review, 7+ emergency)", news2: true},
  {key: "inr", title: "INR: labs (points), target 2-3 (band), twin forecast 10-90 % (blue band), advised dose (green)",
   inr: true},
  {key: "hb", title: "haemoglobin (g/dL)", labs: ["hb_g_dl"]},
  {key: "doses", title: "warfarin (mg per dose: taken, missed or held) · co-medications", doses: true},
];
const SEVERITIES = ["info", "warning", "critical"];
const STATUSES = ["critical", "warning", "stable", "unknown"];
const MAX_POINTS = 6000;

const state = {
  config: null, commands: null, role: null,
  cohort: [],            // rows of GET /api/patients
  run: null,             // the selected patient's run
  data: null,            // {t, signals, news2, labs, doses, twin, labels, diagnosis}
  live: {},              // run -> its latest streamed vitals {t, signals, news2}: what the lake may not hold yet
  risk: null,            // the selected patient's risk (GET /api/patients/{id}/risk, then `risk` events)
  alerts: [],
  dirty: true, plots: [],
  refreshing: null,
};

const row = () => state.cohort.find((r) => r.run_id === state.run);
const enc = encodeURIComponent;

function day(t) {  // days since the run started (its first vitals while the run's row is not stored), "day 12.4"
  const start = row()?.started_t ?? state.data?.t[0];
  return start == null || t == null ? "" : `day ${((t - start) / 86400).toFixed(1)}`;
}

// ---- the selected patient's data ---------------------------------------------------------------------
function emptyData() {
  return {t: [], signals: {}, news2: [], labs: [], doses: [], twin: null, labels: [], diagnosis: []};
}

async function loadPatient(run) {
  const [vitals, labs, doses, twin, labels, diagnosis] = await Promise.all([
    api(`/api/patients/${enc(run)}/vitals?max_points=${MAX_POINTS}`).catch(() => null),
    api(`/api/patients/${enc(run)}/labs`), api(`/api/patients/${enc(run)}/doses`),
    api(`/api/patients/${enc(run)}/twin`), api(`/api/patients/${enc(run)}/labels`),
    api(`/api/patients/${enc(run)}/diagnosis`)]);
  if (run !== state.run) return;
  const d = emptyData();
  if (vitals) { d.t = vitals.t; d.signals = vitals.signals; d.news2 = vitals.news2; }
  const streamed = state.live[run];  // the flow commits a few seconds behind the stream: the rest from it
  if (streamed) append(d, streamed);
  d.labs = labs.labs; d.doses = doses.doses; d.twin = twin; d.labels = labels.labels;
  d.diagnosis = diagnosis.incidents;
  state.data = d;
  renderAll();
  loadRisk(run);
}

async function loadRisk(run) {  // its own request: a patient the model cannot score yet still has a page
  const r = row();
  if (!r) return;
  const risk = await api(`/api/patients/${enc(r.patient_id)}/risk`).catch(() => null);
  if (run !== state.run) return;
  state.risk = risk;
  renderRisk();
}

async function refreshSlow() {  // what changes a few times a day of the patient: labs, doses, twin, events, agent
  const run = state.run;
  if (!run || !state.data) return;
  try {
    const [labs, doses, twin, labels, diagnosis] = await Promise.all([
      api(`/api/patients/${enc(run)}/labs`), api(`/api/patients/${enc(run)}/doses`),
      api(`/api/patients/${enc(run)}/twin`), api(`/api/patients/${enc(run)}/labels`),
      api(`/api/patients/${enc(run)}/diagnosis`)]);
    if (run !== state.run) return;
    Object.assign(state.data, {labs: labs.labs, doses: doses.doses, twin, labels: labels.labels,
                               diagnosis: diagnosis.incidents});
    renderAll();
    loadRisk(run);
  } catch (_) {}
}

function soon() {  // a live event said something changed: refresh once, shortly (events come in bursts)
  clearTimeout(state.refreshing);
  state.refreshing = setTimeout(refreshSlow, 1000);
}

function append(d, points) {  // the points after d's last one, at most MAX_POINTS kept
  const last = d.t.length ? d.t[d.t.length - 1] : -Infinity;
  const from = points.t.findIndex((t) => t > last);
  if (from < 0) return;
  d.t.push(...points.t.slice(from));
  for (const [name, values] of Object.entries(points.signals)) (d.signals[name] ||= []).push(...values.slice(from));
  d.news2.push(...(points.news2 || points.t.map(() => null)).slice(from));
  if (d.t.length > MAX_POINTS) {
    const cut = d.t.length - MAX_POINTS;
    d.t.splice(0, cut); d.news2.splice(0, cut); Object.values(d.signals).forEach((s) => s.splice(0, cut));
  }
}

function onTick(event) {
  append(state.live[event.run_id] ||= {t: [], signals: {}, news2: []}, event);
  if (event.run_id !== state.run || !state.data) return;
  append(state.data, event);
  state.dirty = true;
}

function onLab(event) {
  if (event.run_id !== state.run || !state.data) return;
  state.data.labs.push({t: event.t, inr: event.values.inr ?? null, hb_g_dl: event.values.hb_g_dl ?? null});
  state.data.labs.sort((a, b) => a.t - b.t);
  state.dirty = true;
}

function onDose(event) {
  if (event.run_id !== state.run || !state.data) return;
  state.data.doses.push({t: event.t, drug: event.drug, dose_mg: event.dose_mg, taken: event.taken});
  state.data.doses.sort((a, b) => a.t - b.t);
  state.dirty = true;
}

function seconds(ts) {  // a time from the broker: epoch seconds or microseconds, or ISO 8601
  if (typeof ts === "number") return ts > 1e12 ? ts / 1e6 : ts;
  return Date.parse(String(ts).replace(" ", "T")) / 1000;  // Python's str() of a time has a space
}

function onTwin(message) {  // the flow's refit: its forecast rows replace the band
  if (message.run_id !== state.run || !state.data) return;
  const rows = message.forecasts || [];
  const bands = {};
  for (const r of rows) {
    const b = bands[r.dosing] ||= {weekly_dose_mg: r.weekly_dose_mg, t: [], inr_mid: [], inr_lo: [], inr_hi: []};
    b.t.push(seconds(r.ts)); b.inr_mid.push(r.inr_mid); b.inr_lo.push(r.inr_lo); b.inr_hi.push(r.inr_hi);
  }
  state.data.twin = {fitted_t: seconds(message.fitted_ts), advised_weekly_dose_mg: message.advised_weekly_dose_mg,
                     labs_used: message.labs_used ?? null, bands};
  renderAll();
}

function onRisk(message) {  // the risk worker scored the patient at a closed hour and something changed
  if (message.run_id !== state.run) return;
  state.risk = {...message, cached: false, model_drift: state.risk?.model_drift};  // drift: the API's note
  renderRisk();
}

const HEAD_NAMES = {inr_ge4_7d: "INR ≥ 4 within 7 days", major_bleed_14d: "major bleed within 14 days",
                    bradycardia_24h: "bradycardia within 24 h", inr_3d: "INR in 3 days", ttr_12w: "TTR next 12 weeks"};

function renderRisk() {
  const risk = state.risk, box = $("risk");
  if (!risk) {
    box.replaceChildren(el("p", {className: "muted", textContent: "no risk yet: no data of this patient scored"}));
    box.dataset.heads = "0";
    return;
  }
  const heads = Object.values(risk.heads);
  const notApplicable = risk.not_applicable ?? risk.extra?.not_applicable ?? [];
  const rows = heads.map((h) => {
    const pct = (x) => `${(100 * x).toFixed(0)} %`;
    const value = notApplicable.includes(h.name) ? "n/a for this patient"
      : h.kind === "probability" ? `${pct(h.estimate)} (${pct(h.lo)}–${pct(h.hi)})`
      : `${h.estimate.toFixed(1)} (${h.lo.toFixed(1)}–${h.hi.toFixed(1)}, 90 %)`;
    const div = el("div", {}, el("span", {className: "muted", textContent: `${HEAD_NAMES[h.name] ?? h.name}: `}), value,
                   h.alert ? el("b", {className: "critical", textContent: ` ≥ ${pct(h.threshold ?? 0.5)}: alert`}) : "");
    div.dataset.head = h.name;
    return div;
  });
  rows.push(el("p", {className: "explanation", textContent: risk.explanation}));
  rows.push(el("p", {className: "muted", textContent: `model ${risk.model_version} · confidence ` +
    `${Number(risk.confidence).toFixed(2)} · data to ${day(seconds(risk.data_watermark))}` +
    `${risk.cached ? " · cached" : ""}`}));
  if (risk.model_drift) rows.push(el("p", {className: "drift", textContent: `model drift: ${risk.model_drift}`}));
  box.replaceChildren(...rows);
  box.dataset.heads = String(heads.length);
}

// ---- plots -------------------------------------------------------------------------------------------
function shadePlugin(panel) {
  return {hooks: {drawClear: (u) => {
    const d = state.data;
    if (!d) return;
    const ctx = u.ctx, top = u.bbox.top, height = u.bbox.height;
    const x = (t) => u.valToPos(t, "x", true);
    ctx.save();
    if (panel.inr) {  // the therapeutic range
      const y3 = u.valToPos(3, "y", true), y2 = u.valToPos(2, "y", true);
      ctx.fillStyle = "rgba(7,148,85,0.10)";
      ctx.fillRect(u.bbox.left, y3, u.bbox.width, y2 - y3);
    }
    for (const ev of shownLabels(d)) {  // adverse events (the simulation's ground truth), named in the first panel
      const x0 = x(ev.start_t), x1 = x(Math.min(ev.end_t ?? u.scales.x.max, u.scales.x.max));
      ctx.fillStyle = "rgba(122,90,248,0.13)";
      ctx.fillRect(x0, top, Math.max(x1 - x0, 2), height);
      if (panel.key === "hr") {
        ctx.fillStyle = "#5925dc"; ctx.font = `${11 * devicePixelRatio}px system-ui`;
        ctx.fillText(ev.event, x0 + 3, top + 12 * devicePixelRatio);
      }
    }
    for (const inc of d.diagnosis) {  // incidents the detectors raised
      const x0 = x(inc.start_t), x1 = x(inc.end_t ?? u.scales.x.max);
      ctx.fillStyle = inc.severity === "critical" ? "rgba(217,45,32,0.14)" : "rgba(247,144,9,0.16)";
      ctx.fillRect(x0, top + height - 6 * devicePixelRatio, Math.max(x1 - x0, 2), 6 * devicePixelRatio);
    }
    ctx.restore();
  }}};
}

function seriesOf(panel) {
  const line = (label, colour, extra = {}) => ({label, stroke: colour, width: 1.2, spanGaps: true, ...extra});
  const dots = (label, colour, size = 6) => ({label, stroke: colour, fill: colour, width: 0, paths: () => null,
                                              points: {show: true, size, fill: colour}});
  if (panel.vitals) return panel.vitals.map((s) => line(s, COLOURS[s], {points: {show: false}}));
  if (panel.news2) {
    const stepped = uPlot.paths && uPlot.paths.stepped ? {paths: uPlot.paths.stepped({align: 1})} : {};
    return [line("NEWS2", COLOURS.news2, {points: {show: false}, ...stepped})];
  }
  if (panel.inr) return [dots("INR (lab)", COLOURS.inr, 7),
                         line("twin: current dose", COLOURS.twin, {dash: [5, 3], points: {show: false}}),
                         line("twin 10 %", "rgba(31,111,235,0.35)", {width: 0.5, points: {show: false}}),
                         line("twin 90 %", "rgba(31,111,235,0.35)", {width: 0.5, points: {show: false}}),
                         line("twin: advised dose", COLOURS.advised, {dash: [2, 3], points: {show: false}})];
  if (panel.labs) return panel.labs.map((s) => dots(s, COLOURS[s], 7));
  return [dots("taken", COLOURS.taken), dots("missed / held", COLOURS.missed),
          dots("amiodarone", COLOURS.amiodarone, 8), dots("enzyme inducer", COLOURS.enzyme_inducer, 8)];
}

function makePlots() {
  const host = $("plots");
  host.replaceChildren();
  state.plots = PANELS.map((panel) => {
    const box = el("div", {className: "plot"}, el("h3", {textContent: panel.title}));
    box.dataset.panel = panel.key;
    host.appendChild(box);
    const series = seriesOf(panel);
    const opts = {
      width: Math.max(box.clientWidth - 12, 300), height: panel.doses ? 130 : 160, plugins: [shadePlugin(panel)],
      cursor: {drag: {x: false, y: false}, sync: {key: "patient"}},
      scales: {x: {time: true, range: (u, min, max) => state.xRange || [min, max]},
               ...(panel.inr ? {y: {range: (u, min, max) => [0.8, Math.max(4.5, (max || 0) + 0.3)]}} : {}),
               ...(panel.news2 ? {y: {range: (u, min, max) => [0, Math.max(8, (max || 0) + 1)]}} : {})},
      legend: {live: false},
      series: [{}, ...series],
      bands: panel.inr ? [{series: [4, 3], fill: "rgba(31,111,235,0.16)"}] : [],
      axes: [{}, {size: 46}],
    };
    const plot = new uPlot(opts, [[], ...series.map(() => [])], box);
    return {panel, plot, box};
  });
  window.addEventListener("resize", () => state.plots.forEach((p) =>
    p.plot.setSize({width: Math.max(p.box.clientWidth - 12, 300), height: p.plot.height})));
}

function panelData(panel, d) {
  if (panel.vitals) return [d.t, ...panel.vitals.map((s) => d.signals[s] || d.t.map(() => null))];
  if (panel.news2) return [d.t, d.news2];
  const labs = d.labs.filter((l) => l.t != null);
  if (panel.labs) return [labs.map((l) => l.t), ...panel.labs.map((k) => labs.map((l) => l[k]))];
  if (panel.inr) {
    const current = d.twin?.bands?.current, advised = d.twin?.bands?.advised;
    const parts = [[labs.map((l) => l.t), labs.map((l) => l.inr)]];
    parts.push(current ? [current.t, current.inr_mid, current.inr_lo, current.inr_hi] : [[], [], [], []]);
    parts.push(advised ? [advised.t, advised.inr_mid] : [[], []]);
    return uPlot.join(parts);
  }
  const warfarin = d.doses.filter((x) => x.drug === "warfarin");
  const comed = (drug) => { const rows = d.doses.filter((x) => x.drug === drug); return [rows.map((x) => x.t), rows.map(() => 0)]; };
  return uPlot.join([
    [warfarin.map((x) => x.t), warfarin.map((x) => (x.taken ? x.dose_mg : null))],
    [warfarin.map((x) => x.t), warfarin.map((x) => (x.taken ? null : x.dose_mg ?? 0))],
    comed("amiodarone"), comed("enzyme_inducer")]);
}

function xRange(d) {  // every panel on one time axis: the run so far and the twin's forecast after it
  const ends = [d.t[0], d.t[d.t.length - 1], ...d.labs.map((l) => l.t), ...d.doses.map((x) => x.t)];
  for (const b of Object.values(d.twin?.bands || {})) ends.push(b.t[0], b.t[b.t.length - 1]);
  const finite = ends.filter((t) => Number.isFinite(t));
  return finite.length ? [Math.min(...finite), Math.max(...finite)] : null;
}

function render() {
  if (!state.dirty || !state.data) return;
  state.dirty = false;
  const d = state.data;
  state.xRange = xRange(d);
  for (const {panel, plot} of state.plots) plot.setData(panelData(panel, d));
  document.body.dataset.points = String(d.t.length);  // for the browser test: what the plots hold
  document.body.dataset.labs = String(d.labs.length);
  document.body.dataset.twin = String(Object.values(d.twin?.bands || {}).reduce((n, b) => n + b.t.length, 0));
}

// ---- cohort, card, incidents, diagnosis, events -------------------------------------------------------
async function refreshCohort() {
  try { state.cohort = await api("/api/patients"); } catch (_) { return; }
  const body = $("cohort").querySelector("tbody");
  $("cohort-count").textContent = `${state.cohort.length} patients · ${state.cohort.filter((r) => r.live).length} live`;
  body.replaceChildren(...state.cohort.map((r) => {
    const tr = el("tr", {onclick: () => selectPatient(r.run_id)},
      el("td", {}, el("b", {textContent: r.patient_id}), r.live ? " ●" : "", el("br"),
         el("span", {className: "muted small", textContent: r.scenario || r.run_id})),
      el("td", {}, el("span", {className: "pill status", textContent: r.status})),
      el("td", {textContent: r.news2 ?? "–"}),
      el("td", {}, `${r.last_inr ?? "–"} `, el("span", {className: "muted small", textContent: when(r.last_inr_t)})),
      el("td", {textContent: r.last_hb_g_dl ?? "–"}),
      el("td", {textContent: r.warfarin_daily_mg ?? "–"}),
      el("td", {textContent: String(r.open_alerts)}),
      el("td", {className: "small", textContent: [r.cyp2c9, r.vkorc1_1639].filter(Boolean).join(" · ")}),
      el("td", {className: "small", textContent: (r.why || []).join("; ")}));
    if (STATUSES.includes(r.status)) tr.classList.add(r.status);
    if (r.run_id === state.run) tr.classList.add("selected");
    tr.dataset.run = r.run_id;
    return tr;
  }));
  const select = $("patient");
  fillOptions(select, state.cohort.map((r) => r.run_id),
              (id) => { const r = state.cohort.find((x) => x.run_id === id); return `${r.patient_id} · ${r.status}`; });
  if (state.cohort.length && !state.cohort.some((r) => r.run_id === state.run)) selectPatient(state.cohort[0].run_id);
  else { select.value = state.run; renderCard(); }
}

function selectPatient(run) {
  state.run = run; state.data = null; state.risk = null; state.dirty = true;
  $("patient").value = run;
  $("run").textContent = run;
  document.querySelectorAll("#cohort tr.selected").forEach((tr) => tr.classList.remove("selected"));
  document.querySelector(`#cohort tr[data-run="${CSS.escape(run)}"]`)?.classList.add("selected");
  renderCard();
  loadPatient(run).catch((err) => say(`cannot load ${run}: ${err.message}`, false));
}

function renderCard() {
  const r = row(), d = state.data;
  if (!r) { $("card").replaceChildren(); return; }
  const comeds = ["amiodarone", "enzyme_inducer"].filter((c) => r[c] || d?.doses.some((x) => x.drug === c && x.taken));
  const metoprolol = d?.doses.filter((x) => x.drug === "metoprolol").pop();
  const twin = d?.twin;
  const facts = [
    ["patient", `${r.patient_id} (${r.live ? "live" : "stored"})`],
    ["status", `${r.status}${r.why?.length ? `: ${r.why.join("; ")}` : ""}`],
    ["", `${r.sex ?? "?"}, ${r.age_years != null ? Math.round(r.age_years) : "?"} y`],
    ["genotype", `CYP2C9 ${r.cyp2c9 ?? "?"} · VKORC1 ${r.vkorc1_1639 ?? "?"} · CYP2D6 ${r.cyp2d6 ?? "?"}`],
    ["co-medication", comeds.join(", ") || "none"],
    ["warfarin", r.warfarin_daily_mg != null ? `${r.warfarin_daily_mg} mg/day` : "–"],
    ["metoprolol", metoprolol ? `${metoprolol.dose_mg} mg/day` : "–"],
    ["NEWS2 now", r.news2 != null ? `${r.news2} (${when(r.news2_t)})` : "–"],
    ["last INR", r.last_inr != null ? `${r.last_inr} (${day(r.last_inr_t)})` : "–"],
    ["twin", twin?.fitted_t ? `advises ${twin.advised_weekly_dose_mg} mg/week (fitted ${day(twin.fitted_t)} on ` +
                             `${twin.labs_used} labs)` : "not fitted yet"],
  ];
  $("card").replaceChildren(...facts.map(([k, v]) => el("div", {}, el("span", {className: "muted", textContent: k ? `${k}: ` : ""}), v)));
  $("card").dataset.status = r.status;
  const live = r.live;
  $("control-note").textContent = state.role === "viewer" ? "controls need the operator role; your token is viewer"
    : live ? `commands go to ${r.patient_id}` : `${r.patient_id} is not live: the plant takes commands for live patients only`;
  $("alert-count").textContent = `${r.open_alerts} open alerts`;
}

function renderDiagnosis() {
  const d = state.data;
  const incidents = d ? d.diagnosis : [];
  $("incidents").replaceChildren(...incidents.map((i) => {
    const li = el("li", {}, el("b", {textContent: i.status}),
                  ` · ${i.severity} · ${day(i.start_t)} · ${[].concat(i.signals ?? []).join(", ")} · ${i.alert_count} alert(s)`);
    if (SEVERITIES.includes(i.severity)) li.classList.add(i.severity);
    if (i.status === "resolved") li.classList.add("resolved");
    li.dataset.id = i.incident_id;
    return li;
  }));
  if (!incidents.length) $("incidents").append(el("li", {className: "muted", textContent: "no incident for this patient"}));
  const box = $("diagnosis");
  const newest = incidents[0];
  if (!newest) { box.replaceChildren(el("p", {className: "muted", textContent: "no incident: nothing to diagnose"})); return; }
  const parts = [el("p", {className: "q", textContent: `incident ${newest.incident_id} (${newest.severity}, ${newest.status}, ${day(newest.start_t)})`})];
  const hyps = newest.findings?.hypotheses || [];
  hyps.forEach((h, k) => {
    parts.push(el("p", {className: "hyp"}, el("b", {textContent: `${k + 1}. ${h.fault}`}),
                  ` · confidence ${Number(h.confidence ?? 0).toFixed(2)}`));
    for (const e of [].concat(h.evidence ?? [])) parts.push(el("p", {className: "evidence", textContent: `– ${typeof e === "string" ? e : JSON.stringify(e)}`}));
    if (h.action) parts.push(el("p", {className: "action", textContent: `→ ${h.action}`}));
  });
  if (!hyps.length) newest.text.forEach((t) => parts.push(el("p", {className: "chunk", textContent: t})));
  box.replaceChildren(...parts);
}

function shownLabels(d) {  // a live run's plan holds events to come: only those begun by its latest vitals
  const now = d.t.length ? d.t[d.t.length - 1] : Infinity;
  return d.labels.filter((l) => l.start_t <= now);
}

function renderEvents() {
  const labels = state.data ? shownLabels(state.data) : [];
  $("events").replaceChildren(...labels.map((l) => el("li", {title: `${l.root_cause ?? ""}\n→ ${l.action ?? ""}`},
    el("b", {textContent: l.event}), ` · ${day(l.start_t)}–${day(l.end_t).replace("day ", "")} · ${[].concat(l.signals ?? []).join(", ")}`)));
  if (!labels.length) $("events").append(el("li", {className: "muted", textContent: "none"}));
}

function renderAll() { state.dirty = true; render(); renderCard(); renderDiagnosis(); renderEvents(); }

// ---- streams ------------------------------------------------------------------------------------------

function mine(event) { return event.run_id === state.run; }

function startStreams() {
  stream("/api/stream/telemetry", {tick: onTick, assay: onLab, dose: onDose});
  stream("/api/stream/twin", {twin: onTwin, risk: onRisk});
  stream("/api/stream/alerts", {alert: (a) => { if (mine(a)) soon(); }});
  stream("/api/stream/incidents", {incident: (i) => { if (mine(i)) soon(); }});
  stream("/api/stream/agents", {chunk: (c) => {
    if (state.data?.diagnosis.some((i) => i.incident_id === c.incident_id) || c.done) soon();
  }});
}

// ---- controls -----------------------------------------------------------------------------------------

async function send(body, what) {
  const r = row();
  if (!r) return;
  try {
    await api(`/api/patients/${enc(r.patient_id)}/control`, {method: "POST", body: JSON.stringify(body)});
    say(`${what} sent to ${r.patient_id}`);
  } catch (err) { say(`${what} refused: ${err.message}`, false); }
}

function wireControls() {
  const c = state.commands;
  fillOptions($("comed-drug"), c.comedications, (d) => d.replace("_", " "));
  fillOptions($("event-name"), c.events);
  fillOptions($("event-signal"), ["", ...c.signals], (s) => s || "(sensor)");
  $("patient").onchange = (e) => selectPatient(e.target.value);
  $("dose-form").onsubmit = (e) => { e.preventDefault();
    send({type: "dose", drug: $("dose-drug").value, daily_mg: Number($("dose-mg").value)}, `${$("dose-drug").value} dose`); };
  $("hold-form").onsubmit = (e) => { e.preventDefault();
    send({type: "hold", drug: $("hold-drug").value, days: Number($("hold-days").value)}, `${$("hold-drug").value} hold`); };
  $("comed-form").onsubmit = (e) => { e.preventDefault();
    send({type: "comedication", drug: $("comed-drug").value, action: $("comed-action").value},
         `${$("comed-drug").value} ${$("comed-action").value}`); };
  $("event-form").onsubmit = (e) => { e.preventDefault();
    const body = {type: "event", event: $("event-name").value, magnitude: Number($("event-mag").value),
                  duration_h: Number($("event-dur").value)};
    if ($("event-signal").value) body.signal = $("event-signal").value;
    send(body, `event ${body.event}`); };
  if (state.role === "viewer") {  // the server refuses them anyway (403): say so before a click
    document.querySelectorAll("#dose-form, #hold-form, #comed-form, #event-form").forEach((form) =>
      form.querySelectorAll("input, select, button").forEach((x) => { x.disabled = true; }));
  }
}

async function main() {
  const who = await signIn();
  if (!who) return;
  state.role = who.role;
  [state.config, state.commands] = await Promise.all([api("/api/config"), api("/api/patients/commands")]);
  $("plant").textContent = `plant: ${state.config.plant}`;
  document.body.dataset.plant = state.config.plant;
  wireControls();
  makePlots();
  startStreams();
  await refreshCohort();
  setInterval(render, 250);
  setInterval(refreshCohort, 5000);
  setInterval(refreshSlow, 10000);
}

main();
