//! `udp`: SOCKS5 UDP ASSOCIATE round trips. Each slot holds one association (its TCP control
//! connection stays open) and sends one datagram at a time, waiting for the echo up to the
//! timeout; an unanswered datagram is lost, and an answer arriving after that is counted as late.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::net::{TcpStream, UdpSocket};

use super::{Ctx, Shared};
use crate::error::Fail;
use crate::socks::{
    encode_udp_header, socks5_command, socks5_negotiate, tcp_connect, udp_header_len, Dest,
    ProxyKind, CMD_UDP_ASSOCIATE,
};
use crate::stats::{record, Live};

/// Smallest datagram payload: sequence number and slot id.
pub const MIN_DGRAM: usize = 16;

struct Assoc {
    sock: UdpSocket,
    /// SOCKS UDP header to prefix (empty when direct).
    header: Vec<u8>,
    /// Keeps the association alive.
    _control: Option<TcpStream>,
}

async fn associate(ctx: &Ctx) -> Result<Assoc, Fail> {
    let local = SocketAddr::new(
        match ctx.udp_target.ip() {
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        },
        0,
    );
    let sock = UdpSocket::bind(local).await.map_err(Fail::Io)?;
    match (&ctx.proxy.kind, ctx.proxy.addr) {
        (ProxyKind::Direct, _) | (_, None) => {
            sock.connect(ctx.udp_target).await.map_err(Fail::Connect)?;
            Ok(Assoc {
                sock,
                header: Vec::new(),
                _control: None,
            })
        }
        (ProxyKind::Socks5 { auth, .. }, Some(paddr)) => {
            let mut c = tcp_connect(paddr).await?;
            socks5_negotiate(&mut c, auth.as_ref()).await?;
            let me = sock.local_addr().map_err(Fail::Io)?;
            let relay = match socks5_command(&mut c, CMD_UDP_ASSOCIATE, &Dest::Addr(me)).await? {
                Dest::Addr(a) if a.ip().is_unspecified() => SocketAddr::new(paddr.ip(), a.port()),
                Dest::Addr(a) => a,
                Dest::Name(..) => return Err(Fail::Protocol("UDP relay given as a host name")),
            };
            sock.connect(relay).await.map_err(Fail::Connect)?;
            let mut header = Vec::new();
            encode_udp_header(&mut header, &Dest::Addr(ctx.udp_target))?;
            Ok(Assoc {
                sock,
                header,
                _control: Some(c),
            })
        }
        _ => Err(Fail::Unsupported("UDP needs SOCKS5 (or direct)")),
    }
}

pub async fn slot(ctx: &Ctx, slot: usize, stats: &Shared) {
    let mut pacing = ctx.pacing(slot);
    let size = (ctx.request_size as usize).max(MIN_DGRAM);
    let mut seq = 0u64;
    let mut rbuf = vec![0u8; 65536];
    while !ctx.stop.is_set() {
        let t0 = Instant::now();
        let res = tokio::select! {
            r = tokio::time::timeout(ctx.timeout, associate(ctx)) => r.unwrap_or(Err(Fail::Timeout)),
            _ = ctx.stop.wait() => return,
        };
        let Some(a) = ctx.setup_done(stats, t0, res) else {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                _ = ctx.stop.wait() => return,
            }
        };
        let mut out = a.header.clone();
        let hl = out.len();
        out.resize(hl + size, 0x5a);
        out[hl + 8..hl + 16].copy_from_slice(&(slot as u64).to_be_bytes());
        loop {
            let intended = tokio::select! {
                t = pacing.next_start(ctx.base) => t,
                _ = ctx.stop.wait() => return,
            };
            let started = Instant::now();
            seq += 1;
            out[hl..hl + 8].copy_from_slice(&seq.to_be_bytes());
            let measured = ctx.measured(started);
            let exchange = async {
                a.sock.send(&out).await.map_err(Fail::Io)?;
                let mut late = 0u64;
                loop {
                    let n = a.sock.recv(&mut rbuf).await.map_err(Fail::Io)?;
                    let off = if a.header.is_empty() {
                        0
                    } else {
                        udp_header_len(&rbuf[..n])?
                    };
                    let body = &rbuf[off..n];
                    if body.len() < MIN_DGRAM {
                        return Err(Fail::Protocol("short UDP echo"));
                    }
                    let got = u64::from_be_bytes(body[..8].try_into().unwrap_or_default());
                    if got == seq {
                        return Ok::<_, Fail>((late, body.len()));
                    }
                    late += 1;
                }
            };
            let res = tokio::select! {
                r = tokio::time::timeout(ctx.timeout, exchange) => r.unwrap_or(Err(Fail::Timeout)),
                _ = ctx.stop.wait() => return,
            };
            if !measured {
                continue;
            }
            let mut st = stats.borrow_mut();
            st.dgrams_sent += 1;
            match res {
                Ok((late, n)) => {
                    Live::add(&ctx.live.ok, 1);
                    record(&mut st.iteration, intended.elapsed());
                    st.successes += 1;
                    st.dgrams_received += 1;
                    st.dgrams_late += late;
                    st.bytes_sent += size as u64;
                    st.bytes_received += n as u64;
                }
                Err(Fail::Timeout) => {
                    Live::add(&ctx.live.errors, 1);
                    st.dgrams_lost += 1;
                    st.fail(&Fail::Timeout);
                }
                Err(f) => {
                    Live::add(&ctx.live.errors, 1);
                    st.fail(&f);
                    drop(st);
                    break;
                }
            }
        }
    }
}
