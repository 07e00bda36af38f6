// The ops dashboard: renders /ops/metrics.json into the page and refreshes it every few
// seconds. Plain JavaScript, no build step, no network beyond this site. Text from the
// server (vendor error descriptions) is only ever set as textContent, never as HTML.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";
  const LABELS = { ok: "All clear", warn: "Attention", bad: "Action needed" };
  let lastGood = null;

  function h(tag, attrs, ...children) {
    const node = tag.startsWith("svg:")
      ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    for (const child of children.flat()) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const num = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
  const clock = (iso) => (iso ? new Date(iso).toISOString().slice(11, 19) + " UTC" : "–");

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    const s = Math.abs(Math.round(seconds));
    if (s < 90) return `${s} s`;
    if (s < 5400) return `${Math.round(s / 60)} min`;
    if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
    return `${Math.round(s / 86400)} d`;
  }

  const since = (iso) => (iso ? `${duration((Date.now() - new Date(iso)) / 1000)} ago` : "–");
  const until = (iso) => (iso ? `in ${duration((new Date(iso) - Date.now()) / 1000)}` : "–");

  function fact(id, text, state) {
    const cell = $(id);
    cell.textContent = text;
    cell.className = state && state !== "ok" ? state : "";
  }

  function machineryRow(id, state, text) {
    const row = $(id);
    row.dataset.state = state;
    row.querySelector("td").textContent = text;
  }

  // --- panels -----------------------------------------------------------------------------

  function renderBanner(snap) {
    $("banner").dataset.state = snap.state;
    $("state-label").textContent = LABELS[snap.state];
    $("alerts").replaceChildren(...snap.alerts.map((a) => h("li", { class: a.level }, a.message)));
    for (const [panel, state] of Object.entries(snap.panels)) {
      const node = $(`panel-${panel}`);
      if (node) node.dataset.state = state;
    }
    const counted = snap.figures_as_of && snap.figures_as_of !== snap.generated_at
      ? ` · totals as of ${clock(snap.figures_as_of)}` : "";
    $("updated").textContent =
      `Updated ${clock(snap.generated_at)}${counted} · ${snap.took_ms} ms · every ${snap.refresh_seconds} s`;
  }

  function renderStatus(status) {
    for (const key of ["submitted", "pending", "failed", "total"]) {
      $(`count-${key}`).textContent = status ? num(status[key]) : "–";
    }
  }

  function renderMachinery(m) {
    const db = m.database, redis = m.redis, workers = m.workers, sweep = m.sweep;
    machineryRow("m-database", db.ok ? "ok" : "bad",
      db.ok ? `answers (${db.ms} ms)` : `does not answer (${db.error})`);
    machineryRow("m-redis", redis.ok ? "ok" : "bad",
      redis.ok ? `answers (${redis.ms} ms)` : `does not answer (${redis.error})`);
    machineryRow("m-workers", workers.ok ? "ok" : "bad", workers.ok
      ? `${workers.count} answering: ${workers.names.join(", ")}`
      : (redis.ok ? "none answers a ping" : "unknown: no broker"));
    machineryRow("m-queue", redis.ok ? "ok" : "bad", !redis.ok ? "unknown"
      : redis.queue_length === null ? "not shown: the broker is not Redis"
      : `${num(redis.queue_length)} waiting in “${redis.queue}”, ${num(redis.unacked)} held by workers`);
    if (!redis.ok) {
      machineryRow("m-sweep", "bad", "unknown: its heartbeat is kept in Redis");
    } else if (sweep.last_run_at === null) {
      machineryRow("m-sweep", "warn", "has not run yet");
    } else {
      machineryRow("m-sweep", sweep.ok ? "ok" : "bad",
        `ran ${since(sweep.last_run_at)} (stale after ${sweep.stale_after} s)`);
    }
  }

  function renderTimeline(timeline) {
    const svg = $("chart");
    if (!timeline) return svg.replaceChildren();
    const buckets = timeline.buckets;
    const totals = { created: 0, accepted: 0, failed: 0 };
    for (const b of buckets) for (const k in totals) totals[k] += b[k];
    $("timeline-step").textContent = `(per ${timeline.bucket_minutes} min, UTC)`;
    $("timeline-legend").replaceChildren(
      h("span", { style: "--swatch: var(--created)" }, `created ${num(totals.created)}`),
      h("span", { style: "--swatch: var(--ok)" }, `accepted ${num(totals.accepted)}`),
      h("span", { style: "--swatch: var(--bad)" }, `failed ${num(totals.failed)}`));
    drawChart(svg, buckets, timeline.bucket_minutes);
  }

  function drawChart(svg, buckets, minutes) {
    const width = svg.clientWidth || 960, height = 220, left = 44, bottom = 20, top = 8;
    const plotW = width - left - 8, plotH = height - top - bottom;
    const peak = Math.max(1, ...buckets.map((b) => Math.max(b.created, b.accepted, b.failed)));
    const step = plotW / buckets.length;
    const y = (v) => top + plotH - (v / peak) * plotH;
    const nodes = [];
    for (const v of [0, peak / 2, peak]) {
      nodes.push(h("svg:line", { class: "grid", x1: left, x2: width - 8, y1: y(v), y2: y(v) }),
        h("svg:text", { x: left - 6, y: y(v) + 4, "text-anchor": "end" }, num(Math.round(v))));
    }
    const line = [];
    buckets.forEach((b, i) => {
      const x = left + i * step;
      nodes.push(h("svg:rect", { class: "created", x: x + 0.5, y: y(b.created),
        width: Math.max(step - 1, 1), height: top + plotH - y(b.created) }));
      if (b.failed) {
        nodes.push(h("svg:rect", { class: "failed", x: x + step * 0.5, y: y(b.failed),
          width: Math.max(step * 0.45, 1), height: top + plotH - y(b.failed) }));
      }
      line.push(`${x + step / 2},${y(b.accepted)}`);
      if (i % 12 === 0) {
        nodes.push(h("svg:text", { x, y: height - 4 }, clock(b.t).slice(0, 5)));
      }
      nodes.push(h("svg:rect", { x, y: top, width: step, height: plotH, fill: "transparent" },
        h("svg:title", {}, `${clock(b.t)} +${minutes} min: created ${b.created}, ` +
          `accepted ${b.accepted}, failed ${b.failed}`)));
    });
    nodes.push(h("svg:polyline", { class: "accepted", points: line.join(" ") }));
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.replaceChildren(...nodes);
  }

  function renderRetries(r) {
    if (!r) return;
    fact("r-due", num(r.due_now));
    fact("r-waiting", num(r.waiting_retry));
    fact("r-flight", num(r.in_flight));
    fact("r-next", r.next_due_at ? `${clock(r.next_due_at)} (${until(r.next_due_at)})` : "none");
    $("r-max").textContent = `(a request fails after ${r.max_attempts})`;
    const counts = Object.entries(r.attempts_histogram);
    const peak = Math.max(1, ...counts.map(([, n]) => n));
    $("r-histogram").replaceChildren(...(counts.length ? counts.flatMap(([attempts, n]) => [
      h("span", {}, `${attempts} attempt${attempts === "1" ? "" : "s"}`),
      h("div", { class: Number(attempts) >= r.max_attempts - 1 ? "bar last" : "bar",
        style: `width: ${(n / peak) * 100}%` }),
      h("span", {}, num(n)),
    ]) : [h("span", { class: "muted" }, "no submitted requests")]));
  }

  function renderThrottling(t) {
    if (t.pauses === null) {
      fact("t-pause", "unknown (Redis does not answer)", "bad");
    } else if (!t.pauses.length) {
      fact("t-pause", "none");
    } else {
      fact("t-pause", t.pauses.map((p) =>
        `${p.kind === "account" ? "ACCOUNT" : "throttle"} until ${clock(p.until)} ` +
        `(${until(p.until)}): ${p.reason}`).join("; "),
      t.pauses.some((p) => p.kind === "account") ? "bad" : "warn");
    }
    fact("t-429", t.calls_last_hour === null ? "–" : `${num(t.calls_last_hour)} call(s)` +
      (t.last_429_at ? `, last ${since(t.last_429_at)}` : ""), t.calls_last_hour ? "warn" : "ok");
    const rate = t.call_rate;
    fact("t-rate", `${rate === null ? "–" : rate.toFixed(2)}/s of ${t.rate_limit}/s`);
    const share = rate === null ? 0 : rate / t.rate_limit;
    const bar = $("t-rate-bar");
    bar.style.width = `${Math.min(share, 1) * 100}%`;
    bar.className = share > 1 ? "over" : "";
  }

  function renderStalls(s) {
    if (!s) return;
    const old = s.oldest_submitted_age_seconds;
    fact("s-oldest", old === null ? "none" : `${duration(old)} (warning after ` +
      `${duration(s.warning_after_seconds)})`, old > s.warning_after_seconds ? "warn" : "ok");
    fact("s-overdue", num(s.overdue), s.overdue ? "warn" : "ok");
    fact("s-long", s.long_running ? `${num(s.long_running)} (longest ` +
      `${duration(s.longest_running_seconds)}; HTTP timeout ${s.http_timeout_seconds} s)` : "0",
    s.long_running ? "warn" : "ok");
  }

  function renderTracking(t) {
    if (!t) return;
    $("k-progress").textContent = num(t.in_progress);
    $("k-today").textContent = num(t.finished_today);
    $("k-errored").textContent = num(t.errored);
    fact("k-outcomes", `${num(t.collected_today)} collected, ` +
      `${num(t.partially_collected_today)} partially, ${num(t.collection_errored_today)} errored`,
    t.collection_errored_today ? "warn" : "ok");
    fact("k-oldest", t.oldest_unfinished_at === null ? "none"
      : `accepted ${since(t.oldest_unfinished_at)}`);
    fact("k-meters", num(t.meters_collecting));
    fact("k-events", num(t.events_unprocessed));
    const calls = t.calls;
    fact("k-calls", `${num(calls.last_hour)} (${num(calls.failed_last_hour)} failed)` +
      (calls.last_at ? `, last ${since(calls.last_at)}` : ""), calls.failed_last_hour ? "warn" : "ok");
  }

  const usd = (amount) => `$${Number(amount).toLocaleString("en-US",
    { minimumFractionDigits: 2, maximumFractionDigits: 2 })}`;

  function renderSpending(s) {
    if (!s) return;
    $("m-held").textContent = num(s.held.count);
    $("m-held").className = s.held.count ? "big warn" : "big";
    fact("m-today", `${usd(s.today_estimated)} / ${usd(s.today_expected)}`);
    fact("m-month", `${usd(s.month_estimated)} / ${usd(s.month_expected)}`);
    const budgets = Object.entries(s.budgets);
    fact("m-budgets", budgets.length ? budgets.map(([name, b]) =>
      `${name} ${usd(b.left)} of ${usd(b.limit)}`).join(", ") : "no budget set",
    budgets.some(([, b]) => Number(b.left) === 0) ? "warn" : "ok");
    fact("m-held-cost", s.held.count ? `${usd(s.held.estimated)}, oldest ${since(s.held.oldest)}`
      : "none", s.held.count ? "warn" : "ok");
  }

  function renderFailures(groups) {
    const rows = groups.map((g) => h("tr", { "data-error": g.error },
      h("td", {}, h("a", { href: g.admin_url, title: "Open these requests in the admin" },
        g.error || "(no error type)")),
      h("td", { class: "num" }, num(g.count)),
      h("td", { class: "num" }, num(g.last_24h)),
      h("td", { class: g.last_hour ? "num bad" : "num" }, num(g.last_hour)),
      h("td", {}, since(g.latest_at)),
      h("td", { class: "sample" }, g.sample)));
    $("failures").replaceChildren(...(rows.length ? rows
      : [h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No failed requests."))]));
  }

  function render(snap) {
    renderBanner(snap);
    renderStatus(snap.status);
    renderMachinery(snap.machinery);
    renderTimeline(snap.timeline);
    renderRetries(snap.retries);
    renderThrottling(snap.throttling);
    renderStalls(snap.stalls);
    renderTracking(snap.tracking);
    renderSpending(snap.spending);
    renderFailures(snap.failures);
  }

  // --- refreshing -------------------------------------------------------------------------

  function unreachable(message) {
    $("banner").dataset.state = "stale";
    $("state-label").textContent = message;
    $("alerts").replaceChildren(h("li", {}, lastGood
      ? `Figures below are from ${clock(lastGood)}; retrying.` : "Retrying."));
  }

  async function refresh() {
    const url = document.body.dataset.metricsUrl;
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), 10000);
    try {
      const response = await fetch(url, { cache: "no-store", signal: abort.signal,
        credentials: "same-origin", headers: { Accept: "application/json" } });
      if (response.status === 403) return unreachable("Session expired: log in to the admin again");
      if (!response.ok) return unreachable(`The server answered ${response.status}`);
      const snap = await response.json();
      lastGood = snap.generated_at;
      render(snap);
    } catch (err) {
      unreachable("Cannot reach the server");
    } finally {
      clearTimeout(timer);
    }
  }

  function loop(seconds) {
    setTimeout(async () => { await refresh(); loop(seconds); }, seconds * 1000);
  }

  const initial = JSON.parse($("ops-snapshot").textContent);
  lastGood = initial.generated_at;
  render(initial);
  loop(initial.refresh_seconds);
})();
