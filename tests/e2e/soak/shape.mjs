// The soak run's load and its bounds, shared by the run (soak/run.mjs) and its report.

/** Every RPC's deadline; an answer later than this is a breach. */
export const RPC_DEADLINE_MS = 5_000;
export const STEADY_USERS = 12;
export const TABS_PER_USER = 2;
export const SLOW_READERS = 3;
export const FLOODERS = 2;
export const CHURN_LOOPS = 3;
/** How long the load drivers get to notice the stop (each awaits at most one RPC deadline). */
export const DRIVER_STOP_MS = 30_000;
/** Node lease in cluster mode: a killed node's users must vanish within lease + lease/5. */
export const LEASE_MS = 2_000;
/**
 * --recovery-window-ms of each node: a dropped tab's session is kept (its user online) this
 * long, so presence settles only after it. Short, so that the run's checks come soon and a
 * drop past it fits in a smoke run, yet 2 s longer than a drop meant to be recovered.
 */
export const RECOVERY_WINDOW_MS = 4_000;
/** --cluster-timeout-ms of each node: a node silent this long makes an answer partial. */
export const CLUSTER_TIMEOUT_MS = 1_000;
/** Redis paused (SIGSTOP) longer than the cluster timeout but within the lease... */
export const REDIS_PAUSE_MS = 1_600;
/** ...and once longer than the lease: no node can renew, none may sweep the others for it. */
export const REDIS_PAUSE_LONG_MS = 2 * LEASE_MS + 500;
/** A node frozen (SIGSTOP) this long: the others presume it dead before it wakes. */
export const FREEZE_MS = 2 * LEASE_MS + 500;
/** A retry with the same idempotency key after an error must be answered within this. */
export const RETRY_DEADLINE_MS = 3_000;
/**
 * After a fault ends, how long the cluster gets to reconcile before the probes judge it: a
 * queued message reached the user's connected tab, a frozen node's sockets are either told and
 * reconnected or listed online again, a DisconnectUser decided meanwhile was carried out.
 */
export const RECONCILE_MS = 2 * LEASE_MS + 2_000;
/** Bounds on the drift from the baseline once the load has stopped. */
export const RSS_BOUND_MIB = 64;
export const FD_BOUND = 16;
/** Redis keys allowed at the end of a cluster run, per user online and per node. */
export const KEYS_PER_USER = 4;
export const KEYS_PER_NODE = 8;
/**
 * Users with one dropping tab each (dropping.mjs): the tab drops its transport every few
 * seconds and reconnects by itself while two lanes of their own keep sending to it.
 */
export const DROPPING_USERS = 4;
/** A dropping tab's n-th drop outlasts the window when (n + tab index) % this is 2. */
export const LONG_DROP_EVERY = 6;
/** How long a dropping tab stays up between drops, and down in a drop within the window. */
export const DROP_UP_MS = [1_500, 4_000];
export const DROP_DOWN_MS = [200, 2_000];
