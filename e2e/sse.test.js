// GraphQL over Server-Sent Events at /graphql/stream, with real clients: the `graphql-sse`
// package in distinct connections mode, and a raw `fetch` reading the event stream the way a
// browser's EventSource does (each `next` has its event's cursor as `id`; `Last-Event-ID`
// resumes after it). The local stack serves the stream; the api Lambda on AWS answers only
// once a response is whole, so there subscriptions are the WebSocket API's.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createClient } from 'graphql-sse';
import { BASE, Inbox, addBook, authorization, eventually, localOnly, openSubscriptions, removeBook, uniqueName } from './lib.js';

const STREAM_URL = `${BASE}/graphql/stream`;
const LOCAL_ONLY = localOnly('the api Lambda cannot stream a response: subscriptions on AWS are the WebSocket API\'s');
const EVENTS = 'subscription { bookEvents { eventId cursor type bookName } }';

/** The events of `results` (`bookEvents` of each) about the books named in `names`: other
 * tests' books may come between them. */
function ours(results, names) {
  return results.map((result) => {
    assert.equal(result.errors, undefined, JSON.stringify(result));
    return result.data.bookEvents;
  }).filter((event) => names.has(event.bookName));
}

/** Waits until the target holds more subscriptions than `before`, so no event is missed. */
async function subscribed(before) {
  await eventually(async () => (await openSubscriptions()) > before);
}

/**
 * An event stream read with `fetch`, as an EventSource reads it: `events` collects each
 * event's `event`, `id` and parsed `data`; `close()` disconnects.
 */
async function openStream(query, headers = {}) {
  const control = new AbortController();
  const response = await fetch(STREAM_URL, {
    method: 'POST',
    headers: { accept: 'text/event-stream', 'content-type': 'application/json', ...authorization(), ...headers },
    body: JSON.stringify({ query }),
    signal: control.signal,
  });
  assert.equal(response.status, 200);
  assert.match(response.headers.get('content-type'), /^text\/event-stream/);
  const stream = { events: [], ended: false, close: () => control.abort() };
  (async () => {
    const decoder = new TextDecoder();
    let text = '';
    try {
      for await (const chunk of response.body) {
        text += decoder.decode(chunk, { stream: true });
        let end;
        while ((end = text.indexOf('\n\n')) >= 0) {
          const block = text.slice(0, end);
          text = text.slice(end + 2);
          const event = {};
          for (const line of block.split('\n')) {
            const colon = line.indexOf(':');
            const field = line.slice(0, colon);
            const value = line.slice(colon + 1).replace(/^ /, '');
            if (field) event[field] = value; // a comment (`: keep-alive`) has no field
          }
          if (event.event) stream.events.push({ ...event, data: JSON.parse(event.data) });
        }
      }
    } catch (error) {
      if (error.name !== 'AbortError') throw error;
    } finally {
      stream.ended = true;
    }
  })();
  return stream;
}

/** The `next` events of `stream` about the books named in `names`, each its `bookEvents` and
 * its SSE `id`. */
function oursIn(stream, names) {
  return stream.events.filter((event) => event.event === 'next').map((event) => {
    assert.equal(event.data.errors, undefined, JSON.stringify(event.data));
    return { id: event.id, ...event.data.data.bookEvents };
  }).filter((event) => names.has(event.bookName));
}

test('a graphql-sse client (distinct connections) gets an add and a remove made over HTTP', { skip: LOCAL_ONLY }, async () => {
  const client = createClient({ url: STREAM_URL, singleConnection: false, retryAttempts: 0, headers: authorization() });
  const inbox = new Inbox();
  const before = await openSubscriptions();
  const dispose = client.subscribe({ query: EVENTS }, inbox.sink());
  try {
    await subscribed(before);
    const name = uniqueName('Middlemarch');
    await addBook(name, ['George Eliot'], 1871);
    await removeBook(name);
    const names = new Set([name]);
    await eventually(() => ours(inbox.items, names).length >= 2 || inbox.errors.length > 0);
    assert.deepEqual(inbox.errors, []);
    const events = ours(inbox.items, names);
    assert.deepEqual(events.map((e) => e.type), ['ADDED', 'REMOVED']);
    assert.ok(BigInt(events[0].cursor) < BigInt(events[1].cursor));
  } finally {
    dispose();
    client.dispose();
  }
  // The client went: so does its subscription.
  await eventually(async () => (await openSubscriptions()) === before);
});

test('a query over the stream is one next, then complete', { skip: LOCAL_ONLY }, async () => {
  const client = createClient({ url: STREAM_URL, singleConnection: false, retryAttempts: 0 });
  try {
    const inbox = new Inbox();
    client.subscribe({ query: '{ __typename }' }, inbox.sink());
    await eventually(() => inbox.completed || inbox.errors.length > 0);
    assert.deepEqual(inbox.errors, []);
    assert.deepEqual(inbox.items, [{ data: { __typename: 'Query' } }]);
  } finally {
    client.dispose();
  }
});

test('a mutation over the stream is refused with BAD_REQUEST and changes nothing', { skip: LOCAL_ONLY }, async () => {
  const name = uniqueName('Persuasion');
  const stream = await openStream(`mutation { addBook(input: { name: "${name}", authors: ["Jane Austen"], publishedYear: 1817 }) { name } }`);
  await eventually(() => stream.ended);
  assert.deepEqual(stream.events.map((e) => e.event), ['next', 'complete']);
  assert.equal(stream.events[0].data.errors[0].extensions.code, 'BAD_REQUEST');
  const response = await fetch(`${BASE}/graphql?query=${encodeURIComponent(`{ book(name: "${name}") { name } }`)}`);
  assert.deepEqual(await response.json(), { data: { book: null } });
});

test('Last-Event-ID resumes after the last id seen: exactly the events made meanwhile, none twice', { skip: LOCAL_ONLY }, async () => {
  const names = new Set([uniqueName('Ivanhoe'), uniqueName('Rob Roy'), uniqueName('Waverley')]);
  const [first, second, third] = names;
  // Subscribed the whole time: what the resumed subscriber must match.
  let before = await openSubscriptions();
  const witness = await openStream(EVENTS);
  await subscribed(before);
  before = await openSubscriptions();
  const away = await openStream(EVENTS);
  await subscribed(before);
  try {
    await addBook(first);
    await eventually(() => oursIn(away, names).length >= 1);
    const lastSeen = oursIn(away, names).at(-1);
    // The id is the cursor, though `cursor` was selected only to check it.
    assert.equal(lastSeen.id, lastSeen.cursor);
    away.close();
    // Changes while it is away.
    await addBook(second);
    await removeBook(first);
    await addBook(third);
    await eventually(() => oursIn(witness, names).length >= 4);

    // A new stream, as a reconnecting EventSource makes it: the same request, Last-Event-ID.
    const resumed = await openStream(EVENTS, { 'last-event-id': lastSeen.id });
    try {
      await eventually(() => oursIn(resumed, names).length >= 3);
      await new Promise((resolve) => setTimeout(resolve, 200)); // time for a repeat to show
      const expected = oursIn(witness, names).filter((e) => BigInt(e.cursor) > BigInt(lastSeen.cursor));
      assert.deepEqual(oursIn(resumed, names), expected);
      assert.deepEqual(expected.map((e) => [e.type, e.bookName]), [['ADDED', second], ['REMOVED', first], ['ADDED', third]]);
      assert.deepEqual(oursIn(resumed, names).map((e) => e.id), expected.map((e) => e.cursor));
    } finally {
      resumed.close();
    }
  } finally {
    away.close();
    witness.close();
    await removeBook(second);
    await removeBook(third);
  }
});

// On AWS the api Lambda answers only once it is done, so it serves no event stream: the route is
// not there (and no subscription holds a function until its timeout). Locally it is.
test('the event stream is served where a response can stream, and only there', async () => {
  const response = await fetch(`${BASE}/graphql/stream?query=${encodeURIComponent('{ __typename }')}`, {
    headers: { accept: 'text/event-stream', ...authorization() },
  });
  await response.body?.cancel();
  assert.equal(response.status, LOCAL_ONLY ? 404 : 200);
});
