//! `stk-netprobe`: the network client and server that kernel tests run
//! inside a "pod" (a test cgroup and network namespace).
//!
//! Every result is one line on stdout, so that a test can read it while the
//! probe keeps running: `ok`, `stalled`, or `err <errno name>`.
//!
//! ```text
//! stk-netprobe connect ADDR PORT     one TCP connect, within 2 s
//! stk-netprobe stream ADDR PORT      connect, then every 50 ms send a line
//!                                    and wait up to 200 ms for its echo
//! stk-netprobe serve PORT            TCP echo server on every address
//! stk-netprobe udp-send ADDR PORT    one unconnected UDP sendto
//! stk-netprobe loopback              TCP and UDP to itself on 127.0.0.1, ::1
//! ```
//!
//! Only std is used: the probe must start fast and behave the same in
//! every namespace.

#![forbid(unsafe_code)]

use std::{
    env,
    io::{self, BufRead, BufReader, ErrorKind, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::ExitCode,
    thread,
    time::{Duration, Instant},
};

/// How long a single connect may take before it counts as timed out.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Time between two lines of `stream`.
const STREAM_TICK: Duration = Duration::from_millis(50);

/// How long `stream` waits for the echo of one line.
const ECHO_WAIT: Duration = Duration::from_millis(200);

const USAGE: &str = "usage: stk-netprobe connect ADDR PORT | stream ADDR PORT | serve PORT \
                     | udp-send ADDR PORT | loopback";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["connect", addr, port] => target(addr, port).map(connect),
        ["stream", addr, port] => target(addr, port).map(stream),
        ["serve", port] => port_arg(port).map(serve),
        ["udp-send", addr, port] => target(addr, port).map(udp_send),
        ["loopback"] => Ok(loopback()),
        _ => Err(USAGE.to_owned()),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(usage) => {
            eprintln!("{usage}");
            ExitCode::from(2)
        }
    }
}

fn target(addr: &str, port: &str) -> Result<SocketAddr, String> {
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("not an IP address: {addr}"))?;
    Ok(SocketAddr::new(ip, port_arg(port)?))
}

fn port_arg(port: &str) -> Result<u16, String> {
    port.parse().map_err(|_| format!("not a port: {port}"))
}

/// Prints `ok`, or `err <name>`; returns whether it was ok.
fn report<T>(result: io::Result<T>) -> bool {
    match result {
        Ok(_) => {
            println!("ok");
            true
        }
        Err(err) => fail(&err),
    }
}

/// Prints `err <name>` and returns false.
fn fail(err: &io::Error) -> bool {
    println!("err {}", errno_name(err));
    false
}

fn connect(to: SocketAddr) -> bool {
    report(TcpStream::connect_timeout(&to, CONNECT_TIMEOUT))
}

fn udp_send(to: SocketAddr) -> bool {
    report(udp_socket_for(to).and_then(|sock| sock.send_to(b"stk-netprobe\n", to)))
}

fn udp_socket_for(to: SocketAddr) -> io::Result<UdpSocket> {
    let any: IpAddr = match to {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    UdpSocket::bind(SocketAddr::new(any, 0))
}

/// Keeps a TCP session busy until it breaks; prints `connected` once, then
/// one line per tick.
fn stream(to: SocketAddr) -> bool {
    let sock = match TcpStream::connect_timeout(&to, CONNECT_TIMEOUT) {
        Ok(sock) => sock,
        Err(err) => return fail(&err),
    };
    println!("connected");

    let mut echoes = EchoReader::new(&sock);
    let mut writer = &sock;
    for seq in 0u64.. {
        let started = Instant::now();
        let line = format!("{seq}\n");
        if let Err(err) = writer.write_all(line.as_bytes()) {
            return fail(&err);
        }
        match echoes.wait_for(seq, ECHO_WAIT) {
            Ok(true) => println!("ok"),
            Ok(false) => println!("stalled"),
            Err(err) => return fail(&err),
        }
        thread::sleep(STREAM_TICK.saturating_sub(started.elapsed()));
    }
    true
}

/// Reads the echoed sequence numbers of `stream`, skipping late ones.
struct EchoReader<'a> {
    lines: BufReader<&'a TcpStream>,
    partial: String,
}

impl<'a> EchoReader<'a> {
    fn new(sock: &'a TcpStream) -> Self {
        Self {
            lines: BufReader::new(sock),
            partial: String::new(),
        }
    }

    /// Whether the echo of `seq` came back within `wait`; an echo of an
    /// earlier line that arrives late is skipped.
    fn wait_for(&mut self, seq: u64, wait: Duration) -> io::Result<bool> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            self.lines.get_ref().set_read_timeout(Some(left))?;
            match self.lines.read_line(&mut self.partial) {
                Ok(0) => return Err(io::Error::new(ErrorKind::UnexpectedEof, "eof")),
                Ok(_) if self.partial.ends_with('\n') => {
                    let got = self.partial.trim_end().parse::<u64>().ok();
                    self.partial.clear();
                    if got == Some(seq) {
                        return Ok(true);
                    }
                }
                Ok(_) => {}
                Err(err) if is_timeout(&err) => return Ok(false),
                Err(err) => return Err(err),
            }
        }
    }
}

/// Echoes every session on `[::]:port` (IPv4 too, as v4-mapped).
fn serve(port: u16) -> bool {
    let listener = match TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)) {
        Ok(listener) => listener,
        Err(err) => return fail(&err),
    };
    println!("listening");
    for conn in listener.incoming() {
        match conn {
            Ok(sock) => {
                let peer = sock.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                println!("accepted {peer}");
                thread::spawn(move || echo(sock));
            }
            Err(err) => println!("err {}", errno_name(&err)),
        }
    }
    true
}

fn echo(sock: TcpStream) {
    let mut buf = [0u8; 4096];
    let mut reader = &sock;
    let mut writer = &sock;
    while let Ok(n) = reader.read(&mut buf) {
        if n == 0 || writer.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

/// TCP and UDP through 127.0.0.1 and ::1; one line per check.
fn loopback() -> bool {
    let checks: [(&str, IpAddr); 2] = [
        ("4", Ipv4Addr::LOCALHOST.into()),
        ("6", Ipv6Addr::LOCALHOST.into()),
    ];
    let mut all_ok = true;
    for (family, ip) in checks {
        for (proto, result) in [("tcp", tcp_self(ip)), ("udp", udp_self(ip))] {
            match result {
                Ok(()) => println!("ok {proto}{family}"),
                Err(err) => {
                    all_ok = false;
                    println!("err {} {proto}{family}", errno_name(&err));
                }
            }
        }
    }
    all_ok
}

fn tcp_self(ip: IpAddr) -> io::Result<()> {
    let listener = TcpListener::bind((ip, 0))?;
    let mut client = TcpStream::connect_timeout(&listener.local_addr()?, CONNECT_TIMEOUT)?;
    let (mut server, _) = listener.accept()?;
    client.write_all(b"x")?;
    server.set_read_timeout(Some(ECHO_WAIT))?;
    let mut byte = [0u8; 1];
    server.read_exact(&mut byte)
}

fn udp_self(ip: IpAddr) -> io::Result<()> {
    let receiver = UdpSocket::bind((ip, 0))?;
    let sender = UdpSocket::bind((ip, 0))?;
    sender.send_to(b"x", receiver.local_addr()?)?;
    receiver.set_read_timeout(Some(ECHO_WAIT))?;
    let mut byte = [0u8; 1];
    receiver.recv_from(&mut byte).map(|_| ())
}

fn is_timeout(err: &io::Error) -> bool {
    matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// The symbolic name of the errno behind `err`, as tests match on it.
fn errno_name(err: &io::Error) -> String {
    let Some(code) = err.raw_os_error() else {
        return match err.kind() {
            ErrorKind::TimedOut => "ETIMEDOUT".to_owned(),
            ErrorKind::UnexpectedEof => "EOF".to_owned(),
            kind => format!("{kind:?}"),
        };
    };
    // Linux x86_64 and aarch64 share these numbers.
    let name = match code {
        1 => "EPERM",
        2 => "ENOENT",
        4 => "EINTR",
        11 => "EAGAIN",
        13 => "EACCES",
        22 => "EINVAL",
        32 => "EPIPE",
        97 => "EAFNOSUPPORT",
        98 => "EADDRINUSE",
        99 => "EADDRNOTAVAIL",
        100 => "ENETDOWN",
        101 => "ENETUNREACH",
        103 => "ECONNABORTED",
        104 => "ECONNRESET",
        105 => "ENOBUFS",
        110 => "ETIMEDOUT",
        111 => "ECONNREFUSED",
        113 => "EHOSTUNREACH",
        _ => return format!("errno{code}"),
    };
    name.to_owned()
}
