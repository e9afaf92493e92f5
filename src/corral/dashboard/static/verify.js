/*
 * corral dashboard: checks the audit record in the browser, with WebCrypto only.
 *
 * For each timeline line, for each of its entries:
 *   leaf hash = SHA-256(0x00 || leaf bytes)                        (RFC 6962 §2.1)
 *   root      = the inclusion proof folded from the leaf hash       (RFC 9162 §2.1.3.2)
 *   the root must equal the root of the latest checkpoint, whose C2SP signed note must carry
 *   a valid Ed25519 signature by the log's published key (crypto.subtle.verify "Ed25519").
 * The anchor is checked the same way: its note signed by the anchor key, the tenant checkpoint
 * it anchored included in it, and that checkpoint a prefix of the latest one (consistency proof,
 * RFC 9162 §2.1.4.2).
 *
 * Nothing is taken from the server's word: the root compared is parsed from the signed note
 * text after its signature verified, never read from an attribute. Results are written back as
 * data-state ("checking" | "verified" | "failed") and data-computed-root (base64).
 * The first key seen for a log is remembered (localStorage) and a different one later fails.
 */
(function () {
  "use strict";

  const enc = new TextEncoder();

  // ------------------------------------------------------------------ bytes and hashes
  function fromB64(text) {
    const bin = atob(text);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  function toB64(bytes) {
    let bin = "";
    for (const b of bytes) bin += String.fromCharCode(b);
    return btoa(bin);
  }
  function hex(bytes) {
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }
  function concat(...parts) {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) { out.set(p, at); at += p.length; }
    return out;
  }
  function equal(a, b) {
    if (!a || !b || a.length !== b.length) return false;
    let diff = 0;
    for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
    return diff === 0;
  }
  async function sha256(bytes) {
    return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  }
  const ZERO = new Uint8Array([0]);
  const ONE = new Uint8Array([1]);
  const leafHash = (leaf) => sha256(concat(ZERO, leaf));
  const nodeHash = (left, right) => sha256(concat(ONE, left, right));
  function proofOf(text) {
    return text ? text.split(",").map(fromB64) : [];
  }

  // ------------------------------------------------------------- RFC 9162 verification
  // Indexes and sizes are BigInt: JavaScript's bit operators work on 32 bits only.
  const bitLength = (n) => (n === 0n ? 0 : n.toString(2).length);
  const ones = (n) => n.toString(2).split("").filter((c) => c === "1").length;

  function innerBorder(index, size) {
    const inner = bitLength(index ^ (size - 1n));
    return [inner, ones(index >> BigInt(inner))];
  }
  async function chainInner(seed, proof, index) {
    for (let i = 0; i < proof.length; i++) {
      seed = ((index >> BigInt(i)) & 1n) === 0n ? await nodeHash(seed, proof[i]) : await nodeHash(proof[i], seed);
    }
    return seed;
  }
  async function chainInnerRight(seed, proof, index) {
    for (let i = 0; i < proof.length; i++) {
      if (((index >> BigInt(i)) & 1n) === 1n) seed = await nodeHash(proof[i], seed);
    }
    return seed;
  }
  async function chainBorderRight(seed, proof) {
    for (const h of proof) seed = await nodeHash(h, seed);
    return seed;
  }
  /** The root an inclusion proof leads to, or null if its shape cannot be right. */
  async function rootFromInclusion(hash, index, size, proof) {
    if (!(index >= 0n && index < size) || proof.some((h) => h.length !== 32)) return null;
    const [inner, border] = innerBorder(index, size);
    if (proof.length !== inner + border) return null;
    const mid = await chainInner(hash, proof.slice(0, inner), index);
    return chainBorderRight(mid, proof.slice(inner));
  }
  async function verifyConsistency(oldSize, newSize, oldRoot, newRoot, proof) {
    if (!(oldSize > 0n && oldSize <= newSize) || proof.some((h) => h.length !== 32)) return false;
    if (oldSize === newSize) return proof.length === 0 && equal(oldRoot, newRoot);
    if (proof.length === 0) return false;
    let [inner, border] = innerBorder(oldSize - 1n, newSize);
    const shift = bitLength(oldSize & -oldSize) - 1;
    inner -= shift;
    let seed, rest;
    if (oldSize === 1n << BigInt(shift)) { seed = oldRoot; rest = proof; } else { seed = proof[0]; rest = proof.slice(1); }
    if (rest.length !== inner + border) return false;
    const mask = (oldSize - 1n) >> BigInt(shift);
    const old = await chainBorderRight(await chainInnerRight(seed, rest.slice(0, inner), mask), rest.slice(inner));
    if (!equal(old, oldRoot)) return false;
    const fresh = await chainBorderRight(await chainInner(seed, rest.slice(0, inner), mask), rest.slice(inner));
    return equal(fresh, newRoot);
  }

  // ------------------------------------------------------- C2SP signed notes, checkpoints
  async function parseVkey(vkey) {
    // name+hexid+base64: the name has no "+", the base64 may (split at the first two only).
    const first = vkey.indexOf("+");
    const parts = [vkey.slice(0, first), vkey.slice(first + 1, first + 9), vkey.slice(first + 10)];
    if (first < 1 || vkey[first + 9] !== "+" || !/^[0-9a-f]{8}$/.test(parts[1])) throw new Error("malformed public key");
    const raw = fromB64(parts[2]);
    if (raw.length !== 33 || raw[0] !== 1) throw new Error("not an Ed25519 public key");
    const name = parts[0];
    const pub = raw.slice(1);
    const id = (await sha256(concat(enc.encode(name), new Uint8Array([0x0a, 0x01]), pub))).slice(0, 4);
    if (hex(id) !== parts[1]) throw new Error("the key's id does not match the key");
    return { name, id, pub };
  }
  /** Verify a signed note with one key: {text} of the signed part, or throw why not. */
  async function openNote(noteBytes, vkey) {
    const whole = new TextDecoder("utf-8", { fatal: true }).decode(noteBytes);
    const split = whole.lastIndexOf("\n\n");
    if (split < 0 || !whole.endsWith("\n")) throw new Error("malformed signed note");
    const text = whole.slice(0, split + 1);
    const key = await parseVkey(vkey);
    const lines = whole.slice(split + 2, -1).split("\n");
    for (const line of lines) {
      if (!line.startsWith("\u2014 ")) throw new Error("malformed signature line");
      const [name, blob] = line.slice(2).split(" ");
      if (name !== key.name) continue;
      const raw = fromB64(blob || "");
      if (raw.length !== 68 || !equal(raw.slice(0, 4), key.id)) continue;
      const publicKey = await crypto.subtle.importKey("raw", key.pub, { name: "Ed25519" }, false, ["verify"]);
      const ok = await crypto.subtle.verify({ name: "Ed25519" }, publicKey, raw.slice(4), enc.encode(text));
      if (!ok) throw new Error("the signature is not valid");
      return { text, name: key.name };
    }
    throw new Error("not signed by the published key");
  }
  function parseCheckpoint(text) {
    const lines = text.slice(0, -1).split("\n");
    if (lines.length < 3 || !/^(0|[1-9][0-9]*)$/.test(lines[1])) throw new Error("malformed checkpoint");
    const root = fromB64(lines[2]);
    if (root.length !== 32) throw new Error("malformed checkpoint root");
    return { origin: lines[0], size: BigInt(lines[1]), root };
  }
  /** Trust on first use: the first key seen for a log name is the one expected afterwards. */
  function pinned(name, vkey) {
    try {
      const slot = "corral.key." + name;
      const known = localStorage.getItem(slot);
      if (known === null) { localStorage.setItem(slot, vkey); return true; }
      return known === vkey;
    } catch (e) {
      return true; // storage disabled: nothing to compare with
    }
  }
  async function signedCheckpoint(noteB64, vkey, origin) {
    const opened = await openNote(fromB64(noteB64), vkey);
    if (!pinned(opened.name, vkey)) throw new Error("the log's key changed since this browser last checked it");
    const cp = parseCheckpoint(opened.text);
    if (origin && cp.origin !== origin) throw new Error("the checkpoint is for another log");
    return cp;
  }

  // ------------------------------------------------------------------------ the page
  function mark(el, state, text, why) {
    el.dataset.state = state;
    const label = el.querySelector(".badge-text, .check-text");
    if (label) label.textContent = text;
    const reason = el.querySelector("[data-why]");
    if (reason && why) reason.textContent = why;
    if (why) (el.querySelector(".badge") || el).title = why;
  }

  async function checkLine(li, cp) {
    const leaves = li.querySelectorAll(".leaf[data-leaf]");
    if (leaves.length === 0) throw new Error("this line has no entry to check");
    let computed = null;
    for (const el of leaves) {
      if (el.dataset.unsigned) throw new Error("this entry is newer than the latest signed checkpoint");
      const index = BigInt(el.dataset.index);
      const root = await rootFromInclusion(await leafHash(fromB64(el.dataset.leaf)), index, cp.size, proofOf(el.dataset.proof));
      if (root === null) throw new Error("entry " + index + ": the proof does not fit the tree");
      computed = root;
      li.dataset.computedRoot = toB64(root);
      if (!equal(root, cp.root)) throw new Error("entry " + index + " is not the entry that was signed: the record was changed");
    }
    return computed;
  }

  async function checkAnchor(el, cp) {
    const anchor = parseCheckpoint((await openNote(fromB64(el.dataset.note), el.dataset.vkey)).text);
    const leaf = fromB64(el.dataset.leaf);
    const root = await rootFromInclusion(await leafHash(leaf), BigInt(el.dataset.index), anchor.size, proofOf(el.dataset.proof));
    if (root === null || !equal(root, anchor.root)) throw new Error("the anchor does not include this log's checkpoint");
    const anchored = parseCheckpoint(new TextDecoder("utf-8", { fatal: true }).decode(leaf));
    if (anchored.origin !== cp.origin) throw new Error("the anchor is for another log");
    const linked = anchored.size === cp.size
      ? equal(anchored.root, cp.root) && !el.dataset.consistency
      : await verifyConsistency(anchored.size, cp.size, anchored.root, cp.root, proofOf(el.dataset.consistency));
    if (!linked) throw new Error("the anchored checkpoint is not a prefix of this one: the log was rewritten");
    return anchored.size;
  }

  const seen = new WeakSet();

  async function run(root) {
    const scope = root && root.querySelector ? root : document;
    const box = scope.querySelector("#checkpoint-check") || (scope.id === "checkpoint-check" ? scope : null);
    const lines = Array.from(scope.querySelectorAll(".entry[data-state='checking']"));
    const anchor = scope.querySelector("#anchor-check");
    if (!box && lines.length === 0) return;
    if (box && seen.has(box)) return;
    if (box) seen.add(box);
    if (!(window.crypto && crypto.subtle)) {
      const why = "This browser cannot check here (WebCrypto needs HTTPS).";
      if (box) mark(box, "failed", "could not be checked", why);
      for (const li of lines) mark(li, "failed", "Not verified", why);
      if (anchor) mark(anchor, "failed", "could not be checked", why);
      return;
    }
    let cp;
    try {
      if (!box) throw new Error("no signed checkpoint on this page");
      cp = await signedCheckpoint(box.dataset.note, box.dataset.vkey, box.dataset.origin);
      box.dataset.computedRoot = toB64(cp.root);
      mark(box, "verified", "signature verified by your browser", "Signed by " + box.dataset.vkey.split("+")[0]);
    } catch (e) {
      if (box) mark(box, "failed", "signature NOT valid", String(e.message || e));
      for (const li of lines) mark(li, "failed", "Not verified", "The signed checkpoint did not verify: " + (e.message || e));
      if (anchor) mark(anchor, "failed", "not checked", "The signed checkpoint did not verify.");
      return;
    }
    await Promise.all(lines.map(async (li) => {
      try {
        await checkLine(li, cp);
        mark(li, "verified", "Verified", "Included in the signed record of " + cp.size + " entries.");
      } catch (e) {
        mark(li, "failed", "Not verified", String(e.message || e));
      }
    }));
    if (anchor) {
      try {
        const size = await checkAnchor(anchor, cp);
        mark(anchor, "verified", "matches this record (" + size + " entries anchored)", "Anchor signed by " + anchor.dataset.vkey.split("+")[0]);
      } catch (e) {
        mark(anchor, "failed", "does NOT match", String(e.message || e));
      }
    }
  }

  document.documentElement.classList.add("js");
  document.addEventListener("DOMContentLoaded", () => run(document));
  document.addEventListener("htmx:load", (event) => run(event.detail && event.detail.elt));
  // Exposed for tests and for the curious: window.corralVerify.rootFromInclusion(...)
  window.corralVerify = { leafHash, nodeHash, rootFromInclusion, verifyConsistency, openNote, parseCheckpoint, run };
})();
