//! The control protocol between `lbctl` and `lbd`: one JSON request per
//! line on a Unix socket, one JSON reply per line (a capture streams one
//! per event), both typed on both ends.
//!
//! - `request`: what lbctl asks (`{"v": 1, "cmd": "vip_show", ...}`), and
//!   lbd's reading of it.
//! - `reply`: every reply, `{"v": 1, "ok": true, "data": ...}` or
//!   `{"v": 1, "ok": false, "error": "..."}`, with one type per body.
//! - `version`: the protocol version and the messages for a mismatch.
//! - `client`: lbctl's end: send, check the version, read the body.
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
//! - An lbd from before versions refuses the `v` of a request (its
//!   requests deny unknown fields); lbctl reports that as protocol 0.
//!
//! # What needs a new version
//!
//! Requests deny unknown fields, so an lbd never half-does a request it
//! does not fully understand. Replies do not: a field added to a reply,
//! as an `Option` or with `#[serde(default)]`, needs no new version (an
//! older lbctl ignores it; a newer lbctl reads an older lbd's reply
//! without it). Removing, renaming or retyping a reply field, a new
//! required request field, or a new meaning for an old one raises
//! `PROTOCOL_VERSION`; lbd then reads the older requests it still answers
//! (in `request::decode`) and answers them as their version expects (by
//! the `version` `read_request` returns with each).

mod client;
mod reply;
mod request;
mod version;

pub use client::{ClientError, call, capture, read_reply};
pub use reply::*;
pub use request::{
    MAX_REQUEST_BYTES, REQUEST_TIMEOUT, Received, Request, VipRef, encode, read_request,
};
pub use version::{
    OLDEST_ANSWERED, PROTOCOL_VERSION, UNVERSIONED, VERSION_TEXT, VersionError, check_reply,
    check_request,
};
