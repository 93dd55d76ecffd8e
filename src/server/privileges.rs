//! `--setuid USER`: give up root once the listeners (and the metrics listener) are bound.

use std::ffi::CString;
use std::io;

/// Why the switch failed.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// No such user.
    #[error("--setuid {0}: no such user")]
    NoUser(String),
    /// A call failed.
    #[error("--setuid {user}: {call}: {source}")]
    Call {
        /// The user.
        user: String,
        /// Which call.
        call: &'static str,
        /// The error.
        source: io::Error,
    },
    /// Root could be regained after the switch.
    #[error("--setuid {0}: root privileges could be regained after the switch; refusing to run")]
    NotDropped(String),
}

/// Switches the whole process (every thread: glibc applies set*id to all of them) to `user`,
/// its primary group and its supplementary groups. A no-op when already running as that user.
pub fn drop_to(user: &str) -> Result<(u32, u32), PrivilegeError> {
    let name = CString::new(user).map_err(|_| PrivilegeError::NoUser(user.into()))?;
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0u8; 16384];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // Safety: getpwnam_r fills `pwd` with pointers into `buf`, which outlives their use here.
    let r = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if r != 0 || result.is_null() {
        return Err(PrivilegeError::NoUser(user.into()));
    }
    let (uid, gid) = (pwd.pw_uid, pwd.pw_gid);
    let call = |call: &'static str, r: libc::c_int| {
        if r == 0 {
            Ok(())
        } else {
            Err(PrivilegeError::Call {
                user: user.into(),
                call,
                source: io::Error::last_os_error(),
            })
        }
    };
    // Safety: plain syscalls with values from the password database.
    unsafe {
        if libc::geteuid() == uid && libc::getuid() == uid {
            return Ok((uid, gid));
        }
        call("initgroups", libc::initgroups(name.as_ptr(), gid))?;
        call("setgid", libc::setgid(gid))?;
        call("setuid", libc::setuid(uid))?;
        if uid != 0 && libc::setuid(0) == 0 {
            return Err(PrivilegeError::NotDropped(user.into()));
        }
    }
    Ok((uid, gid))
}
