//! The control protocol between `lbctl` and `lbd`: one JSON request per
//! line on a Unix socket, one JSON reply per line (a capture streams one
//! per event), both typed on both ends.
//!
//! - `request`: what lbctl asks (`{"v": 1, "cmd": "vip_show", ...}`), and
//!   lbd's reading of it.
//! - `reply`: every reply, `{"v": 1, "ok": true, "data": ...}` or
//!   `{"v": 1, "ok": false, "error": "..."}`, with one type per body.
//! - `version`: the protocol version and the messages for a mismatch.
//! - `client`: lbctl's end: send, check the version, read the body (typed,
//!   and as lbd sent it, for `--json`).
//! - `open`: enum values in replies, open to those a newer lbd adds.
//!
//! # Versions
//!
//! Every request and reply carries the sender's `PROTOCOL_VERSION` as `v`;
//! a message without one is version 0, from an lbd or lbctl of before
//! versions (v0.1.0), whose requests are version 1's without `v`.
//!
//! - lbd answers a request of its own version or an older one it still
//!   understands (`OLDEST_ANSWERED`), in the request's version: the
//!   reply's `v` is the request's, and its body what that version expects.
//!   A newer request is refused with an error naming both versions (in
//!   lbd's version, as is a request too malformed to have one).
//! - lbctl checks a reply's `v` before anything else in it: a newer one
//!   fails with `lbd speaks control protocol 2, this lbctl speaks 1: use
//!   the lbctl shipped with the running lbd (lbd --version)`. A reply it
//!   cannot read (a field missing or of another type) fails naming the
//!   field, both versions and the same advice. lbctl exits with status 1.
//! - Every reply of an lbd since versions carries `v`; one without is
//!   from an lbd of before them, and lbctl fails on it with the protocol 0
//!   message, success or not. Such an lbd refuses the `v` of most
//!   requests (they deny unknown fields), but answers those without
//!   arguments (`status`, `vip_list`, `stats`, `config_dump`) as if `v`
//!   were not there (serde ignores `deny_unknown_fields` on unit variants
//!   of an internally tagged enum, serde-rs/serde#2123), in its own
//!   version, which is not to be read as this one.
//!
//! # What needs a new version
//!
//! Requests deny unknown fields, every one of them (lbd checks those
//! without arguments itself, see above), so an lbd never half-does a
//! request it does not fully understand. Replies do not: lbctl reads
//! `config_dump` as plain JSON (the configuration's types deny unknown
//! fields), a hard limit as `HardLimitShow`, every value of an enum as
//! `Open`, which keeps the name of one it does not know, and skips a kind
//! of capture event it does not know. (The one exception is `vip_show`'s
//! `vip`, the request's own `VipRef`.) So within a version a reply may
//! gain a field (an `Option`, or with `#[serde(default)]`, so that a newer
//! lbctl reads an older lbd's reply without it), a value of an enum, an
//! option of the configuration or a capture event; an older lbctl reads
//! the reply, shows an unknown value by its name, and prints the reply as
//! lbd sent it with `--json`.
//! Removing, renaming or retyping a reply field, a new required request
//! field, or a new meaning for an old one raises `PROTOCOL_VERSION`; lbd
//! then reads the older requests it still answers (in `request::decode`)
//! and answers them as their version expects (by the `version`
//! `read_request` returns with each).

mod client;
mod open;
mod reply;
mod request;
mod version;

pub use client::{Body, ClientError, call, call_for_body, capture, read_reply};
pub use open::{Named, Open};
pub use reply::*;
pub use request::{
    MAX_REQUEST_BYTES, REQUEST_TIMEOUT, Received, Request, VipRef, encode, read_request,
};
pub use version::{
    OLDEST_ANSWERED, PROTOCOL_VERSION, UNVERSIONED, VERSION_TEXT, VersionError, check_reply,
    check_request,
};
