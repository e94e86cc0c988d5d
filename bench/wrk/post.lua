-- POST one body, read once from the file in BENCH_BODY, with the Content-Type in BENCH_TYPE.
-- At the end, print one JSON line with what bench/endpoint.py records and, if BENCH_HISTOGRAM
-- names a file, write the latency histogram there ("microseconds count" lines). wrk hands
-- `done` its coordinated-omission-corrected histogram; bench/latency.py takes the correction
-- back out. Lua sees the histogram only through an O(max) lookup per value, so it is read
-- from wrk's `stats` struct (src/stats.h: count, limit, min, max, data[]) through LuaJIT's FFI.

local file = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = os.getenv("BENCH_TYPE") or "application/json"
wrk.headers["Accept"] = "application/json"


local function write_histogram(latency, path)
  local ok, ffi = pcall(require, "ffi")
  if not ok then return false end
  pcall(ffi.cdef, [[
    typedef struct { uint64_t count, limit, min, max; uint64_t data[]; } bench_wrk_stats;
  ]])
  local stats = ffi.cast("bench_wrk_stats **", latency)[0]
  if tonumber(stats.min) ~= latency.min or tonumber(stats.max) ~= latency.max then
    return false  -- not the layout this was written for
  end
  local out = assert(io.open(path, "w"))
  for value = tonumber(stats.min), tonumber(stats.max) do
    local count = tonumber(stats.data[value])
    if count > 0 then out:write(value, " ", count, "\n") end
  end
  out:close()
  return true
end


function done(summary, latency, requests)
  local path = os.getenv("BENCH_HISTOGRAM")
  local histogram = path ~= nil and path ~= "" and write_histogram(latency, path)
  io.write(string.format(
    'BENCH {"requests": %d, "seconds": %.6f, "duration_us": %d, "p50_us": %d, "p90_us": %d, ' ..
    '"p99_us": %d, "max_us": %d, "mean_us": %.1f, "connect_errors": %d, "read_errors": %d, ' ..
    '"write_errors": %d, "timeouts": %d, "non_2xx": %d, "histogram": %s}\n',
    summary.requests, summary.duration / 1e6, summary.duration,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.timeout, summary.errors.status, histogram and "true" or "false"))
end
