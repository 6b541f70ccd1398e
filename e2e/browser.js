// Shared by the tests that run headless Chromium (Debian's, driven by playwright-core): how to
// launch it, and the pinned unpkg.com files the GraphiQL page loads, served from the installed
// npm packages (this machine has no internet; package-lock.json pins the same versions).
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
export const artifacts = join(here, 'artifacts');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const TYPES = { '.js': 'application/javascript', '.css': 'text/css' };

/** `false`, or why the browser tests are skipped (no Chromium, outside CI). */
export const skipBrowser = !existsSync(CHROMIUM) && process.env.CI !== 'true'
  ? `no Chromium at ${CHROMIUM} (scripts/e2e installs Debian's chromium when run as root)`
  : false;

export function launchChromium() {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

/** https://unpkg.com/<package>@<version>/<file> → node_modules/<package>/<file>, or null. */
export async function fromNodeModules(url) {
  const match = new URL(url).pathname.match(/^\/((?:@[^/]+\/)?[^@/]+)@[^/]+\/(.+)$/);
  if (!match) return null;
  const file = join(here, 'node_modules', match[1], match[2]);
  if (!existsSync(file)) return null;
  return { body: await readFile(file), contentType: TYPES[file.slice(file.lastIndexOf('.'))] };
}
