// Tools for tests/leak.test.ts ("nothing stored, nothing leaked"):
//   - a pcap reader and TCP reassembler, so captured traffic is searched as the
//     byte streams the peers saw (a marker split across segments is still found);
//   - scanners for known secrets: exact byte strings, and any run of a file's
//     bytes (an index of the file's 32-byte windows);
//   - a reader for `strace -ff` logs that lists every attempt to write,
//     create, rename, link or remove a file;
//   - a sampler of /proc/PID/fd that lists regular files open for writing;
//   - a pcap writer for the scanners' own positive controls.
import { readdirSync, readFileSync, readlinkSync, statSync } from "node:fs";

// ---- pcap ------------------------------------------------------------------------

export interface TcpSegment {
  src: string;
  sport: number;
  dst: string;
  dport: number;
  seq: number;
  flags: number;
  payload: Uint8Array;
}

export interface Capture {
  linkType: number;
  /** Packet records in the file. */
  packets: number;
  /** Records shorter than the packet on the wire (snap length too small). */
  truncated: number;
  /** Bytes after the last complete record (a file still being written). */
  trailing: number;
  segments: TcpSegment[];
}

export const TCP_FIN = 0x01;
export const TCP_SYN = 0x02;
export const TCP_RST = 0x04;

const LINK_ETHERNET = 1;
const LINK_RAW = 101;
const LINK_LINUX_SLL = 113;
const LINK_LINUX_SLL2 = 276;

/** Reads a classic pcap file (either byte order, µs or ns stamps) and returns its TCP segments. */
export function parsePcap(file: Uint8Array): Capture {
  const view = new DataView(file.buffer, file.byteOffset, file.byteLength);
  if (file.length < 24) throw new Error(`pcap file of ${file.length} bytes has no header`);
  const magic = view.getUint32(0, true);
  let le: boolean;
  if (magic === 0xa1b2c3d4 || magic === 0xa1b23c4d) le = true;
  else if (magic === 0xd4c3b2a1 || magic === 0x4d3cb2a1) le = false;
  else throw new Error(`not a pcap file (magic ${magic.toString(16)}); pcapng is not supported`);
  const linkType = view.getUint32(20, le) & 0xffff;
  const cap: Capture = { linkType, packets: 0, truncated: 0, trailing: 0, segments: [] };
  let at = 24;
  while (at + 16 <= file.length) {
    const caplen = view.getUint32(at + 8, le);
    const origlen = view.getUint32(at + 12, le);
    if (at + 16 + caplen > file.length) break;
    cap.packets++;
    if (caplen < origlen) cap.truncated++;
    const seg = tcpOf(file.subarray(at + 16, at + 16 + caplen), linkType);
    if (seg) cap.segments.push(seg);
    at += 16 + caplen;
  }
  cap.trailing = file.length - at;
  return cap;
}

function tcpOf(frame: Uint8Array, linkType: number): TcpSegment | null {
  let etherType: number;
  let ip: Uint8Array;
  const u16 = (b: Uint8Array, i: number) => (b[i]! << 8) | b[i + 1]!;
  if (linkType === LINK_ETHERNET) {
    let at = 12;
    etherType = u16(frame, at);
    while (etherType === 0x8100 || etherType === 0x88a8) (at += 4), (etherType = u16(frame, at)); // VLAN tags
    ip = frame.subarray(at + 2);
  } else if (linkType === LINK_LINUX_SLL) (etherType = u16(frame, 14)), (ip = frame.subarray(16));
  else if (linkType === LINK_LINUX_SLL2) (etherType = u16(frame, 0)), (ip = frame.subarray(20));
  else if (linkType === LINK_RAW) (etherType = frame[0]! >> 4 === 6 ? 0x86dd : 0x0800), (ip = frame);
  else throw new Error(`unsupported pcap link type ${linkType}`);

  let src: string, dst: string, tcp: Uint8Array;
  if (etherType === 0x0800 && ip[0]! >> 4 === 4) {
    if (ip[9] !== 6) return null;
    const ihl = (ip[0]! & 15) * 4;
    const total = u16(ip, 2) || ip.length; // 0 in "BIG TCP" packets over 64 KiB
    src = ip.subarray(12, 16).join(".");
    dst = ip.subarray(16, 20).join(".");
    tcp = ip.subarray(ihl, total);
  } else if (etherType === 0x86dd && ip[0]! >> 4 === 6) {
    if (ip[6] !== 6) return null; // no extension headers on loopback TCP
    const hex = (b: Uint8Array) => Buffer.from(b).toString("hex").replace(/(.{4})(?!$)/g, "$1:");
    src = hex(ip.subarray(8, 24));
    dst = hex(ip.subarray(24, 40));
    tcp = ip.subarray(40, 40 + u16(ip, 4));
  } else return null;
  const dataOffset = (tcp[12]! >> 4) * 4;
  return {
    src,
    sport: u16(tcp, 0),
    dst,
    dport: u16(tcp, 2),
    seq: ((tcp[4]! << 24) | (tcp[5]! << 16) | (tcp[6]! << 8) | tcp[7]!) >>> 0,
    flags: tcp[13]!,
    payload: tcp.subarray(dataOffset),
  };
}

// ---- TCP reassembly ------------------------------------------------------------------

export interface TcpStream {
  /** "src:port > dst:port" */
  key: string;
  sport: number;
  dport: number;
  syn: boolean;
  fin: boolean;
  rst: boolean;
  /** The payload bytes in sequence order, retransmissions merged. */
  data: Buffer;
  /** Byte ranges never seen (lost from the capture). */
  holes: number;
  /** Overlapping segments that disagree about a byte (must never happen). */
  conflicts: number;
}

/** One stream per direction of each connection, ordered by sequence number from the SYN. */
export function reassemble(segments: TcpSegment[]): TcpStream[] {
  const groups = new Map<string, TcpSegment[]>();
  for (const s of segments) {
    const key = `${s.src}:${s.sport} > ${s.dst}:${s.dport}`;
    let g = groups.get(key);
    if (!g) groups.set(key, (g = []));
    g.push(s);
  }
  const streams: TcpStream[] = [];
  for (const [key, segs] of groups) {
    const syn = segs.find((s) => s.flags & TCP_SYN);
    // Sequence numbers count from the SYN's (which takes one number); without it, from the first segment.
    const base = syn ? (syn.seq + 1) >>> 0 : segs[0]!.seq;
    const parts: { off: number; payload: Uint8Array }[] = [];
    let end = 0;
    for (const s of segs) {
      if (s.payload.length === 0) continue;
      const off = (s.seq - base) >>> 0;
      if (off > 0x40000000) throw new Error(`${key}: segment at relative sequence ${off} (before the start, or over 1 GiB in)`);
      parts.push({ off, payload: s.payload });
      end = Math.max(end, off + s.payload.length);
    }
    parts.sort((a, b) => a.off - b.off);
    const data = Buffer.alloc(end);
    let covered = 0;
    let holes = 0;
    let conflicts = 0;
    for (const p of parts) {
      if (p.off > covered) holes++;
      const overlap = Math.min(covered, p.off + p.payload.length) - p.off;
      if (overlap > 0 && !data.subarray(p.off, p.off + overlap).equals(p.payload.subarray(0, overlap))) conflicts++;
      data.set(p.payload, p.off);
      covered = Math.max(covered, p.off + p.payload.length);
    }
    streams.push({
      key,
      sport: segs[0]!.sport,
      dport: segs[0]!.dport,
      syn: Boolean(syn),
      fin: segs.some((s) => s.flags & TCP_FIN),
      rst: segs.some((s) => s.flags & TCP_RST),
      data,
      holes,
      conflicts,
    });
  }
  return streams;
}

// ---- Secret scanners --------------------------------------------------------------------

export interface Secret {
  name: string;
  bytes: Uint8Array;
}

/**
 * Finds any run of a file's bytes in other data. Every 32-byte window that
 * starts at a multiple of 16 in the file is indexed (by its first 4 bytes, then
 * compared in full), so any copied run of 47 bytes or more contains an indexed
 * window wherever it started. A leaked 64 KiB chunk or message cannot hide.
 */
export class FileWindows {
  static readonly WIDTH = 32;
  static readonly STEP = 16;
  private readonly index = new Map<number, number[]>();

  constructor(
    readonly name: string,
    readonly bytes: Uint8Array,
  ) {
    if (bytes.length < FileWindows.WIDTH) throw new Error(`${name}: too short to index`);
    for (let off = 0; off + FileWindows.WIDTH <= bytes.length; off += FileWindows.STEP) {
      const key = u32(bytes, off);
      const list = this.index.get(key);
      if (list) list.push(off);
      else this.index.set(key, [off]);
    }
  }

  get windows(): number {
    let n = 0;
    for (const list of this.index.values()) n += list.length;
    return n;
  }

  /** The first place in `hay` holding an indexed window of the file, or null. */
  findIn(hay: Uint8Array): { at: number; fileOffset: number } | null {
    const W = FileWindows.WIDTH;
    for (let i = 0; i + W <= hay.length; i++) {
      const list = this.index.get(u32(hay, i));
      if (!list) continue;
      for (const off of list) {
        let j = 4;
        while (j < W && hay[i + j] === this.bytes[off + j]) j++;
        if (j === W) return { at: i, fileOffset: off };
      }
    }
    return null;
  }
}

function u32(b: Uint8Array, i: number): number {
  return (b[i]! | (b[i + 1]! << 8) | (b[i + 2]! << 16) | (b[i + 3]! << 24)) >>> 0;
}

/** Every secret or file run found in `hay`, as readable lines naming where. */
export function findLeaks(label: string, hay: Uint8Array, secrets: Secret[], files: FileWindows[]): string[] {
  const found: string[] = [];
  const buf = Buffer.from(hay.buffer, hay.byteOffset, hay.byteLength);
  for (const s of secrets) {
    const at = buf.indexOf(s.bytes);
    if (at >= 0) found.push(`${s.name} at byte ${at} of ${label}`);
  }
  for (const f of files) {
    const hit = f.findIn(hay);
    if (hit) found.push(`bytes ${hit.fileOffset}..${hit.fileOffset + FileWindows.WIDTH} of ${f.name} at byte ${hit.at} of ${label}`);
  }
  return found;
}

// ---- strace -ff logs ----------------------------------------------------------------------

/** Calls that create, remove, rename or change a file system entry, whatever their flags. */
const MUTATING = new Set([
  "creat", "mkdir", "mkdirat", "mknod", "mknodat", "rename", "renameat", "renameat2", "link", "linkat",
  "symlink", "symlinkat", "unlink", "unlinkat", "rmdir", "truncate", "chmod", "fchmodat", "fchmodat2",
  "chown", "lchown", "fchownat", "utime", "utimes", "utimensat", "futimesat", "setxattr", "lsetxattr",
  "removexattr", "lremovexattr", "mount", "umount2",
]);
const OPENS = new Set(["open", "openat", "openat2"]);
const WRITE_FLAGS = /\bO_(WRONLY|RDWR|CREAT|TRUNC|APPEND|TMPFILE)\b/;
const QUOTED = /"(?:[^"\\]|\\.)*"(?:\.\.\.)?/g;

export interface StraceReport {
  /** Log files, one per traced thread or process. */
  threads: number;
  /** Lines of the log file of the process that was started (its own pid). */
  main: string[];
  /** Every open of a path, as `path flags`, read-only ones included. */
  opens: string[];
  binds: string[];
  listens: number;
  /** Successful accept/accept4 calls. */
  accepts: number;
  /** Calls that wrote, created, renamed, linked or removed a file, and were not allowed. */
  violations: string[];
}

/**
 * Reads the logs of `strace -ff -o PREFIX` (files PREFIX.TID). Every attempt
 * counts, failed ones too: trying to create a file is already the wrong
 * behaviour for a relay. `allowWrite(path)` may excuse write-opens of a path.
 */
export function readStrace(dir: string, prefix: string, mainPid: number, allowWrite: (path: string) => boolean): StraceReport {
  const report: StraceReport = { threads: 0, main: [], opens: [], binds: [], listens: 0, accepts: 0, violations: [] };
  const names = readdirSync(dir).filter((n) => n.startsWith(`${prefix}.`));
  for (const name of names.sort((x, y) => Number(x.slice(prefix.length + 1)) - Number(y.slice(prefix.length + 1)))) {
    report.threads++;
    const lines = readFileSync(`${dir}/${name}`, "utf8").split("\n").filter(Boolean);
    if (name === `${prefix}.${mainPid}`) report.main = lines;
    for (const line of lines) {
      const m = /^([a-z0-9_]+)\((.*)$/.exec(line);
      if (!m) continue;
      const [, call, rest] = m as unknown as [string, string, string];
      const path = /"((?:[^"\\]|\\.)*)"/.exec(rest)?.[1] ?? "";
      const result = / = (-?\d+)/.exec(rest.replace(QUOTED, '""'))?.[1];
      if (OPENS.has(call)) {
        const writes = WRITE_FLAGS.test(rest.replace(QUOTED, '""'));
        report.opens.push(`${path} ${writes ? "WRITE" : "read"}`);
        if (writes && !allowWrite(path)) report.violations.push(line);
      } else if (MUTATING.has(call)) report.violations.push(line);
      else if (call === "bind" && result === "0") report.binds.push(rest);
      else if (call === "listen" && result === "0") report.listens++;
      else if ((call === "accept" || call === "accept4") && result !== undefined && Number(result) >= 0) report.accepts++;
    }
  }
  return report;
}

// ---- /proc/PID/fd ----------------------------------------------------------------------------

export interface FdSample {
  sockets: number;
  /** Regular files open with write access (O_WRONLY or O_RDWR), as "fd -> path (flags 0NNN)". */
  writable: string[];
  /** Regular files open read-only (for the report only). */
  readOnly: string[];
}

/** The process's open files now, or null if it is gone. Descriptors that close while we look are skipped. */
export function sampleFds(pid: number): FdSample | null {
  let fds: string[];
  try {
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return null;
  }
  const sample: FdSample = { sockets: 0, writable: [], readOnly: [] };
  for (const fd of fds) {
    try {
      const target = readlinkSync(`/proc/${pid}/fd/${fd}`);
      if (target.startsWith("socket:")) {
        sample.sockets++;
        continue;
      }
      if (!statSync(`/proc/${pid}/fd/${fd}`).isFile()) continue; // pipes, devices, event fds, directories
      const flags = parseInt(/^flags:\s+([0-7]+)/m.exec(readFileSync(`/proc/${pid}/fdinfo/${fd}`, "utf8"))?.[1] ?? "", 8);
      if (Number.isNaN(flags)) throw new Error(`no flags in /proc/${pid}/fdinfo/${fd}`);
      const line = `${fd} -> ${target} (flags 0${flags.toString(8)})`;
      // O_ACCMODE: 0 read-only, 1 O_WRONLY, 2 O_RDWR.
      if ((flags & 3) !== 0) sample.writable.push(line);
      else sample.readOnly.push(line);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    }
  }
  return sample;
}

// ---- pcap writer (positive controls) -----------------------------------------------------------

/** A little-endian, µs, Ethernet pcap file holding the given IPv4 TCP segments. */
export function buildPcap(segments: TcpSegment[]): Uint8Array {
  const records: Buffer[] = [];
  const header = Buffer.alloc(24);
  header.writeUInt32LE(0xa1b2c3d4, 0);
  header.writeUInt16LE(2, 4);
  header.writeUInt16LE(4, 6);
  header.writeUInt32LE(262144, 16);
  header.writeUInt32LE(LINK_ETHERNET, 20);
  records.push(header);
  for (const s of segments) {
    const eth = Buffer.alloc(14);
    eth.writeUInt16BE(0x0800, 12);
    const ip = Buffer.alloc(20);
    ip[0] = 0x45;
    ip.writeUInt16BE(20 + 20 + s.payload.length, 2);
    ip[8] = 64;
    ip[9] = 6;
    ip.set(s.src.split(".").map(Number), 12);
    ip.set(s.dst.split(".").map(Number), 16);
    const tcp = Buffer.alloc(20);
    tcp.writeUInt16BE(s.sport, 0);
    tcp.writeUInt16BE(s.dport, 2);
    tcp.writeUInt32BE(s.seq >>> 0, 4);
    tcp[12] = 5 << 4;
    tcp[13] = s.flags;
    const packet = Buffer.concat([eth, ip, tcp, s.payload]);
    const rec = Buffer.alloc(16);
    rec.writeUInt32LE(packet.length, 8);
    rec.writeUInt32LE(packet.length, 12);
    records.push(rec, packet);
  }
  return new Uint8Array(Buffer.concat(records));
}
