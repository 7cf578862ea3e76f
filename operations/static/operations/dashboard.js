// The facesite dashboard: polls the JSON document every few seconds and redraws the cards,
// the uPlot charts and the tables in place (no reload).
"use strict";

const config = JSON.parse(document.getElementById("dashboard-config").textContent);
const charts = {};

function chart(id, series) {
  const options = {
    width: 600,
    height: 220,
    scales: { x: { time: true } },
    series: [{}].concat(series),
    axes: [{}, { size: 50 }],
  };
  const empty = [[]].concat(series.map(() => []));
  return new uPlot(options, empty, document.getElementById(id));
}

function line(label, stroke) {
  return { label: label, stroke: stroke, width: 2, spanGaps: false };
}

function setupCharts() {
  charts.fleet = chart("chart-fleet", [
    line("running", "#2a7"), line("pending", "#e90"), line("stopping", "#c44"), line("stopped", "#888"),
  ]);
  charts.queues = chart("chart-queues", [
    line("request waiting", "#36c"), line("request in flight", "#9bd"),
    line("response waiting", "#a5c"), line("dead-letter", "#c33"),
  ]);
  charts.rate = chart("chart-rate", [line("uploads/s", "#36c")]);
  charts.latency = chart("chart-latency", [line("p50", "#2a7"), line("p95", "#e90")]);
}

function text(id, value) {
  document.getElementById(id).textContent = value;
}

function orDash(value) {
  return value === null || value === undefined ? "-" : String(value);
}

function seconds(value) {
  return value === null || value === undefined ? "-" : value.toFixed(2) + " s";
}

function clock(epoch) {
  return new Date(epoch * 1000).toLocaleTimeString();
}

function fillTable(id, rows, cells) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren(...rows.map((row) => {
    const tr = document.createElement("tr");
    for (const value of cells(row)) {
      const td = document.createElement("td");
      td.textContent = value;  // text, never HTML: reasons and errors are data
      tr.appendChild(td);
    }
    return tr;
  }));
}

function render(data) {
  const latest = data.latest || {};
  text("fleet-running", orDash(latest.running));
  text("fleet-pending", orDash(latest.pending));
  text("fleet-stopping", orDash(latest.stopping));
  text("fleet-stopped", orDash(latest.stopped));
  text("queue-request", orDash(latest.request_visible) + " / " + orDash(latest.request_in_flight));
  text("queue-response", orDash(latest.response_visible) + " / " + orDash(latest.response_in_flight));
  text("queue-dead-letter", orDash(latest.dead_letter_visible));
  const now = data.uploads.now;
  text("uploads-rate", now.per_second.toFixed(1));
  text("latency", seconds(now.p50) + " / " + seconds(now.p95));

  const f = data.fleet;
  charts.fleet.setData([f.t, f.running, f.pending, f.stopping, f.stopped]);
  charts.queues.setData([
    f.t, f.request_visible, f.request_in_flight, f.response_visible, f.dead_letter_visible,
  ]);
  const u = data.uploads;
  charts.rate.setData([u.t, u.per_second]);
  charts.latency.setData([u.t, u.p50, u.p95]);

  fillTable("scaling", data.scaling, (e) => [
    clock(e.at), e.action, e.result, e.instances, e.detail ? e.reason + " (" + e.detail + ")" : e.reason,
  ]);
  fillTable("failures", data.failures, (e) => [
    clock(e.at), e.request_id, e.status, orDash(e.reply_status), e.error,
  ]);

  const age = latest.at ? data.now - latest.at : null;
  const status = document.getElementById("status");
  if (age === null) {
    status.textContent = "no observation from the scaler yet";
    status.className = "stale";
  } else if (age > 30) {
    status.textContent = "the scaler's latest observation is " + Math.round(age) + " s old";
    status.className = "stale";
  } else {
    status.textContent = "";
    status.className = "";
  }
  text("updated", clock(data.now));
}

async function poll() {
  try {
    const response = await fetch(config.dataUrl, { credentials: "same-origin" });
    if (response.redirected || !response.ok) {
      throw new Error("HTTP " + response.status + (response.redirected ? " (logged out?)" : ""));
    }
    render(await response.json());
  } catch (error) {
    const status = document.getElementById("status");
    status.textContent = "could not update: " + error.message;
    status.className = "stale";
  } finally {
    setTimeout(poll, config.pollMs);
  }
}

setupCharts();
poll();
