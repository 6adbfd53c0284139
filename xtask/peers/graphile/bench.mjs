// The graphile-worker side of `cargo xtask bench`'s peer rows: the engine's workload (a 2-step
// process over ITEMS items, one outcome row per item and step, step 1 queued once step 0 is
// done) built the way a user would build it on this queue.
//
//   node bench.mjs DATABASE_URL chunk|item ITEMS
//
// chunk: one job per 500 items, inserting its 500 outcome rows in one statement; item: one
// job per item, inserting one row. Tuning as graphile-worker's performance page publishes it
// (24 concurrent jobs, a local queue of 500, completions batched). Prints, as its last
// line, items per second per step as the engine's measurements count it: the items over the
// time both steps took.
import { EventEmitter } from "node:events";
import { Logger, run, makeWorkerUtils } from "graphile-worker";

const [url, form, itemsText] = process.argv.slice(2);
const items = Number(itemsText);
if (!url || !["chunk", "item"].includes(form) || !(items > 0)) {
  console.error("usage: node bench.mjs DATABASE_URL chunk|item ITEMS");
  process.exit(2);
}
const CHUNK = 500;

// Quiet: a log line per job would be work the engine does not do.
const logger = new Logger(() => () => {});
const utils = await makeWorkerUtils({ connectionString: url, logger });
await utils.migrate();
await utils.withPgClient((pg) =>
  pg.query(
    "CREATE TABLE IF NOT EXISTS peer_outcomes (step int NOT NULL, item bigint NOT NULL, PRIMARY KEY (step, item))",
  ),
);

const events = new EventEmitter();
let succeeded = 0;
let wanted = 0;
let done = () => {};
events.on("job:success", () => {
  succeeded += 1;
  if (succeeded === wanted) done();
});

const taskList = {
  chunk: async ({ step, items }, helpers) => {
    await helpers.query("INSERT INTO peer_outcomes (step, item) SELECT $1, unnest($2::bigint[])", [step, items]);
  },
  item: async ({ step, item }, helpers) => {
    await helpers.query("INSERT INTO peer_outcomes (step, item) VALUES ($1, $2)", [step, item]);
  },
};

const runner = await run({
  connectionString: url,
  concurrency: 24,
  maxPoolSize: 25,
  noHandleSignals: true,
  logger,
  pollInterval: 1000,
  events,
  taskList,
  preset: { worker: { localQueue: { size: 500 }, completeJobBatchDelay: 0, failJobBatchDelay: 0 } },
});

/** Queues a step's jobs in one statement and waits until every one has succeeded. */
async function step(number) {
  const jobs = [];
  if (form === "chunk") {
    for (let from = 0; from < items; from += CHUNK) {
      const chunk = [];
      for (let i = from; i < Math.min(from + CHUNK, items); i++) chunk.push(i);
      jobs.push({ identifier: "chunk", payload: { step: number, items: chunk } });
    }
  } else {
    for (let i = 0; i < items; i++) jobs.push({ identifier: "item", payload: { step: number, item: i } });
  }
  succeeded = 0;
  wanted = jobs.length;
  const finished = new Promise((resolve) => (done = resolve));
  await utils.addJobs(jobs);
  await finished;
}

const started = process.hrtime.bigint();
await step(0);
await step(1);
const seconds = Number(process.hrtime.bigint() - started) / 1e9;
const count = await utils.withPgClient((pg) => pg.query("SELECT count(*)::int AS n FROM peer_outcomes"));
await runner.stop();
await utils.release();
if (count.rows[0].n !== 2 * items) {
  console.error(`expected ${2 * items} outcome rows, found ${count.rows[0].n}`);
  process.exit(1);
}
// Per step as the engine's figures count it: items over the time both steps took.
console.log((items / seconds).toFixed(0));
