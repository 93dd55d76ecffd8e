//! `throughput`: each slot is one tunnel streaming framed bulk data up, down or both until the
//! run stops, then exchanging end frames so both sides' byte counts can be compared exactly.

use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Ctx, Shared};
use crate::cli::Direction;
use crate::error::Fail;
use crate::socks::open_tunnel_early;
use crate::stats::{record, Live};
use crate::target::stream::{frame, FrameReader, TRAILER};
use crate::target::{MODE_BOTH, MODE_DOWN, MODE_UP};

#[derive(Debug, Default)]
struct Counts {
    sent: u64,
    received: u64,
    peer_sent: u64,
    peer_received: u64,
}

pub async fn slot(ctx: &Ctx, _slot: usize, stats: &Shared) {
    let t0 = Instant::now();
    let mode = match ctx.direction {
        Direction::Up => MODE_UP,
        Direction::Down => MODE_DOWN,
        Direction::Both => MODE_BOTH,
    };
    // The mode byte is the first payload: SOCKS 6 carries it as initial data.
    let first = [mode];
    let opened = tokio::select! {
        r = tokio::time::timeout(ctx.timeout, open_tunnel_early(&ctx.proxy, &ctx.dest, &first)) => {
            r.unwrap_or(Err(Fail::Timeout))
        }
        _ = ctx.stop.wait() => return,
    };
    let (s, mode_sent) = match opened {
        Ok((s, early)) => (s, early == 1),
        Err(f) => {
            Live::add(&ctx.live.errors, 1);
            stats.borrow_mut().fail(&f);
            return;
        }
    };
    record(&mut stats.borrow_mut().handshake, t0.elapsed());
    Live::add(&ctx.live.active, 1);
    let mut counts = Counts::default();
    // The stream runs until the stop signal; after it only the end exchange remains, which
    // must finish within the timeout.
    let res = tokio::select! {
        r = stream(ctx, s, (!mode_sent).then_some(mode), &mut counts) => r,
        _ = async {
            ctx.stop.wait().await;
            tokio::time::sleep(ctx.timeout).await;
        } => Err(Fail::Timeout),
    };
    ctx.live
        .active
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    let mut st = stats.borrow_mut();
    st.bytes_sent += counts.sent;
    st.bytes_received += counts.received;
    st.peer_sent += counts.peer_sent;
    st.peer_received += counts.peer_received;
    match res {
        Ok(()) => {
            Live::add(&ctx.live.ok, 1);
            st.successes += 1;
            st.verified += 1;
        }
        Err(f) => {
            Live::add(&ctx.live.errors, 1);
            st.fail(&f);
        }
    }
}

/// Stream until the stop signal; `mode` is the mode byte still to send, if any.
async fn stream(
    ctx: &Ctx,
    s: tokio::net::TcpStream,
    mode: Option<u8>,
    c: &mut Counts,
) -> Result<(), Fail> {
    let (mut r, mut w) = s.into_split();
    let up = ctx.direction != Direction::Down;
    let live = &ctx.live;
    let writer = async {
        let mut sent = 0u64;
        if let Some(m) = mode {
            w.write_all(&[m]).await?;
        }
        if up {
            let f = frame(ctx.chunk_size);
            let payload = (f.len() - 4) as u64;
            while !ctx.stop.is_set() {
                w.write_all(&f).await?;
                sent += payload;
                Live::add(&live.bytes_up, payload);
            }
        } else {
            ctx.stop.wait().await;
        }
        w.write_all(&0u32.to_be_bytes()).await?;
        Ok::<u64, Fail>(sent)
    };
    let reader = async {
        let mut fr = FrameReader::default();
        let mut buf = vec![0u8; 256 * 1024];
        let mut trailer = [0u8; TRAILER - 4];
        let mut tlen = 0;
        loop {
            let n = r.read(&mut buf).await?;
            if n == 0 {
                return Err(Fail::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            let mut used = 0;
            if !fr.ended {
                let before = fr.payload;
                used = fr.feed(&buf[..n]).map_err(Fail::Protocol)?;
                Live::add(&live.bytes_down, fr.payload - before);
            }
            if fr.ended {
                let k = (n - used).min(trailer.len() - tlen);
                trailer[tlen..tlen + k].copy_from_slice(&buf[used..used + k]);
                tlen += k;
                if tlen == trailer.len() {
                    break;
                }
            }
        }
        let peer_sent = u64::from_be_bytes(trailer[..8].try_into().unwrap_or_default());
        let peer_received = u64::from_be_bytes(trailer[8..].try_into().unwrap_or_default());
        Ok::<_, Fail>((fr.payload, peer_sent, peer_received))
    };
    let (wres, rres) = tokio::join!(writer, reader);
    let sent = wres?;
    let (received, peer_sent, peer_received) = rres?;
    *c = Counts {
        sent,
        received,
        peer_sent,
        peer_received,
    };
    if sent != peer_received || received != peer_sent {
        return Err(Fail::Mismatch(format!(
            "up: sent {sent}, target received {peer_received}; down: target sent {peer_sent}, received {received}"
        )));
    }
    Ok(())
}
