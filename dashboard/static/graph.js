// The knowledge graph page: the graph (GET /api/graph) drawn as plain SVG in four columns, each edge's evidence
// on hover; "what moves it?" (GET /api/graph/causes); questions to the agents (POST /api/chat, streamed).
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const COLUMNS = ["parameter", "anomaly", "state", "quality"];
const ROW = 24, TOP = 30, WIDTH = 1000;

function svg(tag, attrs = {}, text = null) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text != null) node.textContent = text;
  return node;
}

function showEvidence(title, edges) {
  const box = $("evidence");
  box.replaceChildren(el("p", {className: "q"}, title));
  for (const e of edges) {
    const verb = e.sign > 0 ? "raises" : e.sign < 0 ? "lowers" : "moves";
    box.append(el("p", {}, el("strong", {}, `${e.source} ${verb} ${e.target}`)));
    for (const ev of e.evidence) box.append(el("p", {}, `[${ev.kind}] ${ev.text}`));
  }
}

function draw(g) {
  const root = $("graph");
  const byKind = Object.fromEntries(COLUMNS.map((k) => [k, g.nodes.filter((n) => n.kind === k)]));
  const height = TOP + ROW * Math.max(...COLUMNS.map((k) => byKind[k].length)) + 10;
  root.setAttribute("viewBox", `0 0 ${WIDTH} ${height}`);
  root.replaceChildren();
  const at = {};
  COLUMNS.forEach((kind, c) => {
    const x = 200 + c * (WIDTH - 290) / 3;  // room on the left for the parameters' names
    root.append(svg("text", {x, y: 14, "text-anchor": "middle", class: "col"}, kind));
    const nodes = byKind[kind];
    const gap = (height - TOP) / Math.max(nodes.length, 1);
    nodes.forEach((n, i) => { at[n.id] = {x, y: TOP + gap * (i + 0.5)}; });
  });
  const paths = [];
  for (const e of g.edges) {
    const a = at[e.source], b = at[e.target];
    const mid = (a.x + b.x) / 2;
    const cls = e.sign > 0 ? "up" : e.sign < 0 ? "down" : "either";
    const p = svg("path", {d: `M${a.x},${a.y} C${mid},${a.y} ${mid},${b.y} ${b.x},${b.y}`, class: cls});
    p.append(svg("title", {}, e.evidence.map((ev) => `[${ev.kind}] ${ev.text}`).join("\n")));
    p.addEventListener("mouseenter", () => { light([p]); showEvidence("edge", [e]); });
    p.addEventListener("mouseleave", () => light([]));
    p.dataset.source = e.source; p.dataset.target = e.target;
    paths.push(p); root.append(p);
  }
  function light(lit) { for (const p of paths) { p.classList.toggle("lit", lit.includes(p)); p.classList.toggle("dim", lit.length > 0 && !lit.includes(p)); } }
  for (const n of g.nodes) {
    const {x, y} = at[n.id];
    const left = n.kind === "parameter";
    const c = svg("circle", {cx: x, cy: y, r: 6, class: n.kind, "data-node": n.id});
    c.append(svg("title", {}, `${n.id}: ${n.detail}`));
    c.addEventListener("mouseenter", () => {
      const mine = paths.filter((p) => p.dataset.source === n.id || p.dataset.target === n.id);
      light(mine);
      showEvidence(`${n.id}: ${n.detail}`, g.edges.filter((e) => e.source === n.id || e.target === n.id));
    });
    c.addEventListener("mouseleave", () => light([]));
    root.append(c, svg("text", {x: left ? x - 10 : x + 10, y: y + 4, "text-anchor": left ? "end" : "start"}, n.label));
  }
  fillOptions($("cause-target"), g.nodes.filter((n) => n.kind === "state" || n.kind === "quality").map((n) => n.id));
  $("cause-target").value = "hcp_ng_ml";
}

async function causes() {
  const q = new URLSearchParams({target: $("cause-target").value, direction: $("cause-direction").value});
  if ($("cause-day").value) q.set("day", $("cause-day").value);
  const list = $("causes");
  try {
    const r = await api(`/api/graph/causes?${q}`);
    list.replaceChildren(...r.causes.map((c) => el("li", {}, el("strong", {}, c.path.join(" → ")),
      c.applies === false ? " (seen at other times of the run)" : "", el("br"), c.evidence.flat().join("; "))));
    if (!r.causes.length) list.replaceChildren(el("li", {}, "nothing in the graph"));
  } catch (err) { list.replaceChildren(el("li", {className: "error"}, err.message)); }
}

async function ask(question) {
  const box = $("answer");
  box.append(el("p", {className: "q"}, `» ${question}`));
  try {
    await askAgents({question}, (text) => {
      box.append(el("p", {className: "chunk"}, text)); box.scrollTop = box.scrollHeight;
    });
  } catch (err) { box.append(el("p", {className: "error"}, `failed: ${err.message}`)); }
}

async function main() {
  await signIn();
  try {
    const g = await api("/api/graph");
    $("build").textContent = g.build_id ? `build ${g.build_id} · ${g.built_ts.slice(0, 16).replace("T", " ")} UTC · ${g.edges.length} edges`
                                        : "no build stored: the fault catalogue alone (biopilot graph build)";
    $("status").textContent = "ready"; $("status").className = "pill live";
    draw(g);
  } catch (err) { $("status").textContent = `graph failed: ${err.message}`; $("status").className = "pill down"; }
  $("causes-form").onsubmit = (e) => { e.preventDefault(); causes(); };
  $("ask-form").onsubmit = (e) => { e.preventDefault(); ask($("ask-q").value); };
}

main();
