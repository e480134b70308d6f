//! Per-CPU token buckets, kept in credit nanoseconds so taking a token is
//! an add, a min and a compare: the ICMP too-big answers (`pmtu.rs`) and
//! the promotions into the connection table (`probation.rs`) are limited
//! this way. Per CPU, so no two CPUs write one cache line.

/// A CPU's bucket, in a per-CPU map that is never pinned: a restart fills
/// the buckets, which allows one burst more.
#[derive(Clone, Copy)]
pub struct Bucket {
    /// Saved-up credit, at most the limit's burst.
    pub credit_ns: u64,
    /// When the credit was last brought up to date.
    pub last_ns: u64,
}

/// Take one token costing `interval_ns` from `bucket` at time `now`, the
/// credit capped at `burst_ns`; false when there is not enough credit.
#[inline(always)]
pub fn take(bucket: &mut Bucket, interval_ns: u64, burst_ns: u64, now: u64) -> bool {
    let earned = now.saturating_sub(bucket.last_ns);
    let credit = bucket.credit_ns.saturating_add(earned).min(burst_ns);
    bucket.last_ns = now;
    if credit < interval_ns {
        bucket.credit_ns = credit;
        return false;
    }
    bucket.credit_ns = credit - interval_ns;
    true
}
