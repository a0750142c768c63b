//! The names of everything this engine keeps in Redis: one place to read the key space.

/// Channel every node listens on for presence changes.
pub(super) const PRESENCE_CHANNEL: &str = "mg:presence";
/// Channel every node listens on for broadcasts (one publish reaches them all).
pub(super) const BROADCAST_CHANNEL: &str = "mg:broadcast";
/// Set of the nodes that joined (members are swept when their lease is gone).
pub(super) const NODES_KEY: &str = "mg:nodes";
/// The page-token key the nodes share.
pub(super) const CURSOR_KEY: &str = "mg:cursor-key";
/// Bucket `bucket` of `caller`'s idempotency keys: its hash (key to marker or answer) and
/// its sorted set (key by claim time), under one hash tag. The caller's name is length-
/// prefixed, so no name and bucket can spell another's; a name with a `}` (a certificate's
/// may have one) ends the tag early, the same way for both keys: still one slot.
pub(super) fn idempotency_bucket(caller: &str, bucket: u64) -> [String; 2] {
    let hash = format!("mg:idem:{{{}:{caller}/{bucket}}}", caller.len());
    let age = format!("{hash}:age");
    [hash, age]
}

pub(super) fn users_key(node: &str) -> String {
    format!("mg:{{{node}}}:users")
}

pub(super) fn lease_key(node: &str) -> String {
    format!("mg:{{{node}}}:lease")
}

pub(super) fn lock_key(node: &str) -> String {
    format!("mg:{{{node}}}:sweep")
}

pub(super) fn inbox(node: &str) -> String {
    format!("mg:{{{node}}}:in")
}

/// Set by the node that sweeps `node`: `node`, if alive after all (frozen, cut off), finds it
/// and fences itself before it serves again.
pub(super) fn swept_key(node: &str) -> String {
    format!("mg:{{{node}}}:swept")
}

/// The node holding the recoverable session `pid` while its client is away (written only
/// then, with the recovery window as its TTL).
pub(super) fn session_key(pid: &str) -> String {
    format!("mg:sess:{pid}")
}
