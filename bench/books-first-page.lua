-- wrk script: POST the `books` first page (20 books with all their fields).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"query":"{ books { edges { cursor node { name authors publishedYear } } pageInfo { hasNextPage endCursor } } }"}'
