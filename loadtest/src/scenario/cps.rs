//! `cps`: every iteration opens a new tunnel, does one request/response and closes it. The
//! request goes out as SOCKS 6 initial data with `socks6://` proxies. Besides the handshake and
//! the whole iteration, each iteration's time to first byte is recorded: from its intended
//! start (in closed loop: the start of the TCP connect) to the first byte of the response.

use std::time::Instant;

use tokio::io::AsyncReadExt;

use super::{bounded, round_trip, rr_request, Ctx, Shared};
use crate::cli::Close;
use crate::error::Fail;
use crate::socks::open_tunnel_early;
use crate::stats::{record, Live};

pub async fn slot(ctx: &Ctx, slot: usize, stats: &Shared) {
    let mut pacing = ctx.pacing(slot);
    let server_closes = ctx.close == Close::Server;
    let req = rr_request(ctx.request_size, ctx.response_size, server_closes);
    let resp_len = ctx.response_size as usize;
    let mut buf = vec![0u8; resp_len.clamp(1, 64 * 1024)];
    while !ctx.stop.is_set() {
        let intended = tokio::select! {
            t = pacing.next_start(ctx.base) => t,
            _ = ctx.stop.wait() => break,
        };
        let started = Instant::now();
        let iteration = async {
            let (mut s, early) = open_tunnel_early(&ctx.proxy, &ctx.dest, &req).await?;
            let handshake = intended.elapsed();
            let first = round_trip(&mut s, &req[early..], resp_len, &mut buf).await?;
            if server_closes {
                // The iteration ends when the server's close has come through the tunnel.
                let mut extra = [0u8; 1];
                if s.read(&mut extra).await? != 0 {
                    return Err(Fail::Protocol("data after the response"));
                }
            }
            drop(s);
            Ok::<_, Fail>((handshake, first))
        };
        let Some(res) = bounded(ctx, iteration).await else {
            break;
        };
        let done = Instant::now();
        let measured = ctx.measured(started);
        match res {
            Ok((hs, first)) => {
                Live::add(&ctx.live.ok, 1);
                if measured {
                    let mut st = stats.borrow_mut();
                    record(&mut st.handshake, hs);
                    if let Some(t) = first {
                        record(&mut st.ttfb, t - intended);
                    }
                    record(&mut st.iteration, done - intended);
                    st.successes += 1;
                    st.bytes_sent += req.len() as u64;
                    st.bytes_received += resp_len as u64;
                }
            }
            Err(f) => ctx.count_failure(stats, &f, measured),
        }
    }
}
