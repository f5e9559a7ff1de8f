// lwr web app: what the server-rendered pages gain with a script. Live updates (one
// EventSource on /events; the page refetches itself and patches its [data-live] parts), the
// graph's highlighting and count filters, keyboard shortcuts, and the log viewer (follow,
// line links, search, earlier parts, the live stream). No library, no build step.
"use strict";
(function () {
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
  const esc = (s) => s.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
  const cssq = (s) => (window.CSS && CSS.escape ? CSS.escape(s) : s.replace(/["\\]/g, "\\$&"));

  // ---- live updates -------------------------------------------------------------------
  let refreshing = false, again = false;
  function refresh() {
    if (refreshing) { again = true; return; }
    refreshing = true;
    fetch(location.href, { credentials: "same-origin", headers: { "X-Lwr-Refresh": "1" } })
      .then((r) => (r.ok ? r.text() : Promise.reject(r.status)))
      .then((html) => patch(new DOMParser().parseFromString(html, "text/html")))
      .catch(() => {})
      .finally(() => { refreshing = false; if (again) { again = false; refresh(); } });
  }
  function patch(doc) {
    $$("[data-live]").forEach((el) => {
      const key = el.dataset.live;
      const fresh = doc.querySelector('[data-live="' + key + '"]');
      if (!fresh) return;
      if (key === "graph" && el.dataset.jobs === fresh.dataset.jobs) {
        // The same jobs: update each in place, so the layout, scroll and highlight stay.
        $$("[data-job]", fresh).forEach((j) => {
          const old = document.getElementById(j.id);
          if (!old || old.outerHTML === j.outerHTML) return;
          const keep = ["hot", "selected"].filter((c) => old.classList.contains(c));
          old.className = j.className;
          keep.forEach((c) => old.classList.add(c));
          if (graphFilter) old.classList.toggle("dim", old.dataset.state !== graphFilter && graphFilter !== "");
          old.setAttribute("data-state", j.getAttribute("data-state"));
          old.innerHTML = j.innerHTML;
        });
        return;
      }
      if (el.innerHTML === fresh.innerHTML) return;
      const open = new Set($$("details[open]", el).map(detailsKey));
      const node = document.importNode(fresh, true);
      $$("details", node).forEach((d) => { if (open.has(detailsKey(d))) d.open = true; });
      el.replaceWith(node);
      if (key === "counts") bindCounts();
    });
  }
  function detailsKey(d) {
    const owner = d.closest("[id]");
    return (owner ? owner.id : "") + "/" + (d.querySelector("summary") || d).textContent.trim().split(" ")[0];
  }
  function startLive() {
    if (!$("[data-live]") || $("#log")) return;
    const region = $("#pushes");
    if (region && !region.dataset.refresh) return; // an older page of pushes stays put
    const es = new EventSource("/events");
    es.addEventListener("open", () => document.body.classList.add("live"));
    es.addEventListener("error", () => document.body.classList.remove("live"));
    es.addEventListener("change", refresh);
  }

  // ---- graph: highlight needs and dependents, filter by state ---------------------------
  let graphFilter = null;
  function highlight(job, on) {
    const graph = $("#graph");
    if (!graph) return;
    $$(".hot", graph).forEach((e) => e.classList.remove("hot"));
    graph.classList.toggle("focus", on);
    if (!on) return;
    const name = job.dataset.job;
    job.classList.add("hot");
    $$('[data-edge^="' + cssq(name + "->") + '"], [data-edge$="' + cssq("->" + name) + '"]', graph).forEach((e) => {
      e.classList.add("hot");
      const [from, to] = e.dataset.edge.split("->");
      const other = from === name ? to : from;
      const o = graph.querySelector('[data-job="' + cssq(other) + '"]');
      if (o) o.classList.add("hot");
    });
  }
  function bindGraph() {
    const graph = $("#graph");
    if (!graph) return;
    graphFilter = graph.dataset.only || "";
    graph.addEventListener("mouseover", (e) => { const j = e.target.closest(".job"); if (j) highlight(j, true); });
    graph.addEventListener("mouseout", (e) => {
      const j = e.target.closest(".job");
      if (j && !j.contains(e.relatedTarget)) { const s = $(".job.selected"); highlight(s || j, !!s); }
    });
    bindCounts();
  }
  function bindCounts() {
    $$(".counts [data-filter]").forEach((a) => a.addEventListener("click", (e) => {
      e.preventDefault();
      graphFilter = a.dataset.filter;
      $$(".counts .count").forEach((c) => c.classList.toggle("on", c === a));
      $$("#graph .job").forEach((j) => j.classList.toggle("dim", graphFilter !== "" && j.dataset.state !== graphFilter));
      const url = new URL(location.href);
      if (graphFilter) url.searchParams.set("state", graphFilter); else url.searchParams.delete("state");
      history.replaceState(null, "", url);
    }));
  }

  // ---- keyboard ------------------------------------------------------------------------
  function failedJobs() {
    return $$('[data-job][data-state="failed"], [data-job][data-state="exception"]').filter((e) => e.offsetParent !== null || e.closest("details"));
  }
  function select(el) {
    $$(".selected").forEach((e) => e.classList.remove("selected"));
    if (!el) return;
    const d = el.closest("details"); if (d) d.open = true;
    el.classList.add("selected");
    el.scrollIntoView({ block: "nearest", inline: "nearest" });
    if (el.classList.contains("job")) highlight(el, true);
  }
  function onKey(e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const t = e.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT")) {
      if (e.key === "Escape") t.blur();
      return;
    }
    const help = $("#help");
    switch (e.key) {
      case "?": if (help) help.hidden = !help.hidden; break;
      case "Escape": if (help) help.hidden = true; select(null); highlight(null, false); break;
      case "j": case "k": {
        const list = failedJobs();
        if (!list.length) return;
        const cur = list.indexOf($(".selected"));
        const next = e.key === "j" ? (cur + 1) % list.length : (cur <= 0 ? list.length - 1 : cur - 1);
        select(list[next]);
        break;
      }
      case "l": {
        const s = $(".selected[href]");
        if (s) location.href = s.getAttribute("href") + "/log";
        else { const l = $('[data-key="l"]'); if (l) location.href = l.href; }
        break;
      }
      case "r": {
        const b = $$("form button").find((b) => /^retrigger$/i.test(b.textContent.trim()));
        if (b) b.click();
        break;
      }
      case "/": { const s = $("#search"); if (s) { e.preventDefault(); s.focus(); } break; }
      case "n": case "N": if (viewer) viewer.step(e.key === "n" ? 1 : -1); break;
      case "f": if (viewer) viewer.setFollow(!viewer.following()); break;
      default: return;
    }
  }

  // ---- ANSI colours (the same rules as src/ansi.rs) -----------------------------------
  function from256(n) {
    if (n < 16) return { basic: n };
    if (n < 232) { n -= 16; const l = (v) => (v === 0 ? 0 : 55 + v * 40); return { rgb: [l(Math.floor(n / 36)), l(Math.floor(n / 6) % 6), l(n % 6)] }; }
    const v = 8 + (n - 232) * 10; return { rgb: [v, v, v] };
  }
  function sgr(st, params) {
    const nums = params.split(/[;:]/).map((p) => (p === "" ? 0 : parseInt(p, 10) || 0));
    for (let i = 0; i < nums.length; i++) {
      const n = nums[i];
      if (n === 0) { st.fg = st.bg = null; st.bo = st.di = st.it = st.un = false; }
      else if (n === 1) st.bo = true; else if (n === 2) st.di = true; else if (n === 3) st.it = true; else if (n === 4) st.un = true;
      else if (n === 22) st.bo = st.di = false; else if (n === 23) st.it = false; else if (n === 24) st.un = false;
      else if (n >= 30 && n <= 37) st.fg = { basic: n - 30 }; else if (n === 39) st.fg = null;
      else if (n >= 40 && n <= 47) st.bg = { basic: n - 40 }; else if (n === 49) st.bg = null;
      else if (n >= 90 && n <= 97) st.fg = { basic: n - 82 }; else if (n >= 100 && n <= 107) st.bg = { basic: n - 92 };
      else if (n === 38 || n === 48) {
        let c = null;
        if (nums[i + 1] === 5) { c = from256(Math.min(nums[i + 2] || 0, 255)); i += 2; }
        else if (nums[i + 1] === 2) { c = { rgb: [nums[i + 2] || 0, nums[i + 3] || 0, nums[i + 4] || 0].map((v) => Math.min(v, 255)) }; i += 4; }
        else i += 1;
        if (n === 38) st.fg = c; else st.bg = c;
      }
    }
  }
  const plain = (st) => !st.fg && !st.bg && !st.bo && !st.di && !st.it && !st.un;
  function openSpan(st) {
    const cls = [], css = [];
    const hex = (c) => "#" + c.rgb.map((v) => v.toString(16).padStart(2, "0")).join("");
    if (st.fg) { if (st.fg.basic !== undefined) cls.push("f" + st.fg.basic); else css.push("color:" + hex(st.fg) + ";"); }
    if (st.bg) { if (st.bg.basic !== undefined) cls.push("b" + st.bg.basic); else css.push("background:" + hex(st.bg) + ";"); }
    ["bo", "di", "it", "un"].forEach((k) => { if (st[k]) cls.push(k); });
    return "<span" + (cls.length ? ' class="' + cls.join(" ") + '"' : "") + (css.length ? ' style="' + css.join("") + '"' : "") + ">";
  }
  // eslint-disable-next-line no-control-regex
  const ESC_RE = /\x1b(?:\[([0-?]*)[ -/]*([@-~])|\][^\x07\x1b]*(?:\x07|\x1b\\)|[\s\S]?)/g;
  function lineHtml(line, st) {
    let out = "", open = !plain(st), last = 0, m;
    if (open) out += openSpan(st);
    ESC_RE.lastIndex = 0;
    const clean = (s) => esc(s.replace(/\r/g, "").replace(/[\x00-\x08\x0b-\x1f\x7f]/g, ""));
    while ((m = ESC_RE.exec(line))) {
      out += clean(line.slice(last, m.index));
      last = ESC_RE.lastIndex;
      if (m[2] === "m") {
        sgr(st, m[1] || "");
        if (open) out += "</span>";
        open = !plain(st);
        if (open) out += openSpan(st);
      }
      if (m[0].length === 0) ESC_RE.lastIndex++;
    }
    out += clean(line.slice(last));
    if (open) out += "</span>";
    return out;
  }

  // ---- log viewer ----------------------------------------------------------------------
  let viewer = null;
  const MAX_LINES = 50000; // a live log keeps at most this many lines in the page
  function startViewer() {
    const box = $("#log");
    if (!box) return;
    const lines = $("#lines"), status = $("#log-status"), follow = $("#follow");
    const jobId = box.dataset.jobId, run = box.dataset.run;
    let first = parseInt(box.dataset.first, 10) || 1;
    let start = parseInt(box.dataset.start, 10) || 0;
    let next = first + lines.children.length;
    let partial = "", partialEl = null, seen = 0;
    const st = {};
    let auto = false;
    const row = (n, html) => '<div class="l" id="L' + n + '"><a class="n" href="#L' + n + '" data-n="' + n + '"></a><span class="t">' + html + "</span></div>";
    const atBottom = () => box.scrollHeight - box.scrollTop - box.clientHeight < 4;
    const toBottom = () => { auto = true; box.scrollTop = box.scrollHeight; };
    box.addEventListener("scroll", () => {
      if (auto) { auto = false; return; }
      // Reading back pauses following; coming back to the end resumes it.
      follow.checked = atBottom();
    });
    follow.addEventListener("change", () => { if (follow.checked) toBottom(); });

    function append(text) {
      const s = partial + text;
      const parts = s.split("\n");
      partial = parts.pop();
      let html = "";
      parts.forEach((line, i) => {
        if (i === 0 && partialEl) {
          // The unfinished line is finished now: render it whole, from the style it began in.
          const s0 = Object.assign({}, partialEl._st);
          partialEl.querySelector(".t").innerHTML = lineHtml(line, s0);
          Object.keys(st).forEach((k) => delete st[k]);
          Object.assign(st, s0);
          partialEl = null;
        } else {
          html += row(next++, lineHtml(line, st));
        }
      });
      if (html) lines.insertAdjacentHTML("beforeend", html);
      if (partial !== "") {
        if (!partialEl) {
          lines.insertAdjacentHTML("beforeend", row(next++, ""));
          partialEl = lines.lastElementChild;
          partialEl._st = Object.assign({}, st);
        }
        partialEl.querySelector(".t").innerHTML = lineHtml(partial, Object.assign({}, partialEl._st));
      }
      while (lines.children.length > MAX_LINES) { lines.firstElementChild.remove(); first++; }
      if (follow.checked) toBottom();
    }

    function earlier() {
      const btn = $("#earlier");
      if (!btn || start <= 0) return Promise.resolve(false);
      btn.disabled = true;
      return fetch("/jobs/" + jobId + "/log/part?run=" + run + "&end=" + start, { credentials: "same-origin" })
        .then((r) => (r.ok ? r.json() : Promise.reject(r.status)))
        .then((part) => {
          const body = part.text.endsWith("\n") ? part.text.slice(0, -1) : part.text;
          const ls = part.text === "" ? [] : body.split("\n");
          const s2 = {};
          const n0 = first - ls.length;
          const html = ls.map((l, i) => row(n0 + i, lineHtml(l, s2))).join("");
          const h = box.scrollHeight;
          lines.insertAdjacentHTML("afterbegin", html);
          auto = true; box.scrollTop += box.scrollHeight - h;
          first = n0; start = part.start;
          if (start <= 0) btn.remove(); else { btn.disabled = false; btn.textContent = "load earlier lines (" + start + " bytes before)"; }
          return true;
        })
        .catch(() => { btn.disabled = false; return false; });
    }
    const eb = $("#earlier");
    if (eb) eb.addEventListener("click", () => { follow.checked = false; earlier(); });

    // Line links: #L120 or #L120-140; click selects, shift-click extends, the URL follows.
    let anchor = null;
    function mark(a, b, scroll) {
      $$(".l.sel", lines).forEach((e) => e.classList.remove("sel"));
      if (a == null) return;
      const [lo, hi] = a <= b ? [a, b] : [b, a];
      for (let n = lo; n <= hi; n++) { const e = document.getElementById("L" + n); if (e) e.classList.add("sel"); }
      const top = document.getElementById("L" + lo);
      if (scroll && top) { follow.checked = false; auto = true; top.scrollIntoView({ block: "center" }); }
    }
    function fromHash(scroll) {
      const m = /^#L(\d+)(?:-L?(\d+))?$/.exec(location.hash);
      if (!m) return false;
      const a = parseInt(m[1], 10), b = m[2] ? parseInt(m[2], 10) : a;
      anchor = a;
      const go = (tries) => {
        if (Math.min(a, b) < first && start > 0 && tries > 0) return earlier().then((ok) => (ok ? go(tries - 1) : mark(a, b, scroll)));
        mark(a, b, scroll);
      };
      go(200);
      return true;
    }
    lines.addEventListener("click", (e) => {
      const a = e.target.closest("a.n");
      if (!a) return;
      e.preventDefault();
      const n = parseInt(a.dataset.n, 10);
      const hash = e.shiftKey && anchor != null && anchor !== n ? "#L" + Math.min(anchor, n) + "-" + Math.max(anchor, n) : "#L" + n;
      if (!(e.shiftKey && anchor != null)) anchor = n;
      history.replaceState(null, "", hash);
      const m = /^#L(\d+)(?:-(\d+))?$/.exec(hash);
      mark(parseInt(m[1], 10), parseInt(m[2] || m[1], 10), false);
    });
    window.addEventListener("hashchange", () => fromHash(true));

    // Search with next and previous over the lines in the page.
    const search = $("#search"), hits = $("#hits");
    let found = [], at = -1, term = "";
    function find() {
      const q = search.value.toLowerCase();
      if (q === term) return;
      term = q;
      $$(".l.hit, .l.cur", lines).forEach((e) => e.classList.remove("hit", "cur"));
      found = q ? $$(".l", lines).filter((l) => l.lastChild.textContent.toLowerCase().includes(q)) : [];
      found.forEach((l) => l.classList.add("hit"));
      at = -1;
      hits.textContent = q ? found.length + " lines" : "";
    }
    function step(d) {
      find();
      if (!found.length) return;
      if (at >= 0) found[at].classList.remove("cur");
      at = (at + d + found.length) % found.length;
      found[at].classList.add("cur");
      follow.checked = false; auto = true;
      found[at].scrollIntoView({ block: "center" });
      hits.textContent = at + 1 + " / " + found.length;
    }
    search.addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); step(e.shiftKey ? -1 : 1); } });
    search.addEventListener("input", () => { term = null; find(); });
    $("#next").addEventListener("click", () => step(1));
    $("#prev").addEventListener("click", () => step(-1));
    viewer = { step, following: () => follow.checked, setFollow: (on) => { follow.checked = on; if (on) toBottom(); } };

    if (!fromHash(true)) toBottom();
    if (box.dataset.mode !== "live") return;
    // The running log: replayed from its start, then followed to its end.
    const es = new EventSource("/jobs/" + jobId + "/log/events?run=" + run);
    es.addEventListener("run", (e) => { const r = JSON.parse(e.data); status.textContent = "run " + r.number + " on " + r.node + " · following"; });
    es.addEventListener("log", (e) => {
      const ev = JSON.parse(e.data);
      if (ev.end <= seen) return; // already shown (a resumed stream)
      seen = ev.end;
      append(ev.text);
    });
    es.addEventListener("end", (e) => {
      const end = JSON.parse(e.data);
      es.close();
      if (partialEl) partialEl = null;
      partial = "";
      status.textContent = "end of log · " + end.state + " · " + (next - first) + " lines";
      box.dataset.mode = "ended";
      if (follow.checked) toBottom();
    });
    es.addEventListener("error", (e) => {
      if (e.data) { status.textContent = e.data; es.close(); }
      else if (es.readyState === EventSource.CONNECTING) status.textContent = "reconnecting…";
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    const hb = $("[data-help]");
    if (hb) hb.addEventListener("click", () => { const h = $("#help"); h.hidden = !h.hidden; });
    document.addEventListener("keydown", onKey);
    bindGraph();
    startViewer();
    startLive();
  });
})();
