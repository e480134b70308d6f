//! Error messages on one line, with every cause, each said once.
//!
//! An error can tell its cause in two ways: in its own message
//! (`"loading the eBPF object: {0}"`), or by returning it from `source()`.
//! Many errors do both (aya's, and any `thiserror` type that writes `{0}` or
//! `{source}` into a message whose field is also `#[from]` or `#[source]`),
//! so printing the chain as it comes (anyhow's `{:#}`) says each such cause
//! twice: "map error: failed to create map `X`: map error: failed to create
//! map `X`: ...". `chain` and `report` walk the chain and leave out a cause
//! whose message the text already contains.
//!
//! This crate's own error types keep to one rule: a cause is written into
//! the message (with its own causes, through `chain`) and is not also
//! returned from `source()`. Their `to_string()` is then the whole story,
//! and no way of printing them repeats anything.

use std::error::Error;

/// `e` and its causes (`source()`), each message once, joined by `: `.
pub fn chain(e: &(dyn Error + 'static)) -> String {
    fn cause<'a>(e: &&'a (dyn Error + 'static)) -> Option<&'a (dyn Error + 'static)> {
        Error::source(*e)
    }
    join(std::iter::successors(Some(e), cause))
}

/// An `anyhow` error with its contexts and causes, each message once.
pub fn report(e: &anyhow::Error) -> String {
    join(e.chain())
}

fn join<'a>(errors: impl Iterator<Item = &'a (dyn Error + 'static)>) -> String {
    let mut text = String::new();
    for e in errors {
        let message = e.to_string();
        if message.is_empty() || text.contains(&message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&message);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    /// An error that, like aya's, names its cause and also returns it.
    #[derive(Debug, thiserror::Error)]
    #[error("map error: {0}")]
    struct Both(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("failed to create map `CONNS`")]
    struct Inner(#[source] std::io::Error);

    fn too_big() -> std::io::Error {
        std::io::Error::from_raw_os_error(libc::E2BIG)
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let e = anyhow::Error::new(Both(Inner(too_big()))).context("starting");
        let naive = format!("{e:#}");
        assert_eq!(naive.matches("failed to create map").count(), 2, "{naive}");
        let text = report(&e);
        assert_eq!(
            text,
            format!(
                "starting: map error: failed to create map `CONNS`: {}",
                too_big()
            )
        );
        assert_eq!(chain(&Both(Inner(too_big()))), text["starting: ".len()..]);
    }

    /// Every error type of this crate that wraps a cause, built with one.
    fn wrapping_errors() -> Vec<Box<dyn Error + Send + Sync + 'static>> {
        let io = || std::io::Error::from_raw_os_error(libc::EPERM);
        let map = || {
            aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_update_elem",
                io_error: io(),
            })
        };
        let json = serde_json::from_str::<u32>("x").unwrap_err();
        vec![
            Box::new(crate::maps::MapsError::Map {
                name: "VIPS",
                error: map(),
            }),
            Box::new(crate::maps::MapsError::Memory {
                name: "RINGS",
                error: crate::ring_memory::RingMemoryError::Mmap(io()),
            }),
            Box::new(crate::ring_memory::RingMemoryError::from(map())),
            Box::new(crate::control::ClientError::Connect {
                path: "/run/lbd/lbd.sock".into(),
                error: io(),
            }),
            Box::new(crate::control::ClientError::from(io())),
            Box::new(crate::control::ClientError::NotJson(json)),
        ]
    }

    #[test]
    fn own_errors_say_their_causes_once_however_printed() {
        let eperm = std::io::Error::from_raw_os_error(libc::EPERM).to_string();
        for e in wrapping_errors() {
            let text = e.to_string();
            assert!(e.source().is_none(), "{text}: cause also in source()");
            let e = anyhow::Error::from_boxed(e);
            let alternate = format!("{:#}", e.context("context"));
            assert_eq!(alternate, format!("context: {text}"));
            // The innermost cause (aya's io_error) is not lost either.
            if text.contains("bpf_map_update_elem") || text.contains("mapping") {
                assert_eq!(text.matches(&eperm).count(), 1, "{text}");
            }
        }
    }

    #[test]
    fn anyhow_contexts_are_joined() {
        let r: Result<(), std::io::Error> = Err(too_big());
        let e = r.context("reading x").context("starting").unwrap_err();
        assert_eq!(report(&e), format!("starting: reading x: {}", too_big()));
    }
}
