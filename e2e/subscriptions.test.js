// Subscriptions over WebSocket, with real clients: the `graphql-ws` package (the
// graphql-transport-ws protocol that Apollo, urql and Relay speak) and
// `subscriptions-transport-ws` (the legacy graphql-ws protocol).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createClient } from 'graphql-ws';
import WebSocket from 'ws';
import { SubscriptionClient } from 'subscriptions-transport-ws';
import { Inbox, WS_URL, addBook, eventually, localOnly, openSubscriptions, removeBook, uniqueName } from './lib.js';

const EVENTS = 'subscription($types: [BookEventType!]) { bookEvents(types: $types) { eventId type occurredAt bookName book { name authors publishedYear } } }';

function client() {
  return createClient({ url: WS_URL, webSocketImpl: WebSocket, lazy: false, retryAttempts: 0 });
}

/** Subscribes and waits until the server holds the subscription, so no event is missed. */
async function subscribe(wsClient, query, variables = {}) {
  const before = await openSubscriptions();
  const inbox = new Inbox();
  const dispose = wsClient.subscribe({ query, variables }, inbox.sink());
  await eventually(async () => (await openSubscriptions()) > before);
  return { inbox, dispose };
}

test('a subscriber sees each committed change, in order, after the stream and the processor', async () => {
  const ws = client();
  try {
    const { inbox } = await subscribe(ws, EVENTS);
    const name = uniqueName('Dune');
    await addBook(name, ['Frank Herbert'], 1965);
    await removeBook(name);
    const events = (await inbox.take(2)).map((r) => r.data.bookEvents);
    assert.deepEqual(events.map((e) => [e.type, e.bookName]), [['ADDED', name], ['REMOVED', name]]);
    assert.deepEqual(events[1].book, { name, authors: ['Frank Herbert'], publishedYear: 1965 });
    assert.match(events[0].eventId, /^[0-9a-f]{32}$/);
    assert.notEqual(events[0].eventId, events[1].eventId);
    assert.ok(!Number.isNaN(Date.parse(events[0].occurredAt)));
  } finally {
    await ws.dispose();
  }
});

test('two subscribers both get every event, and the types filter keeps only what was asked', async () => {
  await quiet();
  const first = client();
  const second = client();
  try {
    const all = await subscribe(first, EVENTS);
    const removedOnly = await subscribe(second, EVENTS, { types: ['REMOVED'] });
    const added = await subscribe(second, 'subscription { bookAdded { name } }');
    const name = uniqueName('Emma');
    await addBook(name);
    await removeBook(name);
    assert.deepEqual((await all.inbox.take(2)).map((r) => r.data.bookEvents.type), ['ADDED', 'REMOVED']);
    assert.deepEqual((await removedOnly.inbox.take(1)).map((r) => r.data.bookEvents.type), ['REMOVED']);
    assert.deepEqual((await added.inbox.take(1)).map((r) => r.data.bookAdded.name), [name]);
    // Give a stray ADDED time to arrive where it must not.
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.equal(removedOnly.inbox.items.length, 1);
  } finally {
    await first.dispose();
    await second.dispose();
  }
});

/** Waits until the earlier tests' subscriptions are gone on the server (their clients close
 * asynchronously), so that counts taken now stay put. */
async function quiet() {
  await eventually(async () => (await openSubscriptions()) === 0);
  return 0;
}

test('a client that disconnects is cleaned up on the server', async () => {
  const before = await quiet();
  const ws = client();
  await subscribe(ws, EVENTS);
  await subscribe(ws, 'subscription { bookRemoved { name } }');
  assert.equal(await openSubscriptions(), before + 2);
  await ws.dispose();
  await eventually(async () => (await openSubscriptions()) === before);
});

test('completing one subscription releases it and keeps the connection', async () => {
  const ws = client();
  try {
    const before = await quiet();
    const { dispose } = await subscribe(ws, EVENTS);
    const kept = await subscribe(ws, 'subscription { bookAdded { name } }');
    dispose();
    await eventually(async () => (await openSubscriptions()) === before + 1);
    const name = uniqueName('Kept');
    await addBook(name);
    assert.deepEqual((await kept.inbox.take(1)).map((r) => r.data.bookAdded.name), [name]);
  } finally {
    await ws.dispose();
  }
});

test('an invalid subscription gets an error message with GraphQL errors, not a dead connection', async () => {
  const ws = client();
  try {
    const inbox = new Inbox();
    ws.subscribe({ query: 'subscription { bookEvents { nope } }' }, inbox.sink());
    // graphql-transport-ws: a subscribe that fails validation is answered with one `error`
    // message carrying the GraphQL errors (graphql-ws hands them to the sink's `error`), with no
    // `next` and no `complete` — the same answer on every target.
    await eventually(() => inbox.completed || inbox.errors.length > 0);
    assert.deepEqual(inbox.items, [], 'no next');
    assert.equal(inbox.completed, false, 'no complete');
    const errors = inbox.errors[0];
    assert.ok(Array.isArray(errors) && errors.length > 0, JSON.stringify(inbox));
    assert.match(errors[0].message, /nope/);
    assert.equal(errors[0].extensions?.code, 'GRAPHQL_VALIDATION_FAILED');
    // The connection is still good.
    const { inbox: next } = await subscribe(ws, 'subscription { bookAdded { name } }');
    const name = uniqueName('After');
    await addBook(name);
    assert.equal((await next.take(1))[0].data.bookAdded.name, name);
  } finally {
    await ws.dispose();
  }
});

test('idle connections get keep-alive pings (graphql-transport-ws)', { skip: localOnly('API Gateway sends no pings; clients ping (README, Subscriptions on AWS)') }, async () => {
  const socket = new WebSocket(WS_URL, 'graphql-transport-ws');
  const messages = [];
  socket.on('message', (data) => messages.push(JSON.parse(data.toString())));
  await new Promise((resolve, reject) => { socket.once('open', resolve); socket.once('error', reject); });
  try {
    assert.equal(socket.protocol, 'graphql-transport-ws');
    socket.send(JSON.stringify({ type: 'connection_init', payload: {} }));
    await eventually(() => messages.some((m) => m.type === 'connection_ack'));
    // scripts/e2e starts the stack with a one-second keep-alive.
    await eventually(() => messages.some((m) => m.type === 'ping'), 5_000);
    socket.send(JSON.stringify({ type: 'pong' }));
  } finally {
    socket.close();
  }
});

test('the legacy graphql-ws protocol works too', { skip: localOnly('the WebSocket API speaks graphql-transport-ws only') }, async () => {
  const legacy = new SubscriptionClient(WS_URL, { reconnect: false }, WebSocket);
  try {
    const before = await openSubscriptions();
    const inbox = new Inbox();
    const subscription = legacy.request({ query: 'subscription { bookAdded { name authors } }' }).subscribe(inbox.sink());
    await eventually(async () => (await openSubscriptions()) > before);
    const name = uniqueName('Legacy');
    await addBook(name, ['Old Client']);
    assert.deepEqual((await inbox.take(1))[0].data.bookAdded, { name, authors: ['Old Client'] });
    subscription.unsubscribe();
    await eventually(async () => (await openSubscriptions()) === before);
  } finally {
    legacy.close();
  }
});
