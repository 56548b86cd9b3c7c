-- Entries of KEYS[1] after ARGV[1] (exclusive) up to ARGV[2] ('+' or an ID),
-- at most ARGV[3] of them and, beyond the first, at most ARGV[4] bytes.
-- Redis cannot bound a reply by bytes, so entries are taken a few at a time
-- (one at first, more while they are small against the budget, never more
-- than CHUNK_MAX) and the reply ends once the budget is spent: a run of
-- giant entries after small ones costs the reader one giant, not a read's
-- count of them (and Redis at most CHUNK_MAX of them for a moment).
-- With ARGV[5] the fingerprint of the entry ARGV[1] as the reader read it,
-- it also says whether that very entry is still there, in the same atomic
-- step: entries read while it is there follow it in its own stream, not in
-- a stream recreated with the same IDs. The fingerprint is the SHA-1 of the
-- packed names and values (pack.rs packs the same bytes).
-- Returns {held (1/0), {id, packed fields, id, …}, drained (1/0)}: drained
-- when no entry in the range was left unread.
local key, after, last = KEYS[1], ARGV[1], ARGV[2]
local count, budget = tonumber(ARGV[3]), tonumber(ARGV[4])
local CHUNK_MAX = 8
-- What holding a field costs the reader besides its bytes (two vectors).
local PER_FIELD = 128

-- An entry's names and values as one MessagePack array of strings (by
-- Redis's own cmsgpack, in C): what the fingerprint hashes, and how entries
-- go back to the reader — two strings an entry, not one per name and
-- value, far cheaper for Redis to send and for the reader to take apart.
local pack = cmsgpack.pack

local held = 1
if ARGV[5] ~= '' then
  local anchor = redis.call('XRANGE', key, after, after, 'COUNT', 1)[1]
  if anchor == nil or redis.sha1hex(pack(anchor[2])) ~= ARGV[5] then
    held = 0
  end
end

local out, n, bytes, largest, start, drained = {}, 0, 0, 1, '(' .. after, 0
local chunk = 1
while n < count and (n == 0 or bytes < budget) do
  local got = redis.call('XRANGE', key, start, last, 'COUNT', chunk)
  local taken = 0
  for i = 1, #got do
    if n > 0 and bytes >= budget then break end
    local entry = got[i]
    local packed = pack(entry[2])
    local size = 64 + #packed + #entry[2] * PER_FIELD / 2
    out[2 * n + 1] = entry[1]
    out[2 * n + 2] = packed
    n = n + 1
    taken = taken + 1
    bytes = bytes + size
    if size > largest then largest = size end
    start = '(' .. entry[1]
  end
  if taken < #got then break end
  if #got < chunk then
    drained = 1
    break
  end
  local room = math.floor((budget - bytes) / largest)
  chunk = math.max(1, math.min(CHUNK_MAX, chunk * 2, count - n, room))
end
return {held, out, drained}
