// The transfer status in front of the prompt (lib/ui/format.ts progressTracker),
// on a clock the test moves. Found in audit: the rate was an average since the
// start (a sender's showed the first burst into the socket buffers for minutes),
// a stalled transfer kept its last figures, entries had no peer or direction,
// names were cut in the middle of an emoji, and the ETA was in seconds only.
import { expect, test } from "bun:test";
import type { ChatEvent } from "../lib/client/chat-client.ts";
import { progressTracker } from "../lib/ui/format.ts";

const MiB = 1024 * 1024;
const progress = (id: string, bytes: number, o: { direction?: "in" | "out"; peer?: string; name?: string; size?: number } = {}): ChatEvent => ({
  event: "progress",
  id,
  peer: o.peer ?? "7hd2xw0a",
  direction: o.direction ?? "out",
  name: o.name ?? "report.pdf",
  bytes,
  size: o.size ?? 100 * MiB,
});

function clocked() {
  let t = 0;
  return { tracker: progressTracker(() => t), at: (ms: number) => void (t = ms) };
}

test("the rate is of the last 5 s, the time left is m:ss, and widths are fixed; an incoming file with nothing for 3 s is stalled", () => {
  const { tracker, at } = clocked();
  const into = (bytes: number) => progress("aa", bytes, { direction: "in" });
  expect(tracker.update(into(0))).toBe("report.pdf from 7hd2xw0a   0%");
  // A first burst: 20 MiB in 1 s, then 1 MiB/s.
  at(1000);
  tracker.update(into(20 * MiB));
  for (let s = 2; s <= 12; s++) at(s * 1000), tracker.update(into((19 + s) * MiB));
  // Over the last 5 s (7..12 s): 5 MiB. 69 MiB left at 1 MiB/s: 1:09.
  expect(tracker.render()).toBe("report.pdf from 7hd2xw0a  31%   1.0 MiB/s  1:09");
  at(12_500); // between two events: the rate falls only a little
  expect(tracker.render()).toBe("report.pdf from 7hd2xw0a  31%   931 KiB/s  1:16"); // 5 MiB in 5.5 s
  at(15_000); // nothing for 3 s
  expect(tracker.render()).toBe("report.pdf from 7hd2xw0a  31% stalled");
  at(15_250);
  expect(tracker.update(into(32 * MiB))).toBe("report.pdf from 7hd2xw0a  32%   585 KiB/s  1:59"); // 10..15.25 s: 3 MiB
  // Done: gone from the status.
  expect(tracker.update(into(100 * MiB))).toBe("");
});

// Found in the second audit: a sender's figures are of what went into its socket, so on a
// slow link it showed "stalled" while data moved, and its status went away long before the
// receiver had the file.
test("an outgoing file is never called stalled; sent in full, it waits for the answer until delivered", () => {
  const { tracker, at } = clocked();
  tracker.update(progress("aa", 0));
  at(1000);
  tracker.update(progress("aa", 50 * MiB));
  at(10_000);
  expect(tracker.render()).toBe("report.pdf to 7hd2xw0a  50%   5.0 MiB/s  0:10"); // nothing new for 9 s: no "stalled"
  expect(tracker.update(progress("aa", 100 * MiB))).toBe("report.pdf to 7hd2xw0a sent, awaiting the answer");
  expect(tracker.update({ event: "delivered", to: "7hd2xw0a", id: "aa", name: "report.pdf", size: 100 * MiB, sha256: "00", verified: false })).toBe("");
});

test("entries say direction and peer (to all for a broadcast); a long name is cut to 20 cells between characters; as many as fit, then a count", () => {
  const { tracker } = clocked();
  tracker.update(progress("aa", 0, { peer: "*" }));
  tracker.update(progress("aa", 0, { direction: "in", peer: "98n9envz" })); // the same short ID, the other way
  tracker.update(progress("bb", 0, { name: `${"ab".repeat(8)}😀😀😀.bin` }));
  expect(tracker.render()).toBe(["report.pdf to all   0%", "report.pdf from 98n9envz   0%", "abababababababab😀… to 7hd2xw0a   0%"].join(" | "));
  tracker.update(progress("cc", 0));
  tracker.update(progress("dd", 0));
  // As many as fit the cells given (at least one), then a count.
  expect(tracker.render(80)).toBe("report.pdf to all   0% | report.pdf from 98n9envz   0% | +3 more");
  expect(tracker.render(10)).toBe("report.pdf to all   0% | +4 more");
  tracker.update({ event: "transfer", id: "aa", peer: "98n9envz", direction: "in", name: "report.pdf", size: 100 * MiB, state: "cancelled" });
  expect(tracker.render(80)).toStartWith("report.pdf to all   0% | abab");
  expect(tracker.render(80)).toEndWith(" | +2 more");
});

// Found in review: on a link slower than one 128 KiB chunk per 3 s, "stalled" showed
// between every two chunks; regional indicators (2 cells in some terminals) counted 1.
test("a slow link is not called stalled between its chunks; names measured as the terminal may draw them", () => {
  const { tracker, at } = clocked();
  const chunk = 128 * 1024;
  for (let n = 0; n <= 4; n++) at(n * 3200), tracker.update(progress("aa", n * chunk, { size: 100 * chunk, direction: "in" }));
  at(4 * 3200 + 3000);
  expect(tracker.render()).toEndWith("4%    27 KiB/s  7:32"); // 256 KiB since 6.4 s: the window keeps two gaps
  at(4 * 3200 + 9600);
  expect(tracker.render()).toEndWith(" stalled");
  const flags = progressTracker(() => 0);
  expect(flags.update(progress("bb", 0, { name: "\u{1F1E6}".repeat(30) }))).toStartWith(`${"\u{1F1E6}".repeat(8)}… to`); // pairs are one character: 4 cells each at most
  expect(flags.update(progress("cc", 0, { name: "re\u00adport\u200b.pdf" }))).toContain("report.pdf to");
});
