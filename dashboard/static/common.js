// BioPilot dashboard: what the pages (app.js for reactors, patient.js for patients, graph.js for the knowledge
// graph) share. Loaded first, as a plain script: no build step. Elements are built with textContent, never
// innerHTML (see app.js).
"use strict";

const $ = (id) => document.getElementById(id);

function el(tag, props = {}, ...children) {  // children: elements or strings (appended as text)
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

// a unix time in seconds as "YYYY-MM-DD HH:MM" (UTC), "" for none
function when(t) { return t == null ? "" : new Date(t * 1000).toISOString().slice(0, 16).replace("T", " "); }

function fillOptions(select, values, label = (v) => v) {
  select.replaceChildren(...values.map((v) => el("option", {value: v, textContent: label(v)})));
}

async function api(path, options = {}) {
  const reply = await fetch(path, {credentials: "same-origin", headers: {"Content-Type": "application/json"},
                                   ...options});
  if (!reply.ok) {
    let message = `${reply.status}`;
    try { const body = await reply.json(); message = body.message || body.detail || message; } catch (_) {}
    throw new Error(typeof message === "string" ? message : JSON.stringify(message));
  }
  return reply.status === 204 ? null : reply.json();
}

// an SSE stream whose state shows in the header's status pill
function stream(path, handlers) {
  const source = new EventSource(path);  // reconnects by itself, sending Last-Event-ID: the server resumes
  for (const [name, fn] of Object.entries(handlers)) source.addEventListener(name, (e) => fn(JSON.parse(e.data)));
  source.onopen = () => { $("status").textContent = "live"; $("status").className = "pill live"; };
  source.onerror = () => { $("status").textContent = "reconnecting…"; $("status").className = "pill down"; };
  return source;
}

// a question to the agents (POST /api/chat): `onChunk(text)` for each chunk of the streamed answer as it comes
async function askAgents(body, onChunk) {
  const reply = await fetch("/api/chat", {method: "POST", credentials: "same-origin",
    headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  if (!reply.ok) throw new Error((await reply.json()).message || reply.status);
  const reader = reply.body.getReader(); const decoder = new TextDecoder(); let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let cut;
    while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, cut); buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
      const data = block.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("");
      if (block.includes("event: chunk") && data) onChunk(JSON.parse(data).text);
    }
  }
}

function say(message, ok = true) {
  $("control-msg").textContent = message;
  $("control-msg").classList.toggle("error", !ok);
}

// the signed-in user, shown in the header; null (and said) when the page was opened without the login link
async function signIn() {
  try {
    const who = await api("/api/whoami");
    $("who").textContent = `${who.subject} (${who.role})`;
    return who;
  } catch (err) {
    $("status").textContent = "not signed in: open the URL biopilot up printed"; $("status").className = "pill down";
    return null;
  }
}
