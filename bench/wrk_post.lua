-- wrk script of bench/peers.py: POSTs one GraphQL request (body from BENCH_BODY_FILE, optional
-- BENCH_AUTHORIZATION header) on every keep-alive connection, counts answers that are not a
-- 200 with data and no errors, and prints one JSON line with the counts and latency percentiles.
-- With BENCH_REQUESTS set (one thread), it stops sending once that many answers have come back
-- and prints "limit reached" (wrk itself waits out its duration unless interrupted: SIGINT).

local file = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"
local authorization = os.getenv("BENCH_AUTHORIZATION")
if authorization and authorization ~= "" then
  wrk.headers["Authorization"] = authorization
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

local limit = tonumber(os.getenv("BENCH_REQUESTS") or "")

function init(args)
  bad = 0
  answered = 0
end

function response(status, headers, body)
  answered = answered + 1
  if answered == limit then
    wrk.thread:stop()
    io.write("limit reached\n")
    io.flush()
  end
  if status ~= 200 or not string.find(body, '"data"', 1, true)
      or string.find(body, '"errors"', 1, true) then
    if bad == 0 then  -- the first one says what went wrong
      io.stderr:write(string.format("first bad answer: %d %s\n", status, string.sub(body, 1, 300)))
    end
    bad = bad + 1
  end
end

function done(summary, latency, requests)
  local rejected = 0
  for _, thread in ipairs(threads) do
    rejected = rejected + thread:get("bad")
  end
  local errors = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "bad": %d, '
      .. '"socket_errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    rejected, errors.connect + errors.read + errors.write + errors.timeout))
end
