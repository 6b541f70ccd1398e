// GraphiQL in headless Chromium (Debian's, driven by playwright-core): the page introspects the
// schema (its documentation explorer shows the root types, autocompletion offers fields), and a
// user runs a mutation, a query and a subscription and sees the results on the page; no request
// the page makes gets an error, and nothing breaks its Content-Security-Policy. The page loads
// its assets from unpkg.com, each pinned by a Subresource Integrity hash; this machine has no
// internet, so the test serves those files from the installed npm packages (graphiql, react,
// react-dom) instead, checks the page's hashes against them, and checks that a changed file is
// refused.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { BASE, TOKEN, addBook, eventually, openSubscriptions, uniqueName } from './lib.js';
import { artifacts, fromNodeModules, launchChromium, skipBrowser } from './browser.js';

/** Records the page's CSP violations (the init script runs before the page's own). */
async function watchPolicy(page) {
  await page.addInitScript(() => {
    window.__violations = [];
    document.addEventListener('securitypolicyviolation', (e) => {
      window.__violations.push(`${e.violatedDirective} ${e.blockedURI}`);
    });
  });
  const consoleErrors = [];
  page.on('console', (message) => {
    if (message.type() === 'error') consoleErrors.push(message.text());
  });
  return {
    consoleErrors,
    violations: () => page.evaluate(() => window.__violations),
  };
}

/** Serves the stack itself and the pinned CDN files (from node_modules); nothing else. */
async function routeOnlyTheStackAndTheCdn(page, replace = {}) {
  await page.route('**/*', async (route) => {
    const url = route.request().url();
    if (url.startsWith(BASE)) return route.continue();
    const local = url.startsWith('https://unpkg.com/') ? await fromNodeModules(url) : null;
    if (local && replace[url]) local.body = replace[url](local.body);
    return local ? route.fulfill({ status: 200, ...local }) : route.abort();
  });
}

async function editor(page, selector) {
  await page.waitForSelector(`${selector} .CodeMirror`);
  return {
    set: (text) => page.$eval(`${selector} .CodeMirror`, (el, value) => el.CodeMirror.setValue(value), text),
    get: () => page.$eval(`${selector} .CodeMirror`, (el) => el.CodeMirror.getValue()),
  };
}

test('GraphiQL runs a mutation, a query and a live subscription', { skip: skipBrowser }, async () => {
  await mkdir(artifacts, { recursive: true });
  const browser = await launchChromium();
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    const pageErrors = [];
    page.on('pageerror', (error) => pageErrors.push(error.message));
    const policy = await watchPolicy(page);
    await routeOnlyTheStackAndTheCdn(page);
    // Every GraphQL answer the page gets over HTTP, introspection first.
    const answers = [];
    page.on('response', async (response) => {
      if (!response.url().startsWith(`${BASE}/graphql`)) return;
      const request = JSON.parse(response.request().postData() || '{}');
      answers.push({ status: response.status(), query: request.query, body: await response.json() });
    });

    await page.goto(`${BASE}/`);
    if (TOKEN) {
      // A closed deploy: the page's first introspection is refused (401) until the user puts
      // the credential in the Headers tab and fetches the schema again. GraphiQL then sends it
      // with every request, and the page puts it in the WebSocket API's URL for subscriptions.
      await eventually(() => answers.some((a) => a.status === 401));
      await page.getByRole('button', { name: 'Headers' }).click();
      const headers = await editor(page, '.graphiql-editor-tool .graphiql-editor:not(.hidden)');
      await headers.set(JSON.stringify({ authorization: `Bearer ${TOKEN}` }));
      answers.length = 0;
      policy.consoleErrors.length = 0; // the refused requests' "Failed to load resource"
      await page.click('[aria-label="Re-fetch GraphQL schema"]');
    }

    // The page has the schema: the documentation explorer lists the root types...
    await eventually(() => answers.some((a) => a.query?.includes('__schema')));
    await page.click('[aria-label="Show Documentation Explorer"]');
    const explorer = page.locator('.graphiql-doc-explorer');
    await explorer.getByText('Root Types').waitFor();
    const roots = await explorer.locator('.graphiql-doc-explorer-root-type').allTextContents();
    assert.deepEqual(roots.map((t) => t.trim()), ['query', 'mutation', 'subscription']);
    for (const root of ['Query', 'Mutation', 'Subscription']) {
      await explorer.getByRole('link', { name: root, exact: true }).first().waitFor();
    }
    await page.screenshot({ path: join(artifacts, 'graphiql-docs.png') });
    const query = await editor(page, '.graphiql-query-editor');
    const response = await editor(page, '.graphiql-response');
    const run = async (text) => {
      await query.set(text);
      // GraphiQL re-reads the document (to pick HTTP or WebSocket) a moment after an edit.
      await page.waitForTimeout(300);
      await page.click('.graphiql-execute-button');
    };

    // ...and autocompletion offers the schema's fields.
    await query.set('');
    await page.click('.graphiql-query-editor .CodeMirror');
    await page.keyboard.type('mutation { add', { delay: 20 });
    const hints = page.locator('.CodeMirror-hints');
    await hints.getByText('addBook', { exact: true }).waitFor();
    await page.keyboard.press('Escape');

    const name = uniqueName('Neuromancer');
    await run(`mutation { addBook(input: {name: "${name}", authors: ["William Gibson"], publishedYear: 1984}) { name publishedYear } }`);
    const added = JSON.parse(await eventually(async () => {
      const text = await response.get();
      return text.includes(name) && text;
    }));
    assert.deepEqual(added.data.addBook, { name, publishedYear: 1984 });
    await page.screenshot({ path: join(artifacts, 'graphiql-mutation.png') });

    await run(`{ book(name: "${name}") { authors } }`);
    await eventually(async () => (await response.get()).includes('William Gibson'));

    // A subscription in GraphiQL: the event shows up when a book is added elsewhere.
    const before = await openSubscriptions();
    await run('subscription { bookEvents { type bookName } }');
    await eventually(async () => (await openSubscriptions()) > before);
    const live = uniqueName('Live');
    await addBook(live);
    await eventually(async () => (await response.get()).includes(live));
    assert.match(await response.get(), /"type": "ADDED"/);
    await page.screenshot({ path: join(artifacts, 'graphiql-subscription.png') });
    assert.deepEqual(pageErrors, []);
    assert.deepEqual(await policy.violations(), [], 'the page keeps to its CSP');
    assert.deepEqual(policy.consoleErrors, []);
    assert.ok(answers.length >= 3, JSON.stringify(answers));
    for (const answer of answers) {
      assert.equal(answer.status, 200, JSON.stringify(answer));
      assert.equal(answer.body.errors, undefined, JSON.stringify(answer));
    }
  } finally {
    await browser.close();
  }
});

test('the GraphiQL page pins each CDN file by its hash and sends its security headers', async () => {
  const response = await fetch(`${BASE}/`);
  assert.equal(response.status, 200);
  const csp = response.headers.get('content-security-policy');
  assert.ok(csp, 'a Content-Security-Policy');
  assert.equal(response.headers.get('x-content-type-options'), 'nosniff');
  assert.equal(response.headers.get('referrer-policy'), 'no-referrer');
  const directives = Object.fromEntries(csp.split(';').map((d) => d.trim().split(/\s+/))
    .map(([name, ...sources]) => [name, sources]));
  for (const [name, expected] of [['frame-ancestors', "'none'"], ['base-uri', "'none'"], ['object-src', "'none'"]]) {
    assert.deepEqual(directives[name], [expected], csp);
  }
  assert.ok(!directives['script-src'].some((s) => s.includes('unsafe')), csp);

  const page = await response.text();
  const pinned = [...page.matchAll(/(?:src|href)="(https:\/\/unpkg\.com\/[^"]+)" integrity="(sha384-[^"]+)" crossorigin="anonymous"/g)];
  assert.equal(pinned.length, 4, 'react, react-dom, graphiql.js and graphiql.css');
  assert.equal(pinned.length, (page.match(/https:\/\/unpkg\.com\//g) || []).length, 'every unpkg.com file is pinned');
  for (const [, url, integrity] of pinned) {
    const file = await fromNodeModules(url);
    assert.ok(file, `${url} is installed in node_modules`);
    const hash = `sha384-${createHash('sha384').update(file.body).digest('base64')}`;
    assert.equal(integrity, hash, `${url}: the page's hash is the file's`);
    if (url.endsWith('.js')) assert.ok(directives['script-src'].includes(url), `${url} in ${csp}`);
  }
  // The one inline script is allowed by its hash, and only it.
  const inline = [...page.matchAll(/<script>([\s\S]*?)<\/script>/g)].map((m) => m[1]);
  assert.equal(inline.length, 1);
  const inlineHash = `'sha256-${createHash('sha256').update(inline[0]).digest('base64')}'`;
  assert.ok(directives['script-src'].includes(inlineHash), `${inlineHash} in ${csp}`);
});

test('a CDN file changed on its way to the browser is not run', { skip: skipBrowser }, async () => {
  const browser = await launchChromium();
  try {
    const page = await browser.newPage();
    const policy = await watchPolicy(page);
    const tampered = 'https://unpkg.com/graphiql@4.1.2/graphiql.min.js';
    await routeOnlyTheStackAndTheCdn(page, {
      [tampered]: (body) => Buffer.concat([Buffer.from('window.__tampered = true;\n'), body]),
    });
    const loaded = page.waitForEvent('requestfinished', (r) => r.url() === tampered);
    await page.goto(`${BASE}/`);
    await loaded;
    await page.waitForLoadState('load');
    assert.equal(await page.evaluate(() => window.__tampered), undefined, 'the changed file did not run');
    assert.equal(await page.evaluate(() => typeof window.GraphiQL), 'undefined');
    assert.ok(
      policy.consoleErrors.some((e) => e.includes('integrity') && e.includes(tampered)),
      JSON.stringify(policy.consoleErrors),
    );
    // The untouched files still ran: only the changed one was refused.
    assert.equal(await page.evaluate(() => typeof window.React), 'object');
  } finally {
    await browser.close();
  }
});
