-- XTRIM MINID ARGV[2] on KEYS[1], but only while the stream holds the
-- entry ARGV[1], the last one genalytics stored, as it was stored: its
-- fingerprint (ARGV[3], the SHA-1 of its names and values packed as a
-- MessagePack array, as reader.rs computes it) matches. Then it is the
-- stream that entry came from. A stream deleted and recreated under the
-- same key — even with the same IDs — fails the test and is left alone (so,
-- harmlessly, is one whose cap trimmed that entry; the next commit's
-- position trims it). Returns the entries trimmed, or -1.
local key, position, bound, expected = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local entry = redis.call('XRANGE', key, position, position, 'COUNT', 1)[1]
if entry == nil then
  return -1
end
if redis.sha1hex(cmsgpack.pack(entry[2])) ~= expected then
  return -1
end
return redis.call('XTRIM', key, 'MINID', bound)
