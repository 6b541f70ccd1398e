// Introspection as tools send it: graphql-js's getIntrospectionQuery(), with and without each
// of its options, passes the server's default limits, and the schema a client builds from the
// answer is schema.graphql; a deeper, abusive introspection query is still refused.
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { test } from 'node:test';
import { buildClientSchema, buildSchema, printSchema } from 'graphql';
import { graphql } from './lib.js';
import { fixtureText, introspectionQueries } from './introspection-queries.js';

const root = new URL('..', import.meta.url);

test('the Rust tests run the introspection queries graphql-js writes', async () => {
  const fixture = 'testing/fixtures/introspection-queries.json';
  assert.equal(
    await readFile(new URL(fixture, root), 'utf8'),
    fixtureText(),
    `${fixture} is out of date: node e2e/introspection-queries.js > ${fixture}`,
  );
});

test('every standard introspection query is answered, and its schema is schema.graphql', async () => {
  const checkedIn = printSchema(buildSchema(await readFile(new URL('schema.graphql', root), 'utf8')));
  const queries = introspectionQueries();
  for (const [name, query] of Object.entries(queries)) {
    const body = await graphql(query);
    assert.equal(body.errors, undefined, `${name}: ${JSON.stringify(body.errors)}`);
    const schema = buildClientSchema(body.data);
    for (const root of ['Query', 'Mutation', 'Subscription']) {
      assert.ok(schema.getType(root), `${name}: ${root}`);
    }
  }
  const every = await graphql(queries['every option']);
  assert.equal(printSchema(buildClientSchema(every.data)), checkedIn);
});

test('an introspection query nested deeper than the limit is refused', async () => {
  const walk = 'fields { type { '.repeat(6);
  const body = await graphql(`{ __schema { types { ${walk} name ${' } }'.repeat(6)} } } }`);
  assert.ok(body.data == null, JSON.stringify(body));
  assert.equal(body.errors[0].message, 'Query is nested too deep.');
  assert.equal(body.errors[0].extensions.code, 'GRAPHQL_VALIDATION_FAILED');
});
