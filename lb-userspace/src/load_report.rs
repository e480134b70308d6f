//! Load reported by the backends themselves (`vips[].balancing.source`
//! `prometheus` or `header`): what a report says ([`Reading`]), read from
//! a Prometheus page or from a response header, and the scraper task that
//! fetches each backend's page once per balancing interval.
//!
//! A scrape is bounded in time (`prometheus.timeout_ms`) and size
//! ([`MAX_PAGE`]); a failed or unreadable one is a missing report, so the
//! controller's `stale_after` fallback to configured weights applies. The
//! scraper runs on its own task and hands readings to the daemon over a
//! channel: the daemon's loop never waits on a backend.

use std::{fmt, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
    task::JoinHandle,
    time::MissedTickBehavior,
};
use tracing::debug;

use crate::{
    config::{HardLimit, HeaderLoad, PrometheusLoad},
    health::Target,
    http_response, load_header,
    prometheus_text::{self, Selector},
};

/// Largest metrics page read. vLLM's, histograms included, is some tens
/// of kilobytes; a page past this is refused rather than read on.
pub const MAX_PAGE: usize = 4 << 20;

/// Identifies the scraper in backend access logs.
const USER_AGENT: &str = "lbd-load-report";

/// What one report says of a backend.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reading {
    /// The load: the weighted gauges, or the header key's value.
    pub load: f64,
    /// The load over the capacity (0: idle, 1: full).
    pub utilization: f64,
    /// The hard limit's value, when the VIP has a hard limit.
    pub limit: Option<f64>,
}

/// A value that must be a finite number.
fn finite(what: &str, x: f64) -> Result<f64, String> {
    if x.is_finite() {
        Ok(x)
    } else {
        Err(format!("{what} is {x}"))
    }
}

/// The reading of a Prometheus page for `p`: every selected gauge must be
/// there with a finite value (a missing one makes the report missing).
pub fn from_prometheus(
    p: &PrometheusLoad,
    limit: Option<&HardLimit>,
    page: &str,
) -> Result<Reading, String> {
    let samples = prometheus_text::parse(page);
    let value = |selector: &str| -> Result<f64, String> {
        let s = Selector::parse(selector)?;
        let sum = s
            .sum(&samples)
            .ok_or_else(|| format!("no {s} in the page"))?;
        finite(&s.to_string(), sum)
    };
    let mut load = 0.0;
    for (selector, coefficient) in &p.metrics {
        load += coefficient * value(selector)?;
    }
    let load = usable("the load", load)?;
    Ok(Reading {
        load,
        utilization: load / p.capacity,
        limit: limit.map(|l| value(&l.metric)).transpose()?,
    })
}

/// The reading of a response header's value for `h` (`None`: the
/// response did not have the header).
pub fn from_header(
    h: &HeaderLoad,
    limit: Option<&HardLimit>,
    value: Option<&str>,
) -> Result<Reading, String> {
    let value = value.ok_or_else(|| format!("no {} header in the response", h.name))?;
    let pairs = load_header::parse(value)?;
    let key = |k: &str| {
        pairs
            .get(k)
            .copied()
            .ok_or_else(|| format!("no {k} in the {} header", h.name))
    };
    let load = usable(&h.key, key(&h.key)?)?;
    Ok(Reading {
        load,
        utilization: load / h.capacity,
        limit: limit.map(|l| key(&l.metric)).transpose()?,
    })
}

/// A load the controller can use: finite and not negative. A sum of
/// huge gauges can overflow to infinity (or NaN with a negative
/// coefficient), and a negative load would pass for an idle backend and
/// draw the most new flows: either is a report that cannot be used.
fn usable(what: &str, load: f64) -> Result<f64, String> {
    if load.is_finite() && load >= 0.0 {
        Ok(load)
    } else {
        Err(format!("{what} is {load}: not a load (finite, 0 or more)"))
    }
}

/// A scrape's outcome, sent to the daemon after every scrape.
#[derive(Clone, Debug, PartialEq)]
pub struct ReportEvent<K> {
    pub key: K,
    pub reading: Result<Reading, String>,
}

/// Scrape `target` as `p` says every `interval`, the first at once, and
/// send each outcome to `tx`, until the receiver is dropped or the task
/// aborted.
pub fn spawn_scraper<K>(
    p: PrometheusLoad,
    limit: Option<HardLimit>,
    target: Target,
    interval: Duration,
    key: K,
    tx: mpsc::Sender<ReportEvent<K>>,
) -> JoinHandle<()>
where
    K: Clone + Send + fmt::Display + 'static,
{
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(100)));
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let next = async {
                ticker.tick().await;
                scrape(&p, limit.as_ref(), target).await
            };
            let reading = tokio::select! {
                () = tx.closed() => return,
                reading = next => reading,
            };
            if let Err(e) = &reading {
                debug!(backend = %target.addr, report = %key, error = %e, "load report scrape failed");
            }
            let event = ReportEvent {
                key: key.clone(),
                reading,
            };
            if tx.send(event).await.is_err() {
                return;
            }
        }
    })
}

/// One scrape, bounded by `p.timeout_ms`.
pub async fn scrape(
    p: &PrometheusLoad,
    limit: Option<&HardLimit>,
    target: Target,
) -> Result<Reading, String> {
    let timeout = Duration::from_millis(p.timeout_ms);
    let page = tokio::time::timeout(timeout, fetch(target, &p.path))
        .await
        .map_err(|_| format!("scrape timed out after {} ms", p.timeout_ms))??;
    from_prometheus(p, limit, &page)
}

/// GET `path` from `target`: the body of a 200 response, at most
/// [`MAX_PAGE`] bytes.
async fn fetch(target: Target, path: &str) -> Result<String, String> {
    let host = match target.addr {
        std::net::IpAddr::V4(a) => a.to_string(),
        std::net::IpAddr::V6(a) => format!("[{a}]"),
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}\r\nAccept: text/plain\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n"
    );
    let mut stream = TcpStream::connect(target.socket_addr())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let response = read_response(&mut stream).await?;
    let end = http_response::head_end(&response).ok_or("response without a whole head")?;
    let head = http_response::parse_head(&response[..end])?;
    if head.status != 200 {
        return Err(format!("HTTP {}", head.status));
    }
    let body = http_response::body(&head, &response[end..])?;
    String::from_utf8(body.into_owned()).map_err(|_| "the page is not UTF-8".into())
}

/// Read a response to its end: the connection's close, or the end of a
/// body of known length (a server may keep the connection open despite
/// `Connection: close`). At most [`MAX_PAGE`] bytes.
async fn read_response(stream: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut response = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Ok(response);
        }
        response.extend_from_slice(&chunk[..n]);
        if response.len() > MAX_PAGE {
            return Err(format!("response over {MAX_PAGE} bytes"));
        }
        let length = http_response::head_end(&response).and_then(|end| {
            let head = http_response::parse_head(&response[..end]).ok()?;
            let length: usize = head.field("content-length")?.parse().ok()?;
            Some(end + length)
        });
        if length.is_some_and(|whole| response.len() >= whole) {
            return Ok(response);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tokio::net::TcpListener;

    use super::*;

    fn vllm(capacity: f64) -> PrometheusLoad {
        PrometheusLoad {
            port: None,
            path: "/metrics".into(),
            metrics: BTreeMap::from([
                ("vllm:num_requests_running".into(), 1.0),
                ("vllm:num_requests_waiting".into(), 2.0),
            ]),
            capacity,
            timeout_ms: 500,
        }
    }

    const PAGE: &str = "# TYPE vllm:num_requests_running gauge\n\
        vllm:num_requests_running{model_name=\"m\"} 6\n\
        vllm:num_requests_waiting{model_name=\"m\"} 1\n\
        vllm:gpu_cache_usage_perc{model_name=\"m\"} 0.4\n";

    fn waiting_limit() -> HardLimit {
        HardLimit {
            metric: "vllm:num_requests_waiting".into(),
            above: 10.0,
            resume_below: None,
        }
    }

    #[test]
    fn load_is_the_weighted_sum_and_utilization_its_share_of_capacity() {
        let r = from_prometheus(&vllm(16.0), Some(&waiting_limit()), PAGE).unwrap();
        assert_eq!(r.load, 8.0);
        assert_eq!(r.utilization, 0.5);
        assert_eq!(r.limit, Some(1.0));
        // A gauge that is a utilization already: capacity 1.
        let kv = PrometheusLoad {
            metrics: BTreeMap::from([("vllm:gpu_cache_usage_perc".into(), 1.0)]),
            ..vllm(1.0)
        };
        assert_eq!(from_prometheus(&kv, None, PAGE).unwrap().utilization, 0.4);
    }

    #[test]
    fn a_missing_or_non_finite_gauge_is_no_report() {
        let e = from_prometheus(&vllm(16.0), None, "vllm:num_requests_running 1\n").unwrap_err();
        assert_eq!(e, "no vllm:num_requests_waiting in the page");
        let e = from_prometheus(
            &vllm(16.0),
            None,
            "vllm:num_requests_running NaN\nvllm:num_requests_waiting 0\n",
        )
        .unwrap_err();
        assert_eq!(e, "vllm:num_requests_running is NaN");
        let limit = HardLimit {
            metric: "queue_depth".into(),
            ..waiting_limit()
        };
        assert!(from_prometheus(&vllm(16.0), Some(&limit), PAGE).is_err());
    }

    #[test]
    fn a_load_that_overflows_or_is_negative_is_no_report() {
        let opposed = PrometheusLoad {
            metrics: BTreeMap::from([("a".into(), 2.0), ("b".into(), -2.0)]),
            ..vllm(16.0)
        };
        let e = from_prometheus(&opposed, None, "a 1e308\nb 1e308\n").unwrap_err();
        assert_eq!(e, "the load is NaN: not a load (finite, 0 or more)");
        let e = from_prometheus(&opposed, None, "a 0\nb 1\n").unwrap_err();
        assert_eq!(e, "the load is -2: not a load (finite, 0 or more)");
        let h = HeaderLoad::default();
        let e = from_header(&h, None, Some("utilization=-1")).unwrap_err();
        assert_eq!(e, "utilization is -1: not a load (finite, 0 or more)");
    }

    #[test]
    fn header_reports_give_the_key_over_the_capacity() {
        let h = HeaderLoad::default();
        let limit = HardLimit {
            metric: "named_metrics.waiting".into(),
            ..waiting_limit()
        };
        let value = "TEXT utilization=0.7, rps_fractional=3, named_metrics.waiting=12";
        let r = from_header(&h, Some(&limit), Some(value)).unwrap();
        assert_eq!((r.utilization, r.limit), (0.7, Some(12.0)));
        let by_waiting = HeaderLoad {
            key: "named_metrics.waiting".into(),
            capacity: 24.0,
            ..h.clone()
        };
        assert_eq!(
            from_header(&by_waiting, None, Some(value))
                .unwrap()
                .utilization,
            0.5
        );
        assert_eq!(
            from_header(&h, None, None).unwrap_err(),
            "no endpoint-load-metrics header in the response"
        );
        assert!(from_header(&h, None, Some("rps_fractional=3")).is_err());
    }

    /// A one-connection HTTP server on loopback answering `response`,
    /// then holding the connection open for `hold_open`.
    async fn serve_once(response: Vec<u8>, hold_open: Duration) -> Target {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = Target::from(listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf).await;
            let _ = conn.write_all(&response).await;
            tokio::time::sleep(hold_open).await;
        });
        target
    }

    #[tokio::test]
    async fn a_scrape_reads_a_chunked_page() {
        let chunk = format!("{:x}\r\n{PAGE}\r\n0\r\n\r\n", PAGE.len());
        let response = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}");
        let target = serve_once(response.into_bytes(), Duration::ZERO).await;
        let r = scrape(&vllm(16.0), None, target).await.unwrap();
        assert_eq!(r.utilization, 0.5);
    }

    #[tokio::test]
    async fn a_scrape_ends_with_the_body_on_a_connection_kept_open() {
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{PAGE}",
            PAGE.len()
        );
        // Held open past the scrape's timeout.
        let target = serve_once(response.into_bytes(), Duration::from_secs(5)).await;
        let r = scrape(&vllm(16.0), None, target).await.unwrap();
        assert_eq!(r.load, 8.0);
    }

    #[tokio::test]
    async fn a_scrape_refuses_errors_oversized_pages_and_silence() {
        let target = serve_once(
            b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n".to_vec(),
            Duration::ZERO,
        )
        .await;
        assert_eq!(
            scrape(&vllm(16.0), None, target).await.unwrap_err(),
            "HTTP 503"
        );
        let mut big = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        big.resize(MAX_PAGE + 100, b'#');
        let target = serve_once(big, Duration::ZERO).await;
        assert_eq!(
            scrape(&vllm(16.0), None, target).await.unwrap_err(),
            format!("response over {MAX_PAGE} bytes")
        );
        // Accepts, never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = Target::from(listener.local_addr().unwrap());
        let p = PrometheusLoad {
            timeout_ms: 100,
            ..vllm(16.0)
        };
        assert_eq!(
            scrape(&p, None, target).await.unwrap_err(),
            "scrape timed out after 100 ms"
        );
        drop(listener);
    }
}
