-- wrk script for the session benchmarks (benchmarks/run.py passes the arguments after `--`).
--
--   wrk ... -s session.lua URL -- login PATH CONNECTIONS
--       Each connection first obtains its own session: it sends GET /login without a cookie and the
--       Set-Cookie of the answer joins the thread's pool. Once the pool holds one cookie per connection,
--       every request is GET PATH with the pool's cookies in turn. With one request in flight per
--       connection and a server that answers in order, the cookie in turn is the one the connection that
--       just finished was using, so no two requests in flight share a session. The login requests
--       (about one per connection) are counted in wrk's totals; the harness reports how many.
--   wrk ... -- none PATH
--       GET PATH with no cookie at all.
--   wrk ... -- keys PATH KEYS_FILE COOKIE_NAME
--       GET PATH with a cookie picked at random from KEYS_FILE (one key a line) for each request: reads
--       spread over a pre-populated store.
--   wrk ... -- shared PATH NAME=VALUE
--       One session for every connection: GET PATH with the cookie NAME=VALUE (the harness logged in
--       once), so the requests in flight all share it. Like a browser's one cookie jar, a Set-Cookie for
--       NAME with a new value replaces the cookie the following requests send (a cookie-stored session
--       lives in the cookie itself); a Set-Cookie that deletes the cookie (empty value or Max-Age=0) is
--       not followed, the answer is counted as it comes. No login requests.
--
-- done() prints one line "WRKJSON {...}" with the totals, the latency percentiles in microseconds, the
-- number of non-2xx answers, the logins, and "WRKCOOKIE name=value" lines: the sessions it created
-- (login), or the shared cookie as it stood at the end (shared).

mode = "login"
path = "/read"
wanted = 1
pool = {}
requests_by_cookie = {}
turn = 0
non2xx = 0
logins = 0
key_requests = {}

local threads = {}
local login_request = nil
local plain_request = nil
local shared_prefix = nil
local shared_request = nil

function setup(thread)
   thread:set("id", #threads + 1)
   table.insert(threads, thread)
end

function init(args)
   mode = args[1] or "login"
   path = args[2] or "/read"
   login_request = wrk.format("GET", "/login")
   plain_request = wrk.format("GET", path)
   if mode == "login" then
      wanted = tonumber(args[3]) or 1
   elseif mode == "keys" then
      local cookie_name = args[4] or "session"
      local file = assert(io.open(args[3], "r"))
      for key in file:lines() do
         if #key > 0 then
            table.insert(key_requests, wrk.format("GET", path, { Cookie = cookie_name .. "=" .. key }))
         end
      end
      file:close()
      math.randomseed(os.time() * 1000 + (id or 0))
   elseif mode == "shared" then
      local cookie = assert(args[3], "shared mode needs the cookie NAME=VALUE")
      shared_prefix = assert(string.match(cookie, "^([^=]+=)"), "the shared cookie must be NAME=VALUE")
      pool = { cookie }
      shared_request = wrk.format("GET", path, { Cookie = cookie })
   end
end

function request()
   if mode == "none" then
      return plain_request
   elseif mode == "keys" then
      return key_requests[math.random(#key_requests)]
   elseif mode == "shared" then
      return shared_request
   end
   if #pool < wanted then
      logins = logins + 1
      return login_request
   end
   turn = turn % #pool + 1
   return requests_by_cookie[turn]
end

function response(status, headers, body)
   if status < 200 or status > 299 then
      non2xx = non2xx + 1
   end
   if mode == "shared" then
      follow_shared(headers)
      return
   end
   if mode == "login" and #pool < wanted then
      for name, value in pairs(headers) do
         if string.lower(name) == "set-cookie" then
            local cookie = string.match(value, "^%s*([^;]+)")
            if cookie then
               table.insert(pool, cookie)
               table.insert(requests_by_cookie, wrk.format("GET", path, { Cookie = cookie }))
            end
         end
      end
   end
end

-- The browser's cookie jar in shared mode: adopt a new value of the shared cookie, ignore deletions.
function follow_shared(headers)
   for name, value in pairs(headers) do
      if string.lower(name) == "set-cookie" then
         local cookie = string.match(value, "^%s*([^;]+)")
         if cookie and cookie ~= pool[1] and string.sub(cookie, 1, #shared_prefix) == shared_prefix then
            local bare = string.sub(cookie, #shared_prefix + 1)
            local max_age = tonumber(string.match(string.lower(value), "max%-age=(%d+)"))
            if bare ~= "" and bare ~= '""' and max_age ~= 0 then
               pool[1] = cookie
               shared_request = wrk.format("GET", path, { Cookie = cookie })
            end
         end
      end
   end
end

function done(summary, latency, requests)
   local bad, logged_in = 0, 0
   for _, thread in ipairs(threads) do
      bad = bad + (thread:get("non2xx") or 0)
      logged_in = logged_in + (thread:get("logins") or 0)
      local cookies = thread:get("pool")
      if cookies then
         for _, cookie in ipairs(cookies) do
            io.write("WRKCOOKIE ", cookie, "\n")
         end
      end
   end
   local e = summary.errors
   io.write(string.format(
      'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,"read_errors":%d,'
         .. '"write_errors":%d,"status_errors":%d,"timeouts":%d,"non2xx":%d,"logins":%d,'
         .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
      summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
      bad, logged_in, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
      latency.mean))
end
