//! A misbehaving S3 server for the tests: a small HTTP proxy in front of the
//! real one (MiniStack, Ceph RGW) that breaks the promise in one chosen way,
//! as servers seen in the field do. One request per connection; every answer
//! carries `Connection: close`.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How the proxy misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Drops `If-Match` and `If-None-Match` from writes (Garage 2.5, s3rver).
    IgnoreConditions,
    /// Checks `If-Match` / `If-None-Match: *` itself with a HEAD, waits, then
    /// writes unconditionally, so simultaneous writers all pass the check
    /// (s3s-fs 0.14).
    NotAtomic,
    /// Matches `If-Match` only against the bare ETag: a quoted one gets 412
    /// even when it is current (Ceph RGW 16.2).
    BareEtags,
    /// The same, and every answer names the server as Ceph RGW does
    /// (`x-rgw-object-type`).
    BareEtagsNamed,
    /// Answers GetBucketVersioning with a document of another root element
    /// (as moto 5.2.5 and s3rver do).
    OddVersioningAnswer,
    /// Answers a DELETE with `If-Match` with 501 NotImplemented (as
    /// LocalStack 4.14 does).
    NoConditionalDelete,
    /// Refuses a write that asks for server-side encryption with a bare 400
    /// InvalidRequest (as Ceph RGW without a key manager does).
    RefuseEncryption,
    /// Faults of every kind, by turns: one request in seven answered 503
    /// without reaching the server, one in seven delayed 100 ms, one write
    /// in seven applied and its answer dropped (the count of faults is in
    /// `dropped`).
    Flaky,
    /// Cuts the body of every other object read short (its Content-Length
    /// kept, the connection closed): a server writing in place, a dropped
    /// connection.
    CutBodies,
    /// Answers 412 to every `If-Match`, current or not, quoted or bare.
    RefuseIfMatch,
    /// Before the first conditional DELETE, another writer changes the
    /// object (a newline appended): the delete must then be refused.
    ChangeBeforeDelete,
    /// Drops the connection instead of answering every write the server
    /// applied: the client cannot know whether it landed.
    DropAnswerAfterWrite,
}

/// A running proxy; it lives as long as the test process.
pub(crate) struct Proxy {
    pub endpoint: String,
    /// Writes (PUT requests) seen so far.
    pub writes: Arc<AtomicUsize>,
    /// Answers dropped after a write was applied (and, for
    /// `ChangeBeforeDelete`, conditional deletes seen).
    pub dropped: Arc<AtomicUsize>,
}

impl Proxy {
    /// Starts a proxy on a free 127.0.0.1 port in front of `upstream`
    /// (`http://127.0.0.1:PORT`).
    pub(crate) fn start(upstream: &str, fault: Fault) -> Proxy {
        let upstream = upstream
            .strip_prefix("http://")
            .expect("an http:// upstream")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let writes = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicUsize::new(0));
        let (w, d) = (writes.clone(), dropped.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (upstream, w, d) = (upstream.clone(), w.clone(), d.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &upstream, fault, &w, &d);
                });
            }
        });
        Proxy {
            endpoint,
            writes,
            dropped,
        }
    }
}

/// One HTTP request as read off the wire.
struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn without(&self, names: &[&str]) -> Request {
        Request {
            method: self.method.clone(),
            path: self.path.clone(),
            headers: self
                .headers
                .iter()
                .filter(|(k, _)| !names.iter().any(|n| k.eq_ignore_ascii_case(n)))
                .cloned()
                .collect(),
            body: self.body.clone(),
        }
    }

    fn head(&self) -> Request {
        Request {
            method: "HEAD".into(),
            body: Vec::new(),
            ..self.without(&[
                "if-match",
                "if-none-match",
                "content-length",
                "content-type",
            ])
        }
    }
}

fn read_request(conn: &mut TcpStream) -> std::io::Result<Option<Request>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_len = loop {
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    parsed.parse(&buf[..head_len]).expect("an HTTP request");
    let mut req = Request {
        method: parsed.method.unwrap().to_string(),
        path: parsed.path.unwrap().to_string(),
        headers: parsed
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
        body: buf[head_len..].to_vec(),
    };
    assert!(
        req.header("transfer-encoding").is_none(),
        "the proxy reads bodies by Content-Length only"
    );
    if req
        .header("expect")
        .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
    {
        conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        req = req.without(&["expect"]);
    }
    let len: usize = req
        .header("content-length")
        .map_or(0, |l| l.trim().parse().unwrap());
    while req.body.len() < len {
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        req.body.extend_from_slice(&chunk[..n]);
    }
    Ok(Some(req))
}

/// Sends `req` upstream and answers its raw bytes (read to the end).
fn forward(upstream: &str, req: &Request) -> std::io::Result<Vec<u8>> {
    let mut up = TcpStream::connect(upstream)?;
    up.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut out = format!("{} {} HTTP/1.1\r\n", req.method, req.path).into_bytes();
    for (k, v) in &req.headers {
        if k.eq_ignore_ascii_case("connection") {
            continue;
        }
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out.extend_from_slice(&req.body);
    up.write_all(&out)?;
    let mut answer = Vec::new();
    up.read_to_end(&mut answer)?;
    Ok(answer)
}

/// A raw answer without the header `name`.
fn without_header(answer: &[u8], name: &str) -> Vec<u8> {
    let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return answer.to_vec();
    };
    let head = String::from_utf8_lossy(&answer[..end]);
    let prefix = format!("{}:", name.to_ascii_lowercase());
    let kept: Vec<&str> = head
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with(&prefix))
        .collect();
    let mut out = kept.join("\r\n").into_bytes();
    out.extend_from_slice(&answer[end..]);
    out
}

/// A raw answer with one more header line.
fn with_header(answer: &[u8], line: &str) -> Vec<u8> {
    let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return answer.to_vec();
    };
    let mut out = answer[..end].to_vec();
    out.extend_from_slice(format!("\r\n{line}").as_bytes());
    out.extend_from_slice(&answer[end..]);
    out
}

/// The status and ETag of a raw answer.
fn status_and_etag(answer: &[u8]) -> (u16, Option<String>) {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut headers);
    let _ = parsed.parse(answer);
    let etag = parsed
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("etag"))
        .map(|h| String::from_utf8_lossy(h.value).into_owned());
    (parsed.code.unwrap_or(0), etag)
}

fn bare(etag: &str) -> &str {
    etag.trim().trim_matches('"')
}

fn precondition_failed() -> Vec<u8> {
    let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>PreconditionFailed</Code><Message>At least one of the pre-conditions you specified did not hold</Message></Error>";
    format!(
        "HTTP/1.1 412 Precondition Failed\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The answer with `Connection: close` (the upstream's own is dropped).
fn closing(answer: &[u8]) -> Vec<u8> {
    let Some(line_end) = answer.windows(2).position(|w| w == b"\r\n") else {
        return answer.to_vec();
    };
    let mut out = answer[..line_end + 2].to_vec();
    out.extend_from_slice(b"Connection: close\r\n");
    out.extend_from_slice(&answer[line_end + 2..]);
    out
}

fn serve(
    mut conn: TcpStream,
    upstream: &str,
    fault: Fault,
    writes: &AtomicUsize,
    dropped: &AtomicUsize,
) -> std::io::Result<()> {
    let Some(req) = read_request(&mut conn)? else {
        return Ok(());
    };
    // PutObject: `PUT /bucket/key`, with the SDK's `?x-id=PutObject`.
    let is_write = req.method == "PUT"
        && match req.path.split_once('?') {
            None => true,
            Some((_, query)) => query == "x-id=PutObject",
        };
    if is_write {
        writes.fetch_add(1, Ordering::SeqCst);
    }
    if fault == Fault::ChangeBeforeDelete
        && req.method == "DELETE"
        && req.header("if-match").is_some()
        && dropped.fetch_add(1, Ordering::SeqCst) == 0
    {
        let path = req.path.split('?').next().unwrap_or_default().to_string();
        let get = Request {
            method: "GET".into(),
            path: path.clone(),
            body: Vec::new(),
            ..req.without(&["if-match", "content-length"])
        };
        let answer = forward(upstream, &get)?;
        let start = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(0, |i| i + 4);
        let mut body = answer[start..].to_vec();
        body.push(b'\n');
        let put = Request {
            method: "PUT".into(),
            path,
            headers: req
                .without(&["if-match", "content-length"])
                .headers
                .into_iter()
                .chain([("Content-Length".to_string(), body.len().to_string())])
                .collect(),
            body,
        };
        forward(upstream, &put)?;
    }
    if fault == Fault::Flaky {
        static TURN: AtomicUsize = AtomicUsize::new(0);
        match TURN.fetch_add(1, Ordering::SeqCst) % 7 {
            3 => {
                dropped.fetch_add(1, Ordering::SeqCst);
                let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>ServiceUnavailable</Code><Message>Please reduce your request rate.</Message></Error>";
                let answer = format!(
                    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                conn.write_all(answer.as_bytes())?;
                let _ = conn.shutdown(Shutdown::Write);
                return Ok(());
            }
            1 => {
                dropped.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(100));
            }
            5 if is_write => {
                dropped.fetch_add(1, Ordering::SeqCst);
                forward(upstream, &req)?;
                conn.shutdown(Shutdown::Both)?;
                return Ok(());
            }
            _ => {}
        }
    }
    let answer = match fault {
        Fault::OddVersioningAnswer
            if req.method == "GET"
                && req.path.split_once('?').is_some_and(|(_, q)| {
                    q.split('&')
                        .any(|p| p == "versioning" || p.starts_with("versioning="))
                }) =>
        {
            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>b</Name></ListBucketResult>";
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        }
        Fault::RefuseEncryption if req.header("x-amz-server-side-encryption").is_some() => {
            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InvalidRequest</Code></Error>";
            format!(
                "HTTP/1.1 400 Bad Request\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        }
        Fault::NoConditionalDelete
            if req.method == "DELETE" && req.header("if-match").is_some() =>
        {
            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>NotImplemented</Code><Message>A header you provided implies functionality that is not implemented</Message></Error>";
            format!(
                "HTTP/1.1 501 Not Implemented\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        }
        _ if !is_write => forward(upstream, &req)?,
        Fault::IgnoreConditions => forward(upstream, &req.without(&["if-match", "if-none-match"]))?,
        Fault::RefuseIfMatch if req.header("if-match").is_some() => precondition_failed(),
        Fault::RefuseIfMatch
        | Fault::ChangeBeforeDelete
        | Fault::OddVersioningAnswer
        | Fault::NoConditionalDelete
        | Fault::CutBodies
        | Fault::RefuseEncryption
        | Fault::Flaky => forward(upstream, &req)?,
        Fault::BareEtags | Fault::BareEtagsNamed => match req.header("if-match") {
            Some(etag) if etag.trim().starts_with('"') => precondition_failed(),
            _ => forward(upstream, &req)?,
        },
        Fault::NotAtomic => {
            let if_match = req.header("if-match").map(str::to_string);
            let create = req.header("if-none-match").is_some_and(|v| v.trim() == "*");
            if if_match.is_none() && !create {
                forward(upstream, &req)?
            } else {
                let (status, etag) = status_and_etag(&forward(upstream, &req.head())?);
                let holds = match (&if_match, status) {
                    (Some(want), 200) => etag.is_some_and(|e| bare(&e) == bare(want)),
                    (Some(_), _) => false,
                    (None, 404) => true,
                    (None, _) => false,
                };
                if holds {
                    // The window in which another writer passes the same check.
                    std::thread::sleep(Duration::from_millis(150));
                    forward(upstream, &req.without(&["if-match", "if-none-match"]))?
                } else {
                    precondition_failed()
                }
            }
        }
        Fault::DropAnswerAfterWrite => {
            let answer = forward(upstream, &req)?;
            if (200..300).contains(&status_and_etag(&answer).0) {
                dropped.fetch_add(1, Ordering::SeqCst);
                conn.shutdown(Shutdown::Both)?;
                return Ok(());
            }
            answer
        }
    };
    // A server that wants bare ETags without saying so (RGW's own header,
    // if the server is RGW, is hidden), or one that names itself as RGW.
    let answer = match fault {
        Fault::BareEtags => without_header(&answer, "x-rgw-object-type"),
        Fault::BareEtagsNamed => with_header(
            &without_header(&answer, "x-rgw-object-type"),
            "x-rgw-object-type: Normal",
        ),
        _ => answer,
    };
    let reads_object = req.method == "GET"
        && req
            .path
            .split('?')
            .next()
            .is_some_and(|p| p.matches('/').count() > 1)
        && req
            .path
            .split_once('?')
            .is_none_or(|(_, q)| q == "x-id=GetObject");
    if fault == Fault::CutBodies
        && reads_object
        && status_and_etag(&answer).0 == 200
        && dropped.fetch_add(1, Ordering::SeqCst).is_multiple_of(2)
    {
        let answer = closing(&answer);
        let head_end = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(answer.len(), |i| i + 4);
        let body = answer.len() - head_end;
        conn.write_all(&answer[..head_end + body / 2])?;
        conn.flush()?;
        conn.shutdown(Shutdown::Both)?;
        return Ok(());
    }
    conn.write_all(&closing(&answer))?;
    conn.flush()?;
    let _ = conn.shutdown(Shutdown::Write);
    Ok(())
}
