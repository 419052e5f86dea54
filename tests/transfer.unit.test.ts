// The file layer's pure parts: safe names for received files (names.ts),
// never overwriting (claimFinalName on a real temp dir), and the STREAM-style
// chunk seal/open (chunks.ts) against every kind of tampering.
import { afterEach, describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { randomBytes } from "../lib/crypto/primitives.ts";
import { CHUNK_BYTES, doneMac, FILE_ID_BYTES, fileKeys, openChunk, sealChunk } from "../lib/transfer/chunks.ts";
import { claimFinalName, numbered, safeName, tempName } from "../lib/transfer/names.ts";
import { createTransfers, type TransferEvent } from "../lib/transfer/transfers.ts";
import { decodePayload, type Frame } from "../lib/wire/frame.ts";
import { pack } from "../lib/wire/msgpack.ts";
import { nameProblems, waitFor } from "./helpers.ts";


const HOSTILE: [string, string][] = [
  ["../x", "x"],
  ["/etc/passwd", "passwd"],
  ["..\\..\\win.ini", "win.ini"],
  ["C:\\Windows\\System32\\cmd.exe", "cmd.exe"],
  ["a/b/../../../../tmp/evil", "evil"],
  ["..", "file"],
  [".", "file"],
  ["", "file"],
  ["/", "file"],
  ["...", "file"],
  ["CON", "_CON"],
  ["con.txt", "_con.txt"],
  ["nul", "_nul"],
  ["Com1.tar.gz", "_Com1.tar.gz"],
  ["LPT9", "_LPT9"],
  ["conout$", "_conout$"],
  ["COM\u00b9.txt", "_COM\u00b9.txt"], // Windows reserves COM¹–COM³ and LPT¹–LPT³ too (found in audit)
  ["lpt\u00b3", "_lpt\u00b3"],
  ["com\u00b2 .log", "_com\u00b2 .log"],
  [".bashrc", "bashrc"],
  ["..bashrc", "bashrc"],
  [" .ssh", "ssh"],
  ["evil\nname.txt", "evilname.txt"],
  ["a\r\nb", "ab"],
  ["\x1b[31mred.txt", "[31mred.txt"],
  ["\x1b]0;pwned\x07", "]0;pwned"],
  ["\x9b2Jc1.txt", "2Jc1.txt"], // C1 CSI
  ["nul\u0000byte", "nulbyte"],
  ["\u202egnp.exe", "gnp.exe"], // RIGHT-TO-LEFT OVERRIDE
  ["in\u2066visible\u2069\u200b\ufeff.txt", "invisible.txt"],
  ["a<b>c:d\"e|f?g*h", "a_b_c_d_e_f_g_h"],
  ["trailing. . .", "trailing"],
  ["CON .txt", "_CON .txt"], // Windows ignores the space: still the console device
  ["line\u2028sep\u2029.txt", "linesep.txt"], // Unicode line and paragraph separators
  ["\u061cal\u2060m.txt", "alm.txt"], // Arabic letter mark, word joiner
  ["ünïcödé 文件.pdf", "ünïcödé 文件.pdf"],
  // Invisible characters a name could hide behind (found in audit), and NFC.
  ["re\u00adport\u034f.pdf\ufe0f", "report.pdf"],
  ["report\u{E0020}\u180e.pdf\u3164", "report.pdf"],
  ["re\u0301sume\u0301.pdf", "r\u00e9sum\u00e9.pdf"],
];

describe("safeName", () => {
  for (const [offered, expected] of HOSTILE) {
    test(`${JSON.stringify(offered)} → ${JSON.stringify(expected)}`, () => {
      const name = safeName(offered);
      expect(name).toBe(expected);
      expect(nameProblems(name)).toEqual([]);
    });
  }

  test("a 1000-character name is cut to at most 200 bytes of UTF-8, keeping a short extension", () => {
    for (const offered of ["x".repeat(1000), `${"y".repeat(1000)}.tar`, `${"é".repeat(500)}.txt`, `${"😀".repeat(300)}.md`, "文".repeat(1000)]) {
      const name = safeName(offered);
      expect(nameProblems(name)).toEqual([]);
      expect(Buffer.byteLength(name)).toBeGreaterThan(180); // cut, not emptied
      expect(name.includes("\ufffd")).toBe(false); // no split code points
      const ext = /\.[a-z]+$/.exec(offered)?.[0];
      if (ext) expect(name.endsWith(ext)).toBe(true);
    }
  });

  // Regression (found in audit): the device prefix was added after the cut, making 201 bytes.
  test("a long device name is prefixed, then cut: at most 200 bytes, still prefixed", () => {
    for (const offered of [`con.${"a".repeat(300)}`, `CON.${"a".repeat(300)}.txt`, `nul${" ".repeat(300)}`, `lpt\u00b9.${"é".repeat(300)}`]) {
      const name = safeName(offered);
      expect(Buffer.byteLength(name)).toBeLessThanOrEqual(200);
      expect(name).toStartWith("_");
      expect(nameProblems(name)).toEqual([]);
    }
  });

  // Regression: the cut removed one code point per pass, re-measuring the whole name each
  // time; a 100,000-character offered name froze the receiver for minutes (found in review).
  test("a 250,000-character name (about the most one record carries) is cut like a short one", () => {
    expect(safeName(`${"x".repeat(250_000)}.bin`)).toBe(safeName(`${"x".repeat(1000)}.bin`));
    expect(safeName("é".repeat(250_000))).toBe("é".repeat(100));
  });

  test("every name from a mixed hostile corpus obeys all rules", () => {
    const parts = ["..", "/", "\\", "\x1b", "\n", "\u202e", " ", ".", "CON", "a", "é", "\u0000", ":", "lpt1", "😀", "\u2028", "x".repeat(90), ".txt"];
    let seed = 12345;
    const rnd = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff), seed / 0x7fffffff);
    for (let i = 0; i < 2000; i++) {
      const offered = Array.from({ length: 1 + Math.floor(rnd() * 12) }, () => parts[Math.floor(rnd() * parts.length)]).join("");
      const name = safeName(offered);
      const problems = nameProblems(name);
      if (problems.length) throw new Error(`${JSON.stringify(offered)} → ${JSON.stringify(name)}: ${problems.join(", ")}`);
    }
  });

  // Regression: the 200-byte cut used to leave a trailing space or dot (fixed in c0e5bea).
  test("a long name cut to 200 bytes never ends with a space or a dot", () => {
    expect(nameProblems(safeName(`${"a".repeat(199)} ${"b".repeat(100)}`))).toEqual([]);
    expect(nameProblems(safeName("x ".repeat(150)))).toEqual([]);
    expect(nameProblems(safeName(`${"a".repeat(198)}. ${"b".repeat(100)}`))).toEqual([]);
  });
});

describe("numbered", () => {
  test("report.pdf → report (n).pdf, two-part extensions kept, no extension appended", () => {
    expect(numbered("report.pdf", 0)).toBe("report.pdf");
    expect(numbered("report.pdf", 1)).toBe("report (1).pdf");
    expect(numbered("archive.tar.gz", 2)).toBe("archive (2).tar.gz");
    expect(numbered("README", 3)).toBe("README (3)");
    expect(numbered("my file.txt", 1)).toBe("my file (1).txt");
    expect(nameProblems(numbered(safeName("x".repeat(1000)), 9999))).toEqual(["207 bytes"]); // still far below NAME_MAX (255)
  });
});

describe("claimFinalName (real directory)", () => {
  const dirs: string[] = [];
  afterEach(() => {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });
  const tempDir = () => {
    const d = mkdtempSync(join(tmpdir(), "smts-names-"));
    dirs.push(d);
    return d;
  };
  const part = (dir: string, content: string) => {
    const p = join(dir, `.${Math.random().toString(16).slice(2)}.smts-part`);
    writeFileSync(p, content);
    return p;
  };

  test("never overwrites: report.pdf, then report (1).pdf, report (2).pdf; existing files untouched", () => {
    const dir = tempDir();
    writeFileSync(join(dir, "report.pdf"), "ORIGINAL");
    const before = statSync(join(dir, "report.pdf"));
    const p1 = claimFinalName(part(dir, "one"), dir, "report.pdf");
    const p2 = claimFinalName(part(dir, "two"), dir, "report.pdf");
    expect(p1).toBe(join(dir, "report (1).pdf"));
    expect(p2).toBe(join(dir, "report (2).pdf"));
    expect(readFileSync(join(dir, "report.pdf"), "utf8")).toBe("ORIGINAL");
    expect(statSync(join(dir, "report.pdf")).mtimeMs).toBe(before.mtimeMs);
    expect(readFileSync(p1, "utf8")).toBe("one");
    expect(readFileSync(p2, "utf8")).toBe("two");
    expect(readdirSync(dir).sort()).toEqual(["report (1).pdf", "report (2).pdf", "report.pdf"]);
  });

  // Regression test for a fixed bug (lib/transfer/names.ts, claimFinalName): the empty placeholder is created
  // first (O_EXCL) and then the temporary file is renamed onto it; if the rename
  // fails (here: the temporary file is gone), the placeholder stays behind as an
  // empty file under the final name. Fixed: on a rename error the placeholder is removed and the error rethrown.
  // (Hard links are tried first now; the same must hold on both ways.)
  test("regression: when the temporary file is gone, no (empty) file is left under the final name", () => {
    const dir = tempDir();
    expect(() => claimFinalName(join(dir, ".gone.smts-part"), dir, "report.pdf")).toThrow(/ENOENT/);
    expect(readdirSync(dir)).toEqual([]);
  });

  test("without hard links (FAT, say): the placeholder way, with the same guarantees", () => {
    const dir = tempDir();
    const noLinks = () => {
      throw Object.assign(new Error("EPERM: operation not permitted, link"), { code: "EPERM" });
    };
    writeFileSync(join(dir, "report.pdf"), "ORIGINAL");
    const p1 = claimFinalName(part(dir, "one"), dir, "report.pdf", noLinks);
    expect(p1).toBe(join(dir, "report (1).pdf"));
    expect(readFileSync(p1, "utf8")).toBe("one");
    expect(readFileSync(join(dir, "report.pdf"), "utf8")).toBe("ORIGINAL");
    expect(() => claimFinalName(join(dir, ".gone.smts-part"), dir, "x.pdf", noLinks)).toThrow(/ENOENT/);
    expect(readdirSync(dir).sort()).toEqual(["report (1).pdf", "report.pdf"]);
  });

  test("a directory or a dangling symlink under the name is skipped, not replaced or followed", () => {
    const dir = tempDir();
    const outside = tempDir();
    mkdirSync(join(dir, "a.txt"));
    symlinkSync(join(outside, "target.txt"), join(dir, "a (1).txt"));
    const p = claimFinalName(part(dir, "data"), dir, "a.txt");
    expect(p).toBe(join(dir, "a (2).txt"));
    expect(dirname(p)).toBe(dir);
    expect(existsSync(join(outside, "target.txt"))).toBe(false);
    expect(readFileSync(p, "utf8")).toBe("data");
  });
});

describe("chunks (STREAM)", () => {
  const key = randomBytes(32);
  const id = randomBytes(FILE_ID_BYTES);
  const keys = fileKeys(key, id);

  test("seal/open round trip for 0, 1, 16, CHUNK_BYTES bytes", () => {
    for (const size of [0, 1, 16, CHUNK_BYTES]) {
      const plain = randomBytes(size);
      const c = sealChunk(keys, id, 7, size === 0, plain);
      expect(c.ct.length).toBe(size - (size % 16) + 16);
      const opened = openChunk(keys, id, 7, c);
      expect(opened).not.toBeNull();
      expect(Buffer.from(opened!.plaintext).equals(Buffer.from(plain))).toBe(true);
      expect(opened!.last).toBe(size === 0);
    }
  });

  test("any change is rejected: index, final flag, file ID, key, IV, ciphertext, MAC, shapes", () => {
    const plain = randomBytes(1000);
    const c = sealChunk(keys, id, 3, false, plain);
    const flip = (b: Uint8Array, i = 0) => {
      const o = new Uint8Array(b);
      o[i]! ^= 1;
      return o;
    };
    expect(openChunk(keys, id, 3, c)).not.toBeNull();
    expect(openChunk(keys, id, 2, c)).toBeNull(); // replayed / duplicated
    expect(openChunk(keys, id, 4, c)).toBeNull(); // reordered / missing
    expect(openChunk(keys, id, 3, { ...c, n: 4 })).toBeNull();
    expect(openChunk(keys, id, 3, { ...c, last: true })).toBeNull(); // truncation: middle chunk marked final
    expect(openChunk(keys, flip(id), 3, c)).toBeNull(); // spliced from another file
    expect(openChunk(fileKeys(key, flip(id)), flip(id), 3, c)).toBeNull();
    expect(openChunk(fileKeys(randomBytes(32), id), id, 3, c)).toBeNull();
    expect(openChunk(keys, id, 3, { ...c, iv: flip(c.iv) })).toBeNull();
    expect(openChunk(keys, id, 3, { ...c, ct: flip(c.ct, 500) })).toBeNull();
    expect(openChunk(keys, id, 3, { ...c, ct: c.ct.subarray(0, 992) })).toBeNull();
    expect(openChunk(keys, id, 3, { ...c, mac: flip(c.mac, 31) })).toBeNull();
    expect(openChunk(keys, id, 3, { ...c, mac: c.mac.subarray(0, 16) })).toBeNull();
    expect(openChunk(keys, id, 3, { ...c, last: 1 })).toBeNull();
    expect(openChunk(keys, id, 3, { ...c, iv: c.iv.subarray(1) })).toBeNull();
    expect(openChunk(keys, id, 3, { ...c, ct: new Uint8Array(0) })).toBeNull();
    expect(openChunk(keys, id, 3, { ...c, ct: "x" })).toBeNull();
    expect(openChunk(keys, id, 3, { ...c, n: "3" })).toBeNull();
  });

  test("a chunk bigger than CHUNK_BYTES is refused even with a valid MAC", () => {
    const big = sealChunk(keys, id, 0, true, randomBytes(CHUNK_BYTES + 16));
    expect(openChunk(keys, id, 0, big)).toBeNull();
  });
});

// Two file layers wired directly to each other (msgpack round trip, in order,
// like the records and chunks of one relay connection), so the idle timeout
// can be set short. `dropChunk` / `dropContent` play a network that loses things.
describe("createTransfers wired back to back (real temp dirs)", () => {
  const dirs: string[] = [];
  afterEach(() => {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });
  const tempDir = () => {
    const d = mkdtempSync(join(tmpdir(), "smts-layer-"));
    dirs.push(d);
    return d;
  };

  test("on start, temporary files a killed client left (ours, older than 2 idle timeouts) are removed; fresh ones, other names and directories stay", () => {
    const dir = tempDir();
    const id = "0123456789abcdef0123456789abcdef";
    const old = Date.now() / 1000 - 300;
    const names = {
      stale: tempName(id),
      staleSalted: tempName(id, "a1b2c3d4"),
      fresh: tempName(id.replace("0", "f")),
      foreign: ".notes.smts-part",
      kept: "report.pdf",
    };
    for (const n of Object.values(names)) writeFileSync(join(dir, n), "x");
    for (const n of [names.stale, names.staleSalted, names.foreign, names.kept]) utimesSync(join(dir, n), old, old);
    mkdirSync(join(dir, tempName(id.replace("1", "e"))));
    utimesSync(join(dir, tempName(id.replace("1", "e"))), old, old);
    const deps = { sendContent() {}, sendChunk() {}, chunkBacklog: () => 0, dropChunks() {}, congested: () => false, isBusy: () => false, chunksDrained: async () => {}, emit() {}, maxFrame: () => 256 * 1024 };
    const before = readdirSync(dir).sort();
    // 300 s old is younger than two idle timeouts of 200 s: kept (its transfer may still be running).
    createTransfers(deps, { downloadDir: dir, maxFileSize: 1024, idleTimeoutMs: 200_000 });
    expect(readdirSync(dir).sort()).toEqual(before);
    createTransfers(deps, { downloadDir: dir, maxFileSize: 1024, idleTimeoutMs: 60_000 });
    expect(readdirSync(dir).sort()).toEqual([names.fresh, names.foreign, names.kept, tempName(id.replace("1", "e"))].sort());
  });

  test("an offer declined (too large, duplicate, receiver leaving) or malformed leaves its file key erased, as one accepted does (found in audit)", () => {
    const deps = { sendContent() {}, sendChunk() {}, chunkBacklog: () => 0, dropChunks() {}, congested: () => false, isBusy: () => false, chunksDrained: async () => {}, emit() {}, maxFrame: () => 256 * 1024 };
    const t = createTransfers(deps, { downloadDir: tempDir(), maxFileSize: 1024 });
    const offer = (fields: Record<string, unknown>) => ({ t: "offer", id: randomBytes(FILE_ID_BYTES), name: "f.txt", size: 10, key: randomBytes(32), ...fields });
    const erased = (m: Frame) => (m.key as Uint8Array).every((b) => b === 0);
    const accepted = offer({});
    t.onContent("p", accepted);
    expect(erased(accepted)).toBe(true);
    for (const m of [offer({ size: 4096 }), offer({ id: accepted.id }), offer({ bc: true }), offer({ name: 7 })]) {
      t.onContent("p", m);
      expect(erased(m)).toBe(true);
    }
    t.stopAccepting();
    const late = offer({});
    t.onContent("p", late);
    expect(erased(late)).toBe(true);
    t.abandon(null, "test over");
  });

  test("a re-key fails the files to that peer still waiting for their turn without offering the next one meanwhile (found in review: each failure freed a slot, and the next file was offered under the new session)", async () => {
    const sent: [string, string][] = [];
    const deps = { sendContent: (peer: string, item: Frame) => void sent.push([peer, item.t as string]), sendChunk() {}, chunkBacklog: () => 0, dropChunks() {}, congested: () => false, isBusy: () => false, chunksDrained: async () => {}, emit() {}, maxFrame: () => 256 * 1024 };
    const t = createTransfers(deps, { downloadDir: tempDir(), maxFileSize: 1024 });
    const file = join(tempDir(), "f.txt");
    writeFileSync(file, "x");
    const outcomes = [
      ...[1, 2, 3, 4].map(() => t.send("Q", file)), // Q's 4 slots
      t.send("P", file), // offered to P
      t.send(["P", "Q"], file, true), // queued: Q is full
      t.send("P", file), // queued behind it: a file never overtakes an earlier one to the same peer
    ].map((p) => p.then(() => "delivered", (e: Error) => e.message));
    expect(sent.filter(([peer, what]) => peer === "P" && what === "offer")).toHaveLength(1);
    t.rekeyed("P", []);
    expect(sent.filter(([peer, what]) => peer === "P" && what === "offer")).toHaveLength(1); // before the fix: 2
    t.abandon(null, "test over");
    const reasons = await Promise.all(outcomes);
    expect(reasons[6]).toContain("the session was re-keyed before the file went out");
    expect(reasons[5]).toContain("P: the session was re-keyed before the file went out");
    expect(reasons[4]).toContain("test over"); // offered under the old session: it went on
  });

  function wired(net: { dropChunk?: (c: Frame) => boolean; dropContent?: (c: Frame) => boolean; onDropChunks?: () => void } = {}, maxFrame = 256 * 1024) {
    const ev = { a: [] as TransferEvent[], b: [] as TransferEvent[] };
    const dir = { a: tempDir(), b: tempDir() };
    const make = (me: "a" | "b", other: () => ReturnType<typeof createTransfers>) =>
      createTransfers(
        {
          sendContent: (_peer, item) => {
            const c = decodePayload(pack(item));
            if (!net.dropContent?.(c)) queueMicrotask(() => other().onContent(me, c));
          },
          sendChunk: (_peer, frame) => {
            const c = decodePayload(pack(frame));
            if (!net.dropChunk?.(c)) queueMicrotask(() => other().onChunk(me, c));
          },
          chunkBacklog: () => 0,
          dropChunks: () => net.onDropChunks?.(),
          congested: () => false,
          isBusy: () => false,
          chunksDrained: async () => {},
          maxFrame: () => maxFrame,
          emit: (e) => void ev[me].push(e),
        },
        { downloadDir: dir[me], maxFileSize: 10 * 1024 * 1024, idleTimeoutMs: 300 },
      );
    const a: ReturnType<typeof createTransfers> = make("a", () => b);
    const b: ReturnType<typeof createTransfers> = make("b", () => a);
    return { a, b, ev, dir };
  }
  const source = (size: number) => {
    const path = join(tempDir(), "src.bin");
    writeFileSync(path, randomBytes(size));
    return path;
  };

  test("control: a file goes through and nothing is left running", async () => {
    const { a, b, ev, dir } = wired();
    await a.send("b", source(3 * CHUNK_BYTES + 5));
    expect(readdirSync(dir.b)).toEqual(["src.bin"]);
    expect(ev.a.filter((e) => e.event === "delivered")).toHaveLength(1);
    expect(a.active() + b.active()).toBe(0);
  });

  test("a transfer that ends while sending forgets its queued chunks; one that ends after its last chunk left does not (the receiver may still complete it)", async () => {
    const outcome = (p: Promise<void>) => p.then(() => "delivered", (e: Error & { code: string }) => e.code);
    let drops = 0;
    const lost = wired({ dropChunk: (c) => c.last === true, onDropChunks: () => void drops++ });
    expect(await outcome(lost.a.send("b", source(3 * CHUNK_BYTES + 5)))).toBe("failed"); // after the idle timeout, waiting for `done`
    expect(drops).toBe(0);
    const cut: ReturnType<typeof wired> = wired({ dropChunk: (c) => (c.n === 1 && cut.a.cancel(""), false), onDropChunks: () => void drops++ });
    expect(await outcome(cut.a.send("b", source(8 * CHUNK_BYTES)))).toBe("cancelled");
    expect(drops).toBe(1);
  });

  test("the final chunk lost in transit: both sides end the transfer after the idle timeout, the temporary file is removed", async () => {
    const { a, b, ev, dir } = wired({ dropChunk: (c) => c.last === true });
    const err = await a.send("b", source(3 * CHUNK_BYTES + 5)).then(
      () => null,
      (e: Error & { code: string }) => e,
    );
    expect(err?.code).toBe("failed");
    expect(err?.message).toMatch(/no (data|progress) for/);
    const failedIn = await waitFor(() => ev.b.find((e) => e.event === "transfer" && e.state === "failed"), "receiver failure");
    expect(failedIn).toMatchObject({ direction: "in", reason: expect.stringMatching(/no data for/) });
    expect(readdirSync(dir.b)).toEqual([]);
    expect(a.active() + b.active()).toBe(0);
  });

  test("an offer that is never answered fails at the sender after the idle timeout", async () => {
    const { a, ev } = wired({ dropContent: (c) => c.t === "offer" });
    const err = await a.send("b", source(10)).then(
      () => null,
      (e: Error & { code: string }) => e,
    );
    expect(err?.code).toBe("failed");
    expect(err?.message).toMatch(/no progress for/);
    expect(ev.a.map((e) => (e.event === "transfer" ? e.state : e.event))).toEqual(["offered", "failed"]);
  });

  for (const broadcast of [false, true]) {
    test(`${broadcast ? "/bsend" : "/send"}: what is sent is the file as opened by the command, even if its name points to another file before the receiver accepts`, async () => {
      const { a, dir } = wired();
      const path = source(2 * CHUNK_BYTES + 7);
      const original = readFileSync(path);
      const sent = a.send(broadcast ? ["b"] : "b", path, broadcast);
      // The offer is still in flight (answered in a microtask): replace the file under its name.
      rmSync(path);
      writeFileSync(path, randomBytes(original.length));
      await sent;
      expect(readFileSync(join(dir.b, "src.bin")).equals(original)).toBe(true);
    });
  }

  // Regression (found in audit): a script sending 12 files to one peer had 4 of them declined by the receiver's per-peer limit.
  test("at most 4 files go to one peer at once: the others wait their turn (queued), then all are delivered; a queued one can be cancelled, unseen by the peer", async () => {
    const { a, ev, dir } = wired();
    const sources = Array.from({ length: 7 }, (_, i) => {
      const path = join(tempDir(), `f${i}.bin`);
      writeFileSync(path, randomBytes(CHUNK_BYTES + i));
      return path;
    });
    const sends = sources.map((path) => a.send("b", path).then(() => "delivered", (e: Error & { code: string }) => e.code));
    const states = () => ev.a.filter((e) => e.event === "transfer").map((e) => `${e.name} ${e.state}`);
    expect(states()).toEqual(["f0.bin offered", "f1.bin offered", "f2.bin offered", "f3.bin offered", "f4.bin queued", "f5.bin queued", "f6.bin queued"]);
    const f6 = ev.a.find((e) => e.event === "transfer" && e.name === "f6.bin")!;
    expect(a.cancel(f6.id)).toBe(1);
    expect(await Promise.all(sends)).toEqual([...Array(6).fill("delivered"), "cancelled"]);
    expect(readdirSync(dir.b).sort()).toEqual(["f0.bin", "f1.bin", "f2.bin", "f3.bin", "f4.bin", "f5.bin"]);
    // The receiver never ran more than 4 at once, and never heard of f6.
    let running = 0;
    let most = 0;
    for (const e of ev.b) {
      if (e.event === "transfer" && e.state === "receiving") most = Math.max(most, ++running);
      if (e.event === "file") running--;
    }
    expect(most).toBe(4);
    expect(ev.b.some((e) => "name" in e && e.name === "f6.bin")).toBe(false);
    expect(a.active()).toBe(0);
  });

  /** A sender alone: what it sends is recorded, answers are handed to it by the test. */
  function lone() {
    const sent: [string, Frame][] = [];
    const events: string[] = [];
    const a = createTransfers(
      { sendContent: (peer, item) => void sent.push([peer, item]), sendChunk() {}, chunkBacklog: () => 0, dropChunks() {}, congested: () => false, isBusy: () => false, chunksDrained: async () => {}, maxFrame: () => 256 * 1024, emit: (e) => void events.push(e.event === "transfer" ? `${e.name} ${e.peer} ${e.state}` : e.event) },
      { downloadDir: tempDir(), maxFileSize: 1024, idleTimeoutMs: 60_000 },
    );
    const dir = tempDir();
    const send = (name: string, to: string | string[]) => {
      writeFileSync(join(dir, name), randomBytes(10));
      return a.send(to, join(dir, name), Array.isArray(to)).then(() => "delivered", (e: Error & { code: string }) => e.code);
    };
    const offers = () => sent.filter(([, item]) => item.t === "offer").map(([peer, item]) => `${item.name} ${peer}`);
    const idOf = (name: string) => sent.find(([, item]) => item.t === "offer" && item.name === name)![1].id as Uint8Array;
    return { a, sent, events, send, offers, idOf };
  }

  // Regressions (found in review): a slot freed by a decline did not offer the next queued
  // file (a script waited for it forever); ending all transfers at once offered queued files
  // only to cancel them; a queued /bsend could be overtaken for good by later /sends.
  test("the queue: a declined file's slot goes to the next one; /cancel and a peer leaving end queued files unoffered; files to a peer keep their order", async () => {
    const { a, sent, events, send, offers, idOf } = lone();
    const first = ["f0", "f1", "f2", "f3", "f4"].map((n) => send(n, "b"));
    expect(offers()).toEqual(["f0 b", "f1 b", "f2 b", "f3 b"]);
    const short = (n: string) => Buffer.from(idOf(n)).toString("hex").slice(0, 8);
    expect(a.cancellable()).toEqual([...["f0", "f1", "f2", "f3"].map(short), expect.stringMatching(/^[0-9a-f]{8}$/)]); // the queued one too
    a.onContent("b", { t: "decline", id: idOf("f0"), reason: "too large" });
    expect(offers()).toEqual(["f0 b", "f1 b", "f2 b", "f3 b", "f4 b"]);
    sent.length = 0;
    a.cancel("");
    expect(await Promise.all(first)).toEqual(["declined", "cancelled", "cancelled", "cancelled", "cancelled"]);
    expect(offers()).toEqual([]);

    const more = ["g0", "g1", "g2", "g3", "g4", "g5"].map((n) => send(n, "b"));
    sent.length = 0;
    events.length = 0;
    a.abandon("b", "left");
    expect(await Promise.all(more)).toEqual(Array(6).fill("failed"));
    expect(offers()).toEqual([]);
    expect(events.filter((e) => !e.endsWith(" failed"))).toEqual([]);

    // b is full; a /bsend to b and c waits; a later /send to c must wait behind it.
    const full = ["h0", "h1", "h2", "h3"].map((n) => send(n, "b"));
    const both = send("all", ["b", "c"]);
    const toC = send("late", "c");
    expect(offers()).toEqual(["h0 b", "h1 b", "h2 b", "h3 b"]);
    a.onContent("b", { t: "decline", id: idOf("h0"), reason: "no" });
    expect(offers()).toEqual(["h0 b", "h1 b", "h2 b", "h3 b", "all b", "all c", "late c"]);
    a.cancel("");
    expect(await Promise.all([...full, both, toC])).toEqual(["declined", "cancelled", "cancelled", "cancelled", "partial", "cancelled"]);
  });

  test("incoming transfers: at most 8 from one peer and 32 in all, so one peer cannot take every slot", () => {
    const answers: [string, Frame][] = [];
    const events: TransferEvent[] = [];
    const dir = tempDir();
    const t = createTransfers(
      { sendContent: (peer, item) => void answers.push([peer, item]), sendChunk() {}, chunkBacklog: () => 0, dropChunks() {}, congested: () => false, isBusy: () => false, chunksDrained: async () => {}, emit: (e) => void events.push(e), maxFrame: () => 256 * 1024 },
      { downloadDir: dir, maxFileSize: 1024, idleTimeoutMs: 60_000 },
    );
    const offer = (peer: string) => t.onContent(peer, { t: "offer", id: randomBytes(FILE_ID_BYTES), name: "x.txt", size: 10, key: randomBytes(32) });
    const answered = () => answers.map(([peer, item]) => `${peer} ${item.t}${item.reason ? `: ${item.reason}` : ""}`);
    for (let i = 0; i < 9; i++) offer("p1");
    expect(answered()).toEqual([...Array(8).fill("p1 accept"), "p1 decline: the receiver already has 8 transfers running from you"]);
    answers.length = 0;
    for (const peer of ["p2", "p3", "p4"]) for (let i = 0; i < 8; i++) offer(peer);
    expect(answered()).toEqual(["p2", "p3", "p4"].flatMap((peer) => Array(8).fill(`${peer} accept`)));
    answers.length = 0;
    offer("p5");
    expect(answered()).toEqual(["p5 decline: the receiver already has 32 transfers running"]);
    expect(readdirSync(dir)).toHaveLength(32); // a temporary file per accepted offer, none for the declined
    t.cancel("");
  });

  // Found in audit: a /bsend member that stopped reading (or read a sliver every 20 s)
  // held the file back from every other member until the sender's idle timeout failed them all.
  test("a broadcast recipient that keeps the others waiting for half the idle timeout is dropped (and told); while all of them are busy, nothing counts", async () => {
    const sent: [string, Frame][] = [];
    const chunksTo: string[] = [];
    const busy = new Set<string>();
    const a = createTransfers(
      {
        sendContent: (peer, item) => void sent.push([peer, item]),
        sendChunk: (to, f) => void (f.t === "chunk" && chunksTo.push([to].flat().join(","))),
        chunkBacklog: () => 0,
        dropChunks() {},
        congested: () => false,
        isBusy: (peer) => busy.has(peer),
        chunksDrained: async () => {},
        emit() {},
        maxFrame: () => 256 * 1024,
      },
      { downloadDir: tempDir(), maxFileSize: 1024 * 1024, idleTimeoutMs: 8000 }, // holds of 4 s
    );
    const file = join(tempDir(), "f.bin");
    const bytes = randomBytes(3 * CHUNK_BYTES);
    writeFileSync(file, bytes);
    const outcome = a.send(["b", "c"], file, true).then(() => "delivered", (e: Error & { code: string }) => `${e.code}: ${e.message}`);
    const id = sent.find(([, item]) => item.t === "offer")![1].id as Uint8Array;
    const cancels = () => sent.filter(([, item]) => item.t === "cancel");
    busy.add("b").add("c");
    a.onContent("b", { t: "accept", id });
    a.onContent("c", { t: "accept", id });
    await Bun.sleep(600); // both busy: nobody holds anyone back
    busy.delete("c");
    a.peerReady(); // c drained: b holds it back, 0.5 s
    await Bun.sleep(500);
    busy.add("c"); // both busy again, 2 s: not counted, though nothing wakes the stream (found in review)
    await Bun.sleep(2000);
    expect(cancels()).toEqual([]);
    busy.delete("c");
    a.peerReady();
    const since = performance.now();
    const cancel = await waitFor(() => cancels()[0], "b dropped", 10_000);
    expect(performance.now() - since).toBeGreaterThanOrEqual(4000 - 500 - 250 - 50); // what b had left, less one look's worth
    expect(cancel).toEqual(["b", { t: "cancel", id, reason: "too slow: kept the other recipients waiting for 4 s" }]);
    await waitFor(() => chunksTo.length === 3, "the chunks, to c alone", 5000);
    expect(chunksTo).toEqual(["c", "c", "c"]);
    const { key, dn } = sent.find(([peer, item]) => peer === "c" && item.t === "offer")![1];
    a.onContent("c", { t: "done", id, mac: doneMac(fileKeys(key as Uint8Array, id), id, createHash("sha256").update(bytes).digest(), dn as Uint8Array) });
    expect(await outcome).toBe("partial: sending f.bin: delivered to 1 of 2; b: too slow: kept the other recipients waiting for 4 s");
  }, 20_000);

  // Found in audit: four IDs, eight offers each, kept alive by a chunk a minute, kept
  // every file from the user's own contacts out.
  test("peers the user did not choose share 16 incoming slots; a chosen peer still gets in", () => {
    const answers: string[] = [];
    const dir = tempDir();
    const chosen = new Set(["friend"]);
    const t = createTransfers(
      { sendContent: (peer, item) => void answers.push(`${peer} ${item.t}${item.reason ? `: ${item.reason}` : ""}`), sendChunk() {}, chunkBacklog: () => 0, dropChunks() {}, congested: () => false, isBusy: () => false, isChosen: (peer) => chosen.has(peer), chunksDrained: async () => {}, emit() {}, maxFrame: () => 256 * 1024 },
      { downloadDir: dir, maxFileSize: 1024, idleTimeoutMs: 60_000 },
    );
    const offer = (peer: string) => t.onContent(peer, { t: "offer", id: randomBytes(FILE_ID_BYTES), name: "x.txt", size: 10, key: randomBytes(32) });
    for (const peer of ["s1", "s2", "s3"]) for (let i = 0; i < 8; i++) offer(peer);
    expect(answers).toEqual([
      ...["s1", "s2"].flatMap((peer) => Array(8).fill(`${peer} accept`)),
      ...Array(8).fill("s3 decline: the receiver already has 16 transfers running from peers it did not /connect to or /verify"),
    ]);
    answers.length = 0;
    for (let i = 0; i < 8; i++) offer("friend");
    chosen.add("s3"); // the user /connect'ed to it meanwhile
    offer("s3");
    expect(answers).toEqual([...Array(8).fill("friend accept"), "s3 accept"]);
    t.cancel("");
  });

  test("a relay whose frame limit cannot carry a full chunk: the sender refuses before offering (relay_limit)", async () => {
    const offers: Frame[] = [];
    const { a } = wired({ dropContent: (c) => (offers.push(c), false) }, CHUNK_BYTES + 1023);
    const err = await a.send("b", source(10)).then(
      () => null,
      (e: Error & { code: string }) => e,
    );
    expect(err?.code).toBe("relay_limit");
    expect(offers).toEqual([]);
  });
});
