//! The probe of a VIP through the tunnel: the inner packets lbd sends
//! encapsulated to a backend, and the socket filter that picks out their
//! replies.

pub mod filter;
pub mod packet;
