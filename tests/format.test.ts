// Lines for the terminal (lib/ui/format.ts formatEvent): a transfer's end says
// its state once (found in audit: "cancelled: cancelled", "cancelled:
// cancelled by 078s40k9: cancelled by sender"); a delivered file's line
// does not say "verified", the word for fingerprints.
import { expect, test } from "bun:test";
import type { ChatEvent } from "../lib/client/chat-client.ts";
import { formatEvent } from "../lib/ui/format.ts";

const ended = (state: "declined" | "failed" | "cancelled", reason?: string): ChatEvent => ({ event: "transfer", id: "6b88da2c", peer: "078s40k9", direction: "in", name: "f.bin", size: 2048, state, ...(reason === undefined ? {} : { reason }) });

test("a transfer's end: the state, then a reason only if it adds something", () => {
  const what = "! file from 078s40k9: f.bin (2.0 KiB, id 6b88da2c)";
  expect(formatEvent(ended("cancelled", "cancelled"))).toBe(`${what} cancelled`);
  expect(formatEvent(ended("cancelled", ""))).toBe(`${what} cancelled`);
  expect(formatEvent(ended("cancelled", "cancelled by 078s40k9"))).toBe(`${what} cancelled by 078s40k9`);
  expect(formatEvent(ended("cancelled", "cancelled by 078s40k9: too slow"))).toBe(`${what} cancelled by 078s40k9: too slow`);
  expect(formatEvent(ended("failed", "no data for 60 s"))).toBe(`${what} failed: no data for 60 s`);
  expect(formatEvent(ended("declined", "declined\u001b[2J"))).toBe(`${what} declined: declined�[2J`);
});

test("a delivered file says what was checked, without the word kept for fingerprints", () => {
  const sha256 = "ab".repeat(32);
  const line = formatEvent({ event: "delivered", to: "078s40k9", id: "6b88da2c", name: "f.bin", size: 2048, sha256, verified: false });
  expect(line).toBe(`* 078s40k9 has f.bin (2.0 KiB), its sha256 matches ours: ${sha256}`);
  expect(line).not.toContain("verified");
});
