// Fuzzing, short CI form: a fixed seed, ~5 s of fuzzing in all (plus the DH workers' start-up). The same fuzzers run
// longer by hand with `bun scripts/fuzz.ts --seconds 60 --seed N`. See
// tests/fuzz-lib.ts for what is generated and which invariants are checked.
import { expect, setDefaultTimeout, test } from "bun:test";
import { clientFuzz, relayFuzz } from "./fuzz-lib.ts";

setDefaultTimeout(60_000);
const SEED = 1;

test("relay fuzz: random and mutated frames from many raw connections never crash the relay, close offenders with an error, keep honest clients working and memory bounded", async () => {
  const res = await relayFuzz({ seed: SEED, ms: 2_500, log: console.log });
  for (const n of res.notes) console.log(`  ${n}`);
  expect(res.iterations).toBeGreaterThan(1000);
  expect(res.batches).toBeGreaterThan(2);
});

test("client fuzz: mutated E2E bodies and sealed contents never crash the chat client or show garbage, and an honest exchange still works afterwards", async () => {
  const res = await clientFuzz({ seed: SEED, ms: 1_500, log: console.log });
  for (const n of res.notes) console.log(`  ${n}`);
  expect(res.iterations).toBeGreaterThan(100);
});
