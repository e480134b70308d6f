//! The head of an HTTP/1.1 response (status line and header fields) and
//! its body, as far as lbd's own small clients need them: the HTTP health
//! check reads a load-report header from the head, the Prometheus scrape
//! (`load_report`) reads the body, which may come chunked.

/// A response head: status code and header fields, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub fields: Vec<(String, String)>,
}

impl Head {
    /// The value of the first field named `name` (case-insensitive).
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Where the head of `bytes` ends (after its blank line), if it is all
/// there.
pub fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// Parse a head (status line and fields, up to the blank line).
pub fn parse_head(head: &[u8]) -> Result<Head, String> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status = crate::health::parse_status_line(lines.next().unwrap_or_default())?;
    let mut fields = Vec::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').ok_or_else(|| {
            format!(
                "bad HTTP header line {}",
                crate::health::quote(line.as_bytes())
            )
        })?;
        fields.push((name.trim().to_string(), value.trim().to_string()));
    }
    Ok(Head { status, fields })
}

/// The body of a whole response read to its end (`Connection: close`):
/// de-chunked when sent chunked, cut at `Content-Length` when given.
pub fn body<'a>(head: &Head, rest: &'a [u8]) -> Result<std::borrow::Cow<'a, [u8]>, String> {
    let chunked = head
        .field("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        return dechunk(rest).map(std::borrow::Cow::Owned);
    }
    match head.field("content-length").map(str::parse::<usize>) {
        Some(Ok(n)) if n <= rest.len() => Ok(rest[..n].into()),
        Some(Ok(n)) => Err(format!("body cut short: {} of {n} bytes", rest.len())),
        Some(Err(_)) => Err("bad Content-Length".into()),
        None => Ok(rest.into()),
    }
}

/// A chunked body's data.
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunked body cut short")?;
        let size_text = String::from_utf8_lossy(&rest[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        // A size near usize::MAX would wrap `size + 2`: a hostile or
        // broken server must get an error, never a panic.
        if size.checked_add(2).is_none_or(|whole| rest.len() < whole) {
            return Err("chunked body cut short".into());
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(response: &[u8]) -> (Head, &[u8]) {
        let end = head_end(response).expect("a whole head");
        (
            parse_head(&response[..end]).expect("a head"),
            &response[end..],
        )
    }

    #[test]
    fn a_chunk_size_that_would_overflow_is_an_error_not_a_panic() {
        for body in [
            &b"fffffffffffffffe\r\nabc\r\n0\r\n\r\n"[..],
            b"ffffffffffffffff\r\nabc\r\n0\r\n\r\n",
            b"10\r\nabc\r\n0\r\n\r\n",
        ] {
            assert_eq!(
                dechunk(body),
                Err("chunked body cut short".to_string()),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(dechunk(b"3\r\nabc\r\n0\r\n\r\n"), Ok(b"abc".to_vec()));
    }

    #[test]
    fn fields_are_found_by_any_case() {
        let (head, _) = split(
            b"HTTP/1.1 200 OK\r\nEndpoint-Load-Metrics: TEXT utilization=0.5\r\nX: y\r\n\r\n",
        );
        assert_eq!(head.status, 200);
        assert_eq!(
            head.field("endpoint-load-metrics"),
            Some("TEXT utilization=0.5")
        );
        assert_eq!(head.field("missing"), None);
    }

    #[test]
    fn bodies_are_cut_at_their_length_or_dechunked() {
        let (head, rest) = split(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef");
        assert_eq!(&*body(&head, rest).unwrap(), b"abc");
        let (head, rest) = split(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n2;x=y\r\nef\r\n0\r\n\r\n",
        );
        assert_eq!(&*body(&head, rest).unwrap(), b"abcdef");
        let (head, rest) = split(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nabc");
        assert!(body(&head, rest).is_err());
        let (head, rest) = split(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc");
        assert!(body(&head, rest).is_err());
        let (head, rest) = split(b"HTTP/1.0 200 OK\r\n\r\nto the end");
        assert_eq!(&*body(&head, rest).unwrap(), b"to the end");
    }

    #[test]
    fn a_bad_head_is_refused() {
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n").is_err());
        assert!(parse_head(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
    }
}
