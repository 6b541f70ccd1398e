// Shared by the end-to-end tests: which target runs (the local stack, or the rehearsal of the
// AWS deployment), where it is, and how to talk to it.
import assert from 'node:assert/strict';

export const BASE = process.env.OUTBOXDEMO_URL;
assert.ok(BASE, 'OUTBOXDEMO_URL must name the running target (scripts/e2e sets it)');
/** `local` (the local stack) or `rehearsal` (the AWS deployment, rehearsed). */
export const TARGET = process.env.OUTBOXDEMO_TARGET ?? 'local';
assert.ok(['local', 'rehearsal'].includes(TARGET), `unknown OUTBOXDEMO_TARGET ${TARGET}`);
/**
 * The credential the target requires (the rehearsal's default deploy lets no anonymous client
 * in): sent as `Authorization: Bearer <token>` over HTTP and, on the WebSocket API, where it is
 * checked when the socket opens, as the URL's `token` parameter.
 */
export const TOKEN = process.env.OUTBOXDEMO_TOKEN || null;
/** The headers a request to the target carries. */
export function authorization() {
  return TOKEN ? { authorization: `Bearer ${TOKEN}` } : {};
}
/** Subscriptions: the local stack's /graphql/ws, or the WebSocket API on AWS. */
const wsUrl = process.env.OUTBOXDEMO_WS_URL ?? `${BASE.replace(/^http/, 'ws')}/graphql/ws`;
export const WS_URL = TOKEN ? `${wsUrl}?token=${encodeURIComponent(TOKEN)}` : wsUrl;
/** `fetch` with the credential added to whatever headers the caller gives. */
export function authorizedFetch(input, init = {}) {
  const headers = new Headers(init.headers);
  for (const [name, value] of Object.entries(authorization())) headers.set(name, value);
  return fetch(input, { ...init, headers });
}
/** Where the number of stored subscriptions is read: /health locally, the rehearsal's status. */
const STATUS_URL = process.env.OUTBOXDEMO_STATUS_URL ?? `${BASE}/health`;

/** `false` on the local stack; on AWS, the reason a test of a local-only feature is skipped. */
export function localOnly(reason) {
  return TARGET === 'local' ? false : `local only: ${reason}`;
}

/** POSTs a GraphQL request; returns the whole response body. */
export async function graphql(query, variables = {}) {
  const response = await fetch(`${BASE}/graphql`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...authorization() },
    body: JSON.stringify({ query, variables }),
  });
  assert.equal(response.status, 200);
  return response.json();
}

/** A book name no other test uses. */
export function uniqueName(prefix) {
  return `${prefix} ${Math.random().toString(36).slice(2, 10)}`;
}

export async function addBook(name, authors = ['An Author'], publishedYear = 2001) {
  const body = await graphql(
    'mutation($input: AddBookInput!) { addBook(input: $input) { name } }',
    { input: { name, authors, publishedYear } },
  );
  assert.equal(body.errors, undefined, JSON.stringify(body));
}

export async function removeBook(name) {
  const body = await graphql('mutation($name: String!) { removeBook(name: $name) { name } }', { name });
  assert.equal(body.errors, undefined, JSON.stringify(body));
}

/** Polls `check` until it returns a truthy value, or fails after `ms`. */
export async function eventually(check, ms = 10_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) assert.fail(`condition not met within ${ms} ms`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/** The number of open subscriptions the target holds (on AWS: rows of the connections table). */
export async function openSubscriptions() {
  const status = await (await fetch(STATUS_URL)).json();
  return status.subscriptions;
}

/** Collects the values a subscription delivers, and lets a test wait for a number of them. */
export class Inbox {
  constructor() {
    this.items = [];
    this.errors = [];
    this.completed = false;
  }

  sink() {
    return {
      next: (value) => this.items.push(value),
      error: (error) => this.errors.push(error),
      complete: () => { this.completed = true; },
    };
  }

  async take(count) {
    await eventually(() => this.items.length >= count || this.errors.length > 0);
    assert.deepEqual(this.errors, []);
    return this.items.slice(0, count);
  }
}
