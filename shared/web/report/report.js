// The report page: verify a signed ReHealth evidence report (report.json) in the browser and
// show it. RFC 8785 bytes come from the vendored `canonicalize` package (VENDOR.md), the
// signature check from WebCrypto's Ed25519: no cryptographic code of our own, no server round
// trip. The layout checked is deploy/verify/verify-report.mjs's: {"report": …, "signature":
// {algorithm, canonicalization, key_id, value[, certificate]}}; the file's bytes must be the
// RFC 8785 form of what they parse to; key_id is the SHA-256 of the raw 32-byte public key; value
// is the Ed25519 signature over the RFC 8785 bytes of `report`.
// Everything read from a file is put on the page as text (textContent), never as markup.
(function () {
  "use strict";
  const jcs = canonicalize; // from vendor/canonicalize (inlined before this script)
  const enc = new TextEncoder();
  const SVGNS = "http://www.w3.org/2000/svg";
  const BLOCK = ["algorithm", "canonicalization", "key_id", "value"];
  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------- bytes and keys
  const hex = (buf) => Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, "0")).join("");
  function b64decode(s) {
    const bin = atob(s);
    return Uint8Array.from(bin, (c) => c.charCodeAt(0));
  }
  function b64encode(bytes) {
    let s = "";
    bytes.forEach((b) => { s += String.fromCharCode(b); });
    return btoa(s);
  }
  function sameBytes(a, b) {
    if (a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
    return true;
  }
  function firstDifference(a, b) {
    const n = Math.min(a.length, b.length);
    for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
    return n;
  }
  async function sha256hex(bytes) {
    return hex(await crypto.subtle.digest("SHA-256", bytes));
  }

  // A public key as PEM (SubjectPublicKeyInfo) or raw: 32 bytes, or their hex or base64 text.
  async function readKey(bytes) {
    if (!(window.crypto && crypto.subtle)) {
      throw new Error("this browser gives the page no WebCrypto here: open the page from the " +
        "saved file, from localhost or over HTTPS");
    }
    const text = new TextDecoder("utf-8").decode(bytes).trim();
    const imp = (fmt, data) =>
      crypto.subtle.importKey(fmt, data, { name: "Ed25519" }, true, ["verify"]);
    const pem = /-----BEGIN PUBLIC KEY-----([\s\S]*?)-----END PUBLIC KEY-----/.exec(text);
    try {
      if (pem) return await imp("spki", b64decode(pem[1].replace(/\s+/g, "")));
      if (bytes.length === 32) return await imp("raw", bytes);
      if (/^[0-9a-fA-F]{64}$/.test(text)) {
        return await imp("raw", Uint8Array.from(text.match(/../g), (h) => parseInt(h, 16)));
      }
      if (/^[A-Za-z0-9+/]{43}=$/.test(text)) return await imp("raw", b64decode(text));
    } catch (e) {
      throw new Error(`not an Ed25519 public key (${e.message || e.name})`);
    }
    throw new Error("not an Ed25519 public key: give a PEM file (-----BEGIN PUBLIC KEY-----) " +
      "or the raw 32 bytes (binary, 64 hex digits or base64)");
  }
  async function keyId(key) {
    return sha256hex(await crypto.subtle.exportKey("raw", key));
  }

  // ---------------------------------------------------------------- verification
  // {ok, reason, doc, sha256, keyId}; never throws on a bad file.
  async function verifyReport(bytes, key) {
    const out = { ok: false, reason: "", doc: null, sha256: await sha256hex(bytes), keyId: null };
    const fail = (reason) => Object.assign(out, { reason });
    let text, doc;
    try {
      text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    } catch (e) {
      return fail("the file is not UTF-8 text");
    }
    try {
      doc = JSON.parse(text);
    } catch (e) {
      return fail(`the file is not JSON (${e.message})`);
    }
    const isObj = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
    if (!isObj(doc)) return fail("the file is not a JSON object");
    const top = Object.keys(doc).sort().join(", ");
    if (top !== "report, signature") return fail(`top-level fields must be report and signature (found: ${top})`);
    if (!isObj(doc.report)) return fail("report is not an object");
    const sig = doc.signature;
    if (!isObj(sig)) return fail("no signature block");
    const fields = Object.keys(sig).filter((k) => k !== "certificate").sort().join(",");
    if (fields !== BLOCK.join(",")) return fail(`signature block fields are ${fields}, expected ${BLOCK.join(",")}`);
    if (sig.canonicalization !== "RFC 8785") return fail(`canonicalization ${JSON.stringify(sig.canonicalization)} is not RFC 8785`);
    if (sig.algorithm !== "Ed25519") return fail(`signature algorithm ${JSON.stringify(sig.algorithm)} is not Ed25519`);
    out.doc = doc;
    let canonical, signed;
    try {
      canonical = enc.encode(jcs(doc));
      signed = enc.encode(jcs(doc.report));
    } catch (e) {
      return fail(`no RFC 8785 form: ${e.message}`);
    }
    if (!sameBytes(canonical, bytes)) {
      return fail(`the file's bytes are not the RFC 8785 form of its content (first difference at byte ${firstDifference(canonical, bytes)}): it was edited after signing`);
    }
    out.keyId = await keyId(key);
    if (sig.key_id !== out.keyId) {
      return fail(`signed by another key (key id ${String(sig.key_id).slice(0, 16)}…), not by the public key given (key id ${out.keyId.slice(0, 16)}…)`);
    }
    let value;
    try {
      value = typeof sig.value === "string" ? b64decode(sig.value) : new Uint8Array();
    } catch (e) {
      value = new Uint8Array();
    }
    if (value.length !== 64 || b64encode(value) !== sig.value) return fail("the signature value is not the base64 of 64 bytes");
    const good = await crypto.subtle.verify({ name: "Ed25519" }, key, value, signed);
    if (!good) return fail("the signature does not match the report: a value was changed after signing");
    out.ok = true;
    return out;
  }

  // ---------------------------------------------------------------- page building (text only)
  function h(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) e.setAttribute(k, v);
    for (const k of kids.flat()) if (k !== null && k !== undefined) e.append(k instanceof Node ? k : String(k));
    return e;
  }
  function s(tag, attrs, ...kids) {
    const e = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    for (const k of kids.flat()) if (k !== null && k !== undefined) e.append(k instanceof Node ? k : String(k));
    return e;
  }
  const num = (v, d = 3) => (typeof v === "number" && isFinite(v)
    ? v.toLocaleString("en", { maximumSignificantDigits: Math.abs(v) >= 1000 ? 7 : d + 1 }) : "—");
  const money = (v) => (typeof v === "number" ? Math.round(v).toLocaleString("en") : "—");
  const pct = (v) => (typeof v === "number" ? `${(100 * v).toFixed(1)}%` : "—");

  // `text`: indexes of the columns holding words (left-aligned); the others are numbers.
  function table(caption, head, rows, text = []) {
    const cls = (i) => (i === 0 || text.includes(i) ? "text" : null);
    return h("div", { class: "scroll" }, h("table", {},
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, head.map((c, i) => h("th", { scope: "col", class: cls(i) }, c)))),
      h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c, i) => (i === 0 ? h("th", { scope: "row" }, c) : h("td", { class: cls(i) }, c))))))));
  }
  function figure(id, title, desc, svgEl, note) {
    svgEl.setAttribute("role", "img");
    svgEl.setAttribute("aria-labelledby", `${id}-t ${id}-d`);
    svgEl.prepend(s("desc", { id: `${id}-d` }, desc));
    svgEl.prepend(s("title", { id: `${id}-t` }, title));
    svgEl.setAttribute("class", "chart");
    return h("figure", { class: "card", id }, h("h3", {}, title), svgEl, note ? h("figcaption", { class: "hint" }, note) : null);
  }

  // ATT with its 95% CI per outcome; each outcome on its own axis (units differ), zero marked.
  function estimatePlot(outcomes) {
    const W = 560, rowH = 58, L = 150, R = 20, top = 10;
    const g = s("svg", { viewBox: `0 0 ${W} ${top + rowH * outcomes.length + 10}`, width: W });
    outcomes.forEach((o, i) => {
      const e = o.estimate;
      const lo = Math.min(e.ci[0], 0, o.truth ?? 0), hi = Math.max(e.ci[1], 0, o.truth ?? 0);
      const pad = (hi - lo) * 0.08 || 1;
      const x = (v) => L + ((v - lo + pad) / (hi - lo + 2 * pad)) * (W - L - R);
      const y = top + i * rowH + 24;
      g.append(
        s("text", { x: 0, y: y + 4 }, e.name),
        s("line", { x1: L, x2: W - R, y1: y + 18, y2: y + 18, stroke: "#9aa5b1" }),
        s("line", { x1: x(0), x2: x(0), y1: y - 16, y2: y + 18, stroke: "#4a5560", "stroke-dasharray": "3 3" }),
        s("text", { x: x(0), y: y + 31, "text-anchor": "middle" }, "0"),
        s("line", { x1: x(e.ci[0]), x2: x(e.ci[1]), y1: y, y2: y, stroke: "#0b4a7d", "stroke-width": 3 }),
        s("circle", { cx: x(e.att), cy: y, r: 5, fill: "#0b4a7d" }),
        s("text", { x: x(e.ci[0]), y: y + 31, "text-anchor": "middle" }, num(e.ci[0])),
        s("text", { x: x(e.ci[1]), y: y + 31, "text-anchor": "middle" }, num(e.ci[1])),
        s("text", { x: x(e.att), y: y - 9, "text-anchor": "middle", "font-weight": "700" }, `ATT ${num(e.att)}`),
      );
      if (typeof o.truth === "number") {
        g.append(s("path", { d: `M${x(o.truth)},${y - 7} l5,7 l-5,7 l-5,-7 z`, fill: "none", stroke: "#9b1c1c", "stroke-width": 1.5 }));
      }
    });
    return g;
  }

  // |SMD| per covariate before (open) and after (filled) weighting, with the report's threshold.
  function lovePlot(rows, threshold) {
    const W = 560, rowH = 20, L = 160, R = 20, top = 24;
    const max = Math.max(threshold * 1.5, ...rows.flatMap((r) => [Math.abs(r.smd_before), Math.abs(r.smd_after)]));
    const x = (v) => L + (v / max) * (W - L - R);
    const H = top + rowH * rows.length + 24;
    const g = s("svg", { viewBox: `0 0 ${W} ${H}`, width: W });
    g.append(
      s("line", { x1: x(threshold), x2: x(threshold), y1: top - 10, y2: H - 20, stroke: "#9b1c1c", "stroke-dasharray": "4 3" }),
      s("text", { x: x(threshold) + 4, y: top - 12 }, `threshold ${threshold}`),
      s("text", { x: L, y: H - 4 }, "0"),
      s("text", { x: W - R, y: H - 4, "text-anchor": "end" }, `|SMD| ${num(max, 2)}`),
    );
    rows.forEach((r, i) => {
      const y = top + i * rowH + 10;
      g.append(
        s("text", { x: 0, y: y + 4 }, r.covariate),
        s("line", { x1: L, x2: W - R, y1: y, y2: y, stroke: "#e1e6eb" }),
        s("circle", { cx: x(Math.abs(r.smd_before)), cy: y, r: 5, fill: "#ffffff", stroke: "#4a5560", "stroke-width": 1.5 }),
        s("circle", { cx: x(Math.abs(r.smd_after)), cy: y, r: 5, fill: "#0b4a7d" }),
      );
    });
    return g;
  }

  // Share of each arm per propensity-score stratum (treated up, controls down), each arm scaled
  // to its own total so that a small treated arm is as visible as a large control pool.
  function overlapPlot(strata) {
    const W = 560, H = 200, L = 60, R = 10, mid = 100;
    const nt = strata.reduce((a, st) => a + st.n_treated, 0) || 1;
    const nc = strata.reduce((a, st) => a + st.n_control, 0) || 1;
    const shares = strata.map((st) => ({ ...st, t: st.n_treated / nt, c: st.n_control / nc }));
    const max = Math.max(1e-9, ...shares.flatMap((st) => [st.t, st.c]));
    const bw = (W - L - R) / strata.length;
    const g = s("svg", { viewBox: `0 0 ${W} ${H}`, width: W });
    g.append(
      s("line", { x1: L, x2: W - R, y1: mid, y2: mid, stroke: "#4a5560" }),
      s("text", { x: 0, y: 20 }, "treated"),
      s("text", { x: 0, y: H - 10 }, "control"),
    );
    shares.forEach((st, i) => {
      const x = L + i * bw + 1, t = (st.t / max) * (mid - 10), c = (st.c / max) * (mid - 10);
      const op = st.used ? 1 : 0.35;
      g.append(
        s("rect", { x, y: mid - t, width: bw - 2, height: t, fill: "#c2410c", opacity: op }),
        s("rect", { x, y: mid, width: bw - 2, height: c, fill: "#0b4a7d", opacity: op }),
      );
    });
    return g;
  }

  function render(doc) {
    const r = doc.report;
    const out = $("content");
    out.replaceChildren();
    const billable = r.billable
      ? h("p", { class: "notice ok" }, "Billable: every diagnostic gate passed.")
      : h("p", { class: "notice warn" }, `Not billable: failed gate(s): ${(r.failed_gates || []).join(", ")}.`);
    out.append(
      h("h2", {}, r.study.description || r.study.name),
      h("dl", { class: "facts" },
        h("dt", {}, "Study"), h("dd", {}, r.study.name),
        h("dt", {}, "Issuer"), h("dd", {}, r.issuer),
        h("dt", {}, "Issued"), h("dd", {}, r.issued_at),
        h("dt", {}, "Estimand"), h("dd", {}, `${r.estimand.name}: ${r.estimand.description}`),
        h("dt", {}, "People"), h("dd", {}, `${r.value.n_treated.toLocaleString("en")} treated in common support`),
        h("dt", {}, "Data"), h("dd", {}, r.synthetic ? "simulated (a demonstration with a known true effect, not real-world evidence)" : "real-world")),
      billable,
      r.value.claim_note ? h("p", { class: "prose" }, r.value.claim_note) : null,
    );
    const figs = ["claims_saved", "net_benefit", "roi", "events_averted", "absence_days_averted"]
      .map((k) => r.value[k]).filter(Boolean);
    out.append(h("h2", {}, "What it is worth"), table("Value figures with 95% confidence intervals",
      ["Figure", "Estimate", "95% CI", "Unit"],
      figs.map((f) => [f.label, f.unit === "ratio" ? pct(f.estimate) : num(f.estimate, 5),
        f.unit === "ratio" ? `${pct(f.ci_low)} to ${pct(f.ci_high)}` : `${num(f.ci_low, 5)} to ${num(f.ci_high, 5)}`,
        f.unit === "ratio" ? "percent of cost" : f.unit]), [3]));
    out.append(h("h2", {}, "Effect on each outcome"), table("Average effect on the treated (ATT) per outcome",
      ["Outcome", "ATT", "95% CI", "Treated", "Controls", "Share of CI from privacy noise"],
      r.outcomes.map((o) => [o.estimate.name, num(o.estimate.att), `${num(o.estimate.ci[0])} to ${num(o.estimate.ci[1])}`,
        o.estimate.n_treated.toLocaleString("en"), o.estimate.n_control.toLocaleString("en"), pct(o.estimate.privacy_share_of_ci)])));
    const threshold = (r.checks.find((c) => c.name === "balance_smd") || {}).threshold || 0.1;
    out.append(h("h2", {}, "Figures"), h("div", { class: "figs" },
      figure("fig-estimates", "Estimated effects with 95% CI",
        "For each outcome: the ATT as a dot, its 95% confidence interval as a bar, zero dashed" +
        (r.synthetic ? ", the simulated true effect as a red diamond." : "."), estimatePlot(r.outcomes),
        "Dot: ATT. Bar: 95% CI. Dashed: no effect." + (r.synthetic ? " Red diamond: the simulated true effect." : "")),
      figure("fig-balance", "Covariate balance (Love plot)",
        `Absolute standardised mean difference per covariate, before weighting (open circles) and after (filled), with the threshold ${threshold}.`,
        lovePlot(r.balance, threshold), `Open: before weighting. Filled: after. Dashed red: the report's threshold ${threshold}.`),
      figure("fig-overlap", "Propensity-score overlap",
        "Share of each arm per propensity-score stratum, low to high score: treated above the line, controls below; faded strata were not used.",
        overlapPlot(r.strata), "Share of each arm per score stratum, low to high. Orange: treated (up). Blue: controls (down). Faded: outside common support."),
    ));
    out.append(h("h2", {}, "Summaries"),
      h("h3", {}, "For insurers and reinsurers"), h("p", { class: "prose" }, r.summaries.insurer),
      h("h3", {}, "For HR, management and ESG reporting"), h("p", { class: "prose" }, r.summaries.hr),
      h("h3", {}, "For regulators"), h("p", { class: "prose" }, r.summaries.regulator));
    out.append(h("h2", {}, "Diagnostic checks"), table("Gates must pass for billing; information checks only inform",
      ["Check", "Rule", "Value", "Result"],
      r.checks.map((c) => [c.label, c.rule, typeof c.value === "number" ? num(c.value) : "—",
        c.kind === "gate" ? (c.passed ? "pass" : "FAIL") : "information"]), [1, 3]));
    const p = r.privacy;
    out.append(h("h2", {}, "Privacy"), h("p", { class: "prose" }, p.enabled
      ? `Differential privacy: ε = ${num(p.epsilon)}, δ = ${p.delta} (${p.accountant} accountant); at most ${pct(p.max_privacy_share_of_ci)} of a confidence interval's width is privacy noise.`
      : "No differential-privacy noise was added (exact release between sites of one data owner)."));
  }

  // ---------------------------------------------------------------- the form
  const state = { report: null, key: null, reportName: "", keyName: "" };

  function say(kind, title, detail) {
    const box = $("verdict");
    box.className = `notice ${kind}`;
    box.replaceChildren(h("p", { class: "verdict" }, title), ...detail.map((d) => h("p", {}, d)));
  }

  async function run() {
    if (!state.report || !state.key) {
      say("", "Waiting for files", [`${state.report ? "✓" : "•"} report.json   ${state.key ? "✓" : "•"} public key`]);
      return;
    }
    let key;
    try {
      key = await readKey(state.key);
    } catch (e) {
      $("content").replaceChildren();
      say("bad", "NOT VERIFIED", [`The public key ${state.keyName} could not be read: ${e.message}.`]);
      return;
    }
    const r = await verifyReport(state.report, key);
    document.body.dataset.verified = String(r.ok);
    if (r.ok) {
      say("ok", "VERIFIED", [
        `${state.reportName} is exactly what the holder of this key signed (RFC 8785 + Ed25519).`,
        `Issuer named in the report: ${r.doc.report.issuer}. Key id ${r.keyId}.`,
        `SHA-256 of the file (quote it to name this report): ${r.sha256}`,
      ]);
      render(r.doc);
      $("verdict").focus();
    } else {
      $("content").replaceChildren(h("p", { class: "prose" },
        "The report's contents are not shown: they cannot be trusted until the file verifies."));
      say("bad", "NOT VERIFIED", [`${state.reportName}: ${r.reason}.`, `SHA-256 of the file: ${r.sha256}`]);
      $("verdict").focus();
    }
  }

  async function take(file, which) {
    const bytes = new Uint8Array(await file.arrayBuffer());
    if (which === "key" || (which === "drop" && file.size < 2048 && !file.name.endsWith(".json"))) {
      state.key = bytes; state.keyName = file.name;
    } else {
      state.report = bytes; state.reportName = file.name;
    }
  }

  function wire() {
    $("report-file").addEventListener("change", async (ev) => { if (ev.target.files[0]) { await take(ev.target.files[0], "report"); run(); } });
    $("key-file").addEventListener("change", async (ev) => { if (ev.target.files[0]) { await take(ev.target.files[0], "key"); run(); } });
    $("key-text").addEventListener("input", (ev) => {
      const t = ev.target.value.trim();
      state.key = t ? enc.encode(t) : null; state.keyName = "pasted";
      run();
    });
    const zone = $("drop");
    zone.addEventListener("dragover", (ev) => { ev.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", async (ev) => {
      ev.preventDefault(); zone.classList.remove("over");
      for (const f of ev.dataTransfer.files) await take(f, "drop");
      run();
    });
    run();
  }

  window.rehealthReport = { verifyReport, readKey, canonicalize: jcs };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", wire); else wire();
})();
