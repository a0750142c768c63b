//! What a delivery reached: the answers the gateway gives its callers, and the shares other
//! nodes answer with. A leaf module: the gateway and the cluster engines both speak it, and
//! neither has to know the other to do so.

/// What a send reached (also stored as an idempotent call's answer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sent {
    /// Sockets that took the message, on every node that answered.
    pub delivered: u32,
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
    /// Sockets that refused it (buffer full or connection gone).
    pub refused: u32,
    /// Some node did not answer within the cluster timeout.
    pub partial: bool,
}

impl std::ops::AddAssign for Reached {
    fn add_assign(&mut self, other: Self) {
        self.users += other.users;
        self.sockets += other.sockets;
        self.refused += other.refused;
        self.partial |= other.partial;
    }
}

/// What a node answered for a delivery: per user asked, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answered {
    /// Sockets that took the message.
    pub delivered: Vec<u32>,
    /// Sockets that acknowledged it by the deadline (empty when no ack was asked).
    pub acked: Vec<u32>,
}
