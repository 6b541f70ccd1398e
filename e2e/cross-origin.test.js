// A web page on another origin attacks the local stack from a real browser (headless Chromium):
// the kind of page a developer running the stack might visit. It tries removeBook with fetch
// (a JSON POST, which needs a CORS preflight, and a text/plain POST, which does not) and over
// a WebSocket. The page is served by this test from 127.0.0.1 on another port, so it is another
// origin; it sees every attempt fail, and the book is still there afterwards.
//
// Local only: on AWS the APIs are guarded by the credential (the authorizer), not by origin.
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { test } from 'node:test';
import { BASE, WS_URL, addBook, graphql, localOnly, uniqueName } from './lib.js';
import { launchChromium, skipBrowser } from './browser.js';

/** The attacker's page: every attempt, and what the page could see of it. */
function attackPage(target, socketUrl, name) {
  const mutation = JSON.stringify({
    query: 'mutation($name: String!) { removeBook(name: $name) { name } }',
    variables: { name },
  });
  const script = `
    const results = {};
    const attempt = async (key, init) => {
      try {
        const response = await fetch(${JSON.stringify(`${target}/graphql`)}, init);
        results[key] = 'read ' + response.status + ' ' + await response.text();
      } catch (error) {
        results[key] = 'failed: ' + error.message;
      }
    };
    const body = ${JSON.stringify(mutation)};
    await attempt('json', { method: 'POST', headers: { 'content-type': 'application/json' }, body });
    await attempt('text', { method: 'POST', headers: { 'content-type': 'text/plain' }, body });
    // A "no-cors" request is sent as it is; the page only gets an opaque answer.
    await attempt('noCors', { method: 'POST', mode: 'no-cors', headers: { 'content-type': 'text/plain' }, body });
    results.socket = await new Promise((resolve) => {
      const socket = new WebSocket(${JSON.stringify(socketUrl)}, 'graphql-transport-ws');
      const seen = [];
      socket.onopen = () => socket.send(JSON.stringify({ type: 'connection_init' }));
      socket.onmessage = (event) => {
        seen.push(event.data);
        if (JSON.parse(event.data).type === 'connection_ack') {
          socket.send(JSON.stringify({ id: '1', type: 'subscribe', payload: JSON.parse(body) }));
        }
      };
      socket.onerror = () => seen.push('error');
      socket.onclose = (event) => resolve('closed ' + event.code + ' ' + seen.join(' '));
      setTimeout(() => resolve('open ' + seen.join(' ')), 5000);
    });
    window.results = results;
  `;
  return `<!DOCTYPE html><html><body><script type="module">${script}</script></body></html>`;
}

async function serve(html) {
  const server = createServer((request, response) => {
    response.writeHead(200, { 'content-type': 'text/html' });
    response.end(html);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, url: `http://127.0.0.1:${server.address().port}/` };
}

test('a page on another origin cannot remove a book over HTTP or the WebSocket',
  { skip: skipBrowser || localOnly('on AWS the credential guards the APIs, not the origin') }, async () => {
    const name = uniqueName('Kept');
    await addBook(name);
    const { server, url } = await serve(attackPage(BASE, WS_URL, name));
    const browser = await launchChromium();
    try {
      const page = await browser.newPage();
      await page.goto(url);
      await page.waitForFunction(() => window.results, null, { timeout: 20_000 });
      const results = await page.evaluate(() => window.results);
      // CORS is off: the JSON POST's preflight gets no CORS answer, so it is never sent.
      assert.match(results.json, /^failed: /, JSON.stringify(results));
      // A text/plain POST is sent, refused (415) before it runs, and unreadable by the page.
      assert.match(results.text, /^failed: /, JSON.stringify(results));
      assert.equal(results.noCors, 'read 0 ', JSON.stringify(results));
      // The handshake is refused (403): no connection_ack, nothing run.
      assert.match(results.socket, /^closed 1006 error$/, JSON.stringify(results));

      const { data } = await graphql('query($name: String!) { book(name: $name) { name } }', { name });
      assert.deepEqual(data.book, { name }, 'the book is still there');
    } finally {
      await browser.close();
      server.close();
    }
  });
