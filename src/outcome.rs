//! What a delivery reached: the answers the gateway gives its callers, and the shares other
//! nodes answer with. A leaf module: the gateway and the cluster engines both speak it, and
//! neither has to know the other to do so.

/// What a send reached (also stored as an idempotent call's answer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sent {
    /// Sockets whose live connection took the message, on every node that answered.
    pub delivered: u32,
    /// Sockets away within their recovery window that kept it: their clients get it if they
    /// reconnect in time (connection state recovery).
    #[serde(default)]
    pub pending: u32,
    /// Some node holding the receiver did not answer within the cluster timeout.
    pub partial: bool,
    /// Sockets that acknowledged it in time (acknowledged sends only).
    pub acked: u32,
    /// Nobody took (or acknowledged) it: it waits in the mailbox for the receiver's next
    /// connect.
    #[serde(default)]
    pub queued: bool,
}

/// What a broadcast (or one node's share of it) reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reached {
    /// Users with at least one socket that took the message, summed over nodes.
    pub users: u32,
    /// Sockets that took it.
    pub sockets: u32,
    /// Sockets away within their recovery window that kept it.
    pub pending: u32,
    /// Sockets that refused it (buffer full or connection gone).
    pub refused: u32,
    /// Some node did not answer within the cluster timeout.
    pub partial: bool,
}

impl std::ops::AddAssign for Reached {
    fn add_assign(&mut self, other: Self) {
        self.users += other.users;
        self.sockets += other.sockets;
        self.pending += other.pending;
        self.refused += other.refused;
        self.partial |= other.partial;
    }
}

/// What a node answered for a delivery: per user asked, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answered {
    /// Sockets that took the message.
    pub delivered: Vec<u32>,
    /// Sockets away within their recovery window that kept it.
    pub pending: Vec<u32>,
    /// Sockets that acknowledged it by the deadline (empty when no ack was asked).
    pub acked: Vec<u32>,
}

/// What one node's sockets of one user did with a message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Took {
    /// Sockets whose live connection took it.
    pub delivered: u32,
    /// Sockets away within their recovery window that kept it.
    pub pending: u32,
}

impl From<Took> for Sent {
    fn from(took: Took) -> Self {
        Self {
            delivered: took.delivered,
            pending: took.pending,
            ..Self::default()
        }
    }
}

/// A recoverable session handed by the node that held it to the node its client reconnected
/// to (connection state recovery across nodes).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Handoff {
    /// The `socket.id` the client saw.
    pub public_id: String,
    /// What the client missed, in order: each event's offset and its encoded Socket.IO packet.
    pub events: Vec<(String, String)>,
}

/// Why a reconnect could not recover its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Refusal {
    /// No such session (never, or ended: expired, disconnected on purpose, overflowed), or
    /// the node holding it did not answer.
    Unknown,
    /// The session's window passed.
    Expired,
    /// The session belongs to another user.
    OtherUser,
    /// The client's offset is not among the kept events: it missed some that are gone.
    Gap,
}
