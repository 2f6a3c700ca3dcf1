"""How asession keeps a session in Redis: one hash per session, written and merged by Lua scripts.

Each field is the JSON text of a top-level key (``"cart"``, quotes included), its value the JSON text of that
key's value, so that an update writes only the keys it changed. A load is one ``HGETALL``, joined into
``{field:value,...}`` (:func:`join`), which the base class decodes and checks like any stored JSON. Redis
drops an empty hash, so an empty session keeps a single field with an empty name, which no JSON text is.
Sessions stored as one string by earlier versions load too (``HGETALL`` answers ``WRONGTYPE``, then ``GET``)
and become hashes at their first update (:data:`CONVERT`).

Every script touches one key, the session's, so each runs on the node that holds it in a Redis Cluster.
Both Redis clients send them: asession's own (:mod:`asession.backends._redis`) and redis-py's
(:mod:`asession.backends._redis_py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from json.encoder import encode_basestring
from typing import Any

from asession import serializers
from asession.backends._resp import Script
from asession.exceptions import SessionError

__all__ = [
    "CONVERT",
    "CORRUPT",
    "CREATE",
    "MISSING",
    "REPLACE",
    "STRING",
    "TOO_LARGE",
    "UPDATE",
    "WRITTEN",
    "as_fields",
    "field_name",
    "join",
    "too_large",
]

# The scripts below share this helper: HSET of ARGV[first], ARGV[first + 1], ...
# in slices, since Lua's unpack() fails beyond about 8000 values.
_HSET_FROM = """
local function hset_from(key, first)
  for i = first, #ARGV, 1000 do
    redis.call('HSET', key, unpack(ARGV, i, math.min(i + 999, #ARGV)))
  end
end
"""

#: Create or replace a session. KEYS[1] the session; ARGV[1] the TTL; then its fields and values in turn.
REPLACE = Script(
    _HSET_FROM
    + """
redis.call('DEL', KEYS[1])
hset_from(KEYS[1], 2)
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""
)

#: Create a session only if its key is free (0 when taken). Arguments as for :data:`REPLACE`.
CREATE = Script(
    _HSET_FROM
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
hset_from(KEYS[1], 2)
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""
)

#: Rewrite a session stored as one string (earlier versions) as a hash, only if the string is still the one
#: the merge started from (0 otherwise). KEYS[1] the session; ARGV[1] the TTL; ARGV[2] that string; then the
#: merged session's fields and values in turn.
CONVERT = Script(
    _HSET_FROM
    + """
if redis.call('TYPE', KEYS[1]).ok ~= 'string' or redis.call('GET', KEYS[1]) ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
hset_from(KEYS[1], 3)
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""
)

# What UPDATE answers, as the first item of its reply.
MISSING, STRING, CORRUPT, TOO_LARGE, WRITTEN = range(5)

#: Merge a request's changes into a session. KEYS[1] the session; ARGV[1] 'TTL MAX_SIZE REPLACE REMOVED' (the
#: TTL, max_size, 1 to replace the whole session or 0, how many fields to delete: one argument rather than
#: four, since every argument costs the client an encoding on every update); then the fields to delete; then
#: the fields and values to set, in turn. Answers {0} nothing stored, {1, text} a session stored as one
#: string, {2, why} corrupt, {3, size} too large (nothing written in these four cases), and 4, a plain
#: integer rather than an array, the usual answer, when written.
#: The size is that of the JSON text a load joins: '{' and '}', and per field 'name:value' and a ','
#: (one fewer than fields), in bytes as the load measures it.
UPDATE = Script(
    _HSET_FROM
    + """
local key = KEYS[1]
local kind = redis.call('TYPE', key).ok
if kind == 'none' then return {0} end
if kind == 'string' then return {1, redis.call('GET', key)} end
if kind ~= 'hash' then return {2, 'a Redis ' .. kind .. ' is stored under the key'} end
local ttl, max_size, replace_flag, removed = string.match(ARGV[1], '^(%d+) (%d+) ([01]) (%d+)$')
local replace = replace_flag == '1'
local first = 2 + tonumber(removed)
local size, count, marker = 1, 0, false
if not replace then
  local dropped = {}
  for i = 2, first - 1 do dropped[ARGV[i]] = true end
  for i = first, #ARGV, 2 do dropped[ARGV[i]] = true end
  local stored = redis.call('HGETALL', key)
  for i = 1, #stored, 2 do
    local field, value = stored[i], stored[i + 1]
    if field == '' then
      marker = true
    elseif not dropped[field] then
      local ok, name = pcall(cjson.decode, field)
      if not ok or type(name) ~= 'string' then
        return {2, 'a field name is not JSON text: ' .. string.sub(field, 1, 40)}
      end
      if not pcall(cjson.decode, value) then
        return {2, 'the value of ' .. string.sub(field, 1, 40) .. ' is not JSON text'}
      end
      size = size + #field + #value + 2
      count = count + 1
    end
  end
end
for i = first, #ARGV, 2 do
  size = size + #ARGV[i] + #ARGV[i + 1] + 2
  count = count + 1
end
if count == 0 then size = 2 end
if size > tonumber(max_size) then return {3, size} end
if replace then
  redis.call('DEL', key)
else
  for i = 2, first - 1, 1000 do
    redis.call('HDEL', key, unpack(ARGV, i, math.min(i + 999, first - 1)))
  end
end
hset_from(key, first)
if count == 0 then
  redis.call('HSET', key, '', '')
elseif marker then
  redis.call('HDEL', key, '')
end
redis.call('EXPIRE', key, ttl)
return 4
"""
)

#: The field and value that keep an empty session alive: Redis deletes a hash with no fields, and no JSON
#: text is empty, so this field cannot be a session key.
_EMPTY_SESSION = (b"", b"")


def field_name(key: object) -> str:
    """A session key's JSON text, the name of its field (``cart`` -> ``"cart"``)."""
    if isinstance(key, str):
        return encode_basestring(key)
    text = serializers.dumps_value({key: 0})  # JSON's own spelling of a key that is not a string: 1 -> "1"
    return text[1 : text.rindex(":")]


def as_fields(data: Mapping[str, Any]) -> list[bytes | str | int]:
    """``data`` as a hash: each key's JSON text followed by its value's, in turn."""
    pairs: list[bytes | str | int] = []
    try:
        for key, value in data.items():
            pairs += (field_name(key).encode(), serializers.dumps_value(value).encode())
    except TypeError:
        serializers.dumps(data)  # raises the TypeError that names the offending key
        raise
    return pairs or list(_EMPTY_SESSION)


def _template(fields: int) -> bytes:
    return b"{" + b",".join([b"%b:%b"] * fields) + b"}"


#: ``{%b:%b,%b:%b}`` for sessions of up to 32 keys: one ``%`` joins a loaded hash at a fifth of the cost of
#: building the pairs one by one, and every load goes through it.
_TEMPLATES = [_template(fields) for fields in range(33)]


def join(fields: list[bytes]) -> bytes:
    """A session's JSON text from its hash's fields and values in turn (``HGETALL``)."""
    count = len(fields) // 2
    if count == 1 and not fields[0]:
        return b"{}"  # the field that keeps an empty session alive
    template = _TEMPLATES[count] if count < len(_TEMPLATES) else _template(count)
    return template % tuple(fields)


def too_large(size: int, max_size: int) -> SessionError:
    return SessionError(
        f"The session is {size} bytes once serialized, over the limit of {max_size} bytes. "
        "Store less in the session, or raise the backend's max_size."
    )
