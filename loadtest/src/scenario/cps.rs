//! `cps`: every iteration opens a new tunnel, does one request/response and closes it.

use std::time::Instant;

use tokio::io::AsyncReadExt;

use super::{bounded, round_trip, rr_request, Ctx, Shared};
use crate::cli::Close;
use crate::error::Fail;
use crate::socks::open_tunnel;
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
            let mut s = open_tunnel(&ctx.proxy, &ctx.dest).await?;
            let handshake = intended.elapsed();
            round_trip(&mut s, &req, resp_len, &mut buf).await?;
            if server_closes {
                // The iteration ends when the server's close has come through the tunnel.
                let mut extra = [0u8; 1];
                if s.read(&mut extra).await? != 0 {
                    return Err(Fail::Protocol("data after the response"));
                }
            }
            drop(s);
            Ok::<_, Fail>(handshake)
        };
        let Some(res) = bounded(ctx, iteration).await else {
            break;
        };
        let done = Instant::now();
        let measured = ctx.measured(started);
        match res {
            Ok(hs) => {
                Live::add(&ctx.live.ok, 1);
                if measured {
                    let mut st = stats.borrow_mut();
                    record(&mut st.handshake, hs);
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
