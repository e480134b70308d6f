//! The values of lbd's enums as replies carry them. A newer lbd may add a
//! value (a protocol, an admin state, a health); an older lbctl reads it
//! as the name lbd sent and shows that name, rather than refusing the
//! whole reply. lbd still builds its replies from the enums themselves.

use serde::{Deserialize, Serialize};

use crate::config::{AdminState, BalancingMode, Forwarding, LoadSource, Protocol};

/// An enum that has one spelling per value (its JSON name).
pub trait Named: Copy {
    fn name(self) -> &'static str;
}

/// One of `E`'s values, or the name of one this build does not know.
/// Written as `E` is: the JSON is the same either way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Open<E> {
    Known(E),
    /// A value a newer lbd sent, by its name.
    Unknown(String),
}

impl<E: Named> Open<E> {
    /// The value's name, known or not.
    pub fn name(&self) -> &str {
        match self {
            Open::Known(e) => e.name(),
            Open::Unknown(name) => name,
        }
    }

    /// The value, when this build knows it.
    pub fn known(&self) -> Option<E> {
        match self {
            Open::Known(e) => Some(*e),
            Open::Unknown(_) => None,
        }
    }
}

impl<E> From<E> for Open<E> {
    fn from(e: E) -> Self {
        Open::Known(e)
    }
}

impl<E: Named> std::fmt::Display for Open<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

macro_rules! named_by_method {
    ($($ty:ty),* $(,)?) => {$(
        impl Named for $ty {
            fn name(self) -> &'static str {
                <$ty>::name(self)
            }
        }
    )*};
}

named_by_method!(AdminState, Forwarding, LoadSource, Protocol);

impl Named for BalancingMode {
    fn name(self) -> &'static str {
        match self {
            BalancingMode::Static => "static",
            BalancingMode::Load => "load",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_value_is_written_as_the_enum_and_an_unknown_one_is_kept_by_name() {
        let tcp: Open<Protocol> = Protocol::Tcp.into();
        assert_eq!(serde_json::to_string(&tcp).unwrap(), r#""tcp""#);
        assert_eq!(
            serde_json::from_str::<Open<Protocol>>(r#""tcp""#).unwrap(),
            tcp
        );
        let sctp: Open<Protocol> = serde_json::from_str(r#""sctp""#).unwrap();
        assert_eq!((sctp.name(), sctp.known()), ("sctp", None));
        assert_eq!(serde_json::to_string(&sctp).unwrap(), r#""sctp""#);
        assert!(serde_json::from_str::<Open<Protocol>>("7").is_err());
        for mode in [BalancingMode::Static, BalancingMode::Load] {
            let json = serde_json::to_value(mode).unwrap();
            assert_eq!(json, mode.name(), "BalancingMode's name is its JSON");
        }
    }

    /// What lbctl prints for a value is what lbd sends for it.
    #[test]
    fn every_named_value_is_named_as_it_is_sent() {
        use crate::control::{BackendHealth, ConnTable, InterfaceState};
        fn check<E: Named + serde::Serialize + Copy>(values: &[E]) {
            for v in values {
                assert_eq!(serde_json::to_value(v).unwrap(), v.name());
            }
        }
        check(&[AdminState::Active, AdminState::Drain, AdminState::Disabled]);
        check(&[Forwarding::Ipip, Forwarding::L2Dsr]);
        check(&[
            LoadSource::Flows,
            LoadSource::Prometheus,
            LoadSource::Header,
        ]);
        check(&[Protocol::Tcp, Protocol::Udp]);
        check(&[
            InterfaceState::Attached,
            InterfaceState::Detached,
            InterfaceState::Gone,
        ]);
        check(&[
            BackendHealth::Up,
            BackendHealth::Down,
            BackendHealth::Unchecked,
        ]);
        check(&[ConnTable::Connection, ConnTable::Probation]);
    }
}
