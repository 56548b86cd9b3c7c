-- XTRIM MINID ARGV[2] on KEYS[1], but only while the stream holds the
-- entry ARGV[1], the last one genalytics stored: then it is the stream that
-- entry came from. A stream deleted and recreated under the same key fails
-- the test and is left alone (so, harmlessly, is one whose cap trimmed that
-- entry; the next commit's position trims it). Returns the entries trimmed,
-- or -1.
local key, position, bound = KEYS[1], ARGV[1], ARGV[2]
if #redis.call('XRANGE', key, position, position, 'COUNT', 1) == 0 then
  return -1
end
return redis.call('XTRIM', key, 'MINID', bound)
