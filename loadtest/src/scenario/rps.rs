//! `rps`: persistent tunnels doing request/response round trips; a broken tunnel is reopened.

use std::time::{Duration, Instant};

use super::{bounded, round_trip, rr_request, Ctx, Shared};
use crate::socks::open_tunnel;
use crate::stats::{record, Live};

/// SOCKS 6 tunnels are opened without initial data: the round trips are paced on their own
/// schedule, so no request is due when a tunnel is set up.
pub async fn slot(ctx: &Ctx, slot: usize, stats: &Shared) {
    let mut pacing = ctx.pacing(slot);
    let req = rr_request(ctx.request_size, ctx.response_size, false);
    let resp_len = ctx.response_size as usize;
    let mut buf = vec![0u8; resp_len.clamp(1, 64 * 1024)];
    while !ctx.stop.is_set() {
        let t0 = Instant::now();
        let Some(res) = bounded(ctx, open_tunnel(&ctx.proxy, &ctx.dest)).await else {
            break;
        };
        let Some(mut s) = ctx.setup_done(stats, t0, res) else {
            // Do not spin on a proxy that refuses: retry after a short pause.
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(10)) => continue,
                _ = ctx.stop.wait() => break,
            }
        };
        loop {
            let intended = tokio::select! {
                t = pacing.next_start(ctx.base) => t,
                _ = ctx.stop.wait() => return,
            };
            let started = Instant::now();
            let Some(res) = bounded(ctx, round_trip(&mut s, &req, resp_len, &mut buf)).await else {
                return;
            };
            let measured = ctx.measured(started);
            match res {
                Ok(_) => {
                    Live::add(&ctx.live.ok, 1);
                    if measured {
                        let mut st = stats.borrow_mut();
                        record(&mut st.iteration, intended.elapsed());
                        st.successes += 1;
                        st.bytes_sent += req.len() as u64;
                        st.bytes_received += resp_len as u64;
                    }
                }
                Err(f) => {
                    ctx.count_failure(stats, &f, measured);
                    break;
                }
            }
        }
    }
}
