/* ctrag browser viewer: plain ES2020, no framework, no build step.
 *
 * Talks to the ctrag HTTP API (/api/...), shows the generated CT with its proxy mask and the retrieved training case
 * in two NiiVue viewers. Every server or user string reaches the page through textContent (never innerHTML).
 * Volumes are fetched here (with the access token when one is set) and handed to NiiVue as ArrayBuffers.
 *
 * Test hooks: document.body.dataset.state is "idle" | "running" | "ready" | "error" | "cancelled";
 * document.body.dataset.jobId is the current job; document.body.dataset.caseState is "loading" | "ready" | "error".
 */
"use strict";

(() => {
  const CT_WINDOW = [-1000, 500];
  const OVERLAY_OPACITY = 0.5;
  const POLL_MS = 500;
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
  const TOKEN_KEY = "ctrag.token";
  const FILE_LABELS = [
    ["ct", "CT (NIfTI)", "ct.nii.gz"],
    ["mask", "Proxy mask (NIfTI)", "mask.nii.gz"],
    ["provenance", "Provenance (JSON)", "provenance.json"],
    ["png", "Preview (PNG)", "preview.png"],
  ];

  const $ = (id) => document.getElementById(id);
  const body = document.body;

  // ------------------------------------------------------------------ auth

  function readToken() {
    let token = null;
    const hash = location.hash.startsWith("#") ? location.hash.slice(1) : location.hash;
    const fromHash = new URLSearchParams(hash).get("token");
    try {
      if (fromHash) sessionStorage.setItem(TOKEN_KEY, fromHash);
      token = sessionStorage.getItem(TOKEN_KEY);
    } catch (_err) {
      token = fromHash; // storage blocked: keep it for this page only
    }
    if (fromHash) {
      // do not leave the token in the address bar (or in screenshots / history)
      history.replaceState(null, "", location.pathname + location.search);
    }
    return token || null;
  }

  const token = readToken();

  // ------------------------------------------------------------------ HTTP

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  function sameOrigin(url) {
    const u = new URL(url, location.href);
    if (u.origin !== location.origin) throw new ApiError(0, `refusing to fetch from another origin: ${u.origin}`);
    return u.href;
  }

  function authHeaders(extra) {
    const h = Object.assign({}, extra || {});
    if (token) h.Authorization = `Bearer ${token}`;
    return h;
  }

  function detailText(detail) {
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) {
      // FastAPI validation errors: [{loc: [...], msg: "..."}]
      return detail
        .map((d) => (d && typeof d === "object" ? `${(d.loc || []).slice(1).join(".")}: ${d.msg}` : String(d)))
        .join("; ");
    }
    return detail == null ? "" : JSON.stringify(detail);
  }

  async function errorFrom(resp) {
    let detail = "";
    try {
      const text = await resp.text();
      try {
        detail = detailText(JSON.parse(text).detail);
      } catch (_e) {
        detail = text.slice(0, 300);
      }
    } catch (_e) {
      detail = "";
    }
    if (!detail) detail = resp.statusText || "request failed";
    if (resp.status === 401 || resp.status === 403) {
      detail += token ? " (check the access token)" : " (this server needs an access token: open the page as /#token=…)";
    } else if (resp.status === 429) {
      detail = `The job queue is full, try again in a moment. (${detail})`;
    }
    return new ApiError(resp.status, `HTTP ${resp.status}: ${detail}`);
  }

  async function request(url, { method = "GET", json, signal, accept } = {}) {
    const headers = authHeaders(accept ? { Accept: accept } : {});
    const init = { method, headers, signal, cache: "no-store" };
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(json);
    }
    const resp = await fetch(sameOrigin(url), init);
    if (!resp.ok) throw await errorFrom(resp);
    return resp;
  }

  async function api(path, opts) {
    const resp = await request(path, opts);
    return resp.status === 204 ? null : resp.json();
  }

  async function fetchBuffer(url, signal) {
    const resp = await request(url, { signal });
    return resp.arrayBuffer();
  }

  // ------------------------------------------------------------------ messages

  function showError(err) {
    const el = $("error");
    const text = err instanceof Error ? err.message : String(err);
    el.textContent = text;
    el.hidden = !text;
  }

  function clearError() {
    showError("");
  }

  function setStatus(text) {
    $("status").textContent = text;
  }

  function setState(state) {
    body.dataset.state = state;
  }

  function clear(el) {
    while (el.firstChild) el.removeChild(el.firstChild);
  }

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  // ------------------------------------------------------------------ labels

  let labels = []; // [{value, name, rgb}]
  let labelLut = null; // NiiVue ColorMap for the mask overlay

  function labelName(value) {
    const hit = labels.find((l) => l.value === value);
    return hit ? hit.name : `label ${value}`;
  }

  function fallbackRgb(value) {
    // a stable colour for a value the label table lacks
    const h = (value * 137.508) % 360;
    const c = 0.7, x = c * (1 - Math.abs(((h / 60) % 2) - 1)), m = 0.15;
    const [r, g, b] = h < 60 ? [c, x, 0] : h < 120 ? [x, c, 0] : h < 180 ? [0, c, x]
      : h < 240 ? [0, x, c] : h < 300 ? [x, 0, c] : [c, 0, x];
    return [r, g, b].map((v) => Math.round((v + m) * 255));
  }

  function buildLut(list) {
    const sorted = list.filter((l) => Number.isInteger(l.value) && l.value > 0).sort((a, b) => a.value - b.value);
    const maxValue = sorted.length ? sorted[sorted.length - 1].value : 1;
    const cm = { R: [0], G: [0], B: [0], A: [0], I: [0], labels: ["background"] };
    for (let v = 1; v <= maxValue; v++) {
      const hit = sorted.find((l) => l.value === v);
      const rgb = hit && Array.isArray(hit.rgb) && hit.rgb.length >= 3 ? hit.rgb : fallbackRgb(v);
      cm.R.push(rgb[0]);
      cm.G.push(rgb[1]);
      cm.B.push(rgb[2]);
      cm.A.push(hit ? (Number.isInteger(hit.alpha) ? hit.alpha : 255) : 0);
      cm.I.push(v);
      cm.labels.push(hit ? hit.name : `label ${v}`);
    }
    return cm;
  }

  function renderLegend() {
    const ul = $("legend");
    clear(ul);
    for (const l of labels) {
      const li = el("li");
      const sw = el("span", null, "swatch");
      const rgb = Array.isArray(l.rgb) ? l.rgb : fallbackRgb(l.value);
      sw.style.backgroundColor = `rgb(${rgb[0] | 0}, ${rgb[1] | 0}, ${rgb[2] | 0})`;
      li.appendChild(sw);
      li.appendChild(el("span", l.alpha === 0 ? `${l.value} ${l.name} (not drawn)` : `${l.value} ${l.name}`));
      li.dataset.value = String(l.value);
      ul.appendChild(li);
    }
  }

  async function loadLabels() {
    const data = await api("/api/labels");
    labels = (data.labels || [])
      .map((l) => ({ value: Number(l.value), name: String(l.name), rgb: l.rgb, alpha: l.alpha }))
      .filter((l) => Number.isInteger(l.value) && l.value > 0);
    labelLut = buildLut(labels);
    renderLegend();
  }

  // ------------------------------------------------------------------ viewers

  function overlayOpacity() {
    return $("overlay-toggle").checked ? OVERLAY_OPACITY : 0;
  }

  class Viewer {
    constructor(canvas) {
      this.canvas = canvas;
      this.nv = null;
      this.attached = null;
      this.seq = 0;
      this.hasOverlay = false;
    }

    async ensure() {
      if (!this.attached) {
        if (!window.niivue || !window.niivue.Niivue) throw new Error("NiiVue did not load (/static/vendor/niivue/)");
        const NV = window.niivue;
        this.nv = new NV.Niivue({
          backColor: [0.05, 0.055, 0.07, 1],
          crosshairColor: [0.95, 0.3, 0.25, 0.9],
          show3Dcrosshair: true,
          isOrientCube: false,
          isColorbar: false,
          multiplanarShowRender: NV.SHOW_RENDER.ALWAYS,
          dragAndDropEnabled: false,
          loadingText: "",
          logLevel: "error",
        });
        this.attached = this.nv.attachToCanvas(this.canvas).then(() => {
          this.nv.setMultiplanarLayout(NV.MULTIPLANAR_TYPE.GRID);
          this.nv.setSliceType(this.nv.sliceTypeMultiplanar);
        });
      }
      await this.attached;
      return this.nv;
    }

    clearVolumes() {
      const nv = this.nv;
      while (nv.volumes.length) nv.removeVolume(nv.volumes[nv.volumes.length - 1]);
      this.hasOverlay = false;
    }

    /** Replace what the viewer shows. ct / mask: ArrayBuffer | null. Returns false when a newer call won. */
    async show(ct, mask) {
      const seq = ++this.seq;
      const nv = await this.ensure();
      const NVImage = window.niivue.NVImage;
      const images = [];
      if (ct) {
        const img = await NVImage.loadFromUrl({ url: ct, name: "ct.nii.gz", colormap: "gray", opacity: 1 });
        img.cal_min = CT_WINDOW[0];
        img.cal_max = CT_WINDOW[1];
        images.push(img);
      }
      if (mask) {
        const alone = !ct;
        const img = await NVImage.loadFromUrl({ url: mask, name: "mask.nii.gz", opacity: alone ? 1 : overlayOpacity() });
        img.setColormapLabel(labelLut || buildLut([]));
        images.push(img);
      }
      if (seq !== this.seq) return false;
      this.clearVolumes();
      for (const img of images) nv.addVolume(img);
      this.hasOverlay = Boolean(ct && mask);
      nv.updateGLVolume();
      await this.drawn();
      return seq === this.seq;
    }

    async empty() {
      ++this.seq;
      const nv = await this.ensure();
      this.clearVolumes();
      nv.drawScene();
    }

    setOverlayOpacity(value) {
      if (this.nv && this.hasOverlay && this.nv.volumes.length > 1) this.nv.setOpacity(1, value);
    }

    drawn() {
      this.nv.drawScene();
      return new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
    }
  }

  const genViewer = new Viewer($("gen-canvas"));
  const caseViewer = new Viewer($("case-canvas"));

  // ------------------------------------------------------------------ retrieved case

  let caseSeq = 0;

  async function showCase(caseId) {
    const seq = ++caseSeq;
    body.dataset.caseState = "loading";
    for (const row of $("hits").tBodies[0].rows) row.classList.toggle("selected", row.dataset.caseId === caseId);
    $("case-title").textContent = caseId;
    $("case-note").textContent = "loading…";
    $("case-report").textContent = "";
    try {
      const info = await api(`/api/cases/${encodeURIComponent(caseId)}`);
      if (seq !== caseSeq) return;
      $("case-title").textContent = info.case_id;
      const meta = [info.split, info.report_source].filter(Boolean).join(", ");
      $("case-report").textContent = info.report_text || "(no report text)";
      const files = info.files || {};
      const volUrl = info.has_volume && files.volume ? files.volume : null;
      const maskUrl = info.has_mask && files.mask ? files.mask : null;
      if (!volUrl && !maskUrl) {
        await caseViewer.empty();
        $("case-note").textContent = `${meta ? `(${meta}) ` : ""}This case has neither a CT volume nor a mask to show.`;
        body.dataset.caseState = "ready";
        return;
      }
      const [ct, mask] = await Promise.all([volUrl ? fetchBuffer(volUrl) : null, maskUrl ? fetchBuffer(maskUrl) : null]);
      if (seq !== caseSeq) return;
      const current = await caseViewer.show(ct, mask);
      if (!current || seq !== caseSeq) return;
      const what = ct && mask ? "CT + mask" : ct ? "CT only (no mask)" : "mask only (no CT volume stored)";
      $("case-note").textContent = `${meta ? `(${meta}) ` : ""}${what}`;
      body.dataset.caseState = "ready";
    } catch (err) {
      if (seq !== caseSeq) return;
      $("case-note").textContent = "could not load this case";
      body.dataset.caseState = "error";
      showError(err);
    }
  }

  // ------------------------------------------------------------------ search

  function fmt(x, digits = 3) {
    return typeof x === "number" && Number.isFinite(x) ? x.toFixed(digits) : "—";
  }

  function readSettings() {
    const report = $("report").value.trim();
    const seed = Number.parseInt($("seed").value, 10);
    const cfg = Number.parseFloat($("cfg").value);
    const controlScale = Number.parseFloat($("control-scale").value);
    if (!report) throw new Error("Paste a report first.");
    if (!Number.isInteger(seed) || seed < 0) throw new Error("Seed must be a whole number ≥ 0.");
    if (!Number.isFinite(cfg)) throw new Error("CFG scale must be a number.");
    if (!Number.isFinite(controlScale)) throw new Error("Control scale must be a number.");
    return { report, strategy: $("strategy").value, seed, cfg, control_scale: controlScale, steps: null };
  }

  /** The form's settings, or null after showing why they cannot be used. */
  function settingsOrError() {
    clearError();
    try {
      return readSettings();
    } catch (err) {
      showError(err);
      return null;
    }
  }

  async function runSearch() {
    const s = settingsOrError();
    if (s === null) return;
    const btn = $("search");
    btn.disabled = true;
    try {
      const strategy = s.strategy === "none" ? "nearest" : s.strategy;
      const data = await api("/api/search", {
        method: "POST",
        json: { text: s.report, k: 5, strategy, seed: s.seed, has_mask: false, has_volume: false },
      });
      renderHits(data);
    } catch (err) {
      showError(err);
    } finally {
      btn.disabled = false;
    }
  }

  function renderHits(data) {
    const table = $("hits");
    const tbody = table.tBodies[0];
    clear(tbody);
    const hits = Array.isArray(data.hits) ? data.hits : [];
    const q = Array.isArray(data.query_labels) && data.query_labels.length ? data.query_labels.join(", ") : "none";
    $("hits-info").textContent =
      `${hits.length} hit(s) from ${data.indexed_cases} indexed case(s), scorer ${data.scorer}. ` +
      `Findings read from the report: ${q}. Click a row to view the case.`;
    for (const h of hits) {
      const tr = document.createElement("tr");
      tr.tabIndex = 0;
      tr.dataset.caseId = h.case_id;
      tr.appendChild(el("td", h.rank, "num"));
      const idCell = el("td", h.case_id, "case-id");
      const flags = [h.split, h.has_volume ? "CT" : null, h.has_mask ? "mask" : null].filter(Boolean).join(" · ");
      if (flags) idCell.appendChild(el("div", flags, "muted small"));
      tr.appendChild(idCell);
      tr.appendChild(el("td", fmt(h.score), "num"));
      tr.appendChild(el("td", h.label_agreement == null ? "—" : fmt(h.label_agreement, 2), "num"));
      const excerpt = el("td", h.report_excerpt || "");
      if (h.report_text) excerpt.title = h.report_text;
      tr.appendChild(excerpt);
      const pick = () => showCase(h.case_id);
      tr.addEventListener("click", pick);
      tr.addEventListener("keydown", (ev) => {
        if (ev.key === "Enter" || ev.key === " ") {
          ev.preventDefault();
          pick();
        }
      });
      tbody.appendChild(tr);
    }
    table.hidden = hits.length === 0;
  }

  // ------------------------------------------------------------------ jobs

  let currentJob = null; // job id being watched
  let lastSettings = null; // settings of the job being watched (for "regenerate")
  let lastDone = null; // {jobId, settings, labelsPresent} of the last succeeded job
  let watchAbort = null;
  const finished = new Set(); // job ids whose terminal state was handled

  function setRunning(running) {
    $("generate").disabled = running;
    $("regenerate").disabled = running || !lastDone;
    $("cancel").hidden = !running;
    $("cancel").disabled = false;
  }

  function updateProgress(st) {
    const p = st.progress || {};
    const bar = $("progress");
    const total = Number(p.total) || 0;
    const done = Number(p.done) || 0;
    if (st.state === "succeeded") {
      bar.max = 1;
      bar.value = 1;
    } else if (total > 0) {
      bar.max = total;
      bar.value = Math.min(done, total);
    } else if (st.state === "queued" || st.state === "running") {
      bar.removeAttribute("value"); // indeterminate
    }
    const stage = p.stage ? ` — ${p.stage}` : "";
    const count = total > 0 ? ` (${done}/${total})` : "";
    setStatus(`Job ${st.state}${stage}${count}`);
  }

  async function submitJob(settings, mask) {
    clearError();
    const payload = Object.assign({}, settings, { mask: mask || null });
    if (watchAbort) watchAbort.abort();
    setRunning(true);
    setState("running");
    setStatus("Submitting…");
    let st;
    try {
      st = await api("/api/jobs", { method: "POST", json: payload });
    } catch (err) {
      setRunning(false);
      setState("error");
      setStatus("Not started.");
      showError(err);
      return;
    }
    currentJob = st.job_id;
    lastSettings = settings;
    body.dataset.jobId = st.job_id;
    $("job-summary").textContent = `Job ${st.job_id}`;
    onStatus(st);
    watch(st.job_id);
  }

  function onStatus(st) {
    if (!st || st.job_id !== currentJob || finished.has(st.job_id)) return;
    updateProgress(st);
    if (!TERMINAL.has(st.state)) return;
    finished.add(st.job_id);
    setRunning(false);
    if (watchAbort) watchAbort.abort();
    if (st.state === "succeeded") {
      showResult(st);
    } else if (st.state === "failed") {
      setState("error");
      showError(`Job failed: ${st.error || "no reason given"}`);
    } else {
      setState("cancelled");
      setStatus("Job cancelled.");
    }
  }

  /** Follow a job over server-sent events read with fetch() (so the token header goes along); poll if that fails. */
  async function watch(jobId) {
    const ctl = new AbortController();
    watchAbort = ctl;
    const gone = () => ctl.signal.aborted || jobId !== currentJob || finished.has(jobId);
    try {
      await readEvents(`/api/jobs/${encodeURIComponent(jobId)}/events`, ctl.signal, (event, data) => {
        if (event !== "status" && event !== "message") return;
        let st;
        try {
          st = JSON.parse(data);
        } catch (_e) {
          return;
        }
        onStatus(st);
      });
    } catch (_err) {
      // stream not available or broken: polling below takes over
    }
    while (!gone()) {
      try {
        onStatus(await api(`/api/jobs/${encodeURIComponent(jobId)}`, { signal: ctl.signal }));
      } catch (err) {
        if (gone()) return;
        if (err instanceof ApiError && err.status >= 400 && err.status < 500 && err.status !== 429) {
          setRunning(false);
          setState("error");
          showError(err);
          return;
        }
      }
      if (gone()) return;
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
  }

  /** Minimal text/event-stream reader: calls onEvent(eventName, data) for each dispatched message. */
  async function readEvents(url, signal, onEvent) {
    const resp = await request(url, { signal, accept: "text/event-stream" });
    if (!resp.body || !resp.body.getReader) throw new Error("streaming not supported");
    const reader = resp.body.getReader();
    const decoder = new TextDecoder("utf-8");
    let buf = "";
    let event = "";
    let data = [];
    const line = (text) => {
      if (text === "") {
        if (data.length) onEvent(event || "message", data.join("\n"));
        event = "";
        data = [];
        return;
      }
      if (text.startsWith(":")) return; // comment / keepalive
      const colon = text.indexOf(":");
      const field = colon < 0 ? text : text.slice(0, colon);
      let value = colon < 0 ? "" : text.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") event = value;
      else if (field === "data") data.push(value);
    };
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let m;
        while ((m = /\r\n|\r|\n/.exec(buf)) !== null) {
          if (m[0] === "\r" && m.index === buf.length - 1) break; // maybe half of a \r\n: wait for more
          line(buf.slice(0, m.index));
          buf = buf.slice(m.index + m[0].length);
        }
      }
      buf += decoder.decode();
      if (buf) line(buf.replace(/\r$/, ""));
      line("");
    } finally {
      try {
        reader.releaseLock();
      } catch (_e) {
        /* already released */
      }
    }
  }

  async function cancelJob() {
    if (!currentJob) return;
    $("cancel").disabled = true;
    try {
      onStatus(await api(`/api/jobs/${encodeURIComponent(currentJob)}/cancel`, { method: "POST" }));
    } catch (err) {
      showError(err);
      $("cancel").disabled = false;
    }
  }

  function renderDownloads(jobId, files) {
    const ul = $("downloads");
    clear(ul);
    for (const [key, text, filename] of FILE_LABELS) {
      const url = files && files[key];
      if (!url) continue;
      const li = el("li");
      const a = el("a", text);
      a.href = url;
      a.download = `ctrag_${jobId}_${filename}`;
      a.dataset.file = key;
      a.addEventListener("click", (ev) => {
        if (!token) return; // the plain link works without a token
        ev.preventDefault();
        downloadWithToken(url, a.download);
      });
      li.appendChild(a);
      ul.appendChild(li);
    }
  }

  async function downloadWithToken(url, filename) {
    try {
      const resp = await request(url);
      const blobUrl = URL.createObjectURL(await resp.blob());
      const a = document.createElement("a");
      a.href = blobUrl;
      a.download = filename;
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(blobUrl), 10000);
    } catch (err) {
      showError(err);
    }
  }

  function renderLabelEdit(present) {
    const box = $("label-edit");
    clear(box);
    const values = (present || []).map(Number).filter((v) => Number.isInteger(v) && v > 0);
    if (!values.length) {
      box.appendChild(el("span", "This job has no proxy mask labels to edit.", "muted small"));
      return;
    }
    for (const v of values) {
      const label = el("label");
      const cb = document.createElement("input");
      cb.type = "checkbox";
      cb.checked = true;
      cb.value = String(v);
      cb.name = "keep_labels";
      label.appendChild(cb);
      label.appendChild(document.createTextNode(`${v} ${labelName(v)}`));
      box.appendChild(label);
    }
  }

  async function showResult(st) {
    const r = st.result || {};
    const files = r.files || {};
    lastDone = { jobId: st.job_id, settings: lastSettings, labelsPresent: r.labels_present || [] };
    renderDownloads(st.job_id, files);
    renderLabelEdit(r.labels_present);
    $("regenerate").disabled = !files.mask;
    const hit = Array.isArray(r.retrieved) && r.retrieved.length ? r.retrieved[0] : null;
    const shape = Array.isArray(r.shape) ? r.shape.join("×") : "?";
    const spacing = Array.isArray(r.spacing_mm) ? r.spacing_mm.map((x) => fmt(x, 1)).join("×") : "?";
    const secs = st.started && st.finished ? ` in ${(st.finished - st.started).toFixed(1)} s` : "";
    $("job-summary").textContent =
      `Job ${st.job_id}: ${shape} voxels at ${spacing} mm${secs}. Mask: ${r.mask_source || "none"}` +
      (hit ? `; retrieved ${hit.case_id} (score ${fmt(hit.score)}, ${hit.strategy}, proxy ${hit.proxy}).` : ".");
    $("gen-note").textContent = "loading…";
    if (hit) showCase(hit.case_id);
    try {
      if (!files.ct) throw new Error("the job result has no CT file");
      const [ct, mask] = await Promise.all([fetchBuffer(files.ct), files.mask ? fetchBuffer(files.mask) : null]);
      if (st.job_id !== currentJob) return;
      const current = await genViewer.show(ct, mask);
      if (!current || st.job_id !== currentJob) return;
      $("gen-note").textContent = mask ? "" : "(no proxy mask: text-only generation)";
      setStatus(`Job succeeded${secs}.`);
      setState("ready");
    } catch (err) {
      if (st.job_id !== currentJob) return;
      $("gen-note").textContent = "";
      setState("error");
      showError(err);
    }
  }

  // ------------------------------------------------------------------ wiring

  $("job-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const s = settingsOrError();
    if (s !== null) submitJob(s, null);
  });

  $("search").addEventListener("click", runSearch);
  $("cancel").addEventListener("click", cancelJob);

  $("regenerate").addEventListener("click", () => {
    if (!lastDone) return;
    const keep = Array.from($("label-edit").querySelectorAll("input[type=checkbox]"))
      .filter((cb) => cb.checked)
      .map((cb) => Number(cb.value));
    const settings = lastDone.settings || settingsOrError();
    if (!settings) return;
    submitJob(settings, { job_id: lastDone.jobId, keep_labels: keep });
  });


  $("overlay-toggle").addEventListener("change", () => {
    const value = overlayOpacity();
    genViewer.setOverlayOpacity(value);
    caseViewer.setOverlayOpacity(value);
  });

  async function start() {
    try {
      await Promise.all([genViewer.ensure(), caseViewer.ensure()]);
    } catch (err) {
      setState("error");
      showError(err);
      return;
    }
    try {
      await loadLabels();
    } catch (err) {
      showError(err);
    }
    try {
      const h = await api("/api/health");
      $("version").textContent = h && h.version ? `ctrag ${h.version}` : "";
    } catch (_err) {
      // labels already reported any access problem
    }
  }

  start();
})();
