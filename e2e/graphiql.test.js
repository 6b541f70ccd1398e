// GraphiQL in headless Chromium (Debian's, driven by playwright-core): the page introspects the
// schema (its documentation explorer shows the root types, autocompletion offers fields), and a
// user runs a mutation, a query and a subscription and sees the results on the page; no request
// the page makes gets an error. The page loads its
// assets from unpkg.com; this machine has no internet, so the test serves those files from the
// installed npm packages (graphiql, react, react-dom) instead.
import assert from 'node:assert/strict';
import { mkdir, readFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { chromium } from 'playwright-core';
import { BASE, addBook, eventually, openSubscriptions, uniqueName } from './lib.js';

const here = dirname(fileURLToPath(import.meta.url));
const artifacts = join(here, 'artifacts');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const TYPES = { '.js': 'application/javascript', '.css': 'text/css' };

/** https://unpkg.com/<package>@<version>/<file> → node_modules/<package>/<file>. */
async function fromNodeModules(url) {
  const match = new URL(url).pathname.match(/^\/((?:@[^/]+\/)?[^@/]+)@[^/]+\/(.+)$/);
  if (!match) return null;
  const file = join(here, 'node_modules', match[1], match[2]);
  if (!existsSync(file)) return null;
  return { body: await readFile(file), contentType: TYPES[file.slice(file.lastIndexOf('.'))] };
}

async function editor(page, selector) {
  await page.waitForSelector(`${selector} .CodeMirror`);
  return {
    set: (text) => page.$eval(`${selector} .CodeMirror`, (el, value) => el.CodeMirror.setValue(value), text),
    get: () => page.$eval(`${selector} .CodeMirror`, (el) => el.CodeMirror.getValue()),
  };
}

const skipBrowser = !existsSync(CHROMIUM) && process.env.CI !== 'true'
  ? `no Chromium at ${CHROMIUM} (scripts/e2e installs Debian's chromium when run as root)`
  : false;

test('GraphiQL runs a mutation, a query and a live subscription', { skip: skipBrowser }, async () => {
  await mkdir(artifacts, { recursive: true });
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    const pageErrors = [];
    page.on('pageerror', (error) => pageErrors.push(error.message));
    // Only the stack itself and the CDN files (served locally) are reachable.
    await page.route('**/*', async (route) => {
      const url = route.request().url();
      if (url.startsWith(BASE)) return route.continue();
      const local = url.startsWith('https://unpkg.com/') ? await fromNodeModules(url) : null;
      return local ? route.fulfill({ status: 200, ...local }) : route.abort();
    });

    // Every GraphQL answer the page gets over HTTP, introspection first.
    const answers = [];
    page.on('response', async (response) => {
      if (!response.url().startsWith(`${BASE}/graphql`)) return;
      const request = JSON.parse(response.request().postData() || '{}');
      answers.push({ status: response.status(), query: request.query, body: await response.json() });
    });

    await page.goto(`${BASE}/`);

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
    assert.ok(answers.length >= 3, JSON.stringify(answers));
    for (const answer of answers) {
      assert.equal(answer.status, 200, JSON.stringify(answer));
      assert.equal(answer.body.errors, undefined, JSON.stringify(answer));
    }
  } finally {
    await browser.close();
  }
});
