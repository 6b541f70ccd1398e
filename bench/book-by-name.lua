-- wrk script: POST `book(name:)` for one existing book.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"query":"{ book(name: \\"Book 42\\") { name authors publishedYear } }"}'
