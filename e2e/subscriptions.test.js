// Subscriptions over WebSocket, with real clients: the `graphql-ws` package (the
// graphql-transport-ws protocol that Apollo, urql and Relay speak) and
// `subscriptions-transport-ws` (the legacy graphql-ws protocol).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createClient } from 'graphql-ws';
import WebSocket from 'ws';
import { SubscriptionClient } from 'subscriptions-transport-ws';
import { Inbox, TARGET, WS_URL, addBook, eventually, localOnly, openSubscriptions, removeBook, uniqueName } from './lib.js';

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

// Resuming after a cursor, over both protocols. Locally the change stream is the subscriptions'
// log; on AWS (the rehearsal) the journal the processor writes, delivered by the notifier's pump.

const RESUMABLE_EVENTS = 'subscription($after: String) { bookEvents(after: $after) { eventId cursor type bookName } }';
const RESUMABLE_ADDED = 'subscription($after: String) { bookAdded(after: $after) { eventId cursor name } }';

/** A legacy-protocol client with the two calls the tests make on a `graphql-ws` client. */
function legacyClient() {
  const legacy = new SubscriptionClient(WS_URL, { reconnect: false }, WebSocket);
  return {
    subscribe(payload, sink) {
      const subscription = legacy.request(payload).subscribe(sink);
      return () => subscription.unsubscribe();
    },
    dispose: () => legacy.close(),
  };
}

const PROTOCOLS = [
  { protocol: 'graphql-transport-ws', connect: client, skip: false },
  { protocol: 'legacy graphql-ws', connect: legacyClient, skip: localOnly('the WebSocket API speaks graphql-transport-ws only') },
];

/** The events (`field` of each result) `inbox` holds about the books named in `names`: other
 * tests' books may come between them. */
function ours(inbox, field, names) {
  return inbox.items.map((result) => {
    assert.equal(result.errors, undefined, JSON.stringify(result));
    return result.data[field];
  }).filter((event) => names.has(event.bookName ?? event.name));
}

/** Waits for `count` of `ours` and returns those. */
async function eventsOf(inbox, field, names, count) {
  await eventually(() => ours(inbox, field, names).length >= count || inbox.errors.length > 0);
  assert.deepEqual(inbox.errors, []);
  return ours(inbox, field, names).slice(0, count);
}

/** Cursors are stream sequence numbers: they order the events as numbers, not as text. */
function assertIncreasing(cursors) {
  for (let i = 1; i < cursors.length; i++) {
    assert.ok(BigInt(cursors[i - 1]) < BigInt(cursors[i]), `cursors not increasing: ${cursors.join(', ')}`);
  }
}

/** Time for an event that must not come (a repeat) to arrive. */
const settle = () => new Promise((resolve) => setTimeout(resolve, 200));

/** Subscribes and returns the GraphQL errors the subscription is refused with:
 * graphql-transport-ws answers with one `error` message (the sink's `error`), the legacy
 * protocol with a `data` message that has errors and no data. */
async function refusal(ws, query, variables) {
  const inbox = new Inbox();
  ws.subscribe({ query, variables }, inbox.sink());
  await eventually(() => inbox.errors.length > 0 || inbox.items.length > 0);
  const errors = inbox.errors[0] ?? inbox.items[0].errors;
  assert.ok(Array.isArray(errors) && errors.length > 0, JSON.stringify(inbox));
  assert.equal(inbox.items[0]?.data ?? null, null, JSON.stringify(inbox));
  return errors;
}

/** On AWS (the rehearsal) a subscription with `after` is delivered from the journal by the
 * notifier's pump: a client that saw one event and comes back with its cursor gets the changes
 * made while it was away, in order, then live ones, none twice. (A live subscriber without
 * `after` on AWS is promised no order, so none is the witness here: the journal's order is.) */
async function assertResumesOnAws(connect, query, field) {
  await quiet();
  const first = connect();
  let second;
  try {
    const { inbox } = await subscribe(first, query);
    const [a, b, c] = ['Ubik', 'Solaris', 'Kindred'].map(uniqueName);
    const names = new Set([a, b, c]);
    await addBook(a);
    const [seen] = await eventsOf(inbox, field, names, 1);
    await first.dispose();
    await addBook(b);
    await addBook(c);
    second = connect();
    const resumed = new Inbox();
    second.subscribe({ query, variables: { after: seen.cursor } }, resumed.sink());
    await eventsOf(resumed, field, names, 2);
    const d = uniqueName('Beloved');
    names.add(d);
    await addBook(d); // live, after the resubscribe
    const events = await eventsOf(resumed, field, names, 3);
    assert.deepEqual(events.map((e) => e.bookName ?? e.name), [b, c, d]);
    await settle();
    assert.equal(ours(resumed, field, names).length, 3, 'none twice');
    assertIncreasing([seen.cursor, ...events.map((e) => e.cursor)]);
  } finally {
    await first.dispose();
    await second?.dispose();
  }
}

for (const { protocol, connect, skip } of PROTOCOLS) {
  test(`a client back with after gets the events it missed, then live ones, none twice (${protocol})`, { skip }, async () => {
    if (TARGET === 'rehearsal') return assertResumesOnAws(connect, RESUMABLE_EVENTS, 'bookEvents');
    await quiet();
    // Subscribed throughout: every event, to hold the resumed client's to.
    const witness = connect();
    const first = connect();
    let second;
    try {
      const all = await subscribe(witness, RESUMABLE_EVENTS);
      const { inbox: seen } = await subscribe(first, RESUMABLE_EVENTS);
      const [a, b, c, d] = ['Ubik', 'Solaris', 'Kindred', 'Beloved'].map(uniqueName);
      const names = new Set([a, b, c, d]);
      await addBook(a);
      await addBook(b);
      await removeBook(a);
      const before = await eventsOf(seen, 'bookEvents', names, 3);
      await first.dispose();
      await eventually(async () => (await openSubscriptions()) === 1);

      // While it is away.
      await addBook(c);
      await removeBook(b);
      await addBook(d);
      const after = before.at(-1).cursor;
      second = connect();
      const resumed = new Inbox();
      second.subscribe({ query: RESUMABLE_EVENTS, variables: { after } }, resumed.sink());
      await eventsOf(resumed, 'bookEvents', names, 3);
      // Live, after the resubscribe.
      await removeBook(c);
      await removeBook(d);
      const events = await eventsOf(resumed, 'bookEvents', names, 5);
      assert.deepEqual(events.map((e) => [e.type, e.bookName]), [
        ['ADDED', c], ['REMOVED', b], ['ADDED', d], ['REMOVED', c], ['REMOVED', d],
      ]);
      const everything = await eventsOf(all.inbox, 'bookEvents', names, 8);
      assert.deepEqual(before, everything.slice(0, 3));
      assert.deepEqual(events, everything.slice(3), 'exactly the events after the cursor, by eventId and cursor');
      await settle();
      assert.equal(ours(resumed, 'bookEvents', names).length, 5, 'none twice');
      assertIncreasing([after, ...resumed.items.map((r) => r.data.bookEvents.cursor)]);
      assertIncreasing(all.inbox.items.map((r) => r.data.bookEvents.cursor));
    } finally {
      await witness.dispose();
      await first.dispose();
      await second?.dispose();
    }
  });

  test(`a string that is no cursor of the stream is refused, BAD_USER_INPUT (${protocol})`, { skip }, async () => {
    const code = 'BAD_USER_INPUT'; // on both targets: the stream's (or the journal's) positions
    const ws = connect();
    try {
      // Not a sequence number at all; one past every record the stream has written.
      for (const after of ['not-a-cursor', '999999999999999']) {
        const errors = await refusal(ws, RESUMABLE_EVENTS, { after });
        assert.equal(errors[0].extensions?.code, code, `${after}: ${JSON.stringify(errors)}`);
      }
    } finally {
      await ws.dispose();
    }
  });
}

test('bookAdded resumes after a cursor too', async () => {
  if (TARGET === 'rehearsal') return assertResumesOnAws(client, RESUMABLE_ADDED, 'bookAdded');
  await quiet();
  const first = client();
  let second;
  try {
    const { inbox: seen } = await subscribe(first, RESUMABLE_ADDED);
    const [a, b, c, d] = ['Neuromancer', 'Hyperion', 'Foundation', 'Contact'].map(uniqueName);
    const names = new Set([a, b, c, d]);
    await addBook(a);
    const [last] = await eventsOf(seen, 'bookAdded', names, 1);
    await first.dispose();
    await eventually(async () => (await openSubscriptions()) === 0);

    // While it is away; the removal is no book added.
    await addBook(b);
    await removeBook(a);
    await addBook(c);
    second = client();
    const resumed = new Inbox();
    second.subscribe({ query: RESUMABLE_ADDED, variables: { after: last.cursor } }, resumed.sink());
    await eventsOf(resumed, 'bookAdded', names, 2);
    await addBook(d);
    const books = await eventsOf(resumed, 'bookAdded', names, 3);
    assert.deepEqual(books.map((book) => book.name), [b, c, d]);
    await settle();
    assert.equal(ours(resumed, 'bookAdded', names).length, 3, 'none twice');
    assertIncreasing([last.cursor, ...resumed.items.map((r) => r.data.bookAdded.cursor)]);
    assert.equal(new Set([last, ...books].map((book) => book.eventId)).size, 4);
  } finally {
    await first.dispose();
    await second?.dispose();
  }
});
