-- wrk script: POST addBook with a new name each time (wrk's threads each count on their own, so
-- each thread's names carry its own id).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local counter = 0
local thread_id = 0
function setup(thread)
  thread_id = thread_id + 1
  thread:set("id", thread_id)
end
function request()
  counter = counter + 1
  local body = string.format(
    '{"query":"mutation { addBook(input: {name: \\"wrk %d-%d-%d\\", authors: [\\"A\\"], publishedYear: 2000}) { name } }"}',
    id or 0, counter, math.random(1, 1000000000))
  return wrk.format(nil, nil, nil, body)
end
