#!/usr/bin/env node
// Independent check of a ReHealth evidence report (report.json), Node.js 18+ standard library only.
//
//   node verify-report.mjs report.json --key coordinator.pub     # the issuer's Ed25519 public key
//   node verify-report.mjs report.json --ca ca.crt               # the federation's CA certificate
//
// Exit 0: intact, signed by that key (or by a key the CA certified for the report's issuer);
// exit 1: not, with the reason; exit 2: bad usage or unreadable input. Nothing here is shared with
// the Python code that signs: the RFC 8785 (JCS) serialisation is written out below (README.md).
import { createHash, createPublicKey, verify as edVerify, X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

// RFC 8785: ECMAScript number/string text (what JSON.stringify writes), object keys sorted by
// UTF-16 code units (what Array.prototype.sort does), no whitespace.
export function jcs(v) {
  if (typeof v === "number" && !Number.isFinite(v)) throw new Error("non-finite number");
  if (v === null || typeof v !== "object") return JSON.stringify(v); // ES Number::toString; -0 is "0"
  let out = "";
  if (Array.isArray(v)) {
    for (const item of v) out += (out ? "," : "") + jcs(item);
    return "[" + out + "]";
  }
  for (const k of Object.keys(v).sort()) out += (out ? "," : "") + JSON.stringify(k) + ":" + jcs(v[k]);
  return "{" + out + "}";
}

const keyIds = new WeakMap(); // KeyObject -> SHA-256 of its raw 32 bytes (hex)
function keyIdOf(key) {
  if (!keyIds.has(key)) keyIds.set(key, createHash("sha256").update(key.export({ format: "der", type: "spki" }).subarray(-32)).digest("hex"));
  return keyIds.get(key);
}

const BLOCK = ["algorithm", "canonicalization", "key_id", "value"];

// Returns {ok: true, keyId, sha256, issuer} or {ok: false, reason}. `trust` is {key: KeyObject}
// or {ca: X509Certificate}. Never throws on bad input.
export function verifyReport(bytes, trust) {
  let doc;
  try {
    doc = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (e) {
    return { ok: false, reason: `unreadable: ${e.message}` };
  }
  if (doc === null || typeof doc !== "object" || Array.isArray(doc)) return { ok: false, reason: "not an object" };
  const top = Object.keys(doc).sort().join(",");
  if (top !== "report,signature") return { ok: false, reason: `top-level fields must be report, signature (got ${top})` };
  if (doc.report === null || typeof doc.report !== "object" || Array.isArray(doc.report)) return { ok: false, reason: "report is not an object" };
  const sig = doc.signature;
  if (sig === null || typeof sig !== "object" || Array.isArray(sig)) return { ok: false, reason: "no signature block" };
  const fields = Object.keys(sig).filter((k) => k !== "certificate").sort().join(",");
  if (fields !== BLOCK.join(",")) return { ok: false, reason: `signature block fields: ${fields}` };
  if ("certificate" in sig && typeof sig.certificate !== "string") return { ok: false, reason: "certificate is not a PEM string" };
  if (sig.canonicalization !== "RFC 8785") return { ok: false, reason: `canonicalization ${JSON.stringify(sig.canonicalization)}, not RFC 8785 (old format?)` };
  if (sig.algorithm !== "Ed25519") return { ok: false, reason: `algorithm ${JSON.stringify(sig.algorithm)}` };
  // JCS of {report, signature} is this concatenation ("report" sorts before "signature"); the
  // signed bytes are exactly the report's part.
  let signed, canonical;
  try {
    signed = Buffer.from(jcs(doc.report), "utf8");
    canonical = Buffer.concat([Buffer.from('{"report":'), signed, Buffer.from(`,"signature":${jcs(sig)}}`)]);
  } catch (e) {
    return { ok: false, reason: `no canonical form: ${e.message}` };
  }
  if (!canonical.equals(Buffer.from(bytes))) return { ok: false, reason: "bytes are not the RFC 8785 form of the document" };
  let key = trust.key;
  if (trust.ca) {
    if (typeof sig.certificate !== "string") return { ok: false, reason: "no certificate in the signature block" };
    let cert;
    try {
      cert = new X509Certificate(sig.certificate);
    } catch (e) {
      return { ok: false, reason: `certificate unreadable: ${e.message}` };
    }
    if (!cert.checkIssued(trust.ca) || !cert.verify(trust.ca.publicKey)) return { ok: false, reason: "certificate not issued by the CA" };
    if (cert.ca) return { ok: false, reason: "the certificate is a CA's, not a report-signing certificate" };
    const at = Date.parse(doc.report.issued_at);
    if (!(at >= Date.parse(cert.validFrom) && at <= Date.parse(cert.validTo))) return { ok: false, reason: "report issued outside the certificate's validity" };
    const cn = /(?:^|\n)CN=([^\n]*)/.exec(cert.subject);
    if (!cn || cn[1] !== doc.report.issuer) return { ok: false, reason: `issuer ${JSON.stringify(doc.report.issuer)} is not the certificate's subject ${JSON.stringify(cn && cn[1])}` };
    key = cert.publicKey;
  }
  if (key.asymmetricKeyType !== "ed25519") return { ok: false, reason: "key is not Ed25519" };
  const keyId = keyIdOf(key);
  if (sig.key_id !== keyId) return { ok: false, reason: `signed by key id ${sig.key_id}, expected ${keyId}` };
  const value = typeof sig.value === "string" ? Buffer.from(sig.value, "base64") : Buffer.alloc(0);
  if (value.length !== 64 || value.toString("base64") !== sig.value) return { ok: false, reason: "signature value is not canonical base64 of 64 bytes" };
  if (!edVerify(null, signed, key, value)) return { ok: false, reason: "signature does not match" };
  return { ok: true, keyId, sha256: createHash("sha256").update(bytes).digest("hex"), issuer: doc.report.issuer };
}

function main(argv) {
  const [file, flag, trustFile] = argv;
  if (!file || !["--key", "--ca"].includes(flag) || !trustFile || argv.length !== 3) {
    console.error("usage: node verify-report.mjs REPORT.json (--key ISSUER.pub | --ca CA.crt)");
    return 2;
  }
  let bytes, trust;
  try {
    bytes = readFileSync(file);
    const pem = readFileSync(trustFile);
    trust = flag === "--key" ? { key: createPublicKey(pem) } : { ca: new X509Certificate(pem) };
  } catch (e) {
    console.error(`error: ${e.message}`);
    return 2;
  }
  const r = verifyReport(bytes, trust);
  if (!r.ok) {
    console.log(`INVALID: ${file}: ${r.reason}`);
    return 1;
  }
  console.log(`OK: ${file} is intact, signed by key ${r.keyId} (issuer ${JSON.stringify(r.issuer)}); SHA-256 ${r.sha256}`);
  return 0;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) process.exitCode = main(process.argv.slice(2));
