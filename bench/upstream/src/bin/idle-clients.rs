//! idle-clients: opens N keep-alive HTTP/1.1 connections to ADDR, sends one request on each
//! (headers from `-H 'Name: value'`), checks every answer is 2xx, prints `ready N`, then holds
//! the connections open and idle for HOLD seconds. At the end it sends one more request on
//! a sample of them to show the server kept them, and prints `alive K/SAMPLE`.
//!
//! Usage: idle-clients ADDR N HOLD_SECONDS PATH [-H 'Name: value']...
//! The caller raises `ulimit -n` above N.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

fn usage() -> ! {
    eprintln!("usage: idle-clients ADDR N HOLD_SECONDS PATH [-H 'Name: value']...");
    std::process::exit(2)
}

/// One request and its answer on `s`; `Ok(status)`.
fn exchange(s: &mut TcpStream, req: &[u8]) -> std::io::Result<u16> {
    s.write_all(req)?;
    let mut r = BufReader::new(&*s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let mut len = 0usize;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    // The BufReader may not have read past the body: answers are framed by Content-Length.
    Ok(status)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        usage();
    }
    let addr: SocketAddr = args[0].parse().unwrap_or_else(|_| usage());
    if !addr.ip().is_loopback() {
        eprintln!("idle-clients: loopback only");
        std::process::exit(2);
    }
    let n: usize = args[1].parse().unwrap_or_else(|_| usage());
    let hold: u64 = args[2].parse().unwrap_or_else(|_| usage());
    let path = &args[3];
    let mut headers = String::new();
    let mut rest = args[4..].iter();
    while let Some(a) = rest.next() {
        match a.as_str() {
            "-H" => {
                headers.push_str(rest.next().unwrap_or_else(|| usage()));
                headers.push_str("\r\n");
            }
            _ => usage(),
        }
    }
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}\r\n").into_bytes();
    let mut conns = Vec::with_capacity(n);
    let mut bad = 0usize;
    for i in 0..n {
        let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("idle-clients: connection {i}: {e}");
                std::process::exit(1);
            }
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        match exchange(&mut s, &req) {
            Ok(st) if (200..300).contains(&st) => {}
            Ok(st) => {
                bad += 1;
                if bad <= 3 {
                    eprintln!("idle-clients: connection {i}: status {st}");
                }
            }
            Err(e) => {
                eprintln!("idle-clients: connection {i}: {e}");
                std::process::exit(1);
            }
        }
        conns.push(s);
    }
    println!("ready {n} non2xx={bad}");
    let _ = std::io::stdout().flush();
    std::thread::sleep(Duration::from_secs(hold));
    let sample = conns.len().min(100);
    let step = (conns.len() / sample.max(1)).max(1);
    let alive = conns
        .iter_mut()
        .step_by(step)
        .take(sample)
        .map(|s| exchange(s, &req))
        .filter(|r| matches!(r, Ok(200..=299)))
        .count();
    println!("alive {alive}/{sample}");
    std::process::exit(if bad == 0 { 0 } else { 1 });
}
