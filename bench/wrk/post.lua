-- POST one body, read once from the file in BENCH_BODY, with the Content-Type in BENCH_TYPE.
-- At the end, print one JSON line with what bench/endpoint.py records.

local file = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = os.getenv("BENCH_TYPE") or "application/json"
wrk.headers["Accept"] = "application/json"


function done(summary, latency, requests)
  io.write(string.format(
    'BENCH {"requests": %d, "seconds": %.6f, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"max_us": %d, "mean_us": %.1f, "connect_errors": %d, "read_errors": %d, ' ..
    '"write_errors": %d, "timeouts": %d, "non_2xx": %d}\n',
    summary.requests, summary.duration / 1e6,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.timeout, summary.errors.status))
end
