//! Link events from the kernel (rtnetlink's link group), so lbd notices an
//! interface deleted and created again without polling.
//!
//! The watcher does not interpret events: any interface appearing, going
//! or changing, and any overrun of the socket (events were lost), wakes
//! the daemon, which compares what it attached with what exists now
//! (`Daemon::reconcile_interfaces`). Wake-ups coalesce (`Notify`), so a
//! burst of events costs one comparison.

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use rtnetlink::{
    MulticastGroup, new_multicast_connection, packet_core::NetlinkPayload,
    packet_route::RouteNetlinkMessage,
};
use tokio::sync::Notify;
use tracing::warn;

/// Subscribe to link events in this network namespace; `changed` is
/// notified for each. Must be called inside the Tokio runtime. Should the
/// socket ever close, the watcher subscribes again and notifies once, as
/// events may have been missed meanwhile.
pub fn watch(changed: Arc<Notify>) -> std::io::Result<()> {
    let mut messages = subscribe()?;
    tokio::spawn(async move {
        loop {
            while let Some((message, _)) = messages.next().await {
                let relevant = matches!(
                    message.payload,
                    NetlinkPayload::InnerMessage(
                        RouteNetlinkMessage::NewLink(_) | RouteNetlinkMessage::DelLink(_),
                    ) | NetlinkPayload::Overrun(_)
                );
                if relevant {
                    changed.notify_one();
                }
            }
            warn!("the netlink link-event socket closed; subscribing again");
            messages = loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                match subscribe() {
                    Ok(m) => break m,
                    Err(e) => warn!(error = %e, "subscribing to link events failed"),
                }
            };
            changed.notify_one();
        }
    });
    Ok(())
}

fn subscribe() -> std::io::Result<
    impl futures_util::Stream<
        Item = (
            rtnetlink::packet_core::NetlinkMessage<RouteNetlinkMessage>,
            rtnetlink::sys::SocketAddr,
        ),
    > + Unpin
    + Send
    + 'static,
> {
    let (connection, _handle, messages) = new_multicast_connection(&[MulticastGroup::Link])?;
    tokio::spawn(connection);
    Ok(messages)
}
