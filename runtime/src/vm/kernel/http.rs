//! A minimal HTTP/1.1 GET client for plain-http Debian mirrors (the archive's integrity comes
//! from the sha256 chain Release → Packages → .deb, not from the transport). Follows
//! redirects to http URLs, understands Content-Length and chunked bodies.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{url}: only http:// mirrors are supported (integrity is checked with sha256); set the mirror to an http:// URL")]
    Scheme { url: String },
    #[error("cannot fetch {url}: {source}; check the network and the mirror URL")]
    Io { url: String, source: io::Error },
    #[error("cannot fetch {url}: the server answered {status}")]
    Status { url: String, status: u16 },
    #[error("cannot fetch {url}: malformed response ({reason})")]
    Malformed { url: String, reason: String },
    #[error("cannot fetch {url}: too many redirects")]
    Redirects { url: String },
}

struct Url {
    host: String,
    port: u16,
    path: String,
}

fn parse_url(url: &str) -> Result<Url, HttpError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| HttpError::Scheme { url: url.into() })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (
            h.to_string(),
            p.parse().map_err(|_| HttpError::Malformed {
                url: url.into(),
                reason: "bad port".into(),
            })?,
        ),
        None => (authority.to_string(), 80),
    };
    Ok(Url {
        host,
        port,
        path: path.to_string(),
    })
}

/// A response body being read.
pub struct Body {
    inner: Box<dyn Read>,
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

/// GET `url`; the body streams from the returned reader.
pub fn get(url: &str) -> Result<Body, HttpError> {
    let mut current = url.to_string();
    for _ in 0..5 {
        let u = parse_url(&current)?;
        let io_err = |source| HttpError::Io {
            url: current.clone(),
            source,
        };
        let stream = TcpStream::connect((u.host.as_str(), u.port)).map_err(io_err)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(io_err)?;
        let mut w = stream.try_clone().map_err(io_err)?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: berth/{}\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n",
            u.path,
            u.host,
            env!("CARGO_PKG_VERSION")
        );
        w.write_all(request.as_bytes()).map_err(io_err)?;
        let mut r = BufReader::new(stream);
        let mut status_line = String::new();
        r.read_line(&mut status_line).map_err(io_err)?;
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| HttpError::Malformed {
                url: current.clone(),
                reason: format!("status line {status_line:?}"),
            })?;
        let mut length: Option<u64> = None;
        let mut chunked = false;
        let mut location = None;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).map_err(io_err)? == 0 {
                return Err(HttpError::Malformed {
                    url: current.clone(),
                    reason: "headers cut short".into(),
                });
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                let v = v.trim();
                match k.to_ascii_lowercase().as_str() {
                    "content-length" => length = v.parse().ok(),
                    "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
                    "location" => location = Some(v.to_string()),
                    _ => {}
                }
            }
        }
        if (300..400).contains(&status) {
            let loc = location.ok_or_else(|| HttpError::Malformed {
                url: current.clone(),
                reason: "redirect without Location".into(),
            })?;
            current = if loc.starts_with('/') {
                format!("http://{}:{}{}", u.host, u.port, loc)
            } else {
                loc
            };
            continue;
        }
        if status != 200 {
            return Err(HttpError::Status {
                url: current,
                status,
            });
        }
        let inner: Box<dyn Read> = if chunked {
            Box::new(Chunked {
                r,
                left: 0,
                done: false,
            })
        } else if let Some(n) = length {
            Box::new(r.take(n))
        } else {
            Box::new(r)
        };
        return Ok(Body { inner });
    }
    Err(HttpError::Redirects { url: url.into() })
}

struct Chunked<R> {
    r: R,
    left: u64,
    done: bool,
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        if self.left == 0 {
            let mut line = String::new();
            self.r.read_line(&mut line)?;
            if line.trim().is_empty() {
                line.clear();
                self.r.read_line(&mut line)?;
            }
            let size = line.trim().split(';').next().unwrap_or("");
            self.left = u64::from_str_radix(size, 16).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad chunk size {line:?}"),
                )
            })?;
            if self.left == 0 {
                self.done = true;
                return Ok(0);
            }
        }
        let n = (buf.len() as u64).min(self.left) as usize;
        let got = self.r.read(&mut buf[..n])?;
        if got == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.left -= got as u64;
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse_url("http://deb.debian.org/debian/dists/x").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("deb.debian.org", 80, "/debian/dists/x")
        );
        let u = parse_url("http://127.0.0.1:8080").unwrap();
        assert_eq!((u.port, u.path.as_str()), (8080, "/"));
        assert!(matches!(
            parse_url("https://x/"),
            Err(HttpError::Scheme { .. })
        ));
    }

    #[test]
    fn chunked_bodies() {
        let raw = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\n\r\n";
        let mut c = Chunked {
            r: BufReader::new(&raw[..]),
            left: 0,
            done: false,
        };
        let mut s = String::new();
        c.read_to_string(&mut s).unwrap();
        assert_eq!(s, "Wikipedia");
    }

    #[test]
    fn get_from_a_local_server_with_redirect() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            for i in 0..2 {
                let (mut s, _) = listener.accept().unwrap();
                let mut req = Vec::new();
                let mut byte = [0u8; 1];
                while !req.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap() == 1 {
                    req.push(byte[0]);
                }
                let resp: &[u8] = if i == 0 {
                    b"HTTP/1.1 302 Found\r\nLocation: /real\r\nContent-Length: 0\r\n\r\n"
                } else {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
                };
                s.write_all(resp).unwrap();
            }
        });
        let mut body = String::new();
        get(&format!("http://127.0.0.1:{port}/start"))
            .unwrap()
            .read_to_string(&mut body)
            .unwrap();
        assert_eq!(body, "hello");
        server.join().unwrap();
    }
}
