// The introspection queries that tools send: graphql-js's getIntrospectionQuery() with its
// defaults (also what GraphiQL sends), with each option turned the other way, and with every
// option on. The Rust tests run the same texts from testing/fixtures/introspection-queries.json;
// introspection.test.js fails when that file is not what this module produces. Regenerate it
// with:
//
//     node e2e/introspection-queries.js > testing/fixtures/introspection-queries.json
import { getIntrospectionQuery } from 'graphql';
import { fileURLToPath } from 'node:url';

/** Every option of getIntrospectionQuery, on (`descriptions` defaults to true, the rest to false). */
export const EVERY_OPTION = {
  descriptions: true,
  specifiedByUrl: true,
  directiveIsRepeatable: true,
  schemaDescription: true,
  inputValueDeprecation: true,
  oneOf: true,
};

/** name → query text. */
export function introspectionQueries() {
  const queries = { default: getIntrospectionQuery() };
  for (const [option, on] of Object.entries(EVERY_OPTION)) {
    const turned = option === 'descriptions' ? !on : on;
    queries[`${option}: ${turned}`] = getIntrospectionQuery({ [option]: turned });
  }
  queries['every option'] = getIntrospectionQuery(EVERY_OPTION);
  return queries;
}

export function fixtureText() {
  return `${JSON.stringify(introspectionQueries(), null, 2)}\n`;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  process.stdout.write(fixtureText());
}
