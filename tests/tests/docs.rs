//! The README documents every counter the data plane has.

use lb_common::stats::{DecapReason, Reason};

#[test]
fn readme_lists_every_counter() {
    let readme = include_str!("../../README.md");
    for r in Reason::ALL {
        assert!(
            readme.contains(&format!("`{}`", r.name())),
            "README.md does not document counter {}",
            r.name()
        );
    }
    for r in DecapReason::ALL {
        assert!(
            readme.contains(&format!("`{}`", r.name())),
            "README.md does not document counter {}",
            r.name()
        );
    }
}
