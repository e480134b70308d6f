//! The service the end-to-end backends run, in the test process: an HTTP
//! server that answers with its name (and can stream, like an LLM token
//! stream, and take an upload), and a UDP echo that prefixes its name. Sockets are opened
//! inside the backend's namespace and served by threads until dropped.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use crate::netns::Netns;

/// Running servers; stopped on drop.
pub struct BackendServer {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Drop for BackendServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl BackendServer {
    /// Serve HTTP on `http` and UDP echo on `udp`, inside `ns`.
    pub fn start(ns: &Netns, name: &str, http: SocketAddr, udp: SocketAddr) -> Self {
        let (listener, socket) = ns.enter(|| {
            let l = TcpListener::bind(http).expect("bind HTTP");
            let s = UdpSocket::bind(udp).expect("bind UDP");
            (l, s)
        });
        listener.set_nonblocking(true).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        {
            let (stop, name) = (stop.clone(), name.to_string());
            threads.push(thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let name = name.clone();
                            thread::spawn(move || serve_http(stream, &name));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
            }));
        }
        {
            let (stop, name) = (stop.clone(), name.to_string());
            threads.push(thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = socket.recv_from(&mut buf) {
                        let mut reply = format!("{name}:").into_bytes();
                        reply.extend_from_slice(&buf[..n]);
                        let _ = socket.send_to(&reply, from);
                    }
                }
            }));
        }
        Self { stop, threads }
    }
}

/// `GET /` -> the name. `GET /stream?tokens=N&ms=M` -> N lines, one every
/// M ms, chunked, like a token stream. `POST /upload` with a
/// Content-Length body -> "NAME LENGTH DIGEST" (`digest` of the body, in
/// hex). One request per connection.
fn serve_http(stream: TcpStream, name: &str) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut out = stream;
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let mut content_length = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((key, value)) = h.split_once(':')
            && key.eq_ignore_ascii_case("content-length")
        {
            content_length = value.trim().parse().unwrap_or(0);
        }
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_string();
    if let Some(query) = path.strip_prefix("/stream?") {
        let param = |key: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse::<u64>().ok())
        };
        stream_tokens(
            &mut out,
            name,
            param("tokens").unwrap_or(10),
            param("ms").unwrap_or(100),
        );
        return;
    }
    if request_line.starts_with("POST /upload ") {
        let mut body = Vec::with_capacity(content_length);
        let got = reader
            .by_ref()
            .take(content_length as u64)
            .read_to_end(&mut body)
            .unwrap_or(0);
        let text = format!("{name} {got} {:016x}\n", digest(&body));
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
            text.len()
        );
        let _ = out.write_all(resp.as_bytes());
        return;
    }
    let body = format!("{name}\n");
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = out.write_all(resp.as_bytes());
}

fn stream_tokens(out: &mut TcpStream, name: &str, tokens: u64, ms: u64) {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n";
    if out.write_all(head.as_bytes()).is_err() {
        return;
    }
    for i in 0..tokens {
        let line = format!("token {i} from {name}\n");
        if out
            .write_all(format!("{:x}\r\n{line}\r\n", line.len()).as_bytes())
            .is_err()
        {
            return;
        }
        thread::sleep(Duration::from_millis(ms));
    }
    let _ = out.write_all(b"0\r\n\r\n");
}

/// FNV-1a (64 bits) of `bytes`: enough to tell an upload arrived intact.
pub fn digest(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
