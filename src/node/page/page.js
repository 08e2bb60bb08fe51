// The daemon's page: polls this node's /status and /status/throughput and
// draws them. Every text that comes from the node (ids, errors, details) is
// written with textContent, never parsed as HTML.
"use strict";

const STATUS_EVERY_MS = 2000;
// A poll that has no answer by then counts as the node unreachable.
const ANSWER_WITHIN_MS = 5000;
const CHART_EVERY_MS = 5000;
const SVG = "http://www.w3.org/2000/svg";

const byId = (id) => document.getElementById(id);

// ---- formatting -----------------------------------------------------------

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "kB", "MB", "GB", "TB", "PB"];
  let value = n;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return (unit === 0 ? String(value) : value.toFixed(value < 10 ? 2 : 1)) + " " + units[unit];
}

function rate(bytesPerSecond) {
  return bytes(Math.round(bytesPerSecond)) + "/s";
}

// An axis level: a round figure, shown without decimals ("200 MB/s").
function level(bytesPerSecond) {
  return rate(bytesPerSecond).replace(/\.0+ /, " ");
}

function count(n) {
  return n === null || n === undefined ? "–" : Number(n).toLocaleString("en");
}

// The node's clock minus this browser's, from the last /status: times the
// node wrote are read against its own clock, wherever the page is viewed.
let skewMs = 0;

function nodeNow() {
  return Date.now() + skewMs;
}

function ago(ms) {
  if (ms === null || ms === undefined) return "never";
  const secs = Math.max(0, Math.round((nodeNow() - ms) / 1000));
  if (secs < 60) return secs + " s ago";
  if (secs < 3600) return Math.floor(secs / 60) + " min ago";
  if (secs < 86400) return Math.floor(secs / 3600) + " h ago";
  return Math.floor(secs / 86400) + " d ago";
}

function when(ms) {
  return ms === null || ms === undefined ? "never" : new Date(ms).toLocaleString();
}

function short(id) {
  return id.length > 12 ? id.slice(0, 10) + "…" : id;
}

function setText(id, text) {
  const element = byId(id);
  if (element.textContent !== text) element.textContent = text;
}

function element(tag, attributes, text) {
  const made = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) made.setAttribute(name, value);
  if (text !== undefined) made.textContent = text;
  return made;
}

// ---- the node ---------------------------------------------------------------

function showNode(status) {
  setText("node-id", short(status.id));
  byId("node-id").title = status.id;
  setText("ticket", status.ticket);
  setText("store-assets", count(status.store.assets));
  setText("store-bytes", bytes(status.store.bytes));
  setText("store-disk", bytes(status.store.disk_bytes));
  const partial = status.partial;
  setText("partial", partial.assets === 0 ? "none" : count(partial.assets) + " · " + bytes(partial.bytes));
  setText("live-links", count(status.live_links));
  setText("sessions", count(status.sessions));
  setText("assets-sent", count(status.assets_sent));
  setText("assets-received", count(status.assets_received));

  showPartials(status.partial_assets);

  const objects = status.object_storage;
  byId("object-storage").hidden = !objects;
  if (objects) {
    setText("s3-requests", count(objects.requests));
    setText("s3-errors", count(objects.errors));
    setText("s3-retries", count(objects.retries));
    setText("s3-backing-off", count(objects.backing_off));
    const last = byId("s3-last-error");
    last.hidden = !objects.last_error;
    if (objects.last_error) last.textContent = "Last error: " + objects.last_error;
  }
}

// One large asset received in part: how far it is, and from whom.
function partialItem(asset) {
  const item = element("li", { "data-hash": asset.hash, "data-receiving": String(asset.receiving) });
  const percent = asset.size ? Math.floor((100 * asset.held) / asset.size) : 100;
  const from = asset.from.length ? ", from " + asset.from.map(short).join(", ") : "";
  item.append(
    element("span", { class: "mono", title: asset.hash }, short(asset.hash)),
    element("progress", { max: String(asset.size), value: String(asset.held) }),
    element(
      "span",
      { class: "of" },
      bytes(asset.held) + " of " + bytes(asset.size) + " (" + percent + "%)" +
        (asset.receiving ? ", arriving" + from : ", idle since " + ago(asset.written_ms)),
    ),
  );
  return item;
}

// Large assets received in part, the ones arriving first.
function showPartials(partials) {
  byId("partials").hidden = partials.length === 0;
  byId("partial-list").replaceChildren(...partials.map(partialItem));
}

// ---- peers ----------------------------------------------------------------

// The previous poll's byte counts of each peer and the node's time then,
// for its rates.
let previousPeers = new Map();
let previousAt = null;

function peerRates(peer, now) {
  const before = previousPeers.get(peer.id);
  if (!before || previousAt === null || now <= previousAt) return null;
  const secs = (now - previousAt) / 1000;
  // Wire bytes: counted as they go, so a long first session shows its rate
  // while it runs (the payload figures move only as transfers complete).
  return {
    sent: Math.max(0, peer.wire_bytes_sent - before.wire_bytes_sent) / secs,
    received: Math.max(0, peer.wire_bytes_received - before.wire_bytes_received) / secs,
  };
}

function peerCard(peer, rates, arriving) {
  const card = element("article", { class: "peer", "data-peer": peer.id, "data-state": peer.state });
  const header = element("header");
  header.append(
    element("strong", { class: "mono id", title: peer.id }, short(peer.id)),
    element("span", { class: "state", "data-state": peer.state }, peer.state),
  );
  card.append(header);

  const facts = element("dl");
  const fact = (name, value, key) => {
    facts.append(element("dt", {}, name), element("dd", { "data-key": key }, value));
  };
  fact("Last sync", ago(peer.last_sync_ms), "last-sync");
  fact("Rate out", rates ? rate(rates.sent) : "–", "rate-sent");
  fact("Rate in", rates ? rate(rates.received) : "–", "rate-received");
  fact("Backlog", count(peer.backlog), "backlog");
  fact("Sent", count(peer.assets_sent) + " · " + bytes(peer.bytes_sent), "sent");
  fact("Received", count(peer.assets_received) + " · " + bytes(peer.bytes_received), "received");
  fact("On the wire", "↑ " + bytes(peer.wire_bytes_sent) + " ↓ " + bytes(peer.wire_bytes_received), "wire");
  fact("Duplicates", count(peer.duplicates), "duplicates");
  fact("Refused", count(peer.rejects), "rejects");
  fact("Sessions", count(peer.sessions), "sessions");
  card.append(facts);

  if (arriving.length) {
    card.append(element("h3", {}, "Arriving from it"));
    const list = element("ul", { class: "partials", "data-key": "arriving" });
    list.append(...arriving.map(partialItem));
    card.append(list);
  }

  if (peer.last_error) {
    card.append(element("p", { class: "error", "data-key": "last-error" }, "Last error: " + peer.last_error));
  }
  return card;
}

function showPeers(peers, now, partials) {
  const list = byId("peers");
  const arrivingFrom = (peer) => partials.filter((asset) => asset.from.includes(peer.id));
  setText("peer-count", peers.length ? "(" + peers.length + ")" : "");
  byId("no-peers").hidden = peers.length > 0;
  list.replaceChildren(
    ...peers.map((peer) => peerCard(peer, peerRates(peer, now), arrivingFrom(peer))),
  );
  previousPeers = new Map(peers.map((peer) => [peer.id, peer]));
  previousAt = now;
}

// ---- refusals and grants ---------------------------------------------------

const REFUSAL_NAMES = {
  stranger: "stranger",
  capability: "refused grant",
  future_stamp: "future stamp",
};

function showRefusals(refusals) {
  setText("refused-strangers", count(refusals.counts.strangers));
  setText("refused-capabilities", count(refusals.counts.capabilities));
  setText("refused-future-stamps", count(refusals.counts.future_stamps));
  const table = byId("refusals");
  table.hidden = refusals.recent.length === 0;
  byId("no-refusals").hidden = refusals.recent.length > 0;
  table.tBodies[0].replaceChildren(
    ...refusals.recent.map((refusal) => {
      const row = element("tr", { "data-kind": refusal.kind });
      row.append(
        element("td", { title: when(refusal.at_ms) }, ago(refusal.at_ms)),
        element("td", {}, REFUSAL_NAMES[refusal.kind] || refusal.kind),
        element("td", { class: "mono", title: refusal.peer }, short(refusal.peer)),
        element("td", { class: "detail" }, refusal.detail),
      );
      return row;
    }),
  );
}

function showGrants(grants) {
  const table = byId("grants");
  byId("grants-unreadable").hidden = grants !== null;
  if (grants === null) grants = [];
  table.hidden = grants.length === 0;
  byId("no-grants").hidden = grants.length > 0 || !byId("grants-unreadable").hidden;
  table.tBodies[0].replaceChildren(
    ...grants.map((grant) => {
      const row = element("tr", { "data-grant": grant.id });
      row.append(
        element("td", { class: "mono" }, grant.id),
        element("td", {}, grant.right),
        element("td", {}, when(grant.created_at_ms)),
        element("td", {}, grant.expires_at_ms === null ? "never" : when(grant.expires_at_ms)),
        element("td", {}, grant.live ? "live" : "expired"),
      );
      return row;
    }),
  );
}

// ---- the chart --------------------------------------------------------------

// Margins in CSS pixels; the width is the chart's own, measured at each
// drawing, so the text is never stretched.
const CHART = { height: 176, left: 76, right: 8, top: 10, bottom: 20 };

// The last series drawn, to draw again when the window is resized.
let lastSeries = null;

function svg(tag, attributes, text) {
  const made = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) made.setAttribute(name, String(value));
  if (text !== undefined) made.textContent = text;
  return made;
}

// The largest rate, rounded up to 1, 2 or 5 times a power of ten, so the
// axis reads in round figures.
function roundedTop(max) {
  if (max <= 0) return 1000;
  const power = Math.pow(10, Math.floor(Math.log10(max)));
  for (const step of [1, 2, 5, 10]) {
    if (max <= step * power) return step * power;
  }
  return 10 * power;
}

function drawChart(series) {
  lastSeries = series;
  const { height, left, right, top, bottom } = CHART;
  const width = Math.max(240, byId("chart").clientWidth);
  const from = series.now_ms - series.window_ms;
  const points = series.points.filter((point) => point[0] >= from);
  const highest = points.reduce((max, point) => Math.max(max, point[1], point[2]), 0);
  const ceiling = roundedTop(highest);
  const x = (ms) => left + ((ms - from) / series.window_ms) * (width - left - right);
  const y = (value) => top + (1 - value / ceiling) * (height - top - bottom);

  const chart = svg("svg", {
    viewBox: `0 0 ${width} ${height}`,
    width,
    height,
    role: "img",
    "aria-label": "payload bytes per second sent and received, last 15 minutes",
  });
  for (const fraction of [0, 0.5, 1]) {
    const at = y(ceiling * fraction);
    chart.append(
      svg("line", { class: "grid", x1: left, x2: width - right, y1: at, y2: at }),
      svg("text", { class: "axis", x: left - 6, y: at + 4, "text-anchor": "end" }, level(ceiling * fraction)),
    );
  }
  chart.append(
    svg("text", { class: "axis", x: left, y: height - 4 }, "15 min ago"),
    svg("text", { class: "axis", x: width - right, y: height - 4, "text-anchor": "end" }, "now"),
  );
  for (const [index, name] of [[1, "sent"], [2, "received"]]) {
    const line = points.map((point) => `${x(point[0]).toFixed(1)},${y(point[index]).toFixed(1)}`);
    chart.append(svg("polyline", { class: name, points: line.join(" ") }));
  }
  byId("chart").replaceChildren(chart);

  const last = points[points.length - 1];
  setText("rate-sent", last ? rate(last[1]) : "");
  setText("rate-received", last ? rate(last[2]) : "");
}

// ---- polling ------------------------------------------------------------------

function connected(ok, why) {
  const badge = byId("connection");
  badge.dataset.ok = ok ? "yes" : "no";
  badge.textContent = ok ? "connected" : "unreachable: " + why;
}

async function fetchJson(path) {
  const response = await fetch(path, {
    headers: { accept: "application/json" },
    cache: "no-store",
    signal: AbortSignal.timeout(ANSWER_WITHIN_MS),
  });
  if (!response.ok) throw new Error(path + " answered " + response.status);
  return response.json();
}

async function pollStatus() {
  try {
    const status = await fetchJson("/status");
    const now = Date.now();
    skewMs = status.now_ms - now;
    showNode(status);
    // Rates over the node's own time between two answers: what the
    // counters moved by between the two moments they were read.
    showPeers(status.peers, status.now_ms, status.partial_assets);
    showRefusals(status.refusals);
    showGrants(status.grants);
    setText("updated", new Date(now).toLocaleTimeString());
    connected(true);
  } catch (error) {
    connected(false, error.message);
  } finally {
    setTimeout(pollStatus, STATUS_EVERY_MS);
  }
}

async function pollChart() {
  try {
    drawChart(await fetchJson("/status/throughput"));
  } catch (error) {
    // The status poll reports the node unreachable; the chart keeps its
    // last picture.
  } finally {
    setTimeout(pollChart, CHART_EVERY_MS);
  }
}

window.addEventListener("resize", () => {
  if (lastSeries) drawChart(lastSeries);
});

pollStatus();
pollChart();
