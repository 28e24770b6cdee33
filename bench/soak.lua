-- wrk script for the soak: post.lua's requests and pacing, and a count of every status.
-- Each line of $REQUESTS is "<path>\t<authorization>\t<body>" (authorization "-" for none),
-- sent in turn with $CONTENT_TYPE; $DELAY_MS paces each connection (jittered).
local requests = {}
local content_type = os.getenv("CONTENT_TYPE") or "application/json"
for line in io.lines(os.getenv("REQUESTS")) do
  local path, authorization, body = line:match("^([^\t]+)\t([^\t]+)\t(.+)$")
  local headers = { ["Content-Type"] = content_type }
  if authorization ~= "-" then headers["Authorization"] = authorization end
  requests[#requests + 1] = { path = path, headers = headers, body = body }
end
local i = 0
local delay_ms = tonumber(os.getenv("DELAY_MS") or "0")
local threads = {}
statuses = {}
wrk.method = "POST"

setup = function(thread)
  threads[#threads + 1] = thread
end

init = function(args)
  i = math.random(#requests) - 1  -- each thread starts at its own place in the list
end

request = function()
  i = i + 1
  if i > #requests then i = 1 end
  local r = requests[i]
  return wrk.format(nil, r.path, r.headers, r.body)
end

response = function(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

if delay_ms > 0 then
  delay = function() return math.random(math.max(0, math.floor(delay_ms / 2)), math.ceil(delay_ms * 3 / 2)) end
end

done = function(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      counts[status] = (counts[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(counts) do parts[#parts + 1] = string.format("%d:%d", status, n) end
  local e = summary.errors
  io.write(string.format(
    "requests=%d rps=%.1f p50_ms=%.2f p99_ms=%.2f max_ms=%.2f errors=%d statuses=%s\n",
    summary.requests, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
    e.connect + e.read + e.write + e.timeout, table.concat(parts, ",")))
end
