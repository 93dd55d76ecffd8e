//! `hold`: ramp to K tunnels (slot i opens at i / rate), keep each alive with a one-byte echo
//! every `--keepalive`, and at the stop check each once more. A tunnel counts once: as held
//! (success) if it answered the final check, else as the error that ended it.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Ctx, Shared};
use crate::error::Fail;
use crate::socks::open_tunnel_early;
use crate::stats::{record, Live};
use crate::target::MODE_ECHO;

/// Default ramp rate when `--rate` is not given, tunnels per second.
pub const DEFAULT_RAMP_RATE: f64 = 2000.0;

/// Send `byte` (unless it already went out as SOCKS 6 initial data) and read its echo.
async fn ping_sent(s: &mut TcpStream, byte: u8, sent: bool) -> Result<(), Fail> {
    if !sent {
        s.write_all(&[byte]).await?;
    }
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await?;
    if b[0] != byte {
        return Err(Fail::Protocol("keepalive echo returned a different byte"));
    }
    Ok(())
}

async fn ping(s: &mut TcpStream, byte: u8) -> Result<(), Fail> {
    ping_sent(s, byte, false).await
}

pub async fn slot(ctx: &Ctx, slot: usize, stats: &Shared) {
    let rate = ctx.rate.unwrap_or(DEFAULT_RAMP_RATE).max(1e-3);
    let intended = ctx.base + Duration::from_secs_f64(slot as f64 / rate);
    tokio::select! {
        _ = tokio::time::sleep_until(intended.into()) => {}
        _ = ctx.stop.wait() => return,
    }
    let open = async {
        // The mode byte is the first payload: SOCKS 6 carries it as initial data.
        let (mut s, early) = open_tunnel_early(&ctx.proxy, &ctx.dest, &[MODE_ECHO]).await?;
        ping_sent(&mut s, MODE_ECHO, early == 1).await?;
        Ok::<_, Fail>(s)
    };
    let opened = tokio::select! {
        r = tokio::time::timeout(ctx.timeout, open) => r.unwrap_or(Err(Fail::Timeout)),
        _ = ctx.stop.wait() => return,
    };
    let mut s = match opened {
        Ok(s) => s,
        Err(f) => {
            Live::add(&ctx.live.failed, 1);
            Live::add(&ctx.live.errors, 1);
            stats.borrow_mut().fail(&f);
            return;
        }
    };
    {
        let mut st = stats.borrow_mut();
        record(&mut st.handshake, intended.elapsed());
        st.established += 1;
    }
    Live::add(&ctx.live.established, 1);
    Live::add(&ctx.live.active, 1);
    let result = keep(ctx, slot, &mut s, stats).await;
    ctx.live.active.fetch_sub(1, Ordering::Relaxed);
    match result {
        Ok(()) => {
            Live::add(&ctx.live.ok, 1);
            let mut st = stats.borrow_mut();
            st.successes += 1;
            st.held += 1;
        }
        Err(f) => {
            Live::add(&ctx.live.errors, 1);
            stats.borrow_mut().fail(&f);
        }
    }
}

async fn keep(ctx: &Ctx, slot: usize, s: &mut TcpStream, stats: &Shared) -> Result<(), Fail> {
    // Spread keepalives evenly over the interval.
    let ka = ctx.keepalive.max(Duration::from_millis(10));
    let phase = (slot % 997) as f64 / 997.0;
    let mut next = Instant::now() + ka.mul_f64(phase.max(0.01));
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = ctx.stop.wait() => break,
        }
        let t = Instant::now();
        tokio::time::timeout(ctx.timeout, ping(s, b'k'))
            .await
            .unwrap_or(Err(Fail::Timeout))?;
        record(&mut stats.borrow_mut().iteration, t.elapsed());
        next += ka;
    }
    // Final check: is the tunnel still alive at the end of the hold?
    tokio::time::timeout(ctx.timeout, ping(s, b'z'))
        .await
        .unwrap_or(Err(Fail::Timeout))
}
