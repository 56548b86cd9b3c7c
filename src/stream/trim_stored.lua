-- XTRIM MINID ARGV[2] on KEYS[1], but only while the stream is the one whose
-- entries up to ARGV[1] (the last stored ID) genalytics stored: that entry
-- is still there, or Redis recorded it as deleted (max-deleted-entry-id at
-- or above it, Redis 7). A stream deleted and recreated under the same key
-- fails the test and is left alone. Returns the entries trimmed, or -1.
local key, position, bound = KEYS[1], ARGV[1], ARGV[2]

local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return ms, seq
end

-- IDs compare as pairs of unsigned decimals: longer is larger, then text.
local function less(a, b)
  local ams, aseq = parse(a)
  local bms, bseq = parse(b)
  if #ams ~= #bms then return #ams < #bms end
  if ams ~= bms then return ams < bms end
  if #aseq ~= #bseq then return #aseq < #bseq end
  return aseq < bseq
end

if #redis.call('XRANGE', key, position, position, 'COUNT', 1) == 0 then
  local ok, info = pcall(redis.call, 'XINFO', 'STREAM', key)
  if not ok then return -1 end
  local deleted
  for i = 1, #info, 2 do
    if info[i] == 'max-deleted-entry-id' then deleted = info[i + 1] end
  end
  if deleted == nil or less(deleted, position) then return -1 end
end
return redis.call('XTRIM', key, 'MINID', bound)
