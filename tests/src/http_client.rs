//! A minimal HTTP/1.1 client for the end-to-end tests: one request per
//! connection, bounded by timeouts, run in the caller's namespace.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

use crate::netns::Netns;

/// GET `path` from `addr:port` on a new connection; the body, trimmed.
pub fn get(addr: IpAddr, port: u16, path: &str) -> Result<String, String> {
    read_body(connect(addr, port, path)?)
}

/// POST `body` to `path` on a new connection, each read and write bounded
/// by `timeout`; the response body, trimmed.
pub fn post(
    addr: IpAddr,
    port: u16,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<String, String> {
    let sock = SocketAddr::new(addr, port);
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .and_then(|()| s.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        host(addr),
        body.len()
    );
    s.write_all(head.as_bytes())
        .and_then(|()| s.write_all(body))
        .map_err(|e| format!("send: {e}"))?;
    read_body(s)
}

fn read_body(mut s: TcpStream) -> Result<String, String> {
    let mut response = String::new();
    s.read_to_string(&mut response)
        .map_err(|e| format!("read: {e}"))?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or("no end of headers")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("status: {}", head.lines().next().unwrap_or("")));
    }
    Ok(body.trim().to_string())
}

fn host(addr: IpAddr) -> String {
    if addr.is_ipv6() {
        format!("[{addr}]")
    } else {
        addr.to_string()
    }
}

/// A `GET path` request to `addr` that asks the server to close after it.
pub fn request(addr: IpAddr, path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        host(addr)
    )
}

/// The body of the response read from `s` to its end, if its status was
/// 200: for a request the caller sent itself.
pub fn response_body(s: TcpStream) -> Result<String, String> {
    read_body(s)
}

fn connect(addr: IpAddr, port: u16, path: &str) -> Result<TcpStream, String> {
    let sock = SocketAddr::new(addr, port);
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.write_all(request(addr, path).as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    Ok(s)
}

/// A chunked streaming response, read line by line as it arrives.
pub struct Stream {
    reader: BufReader<TcpStream>,
}

impl Stream {
    pub fn open(addr: IpAddr, port: u16, path: &str) -> Result<Self, String> {
        Self::over(connect(addr, port, path)?)
    }

    /// As `open`, over `s`, a connection the caller made (from a port of
    /// its choosing, say) to `addr`.
    pub fn request(mut s: TcpStream, addr: IpAddr, path: &str) -> Result<Self, String> {
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        s.write_all(request(addr, path).as_bytes())
            .map_err(|e| format!("send: {e}"))?;
        Self::over(s)
    }

    fn over(s: TcpStream) -> Result<Self, String> {
        let mut reader = BufReader::new(s);
        loop {
            let mut line = String::new();
            if reader
                .read_line(&mut line)
                .map_err(|e| format!("read headers: {e}"))?
                == 0
            {
                return Err("closed before the body".into());
            }
            if line == "\r\n" {
                return Ok(Self { reader });
            }
        }
    }

    /// The client side's address: with the VIP's, it names the flow.
    pub fn local_addr(&self) -> SocketAddr {
        self.reader.get_ref().local_addr().expect("local address")
    }

    /// The next chunk's text, or `None` at the end of the stream.
    pub fn next_chunk(&mut self) -> Result<Option<String>, String> {
        let mut size = String::new();
        if self
            .reader
            .read_line(&mut size)
            .map_err(|e| format!("read chunk size: {e}"))?
            == 0
        {
            return Err("connection closed mid-stream".into());
        }
        let n = usize::from_str_radix(size.trim(), 16)
            .map_err(|_| format!("bad chunk size {size:?}"))?;
        let mut data = vec![0u8; n + 2];
        self.reader
            .read_exact(&mut data)
            .map_err(|e| format!("read chunk: {e}"))?;
        if n == 0 {
            return Ok(None);
        }
        data.truncate(n);
        String::from_utf8(data).map(Some).map_err(|e| e.to_string())
    }
}

/// Requests (`GET /`) in a loop on another thread, from namespace
/// `client`, until stopped: how many succeeded, and the errors of those
/// that failed.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    thread: Option<thread::JoinHandle<Vec<String>>>,
}

impl Load {
    pub fn start(client: &Netns, addr: IpAddr, port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let client = client.name.clone();
        let (s, o) = (stop.clone(), ok.clone());
        let thread = thread::spawn(move || {
            crate::netns::enter_named(&client, || {
                let mut errors = Vec::new();
                while !s.load(Ordering::Relaxed) {
                    match get(addr, port, "/") {
                        Ok(_) => {
                            o.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => errors.push(e),
                    }
                }
                errors
            })
        });
        Self {
            stop,
            ok,
            thread: Some(thread),
        }
    }

    pub fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let errors = self.thread.take().unwrap().join().unwrap();
        (self.ok.load(Ordering::Relaxed), errors)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
