//! Trimming what is stored (`XTRIM MINID`), guarded so that a stream
//! recreated under the same key is never trimmed by the old position.

use std::sync::LazyLock;

use super::reader::entry_at;
use super::wire::Wire;
use crate::event::{EntryId, Fingerprint};

static TRIM_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("trim_stored.lua")));

/// Trims what is stored: XTRIM MINID `bound` (bound ≤ `position`, the last
/// stored entry), but only while the stream holds the entry `position` as
/// it was stored (its [`Fingerprint`] is `print`), so a stream recreated
/// under the same key — even with the same IDs — is never trimmed by the
/// old position. Returns the entries removed, `None` when the check
/// refused.
pub fn trim_stored(
    con: &mut Wire,
    key: &str,
    position: EntryId,
    print: Fingerprint,
    bound: EntryId,
    position_is_giant: bool,
) -> redis::RedisResult<Option<u64>> {
    debug_assert!(bound <= position);
    // An entry too large to store is checked here, not in Lua: the script
    // would copy it whole inside Redis, and Redis serves no one meanwhile.
    let scripted = if position_is_giant {
        None
    } else {
        match TRIM_SCRIPT
            .key(key)
            .arg(position.to_string())
            .arg(bound.to_string())
            .arg(print.to_string())
            .invoke::<i64>(con)
        {
            Ok(trimmed) => Some(trimmed),
            Err(err) if scripting_unavailable(&err) => None,
            Err(err) => return Err(err),
        }
    };
    if let Some(trimmed) = scripted {
        return Ok(u64::try_from(trimmed).ok());
    }
    // Scripting disabled (some managed Redis), or a giant: the same check
    // under WATCH, so a key written meanwhile aborts the trim (the next
    // commit tries again).
    redis::cmd("WATCH").arg(key).exec(con)?;
    if entry_at(con, key, position)?.is_none_or(|e| e.fingerprint() != print) {
        redis::cmd("UNWATCH").exec(con)?;
        return Ok(None);
    }
    let trimmed: Option<(i64,)> = redis::pipe()
        .atomic()
        .cmd("XTRIM")
        .arg(key)
        .arg("MINID")
        .arg(bound.to_string())
        .query(con)?;
    Ok(trimmed.and_then(|(n,)| u64::try_from(n).ok()).or(Some(0)))
}

/// Scripts renamed away, or forbidden by an ACL (`-@scripting`).
fn scripting_unavailable(err: &redis::RedisError) -> bool {
    let text = err.to_string().to_lowercase();
    let about_scripts = text.contains("eval") || text.contains("script");
    let refused = text.contains("unknown command")
        || err.code() == Some("NOPERM")
        || text.contains("no permissions");
    refused && about_scripts
}
