// The GraphQL-over-HTTP audit of `graphql-http`: every MUST passes; the SHOULDs and MAYs that
// do not are reported.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { auditServer } from 'graphql-http';
import { BASE, authorizedFetch } from './lib.js';

test('/graphql passes every MUST of the GraphQL-over-HTTP audit', async (t) => {
  const results = await auditServer({ url: `${BASE}/graphql`, fetchFn: authorizedFetch });
  const failing = (level) => results.filter((r) => r.status !== 'ok' && r.name.startsWith(level));
  for (const result of [...failing('SHOULD'), ...failing('MAY')]) {
    t.diagnostic(`${result.status}: ${result.name}: ${result.reason}`);
  }
  const counts = ['MUST', 'SHOULD', 'MAY'].map((level) => {
    const all = results.filter((r) => r.name.startsWith(level)).length;
    return `${level} ${all - failing(level).length}/${all}`;
  });
  t.diagnostic(`audit: ${counts.join(', ')} passed`);
  assert.deepEqual(failing('MUST').map((r) => `${r.name}: ${r.reason}`), []);
  assert.ok(results.length > 20, 'the audit ran');
});
