-- wrk script for POST requests. Each line of $REQUESTS is "<path>\t<authorization>\t<body>"
-- (authorization "-" for none); lines are sent in turn with $CONTENT_TYPE.
-- $DELAY_MS paces each connection (for a fixed, lower rate).
local requests = {}
local content_type = os.getenv("CONTENT_TYPE") or "application/json"
for line in io.lines(os.getenv("REQUESTS")) do
  local path, authorization, body = line:match("^([^\t]+)\t([^\t]+)\t(.+)$")
  -- wrk.format uses the table given instead of wrk.headers, so each carries every header.
  local headers = { ["Content-Type"] = content_type }
  if authorization ~= "-" then headers["Authorization"] = authorization end
  requests[#requests + 1] = { path = path, headers = headers, body = body }
end
local i = 0
local delay_ms = tonumber(os.getenv("DELAY_MS") or "0")
wrk.method = "POST"
request = function()
  i = i + 1
  if i > #requests then i = 1 end
  local r = requests[i]
  return wrk.format(nil, r.path, r.headers, r.body)
end
if delay_ms > 0 then
  -- jittered pacing, so that connections do not fire in lockstep bursts
  delay = function() return math.random(math.max(0, math.floor(delay_ms / 2)), math.ceil(delay_ms * 3 / 2)) end
end
done = function(summary, latency, requests)
  io.write(string.format("non2xx=%d requests=%d rps=%.1f p50_ms=%.2f p99_ms=%.2f\n",
    summary.errors.status, summary.requests, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
