// GraphiQL in headless Chromium (Debian's, driven by playwright-core): a user runs a
// mutation, a query and a subscription and sees the results on the page. The page loads its
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

    await page.goto(`${BASE}/`);
    const query = await editor(page, '.graphiql-query-editor');
    const response = await editor(page, '.graphiql-response');
    const run = async (text) => {
      await query.set(text);
      // GraphiQL re-reads the document (to pick HTTP or WebSocket) a moment after an edit.
      await page.waitForTimeout(300);
      await page.click('.graphiql-execute-button');
    };

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
  } finally {
    await browser.close();
  }
});
