//! The LISTEN connection: `portcullis_changed` wakes the publisher, `portcullis_published`
//! wakes long-poll waiters. It reconnects forever; after every (re)connect the publisher runs
//! and the hub re-reads the latest versions, so nothing committed while it was away is lost.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::hub::Hub;
use crate::metrics::Metrics;

/// Runs forever.
pub async fn run(url: String, hub: Arc<Hub>, wake_publisher: Arc<Notify>, metrics: Metrics) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match listen(&url, &hub, &wake_publisher, &metrics).await {
            Ok(()) => {
                tracing::warn!("the LISTEN connection closed; reconnecting");
                backoff = Duration::from_millis(100);
            }
            Err(e) => {
                tracing::warn!(error = %e, "LISTEN connection failed; retrying in {backoff:?}");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn listen(
    url: &str,
    hub: &Hub,
    wake_publisher: &Notify,
    metrics: &Metrics,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = tokio_postgres::connect(url, NoTls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    let driver = tokio::spawn(async move {
        while let Some(m) = messages.next().await {
            let failed = m.is_err();
            if tx.send(m).is_err() || failed {
                break;
            }
        }
    });
    client
        .batch_execute("LISTEN portcullis_changed; LISTEN portcullis_published;")
        .await?;
    metrics.listener_connects.inc();
    // Whatever happened while nobody listened: publish it, and learn the latest versions.
    wake_publisher.notify_one();
    hub.catch_up(&client).await?;
    metrics.latest_version.set(hub.latest());
    while let Some(message) = rx.recv().await {
        match message? {
            AsyncMessage::Notification(n) if n.channel() == "portcullis_changed" => {
                wake_publisher.notify_one();
            }
            AsyncMessage::Notification(n) if n.channel() == "portcullis_published" => {
                if let Some((tenant, version)) = n.payload().split_once(' ')
                    && let Ok(version) = version.parse::<i64>()
                {
                    hub.announce(tenant, version);
                    metrics.latest_version.set(hub.latest());
                }
            }
            _ => {}
        }
    }
    driver.abort();
    Ok(())
}
