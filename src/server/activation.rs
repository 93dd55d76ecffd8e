//! systemd socket activation (the `sd_listen_fds` protocol): when `LISTEN_PID` names this
//! process, descriptors 3 .. 3 + `LISTEN_FDS` are listening sockets opened by systemd, named by
//! `LISTEN_FDNAMES` (the socket unit's `FileDescriptorName=`). They replace `--listen`; one
//! named `proxy` expects a PROXY protocol header.
//!
//! The sockets belong to systemd and outlive this process (connections wait in their backlog
//! across a restart), so they are never shut down here: every worker accepts on the same
//! socket, and stopping cancels the pending accepts instead.

use std::io;
use std::net::TcpListener;
use std::os::fd::{FromRawFd, RawFd};

/// The first descriptor systemd passes.
const SD_LISTEN_FDS_START: RawFd = 3;

/// A socket passed by systemd.
#[derive(Debug)]
pub struct Activated {
    /// The listening socket.
    pub socket: TcpListener,
    /// Its `FileDescriptorName=` (systemd defaults it to the socket unit's name).
    pub name: String,
}

impl Activated {
    /// What connections on it start with: a socket named "proxy" takes a PROXY protocol
    /// header, one named "tls" a TLS handshake.
    pub fn front(&self) -> super::worker::Front {
        match self.name.as_str() {
            "proxy" => super::worker::Front::ProxyHeader,
            "tls" => super::worker::Front::Tls,
            _ => super::worker::Front::Socks,
        }
    }
}

/// Why the passed sockets cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// LISTEN_FDS is not a number.
    #[error("LISTEN_FDS={0:?} is not a number of descriptors")]
    BadCount(String),
    /// A passed descriptor is not a listening TCP socket.
    #[error("descriptor {fd} from systemd ({name}) is not a listening TCP socket: {why}")]
    NotTcpListener {
        /// The descriptor.
        fd: RawFd,
        /// Its name.
        name: String,
        /// What is wrong with it.
        why: String,
    },
}

/// Takes the sockets systemd passed, if any, and removes the `LISTEN_*` variables so that no
/// child process inherits them. `Ok(None)` when not socket-activated.
pub fn take() -> Result<Option<Vec<Activated>>, ActivationError> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let names = std::env::var("LISTEN_FDNAMES").ok();
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(None);
    };
    // Meant for another process (set in an ancestor's environment): ignore.
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(None);
    }
    for v in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(v);
    }
    let n: RawFd = fds
        .trim()
        .parse()
        .ok()
        .filter(|n| (0..=4096).contains(n))
        .ok_or_else(|| ActivationError::BadCount(fds.clone()))?;
    let names: Vec<String> = names
        .map(|s| s.split(':').map(str::to_owned).collect())
        .unwrap_or_default();
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n {
        let fd = SD_LISTEN_FDS_START + i;
        let name = names
            .get(i as usize)
            .cloned()
            .unwrap_or_else(|| "unknown".into());
        check_listener(fd).map_err(|why| ActivationError::NotTcpListener {
            fd,
            name: name.clone(),
            why,
        })?;
        // Safety: systemd passed this descriptor to us to own (checked above to be an open
        // listening socket); nothing else in the process refers to it.
        let socket = unsafe { TcpListener::from_raw_fd(fd) };
        // Not for children; non-blocking, as sockets built by `listener::bind` are.
        set_cloexec(fd);
        socket
            .set_nonblocking(true)
            .map_err(|e| ActivationError::NotTcpListener {
                fd,
                name: name.clone(),
                why: e.to_string(),
            })?;
        out.push(Activated { socket, name });
    }
    Ok(Some(out))
}

fn check_listener(fd: RawFd) -> Result<(), String> {
    let get = |level, opt| -> Result<libc::c_int, String> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // Safety: getsockopt writes at most `len` bytes into `v`.
        let r = unsafe {
            libc::getsockopt(
                fd,
                level,
                opt,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error().to_string());
        }
        Ok(v)
    };
    if get(libc::SOL_SOCKET, libc::SO_TYPE)? != libc::SOCK_STREAM {
        return Err("not a stream socket (use ListenStream=)".into());
    }
    let domain = get(libc::SOL_SOCKET, libc::SO_DOMAIN)?;
    if domain != libc::AF_INET && domain != libc::AF_INET6 {
        return Err("not an IPv4 or IPv6 socket".into());
    }
    if get(libc::SOL_SOCKET, libc::SO_ACCEPTCONN)? == 0 {
        return Err("not listening (Accept=no is required)".into());
    }
    Ok(())
}

fn set_cloexec(fd: RawFd) {
    // Safety: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
        }
    }
}
