//! The control protocol's version, and what lbd and lbctl do when theirs
//! differ (the rules are in the module doc of `control`).

/// The control protocol this build speaks, carried as `v` in every request
/// and reply. Raised when a message changes in a way the other side would
/// misread (a field removed, renamed or retyped, a new meaning); not for a
/// field added as optional.
pub const PROTOCOL_VERSION: u32 = 1;

/// What a message without `v` is: one of an lbd or lbctl from before the
/// protocol had versions (v0.1.0 and the builds up to this change). Its
/// requests are version 1's without the `v`, so lbd answers them.
pub const UNVERSIONED: u32 = 0;

/// The oldest request version lbd still answers.
pub const OLDEST_ANSWERED: u32 = UNVERSIONED;

/// `lbd --version` and `lbctl --version`: the release and the protocol
/// (kept equal to `PROTOCOL_VERSION` by a test).
pub const VERSION_TEXT: &str = concat!(env!("CARGO_PKG_VERSION"), " (control protocol 1)");

/// What to do about a mismatch, on every message that reports one.
const ADVICE: &str = "use the lbctl shipped with the running lbd (lbd --version)";

/// The two ends speak versions that cannot talk.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// lbctl's view: lbd replied in a version newer than lbctl's.
    #[error("lbd speaks control protocol {lbd}, this lbctl speaks {PROTOCOL_VERSION}: {ADVICE}")]
    NewerLbd { lbd: u32 },
    /// lbctl's view: an lbd from before versions answered (its replies
    /// have no `v`: it refused the request's, or ignored it).
    #[error(
        "lbd speaks control protocol {UNVERSIONED} (an lbd from before protocol versions), \
         this lbctl speaks {PROTOCOL_VERSION}: {ADVICE}"
    )]
    UnversionedLbd,
    /// lbd's view: the request is of a version newer than lbd's.
    #[error(
        "this lbctl speaks control protocol {lbctl}, this lbd speaks {PROTOCOL_VERSION}: {ADVICE}"
    )]
    NewerLbctl { lbctl: u32 },
    /// lbd's view: the request is of a version lbd no longer answers.
    #[error(
        "this lbctl speaks control protocol {lbctl}, which this lbd no longer answers \
         (it answers {OLDEST_ANSWERED} to {PROTOCOL_VERSION}): {ADVICE}"
    )]
    RetiredLbctl { lbctl: u32 },
}

/// Whether lbd answers a request of version `v`.
pub fn check_request(v: u32) -> Result<(), VersionError> {
    if v > PROTOCOL_VERSION {
        Err(VersionError::NewerLbctl { lbctl: v })
    } else if (OLDEST_ANSWERED..=PROTOCOL_VERSION).contains(&v) {
        Ok(())
    } else {
        Err(VersionError::RetiredLbctl { lbctl: v })
    }
}

/// Whether lbctl can read a reply of version `v`: an older one is read
/// (its fields are a subset, or reading it fails with what is missing), a
/// newer one is refused before its body is read.
pub fn check_reply(v: u32) -> Result<(), VersionError> {
    if v > PROTOCOL_VERSION {
        return Err(VersionError::NewerLbd { lbd: v });
    }
    Ok(())
}

/// The advice, for errors that are about a reply this lbctl cannot read.
pub(super) fn advice() -> &'static str {
    ADVICE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_text_names_the_protocol_version() {
        assert!(
            VERSION_TEXT.ends_with(&format!("(control protocol {PROTOCOL_VERSION})")),
            "{VERSION_TEXT}"
        );
    }

    #[test]
    fn lbd_answers_older_and_refuses_newer_requests() {
        for v in OLDEST_ANSWERED..=PROTOCOL_VERSION {
            assert_eq!(check_request(v), Ok(()));
        }
        let newer = check_request(PROTOCOL_VERSION + 1).unwrap_err();
        assert_eq!(
            newer.to_string(),
            format!(
                "this lbctl speaks control protocol {}, this lbd speaks {PROTOCOL_VERSION}: \
                 use the lbctl shipped with the running lbd (lbd --version)",
                PROTOCOL_VERSION + 1
            )
        );
    }

    #[test]
    fn lbctl_refuses_a_newer_reply_by_name() {
        assert_eq!(check_reply(UNVERSIONED), Ok(()));
        assert_eq!(check_reply(PROTOCOL_VERSION), Ok(()));
        assert_eq!(
            check_reply(PROTOCOL_VERSION + 1).unwrap_err().to_string(),
            format!(
                "lbd speaks control protocol {}, this lbctl speaks {PROTOCOL_VERSION}: \
                 use the lbctl shipped with the running lbd (lbd --version)",
                PROTOCOL_VERSION + 1
            )
        );
    }
}
