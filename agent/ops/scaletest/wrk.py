"""Load with ``wrk``: the Lua scripts (stale reads, yips between random packs) and the run that reads
their latency histograms back.
"""

from __future__ import annotations

import os
import re
import subprocess
from typing import Any

from canidae.agent.ops.scaletest.report import hist_pcts
from canidae.core.errors import Timeout

WRK = "/usr/bin/wrk"


# wrk scripts: requests to random packs of the run (``prefix<batch>-<i>``), figures printed by done().
_WRK_COMMON = """
local prefix = "{prefix}"
local total = {total}
local batch = {batch}
math.randomseed({seed})
wrk.headers["Authorization"] = "Bearer " .. os.getenv("CANIDAE_WRK_TOKEN")
local function pack()
  local n = math.random(0, total - 1)
  return prefix .. math.floor(n / batch) .. "-" .. (n % batch)
end
-- Error answers: counted by status, the last one kept (the first 200 bytes), read back in done().
local threads = {{}}
setup = function(thread) table.insert(threads, thread) end
errors = ""
last_error = ""
local seen = {{}}
response = function(status, headers, body)
  if status >= 400 then
    seen[status] = (seen[status] or 0) + 1
    errors = ""
    for code, n in pairs(seen) do errors = errors .. code .. "=" .. n .. " " end
    last_error = string.sub(body or "", 1, 200)
  end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("CANIDAE-WRK %d %d %d %d\\n", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status))
  for _, t in ipairs(threads) do
    io.write("CANIDAE-CODES " .. (t:get("errors") or "") .. "\\n")
    io.write("CANIDAE-LAST " .. string.gsub(t:get("last_error") or "", "\\n", " ") .. "\\n")
  end
  -- The whole latency histogram (microseconds, count), so that windows merge exactly.
  for i = 1, #latency do
    local v, c = latency(i)
    io.write(string.format("CANIDAE-H %d %d\\n", v, c))
  end
end
"""


WRK_READ = (
    _WRK_COMMON
    + """
request = function()
  return wrk.format("GET", "/v1/packs/" .. pack() .. "?stale=1")
end
"""
)


WRK_YIP = (
    _WRK_COMMON
    + """
wrk.headers["Content-Type"] = "application/json"
local body = '{{"text":"yip from the scale test"}}'
request = function()
  return wrk.format("POST", "/v1/yips/" .. pack(), nil, body)
end
"""
)


def run_wrk(url: str, script: str, seconds: float, connections: int, token: str) -> dict[str, Any]:
    """One wrk run against ``url`` (an agent's https:// or http:// base): requests, errors and the
    latency histogram (µs -> count). wrk does not check certificates: it measures, it trusts nothing."""
    secs = max(1, round(seconds))
    cmd = [WRK, "-t1", f"-c{connections}", f"-d{secs}s", "--timeout", "5s", "-s", script, url]
    # The token goes through the environment: a command line is visible to every user of the machine.
    out = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=secs + 30,
        check=False,
        env={**os.environ, "CANIDAE_WRK_TOKEN": token},
    )
    m = re.search(r"CANIDAE-WRK (\d+) (\d+) (\d+) (\d+)", out.stdout)
    if not m:
        raise Timeout(f"wrk gave no figures (exit {out.returncode}): {out.stderr.strip()[:200]}")
    req, dur_us, sock_err, status_err = (int(x) for x in m.groups())
    codes: dict[str, int] = {}
    for m_codes in re.findall(r"CANIDAE-CODES ([^\n]*)", out.stdout):
        for item in m_codes.split():
            code, _, n = item.partition("=")
            codes[code] = codes.get(code, 0) + int(n)
    last = re.search(r"CANIDAE-LAST ([^\n]*)", out.stdout)
    hist: dict[int, int] = {}
    for v, n in re.findall(r"CANIDAE-H (\d+) (\d+)", out.stdout):
        hist[int(v)] = hist.get(int(v), 0) + int(n)
    return {
        "requests": req,
        "seconds": dur_us / 1e6,
        "per_s": req / (dur_us / 1e6) if dur_us else 0.0,
        "socket_errors": sock_err,
        "status_errors": status_err,
        "error_statuses": codes,
        "last_error": last.group(1).strip() if last and codes else None,
        "hist": hist,
        **hist_pcts(hist),
    }
