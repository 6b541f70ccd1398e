// Mutation → subscriber latency, seen by one external client: a graphql-ws subscriber (over
// `ws`) and `fetch` mutations, addBook then removeBook of the same book, one at a time. Against
// the local stack (bench/local-latency.sh) or the rehearsal of the AWS deployment
// (bench/rehearsal-latency.sh). Prints p50/p99/min/max of: mutation sent → event at the
// subscriber, mutation answered → event at the subscriber, and the mutation's round trip.
// Figures only; it fails (exit 1) only if an event does not arrive.
//
// Usage: node bench/latency.js HTTP_URL WS_URL STATUS_URL [mutations] [warm-up] [pause-ms] [mode]
// (HTTP_URL without the trailing slash; STATUS_URL answers JSON with a `subscriptions` count: the
// local stack's /health, the rehearsal's Lambda API /rehearsal/status.) pause-ms, 0 unless given,
// is an idle gap before each mutation: with more than the stream mapping's batching window, a
// record no longer waits for the window (BENCHMARKS.md). mode: `event` (the default) sends each
// mutation once the subscriber has the event of the one before; `answer` sends it as soon as the
// one before is answered (after the callbacks of what has already arrived have run), and the
// events are matched as they come. An event can reach the
// subscriber before the client has read the mutation's answer: "answered → subscriber" is then
// negative, and is printed as it is. OUTBOXDEMO_TOKEN, when set, is sent as the bearer token.
'use strict';

const path = require('node:path');
const { performance } = require('node:perf_hooks');
// The npm packages live in e2e/ (scripts/e2e installs them from its package-lock.json).
const e2e = require('node:module').createRequire(path.join(__dirname, '..', 'e2e', 'package.json'));
const { createClient } = e2e('graphql-ws');
const WebSocket = e2e('ws');

const [http, wsUrl, statusUrl, countArg, warmupArg, pauseArg, modeArg] = process.argv.slice(2);
if (!http || !wsUrl || !statusUrl) {
  console.error('usage: latency.js HTTP_URL WS_URL STATUS_URL [mutations] [warm-up] [pause-ms] [event|answer]');
  process.exit(2);
}
const MODE = modeArg ?? 'event';
const TOKEN = process.env.OUTBOXDEMO_TOKEN;
const AUTH = TOKEN ? { authorization: `Bearer ${TOKEN}` } : {};
const COUNT = Number(countArg ?? 200);
const WARMUP = Number(warmupArg ?? 20);
const PAUSE_MS = Number(pauseArg ?? 0);
/** How long one event may take before the run is called broken. */
const EVENT_TIMEOUT_MS = 30_000;

const ADD = 'mutation($input: AddBookInput!) { addBook(input: $input) { name } }';
const REMOVE = 'mutation($name: String!) { removeBook(name: $name) { name } }';

/** Events seen, by `TYPE name`, with the time each arrived; and who is waiting for which. */
const arrived = new Map();
const waiting = new Map();

function onEvent({ data, errors }) {
  const at = performance.now();
  if (errors || !data) throw new Error(`subscription error: ${JSON.stringify(errors)}`);
  const key = `${data.bookEvents.type} ${data.bookEvents.bookName}`;
  const resolve = waiting.get(key);
  if (resolve) {
    waiting.delete(key);
    resolve(at);
  } else {
    arrived.set(key, at);
  }
}

/** Resolves with the time the event `key` reached the subscriber (it may already have). */
function eventTime(key) {
  if (arrived.has(key)) {
    const at = arrived.get(key);
    arrived.delete(key);
    return Promise.resolve(at);
  }
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${key} event within ${EVENT_TIMEOUT_MS} ms`)), EVENT_TIMEOUT_MS);
    waiting.set(key, (at) => { clearTimeout(timer); resolve(at); });
  });
}

async function mutate(query, variables) {
  const response = await fetch(`${http}/graphql`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...AUTH },
    body: JSON.stringify({ query, variables }),
  });
  const body = await response.json();
  if (response.status !== 200 || body.errors) throw new Error(`mutation failed: ${response.status} ${JSON.stringify(body)}`);
}

async function subscriptions() {
  return (await (await fetch(statusUrl, { headers: AUTH })).json()).subscriptions;
}

/** Nearest-rank percentile of sorted values. */
function percentile(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

function row(label, values) {
  const sorted = [...values].sort((a, b) => a - b);
  const ms = (v) => `${v.toFixed(2)} ms`.padStart(10);
  return `${label.padEnd(28)}${ms(percentile(sorted, 50))}${ms(percentile(sorted, 99))}${ms(sorted[0])}${ms(sorted.at(-1))}${String(sorted.length).padStart(6)}`;
}

async function main() {
  const url = TOKEN && wsUrl.includes('/graphql/ws') === false ? `${wsUrl}?token=${encodeURIComponent(TOKEN)}` : wsUrl;
  const client = createClient({
    url, webSocketImpl: WebSocket, lazy: false, retryAttempts: 0,
    connectionParams: TOKEN ? { authorization: `Bearer ${TOKEN}` } : undefined,
  });
  let failed = null;
  const before = await subscriptions();
  const dispose = client.subscribe(
    { query: 'subscription { bookEvents { eventId type bookName } }' },
    { next: (value) => { try { onEvent(value); } catch (e) { failed = e; } }, error: (e) => { failed = e; }, complete: () => {} },
  );
  // The subscription is stored by the subscriptions function; wait for it so no event is missed.
  const deadline = Date.now() + 10_000;
  while ((await subscriptions()) <= before) {
    if (Date.now() > deadline) throw new Error('the subscription was not stored within 10 s');
    await new Promise((resolve) => setTimeout(resolve, 25));
  }

  const run = Math.random().toString(36).slice(2, 8);
  const sentToEvent = [];
  const answeredToEvent = [];
  const roundTrip = [];
  const pending = [];
  const started = performance.now();
  for (let i = 0; i < WARMUP + COUNT; i += 1) {
    if (failed) throw failed;
    const name = `Latency ${run} ${Math.floor(i / 2)}`;
    const [type, query, variables] = i % 2 === 0
      ? ['ADDED', ADD, { input: { name, authors: ['An Author'], publishedYear: 2001 } }]
      : ['REMOVED', REMOVE, { name }];
    if (PAUSE_MS > 0) await new Promise((resolve) => setTimeout(resolve, PAUSE_MS));
    const event = eventTime(`${type} ${name}`);
    const sent = performance.now();
    await mutate(query, variables);
    const answered = performance.now();
    const measured = event.then((at) => {
      if (i >= WARMUP) {
        sentToEvent.push(at - sent);
        answeredToEvent.push(at - answered);
        roundTrip.push(answered - sent);
      }
    });
    if (MODE === 'event') {
      await measured;
    } else {
      pending.push(measured);
      // Let the event loop run the callbacks of what has already arrived (an event that came
      // with the answer) before this client spends its time on the next request: otherwise that
      // event's arrival would be timed after the client's own work.
      await new Promise((resolve) => setImmediate(resolve));
    }
  }
  await Promise.all(pending);
  const seconds = (performance.now() - started) / 1000;
  dispose();
  await client.dispose();

  const pause = PAUSE_MS > 0 ? `, ${PAUSE_MS} ms idle before each` : '';
  const after = MODE === 'event' ? "the event of the one before" : 'the answer to the one before';
  const early = answeredToEvent.filter((v) => v < 0).length;
  console.log(`${COUNT} mutations after ${WARMUP} warm-up, each sent after ${after}${pause}, in ${seconds.toFixed(1)} s`);
  console.log(`${early} of ${COUNT} events reached the subscriber before the client had read the mutation's answer`);
  console.log(`${''.padEnd(28)}${'p50'.padStart(10)}${'p99'.padStart(10)}${'min'.padStart(10)}${'max'.padStart(10)}${'n'.padStart(6)}`);
  console.log(row('sent → subscriber', sentToEvent));
  console.log(row('answered → subscriber', answeredToEvent));
  console.log(row('mutation round trip', roundTrip));
}

main().then(() => process.exit(0), (error) => {
  console.error(error);
  process.exit(1);
});
