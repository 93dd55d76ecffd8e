//! Hashed passwords for the users file, and the `ringsocks passwd` helper command.
//!
//! A users file line is `NAME:PASSWORD` (see [`crate::auth`]). A password field that starts with
//! `$argon2` ([`is_hash`]) is an Argon2 hash in PHC string format,
//! `$argon2id$v=19$m=19456,t=2,p=1$SALT$HASH`; any other field is a plaintext password, as
//! before. Hashes are parsed once when the file is loaded ([`PasswordHash::parse`]), so a
//! malformed one is reported at start-up rather than at the first login.
//!
//! `ringsocks passwd [--file FILE] [--stdin] USER` ([`run`]) reads a password (from the terminal
//! with echo off, or one line of standard input), hashes it ([`hash_password`]) and either
//! prints the `NAME:HASH` line or updates FILE in place ([`write_entry`]): other lines,
//! comments and the file's mode and owner are kept, and the new file replaces the old one
//! atomically.
//!
//! Passwords and hashes are never logged or printed, except the `NAME:HASH` line that the
//! command is asked to print.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{self, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// Longest user name or password RFC 1929 can carry (one length byte).
pub const MAX_LEN: usize = 0xff;

/// Largest Argon2 memory cost accepted in a users file, in KiB (1 GiB). Every login against
/// the hash allocates that much, so a typo such as `m=19456000` would let each login attempt
/// take gigabytes; such a file is refused at load time instead.
pub const MAX_M_COST_KIB: u32 = 1024 * 1024;

/// Why a password could not be read, hashed, parsed or stored.
#[derive(Debug, thiserror::Error)]
pub enum PasswdError {
    /// A file system operation on the users file (or its directory) failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done: "read", "write", "replace", ...
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Standard input could not be read (`--stdin`).
    #[error("cannot read the password from standard input: {0}")]
    Stdin(#[source] io::Error),
    /// Standard output could not be written (the `NAME:HASH` line).
    #[error("cannot write to standard output: {0}")]
    Stdout(#[source] io::Error),
    /// There is no terminal to prompt on (no controlling terminal, or it is not a tty).
    #[error("no terminal to prompt for the password ({0}); pipe it in with --stdin")]
    NoTerminal(#[source] io::Error),
    /// Reading from the terminal, or switching its echo off or back on, failed.
    #[error("cannot read the password from the terminal: {0}")]
    Terminal(#[source] io::Error),
    /// The two passwords typed at the prompt differ.
    #[error("the passwords do not match")]
    Mismatch,
    /// The password is empty.
    #[error("the password is empty")]
    Empty,
    /// The password is longer than RFC 1929 can carry.
    #[error("the password must be at most 255 bytes (RFC 1929)")]
    TooLong,
    /// The user name cannot be written as a users file entry.
    #[error("invalid user name {name:?}: {reason}")]
    BadName {
        /// The rejected name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A password field that should be an Argon2 PHC string is not a usable one.
    #[error("invalid password hash: {reason}")]
    BadHash {
        /// What is wrong with it (never the hash itself).
        reason: String,
    },
    /// Hashing failed (for example, the system random number generator failed).
    #[error("cannot hash the password: {0}")]
    Hash(#[source] password_hash::Error),
}

/// Hashes `password` with argon2id, version 0x13, and the argon2 crate's default parameters
/// (the OWASP recommendation): memory m = 19456 KiB (19 MiB), t = 2 passes, p = 1 lane,
/// a random 16-byte salt from the operating system and a 32-byte output. Returns the PHC
/// string, such as `$argon2id$v=19$m=19456,t=2,p=1$SALT$HASH` (97 bytes).
pub fn hash_password(password: &[u8]) -> Result<String, PasswdError> {
    hash_with(password, Params::DEFAULT)
}

/// Whether a users file password field holds a hash (it starts with `$argon2`) rather than a
/// plaintext password.
pub fn is_hash(field: &str) -> bool {
    field.starts_with("$argon2")
}

/// A parsed Argon2 password hash (argon2id, argon2i or argon2d, PHC string format).
///
/// Everything the check needs is validated by [`PasswordHash::parse`], so [`verify`] only
/// fails on a wrong password. `Debug` shows the algorithm and cost parameters, never the
/// salt or the hash.
///
/// [`verify`]: PasswordHash::verify
#[derive(Clone)]
pub struct PasswordHash {
    phc: password_hash::PasswordHashString,
}

impl PasswordHash {
    /// Parses and validates a PHC string: an argon2 algorithm, a supported version (0x10 or
    /// 0x13, 0x13 if absent), valid cost parameters with memory at most [`MAX_M_COST_KIB`],
    /// a salt of at least 8 bytes and a hash output. The error never quotes the string.
    pub fn parse(phc: &str) -> Result<PasswordHash, PasswdError> {
        let bad = |reason: &str| PasswdError::BadHash {
            reason: reason.to_owned(),
        };
        if !is_hash(phc) {
            return Err(bad("not an argon2 PHC string (expected $argon2id$...)"));
        }
        let phc = password_hash::PasswordHashString::new(phc)
            .map_err(|e| bad(&format!("malformed PHC string ({e})")))?;
        let hash = phc.password_hash();
        Algorithm::try_from(hash.algorithm)
            .map_err(|_| bad("unknown algorithm (expected argon2id, argon2i or argon2d)"))?;
        if let Some(v) = hash.version {
            Version::try_from(v).map_err(|_| bad("unsupported version (expected v=19 or v=16)"))?;
        }
        let params = Params::try_from(&hash)
            .map_err(|e| bad(&format!("invalid parameters m, t, p ({e})")))?;
        if params.m_cost() > MAX_M_COST_KIB {
            return Err(bad(&format!(
                "memory cost m={} KiB is above the limit of {MAX_M_COST_KIB} KiB",
                params.m_cost()
            )));
        }
        let salt = hash.salt.ok_or_else(|| bad("missing salt"))?;
        // The same bound the argon2 crate applies when it hashes: 64 bytes of decoded salt.
        let mut buf = [0u8; 64];
        let salt = salt
            .decode_b64(&mut buf)
            .map_err(|e| bad(&format!("invalid salt ({e})")))?;
        if salt.len() < argon2::MIN_SALT_LEN {
            return Err(bad("salt shorter than 8 bytes"));
        }
        if hash.hash.is_none() {
            return Err(bad("missing hash output"));
        }
        Ok(PasswordHash { phc })
    }

    /// Whether `password` matches. Deliberately slow: it recomputes the hash with the stored
    /// parameters (tens of milliseconds and m KiB of memory with the defaults), then compares
    /// in constant time (inside the `password-hash` crate).
    pub fn verify(&self, password: &[u8]) -> bool {
        Argon2::default()
            .verify_password(password, &self.phc.password_hash())
            .is_ok()
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordHash")
            .field("algorithm", &self.phc.algorithm().as_str())
            .field("params", &self.phc.params().as_str())
            .finish_non_exhaustive()
    }
}

/// Returns `text` (a users file) with `name`'s entry replaced by `name:hash`, or with that
/// line appended if `name` has none. Every other line, comment and blank line is kept byte for
/// byte, including `\r\n` endings and a missing final newline. A line belongs to `name` when
/// it is not a comment and the text before its first `:` is exactly `name`, as the loader
/// reads it; if `name` has several lines, the first is replaced and the others are removed
/// (the loader would let the last one win).
///
/// Fails if `name` is empty, longer than 255 bytes, contains `:` or a control character
/// (such as a line break) or starts with `#`, or if `hash` is not a valid argon2 PHC string.
pub fn upsert_entry(text: &str, name: &str, hash: &str) -> Result<String, PasswdError> {
    check_name(name)?;
    PasswordHash::parse(hash)?;
    let mut out = String::with_capacity(text.len() + name.len() + hash.len() + 2);
    let mut replaced = false;
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches('\n').trim_end_matches('\r');
        if entry_name(body) != Some(name) {
            out.push_str(line);
            continue;
        }
        if !replaced {
            out.push_str(name);
            out.push(':');
            out.push_str(hash);
            out.push_str(&line[body.len()..]);
            replaced = true;
        }
    }
    if !replaced {
        let eol = if text.contains("\r\n") { "\r\n" } else { "\n" };
        if !text.is_empty() && !text.ends_with('\n') {
            out.push_str(eol);
        }
        out.push_str(name);
        out.push(':');
        out.push_str(hash);
        out.push_str(eol);
    }
    Ok(out)
}

/// Sets `name`'s password in the users file `file`: hashes `password` ([`hash_password`]),
/// updates the entry ([`upsert_entry`]; a missing file counts as empty) and replaces the file
/// atomically. The new contents go to a temporary file in the same directory, created with
/// mode 0600 or given the existing file's mode and owner, flushed to disk and renamed over
/// `file`; the directory is synced too. If `file` is a symbolic link, its target is updated.
pub fn write_entry(file: &Path, name: &str, password: &[u8]) -> Result<(), PasswdError> {
    write_entry_with(file, name, password, Params::DEFAULT)
}

/// `ringsocks passwd` arguments.
#[derive(Debug, clap::Args)]
pub struct PasswdArgs {
    /// Users file to create or update
    #[arg(long, short = 'f', value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// User name
    pub user: String,
    /// Read the password from the first line of standard input instead of prompting
    #[arg(long)]
    pub stdin: bool,
}

/// Runs `ringsocks passwd`: reads the password (one line of standard input with `--stdin`,
/// else twice from the terminal with echo off), then either updates `--file` ([`write_entry`])
/// and confirms on standard error, or prints the `NAME:HASH` line on standard output.
pub fn run(args: &PasswdArgs) -> Result<(), PasswdError> {
    // Refuse a bad name before asking for a password.
    check_name(&args.user)?;
    let password = if args.stdin {
        let stdin = io::stdin();
        read_password_line(&mut stdin.lock()).map_err(PasswdError::Stdin)?
    } else {
        prompt_password()?
    };
    check_password(&password)?;
    match &args.file {
        Some(file) => {
            write_entry(file, &args.user, &password)?;
            eprintln!(
                "ringsocks passwd: set the password of user {:?} in {}",
                args.user,
                file.display()
            );
            Ok(())
        }
        None => {
            let hash = hash_password(&password)?;
            let mut out = io::stdout().lock();
            writeln!(out, "{}:{hash}", args.user)
                .and_then(|()| out.flush())
                .map_err(PasswdError::Stdout)
        }
    }
}

/// [`write_entry`] with explicit Argon2 parameters (cheap ones in tests).
fn write_entry_with(
    file: &Path,
    name: &str,
    password: &[u8],
    params: Params,
) -> Result<(), PasswdError> {
    check_name(name)?;
    check_password(password)?;
    // Update the target of a symbolic link rather than replacing the link with a file.
    let file = match fs::canonicalize(file) {
        Ok(real) => real,
        Err(e) if e.kind() == io::ErrorKind::NotFound => file.to_path_buf(),
        Err(source) => return Err(io_error("resolve", file, source)),
    };
    let (text, meta) = match File::open(&file) {
        Ok(mut f) => {
            let meta = f.metadata().map_err(|e| io_error("read", &file, e))?;
            let mut text = String::new();
            f.read_to_string(&mut text)
                .map_err(|e| io_error("read", &file, e))?;
            (text, Some(meta))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => (String::new(), None),
        Err(e) => return Err(io_error("read", &file, e)),
    };
    let hash = hash_with(password, params)?;
    let text = upsert_entry(&text, name, &hash)?;
    replace_file(&file, text.as_bytes(), meta.as_ref())
}

/// Hashes `password` with argon2id v0x13, `params` and a random 16-byte salt.
fn hash_with(password: &[u8], params: Params) -> Result<String, PasswdError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(PasswdError::Hash)
}

/// The name of a users file line (without its line ending), or `None` for a blank line, a
/// comment or a line without a colon; the same reading as `auth::Users::load_file`.
fn entry_name(line: &str) -> Option<&str> {
    if line.trim().is_empty() || line.trim_start().starts_with('#') {
        return None;
    }
    line.split_once(':').map(|(name, _)| name)
}

/// Checks that `name` can be written as a users file entry and sent in RFC 1929.
fn check_name(name: &str) -> Result<(), PasswdError> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.len() > MAX_LEN {
        "it is longer than 255 bytes (RFC 1929)"
    } else if name.contains(':') {
        "it contains ':'"
    } else if name.chars().any(char::is_control) {
        "it contains a line break or another control character"
    } else if name.trim_start().starts_with('#') {
        "it starts with '#', which the users file reads as a comment"
    } else {
        return Ok(());
    };
    Err(PasswdError::BadName {
        name: name.to_owned(),
        reason,
    })
}

/// Checks a password's length: 1 to 255 bytes (RFC 1929).
fn check_password(password: &[u8]) -> Result<(), PasswdError> {
    if password.is_empty() {
        Err(PasswdError::Empty)
    } else if password.len() > MAX_LEN {
        Err(PasswdError::TooLong)
    } else {
        Ok(())
    }
}

/// Reads one line, without its `\n` or `\r\n`. Reads at most a little more than
/// [`MAX_LEN`] bytes, so an over-long line is reported as [`PasswdError::TooLong`] later
/// without buffering all of it.
fn read_password_line(input: &mut impl BufRead) -> io::Result<Secret> {
    // Capacity for the whole bounded read, so the buffer never moves and leaves copies.
    let mut line = Secret(Vec::with_capacity(2 * MAX_LEN + 4));
    input
        .take(2 * MAX_LEN as u64 + 2)
        .read_until(b'\n', &mut line.0)?;
    if line.0.last() == Some(&b'\n') {
        line.0.pop();
        if line.0.last() == Some(&b'\r') {
            line.0.pop();
        }
    }
    Ok(line)
}

/// Prompts twice on the controlling terminal with echo off and returns the password if both
/// entries match.
fn prompt_password() -> Result<Secret, PasswdError> {
    let tty = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(PasswdError::NoTerminal)?;
    let echo_off = EchoOff::new(&tty)?;
    let result = ask_twice(&tty);
    let restored = echo_off.restore();
    let password = result?;
    restored?;
    Ok(password)
}

/// Asks for the password and its confirmation on `tty`.
fn ask_twice(tty: &File) -> Result<Secret, PasswdError> {
    let mut reader = io::BufReader::new(tty);
    let mut ask = |prompt: &str| {
        let mut w = tty;
        w.write_all(prompt.as_bytes())
            .and_then(|()| w.flush())
            .and_then(|()| read_password_line(&mut reader))
            .map_err(PasswdError::Terminal)
    };
    let first = ask("Password: ")?;
    check_password(&first)?;
    let again = ask("Again: ")?;
    if *first != *again {
        return Err(PasswdError::Mismatch);
    }
    Ok(first)
}

/// Terminal echo switched off; switched back on when dropped, also on an error path.
struct EchoOff {
    fd: libc::c_int,
    saved: libc::termios,
}

impl EchoOff {
    /// Switches echo off on `tty` (keeping the newline echo, so the cursor moves on).
    fn new(tty: &File) -> Result<EchoOff, PasswdError> {
        use std::os::unix::io::AsRawFd;
        let fd = tty.as_raw_fd();
        let mut saved = std::mem::MaybeUninit::<libc::termios>::uninit();
        // Safety: `fd` is open (borrowed from `tty`) and `saved` points to writable memory the
        // size of a termios, which tcgetattr fills completely on success.
        if unsafe { libc::tcgetattr(fd, saved.as_mut_ptr()) } != 0 {
            return Err(PasswdError::NoTerminal(io::Error::last_os_error()));
        }
        // Safety: tcgetattr succeeded, so `saved` is initialised.
        let saved = unsafe { saved.assume_init() };
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        quiet.c_lflag |= libc::ECHONL;
        // Safety: `fd` is open and `quiet` is a valid termios.
        if unsafe { libc::tcsetattr(fd, libc::TCSAFLUSH, &quiet) } != 0 {
            return Err(PasswdError::Terminal(io::Error::last_os_error()));
        }
        Ok(EchoOff { fd, saved })
    }

    /// Restores the saved terminal state, reporting a failure (drop only tries).
    fn restore(self) -> Result<(), PasswdError> {
        let result = self.apply_saved();
        std::mem::forget(self);
        result.map_err(PasswdError::Terminal)
    }

    fn apply_saved(&self) -> io::Result<()> {
        // Safety: the caller's `tty` outlives `self` (both live in `prompt_password`), so `fd`
        // is still open; `saved` is the termios tcgetattr returned.
        if unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        let _ = self.apply_saved();
    }
}

/// Writes `contents` to a new file beside `file` and renames it over `file`. The new file
/// gets `meta`'s mode and owner (the file being replaced), or mode 0600 for a new file.
fn replace_file(
    file: &Path,
    contents: &[u8],
    meta: Option<&fs::Metadata>,
) -> Result<(), PasswdError> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let file_name = file.file_name().ok_or_else(|| {
        io_error(
            "write",
            file,
            io::Error::new(io::ErrorKind::InvalidInput, "not a file name"),
        )
    })?;
    let (tmp_path, mut tmp) = create_temp(dir, file_name)?;
    let guard = RemoveOnDrop(Some(tmp_path.clone()));
    if let Some(meta) = meta {
        let mode = meta.permissions().mode() & 0o7777;
        tmp.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| io_error("set the mode of", &tmp_path, e))?;
        let own = tmp.metadata().map_err(|e| io_error("read", &tmp_path, e))?;
        if own.uid() != meta.uid() || own.gid() != meta.gid() {
            // Renaming a file we own over one owned by, say, the proxy's service account
            // would lock the proxy out of its users file at the next start.
            std::os::unix::fs::fchown(&tmp, Some(meta.uid()), Some(meta.gid()))
                .map_err(|e| io_error("keep the owner and group of", file, e))?;
        }
    }
    tmp.write_all(contents)
        .and_then(|()| tmp.sync_all())
        .map_err(|e| io_error("write", &tmp_path, e))?;
    drop(tmp);
    fs::rename(&tmp_path, file).map_err(|e| io_error("replace", file, e))?;
    std::mem::forget(guard);
    // Make the rename itself durable.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("sync directory", dir, e))
}

/// Creates a new, empty temporary file (mode 0600) in `dir` for replacing `file_name`.
fn create_temp(dir: &Path, file_name: &std::ffi::OsStr) -> Result<(PathBuf, File), PasswdError> {
    let pid = std::process::id();
    let mut last = None;
    for attempt in 0..100u32 {
        let mut name = std::ffi::OsString::from(".");
        name.push(file_name);
        name.push(format!(".{pid}.{attempt}.tmp"));
        let path = dir.join(name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => return Ok((path, f)),
            // A leftover from a process that died: try the next name.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some((path, e)),
            Err(e) => return Err(io_error("create a temporary file in", dir, e)),
        }
    }
    let (path, e) =
        last.unwrap_or_else(|| (dir.to_path_buf(), io::ErrorKind::AlreadyExists.into()));
    Err(io_error("create", &path, e))
}

/// Removes a temporary file unless forgotten (the rename happened).
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = fs::remove_file(path);
        }
    }
}

fn io_error(action: &'static str, path: &Path, source: io::Error) -> PasswdError {
    PasswdError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// A password read from the user; overwritten with zeros when dropped (best effort: the
/// terminal driver and the standard library's buffers may hold other copies).
struct Secret(Vec<u8>);

impl std::ops::Deref for Secret {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            // Safety: `b` is a valid, aligned, exclusive reference; a volatile write is not
            // removed as a dead store.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheap parameters (8 KiB, one pass) so the tests stay fast.
    fn cheap() -> Params {
        Params::new(8, 1, 1, None).unwrap()
    }

    fn cheap_hash(password: &[u8]) -> String {
        hash_with(password, cheap()).unwrap()
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "ringsocks-passwd-{tag}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn default_params_hash_and_verify() {
        let phc = hash_password(b"correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(is_hash(&phc));
        let h = PasswordHash::parse(&phc).unwrap();
        assert!(h.verify(b"correct horse"));
        assert!(!h.verify(b"correct horsE"));
        assert!(!h.verify(b""));
    }

    #[test]
    fn cheap_hash_verifies_and_salts_differ() {
        let a = cheap_hash(b"pa:ss");
        let b = cheap_hash(b"pa:ss");
        assert_ne!(a, b, "a random salt per hash");
        for phc in [&a, &b] {
            let h = PasswordHash::parse(phc).unwrap();
            assert!(h.verify(b"pa:ss"));
            assert!(!h.verify(b"pa:s"));
            assert!(!h.verify(b"pa:sss"));
        }
    }

    #[test]
    fn other_argon2_variants_parse() {
        for alg in [Algorithm::Argon2i, Algorithm::Argon2d] {
            let salt = SaltString::generate(&mut OsRng);
            let phc = Argon2::new(alg, Version::V0x10, cheap())
                .hash_password(b"pw", &salt)
                .unwrap()
                .to_string();
            let h = PasswordHash::parse(&phc).unwrap();
            assert!(h.verify(b"pw"));
            assert!(!h.verify(b"pW"));
        }
    }

    #[test]
    fn parse_rejects_bad_hashes() {
        let good = cheap_hash(b"pw");
        let truncated_hash = &good[..good.rfind('$').unwrap()];
        let no_salt = {
            let end = good[..good.rfind('$').unwrap()].rfind('$').unwrap();
            &good[..end]
        };
        let cases = [
            "",
            "garbage",
            "$argon2",
            "$argon2id",
            "$argon2id$",
            "$6$rounds=5000$saltsalt$hash",
            "$scrypt$ln=16,r=8,p=1$aM15713r3Xsvxbi31lqr1Q$nFNh2CVHVjNldFVKDHDlm4CbdRSCdEBsjjJxD+iCs5E",
            "$argon2x$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$iWh06vD8Fy27wf9npn6FXWiCX4K6pW6Ue1Bnzz07Z8A",
            "$argon2id$v=18$m=19456,t=2,p=1$c29tZXNhbHQ$iWh06vD8Fy27wf9npn6FXWiCX4K6pW6Ue1Bnzz07Z8A",
            "$argon2id$v=19$m=1,t=2,p=1$c29tZXNhbHQ$iWh06vD8Fy27wf9npn6FXWiCX4K6pW6Ue1Bnzz07Z8A",
            "$argon2id$v=19$m=19456,t=0,p=1$c29tZXNhbHQ$iWh06vD8Fy27wf9npn6FXWiCX4K6pW6Ue1Bnzz07Z8A",
            "$argon2id$v=19$m=19456,t=2,p=1,x=3$c29tZXNhbHQ$iWh06vD8Fy27wf9npn6FXWiCX4K6pW6Ue1Bnzz07Z8A",
            "$argon2id$v=19$m=19456000,t=2,p=1$c29tZXNhbHQ$iWh06vD8Fy27wf9npn6FXWiCX4K6pW6Ue1Bnzz07Z8A",
            // A 4-byte salt: valid PHC, too short for Argon2.
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$iWh06vD8Fy27wf9npn6FXWiCX4K6pW6Ue1Bnzz07Z8A",
            "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$not base64!",
            truncated_hash,
            no_salt,
            &good[..good.len() - 10],
        ];
        for (i, case) in cases.iter().enumerate() {
            assert!(
                matches!(PasswordHash::parse(case), Err(PasswdError::BadHash { .. })),
                "case {i} ({case:?}) was not rejected as a bad hash"
            );
        }
        assert!(PasswordHash::parse(&good).is_ok());
    }

    #[test]
    fn debug_hides_salt_and_hash() {
        let phc = cheap_hash(b"pw");
        let h = PasswordHash::parse(&phc).unwrap();
        let debug = format!("{h:?}");
        let mut fields = phc.rsplit('$');
        let (hash, salt) = (fields.next().unwrap(), fields.next().unwrap());
        assert!(!debug.contains(hash), "{debug}");
        assert!(!debug.contains(salt), "{debug}");
        assert!(debug.contains("argon2id"), "{debug}");
    }

    #[test]
    fn is_hash_only_for_argon2_prefix() {
        assert!(is_hash("$argon2id$v=19$..."));
        assert!(is_hash("$argon2i$"));
        assert!(!is_hash("argon2id"));
        assert!(!is_hash("$6$salt$hash"));
        assert!(!is_hash(""));
    }

    #[test]
    fn upsert_replaces_only_that_user() {
        let h = cheap_hash(b"new");
        let text = "# users\nalice:one\nal:two\n\n#al:comment\nalbert:three\n";
        let out = upsert_entry(text, "al", &h).unwrap();
        assert_eq!(
            out,
            format!("# users\nalice:one\nal:{h}\n\n#al:comment\nalbert:three\n")
        );
        let out = upsert_entry(text, "alice", &h).unwrap();
        assert_eq!(
            out,
            format!("# users\nalice:{h}\nal:two\n\n#al:comment\nalbert:three\n")
        );
        // A plaintext password containing the name and colons is not mistaken for it.
        let out = upsert_entry("bob:al:x\nal:y", "al", &h).unwrap();
        assert_eq!(out, format!("bob:al:x\nal:{h}"));
    }

    #[test]
    fn upsert_appends_and_keeps_endings() {
        let h = cheap_hash(b"new");
        assert_eq!(upsert_entry("", "bob", &h).unwrap(), format!("bob:{h}\n"));
        assert_eq!(
            upsert_entry("# only a comment\n", "bob", &h).unwrap(),
            format!("# only a comment\nbob:{h}\n")
        );
        // No trailing newline: appended on a new line; a replaced last line stays unterminated.
        assert_eq!(
            upsert_entry("alice:one", "bob", &h).unwrap(),
            format!("alice:one\nbob:{h}\n")
        );
        assert_eq!(
            upsert_entry("alice:one\nbob:two", "bob", &h).unwrap(),
            format!("alice:one\nbob:{h}")
        );
        // CRLF files stay CRLF.
        assert_eq!(
            upsert_entry("alice:one\r\nbob:two\r\n", "bob", &h).unwrap(),
            format!("alice:one\r\nbob:{h}\r\n")
        );
        assert_eq!(
            upsert_entry("alice:one\r\n", "bob", &h).unwrap(),
            format!("alice:one\r\nbob:{h}\r\n")
        );
    }

    #[test]
    fn upsert_removes_duplicates_of_that_user() {
        let h = cheap_hash(b"new");
        let out = upsert_entry("bob:1\nalice:x\nbob:2\n", "bob", &h).unwrap();
        assert_eq!(out, format!("bob:{h}\nalice:x\n"));
    }

    #[test]
    fn upsert_rejects_bad_names_and_hashes() {
        let h = cheap_hash(b"new");
        let long = "n".repeat(256);
        for name in ["", "a:b", "a\nb", "a\rb", "#a", "  #a", long.as_str()] {
            assert!(
                matches!(upsert_entry("", name, &h), Err(PasswdError::BadName { .. })),
                "{name:?}"
            );
        }
        assert!(upsert_entry("", &"n".repeat(255), &h).is_ok());
        assert!(matches!(
            upsert_entry("", "bob", "plaintext"),
            Err(PasswdError::BadHash { .. })
        ));
        assert!(matches!(
            upsert_entry("", "bob", &format!("{h}\nmallory:x")),
            Err(PasswdError::BadHash { .. })
        ));
    }

    #[test]
    fn write_entry_creates_0600_and_replaces() {
        let dir = temp_dir("write");
        let file = dir.join("users");
        // The real entry point, with the default parameters.
        write_entry(&file, "alice", b"first").unwrap();
        let meta = fs::metadata(&file).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let text = fs::read_to_string(&file).unwrap();
        assert!(text.starts_with("alice:$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(
            text.ends_with('\n') && text.lines().count() == 1,
            "{text:?}"
        );

        // Another user, a comment, and a changed mode that must survive.
        fs::write(&file, format!("# team\n{text}bob:plain")).unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).unwrap();
        write_entry_with(&file, "alice", b"second", cheap()).unwrap();
        let text = fs::read_to_string(&file).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text:?}");
        assert_eq!(lines[0], "# team");
        assert_eq!(lines[2], "bob:plain");
        assert!(!text.ends_with('\n'));
        let h = PasswordHash::parse(lines[1].strip_prefix("alice:").unwrap()).unwrap();
        assert!(h.verify(b"second"));
        assert!(!h.verify(b"first"));
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o640
        );
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn write_entry_follows_symlink_and_checks_input() {
        let dir = temp_dir("link");
        let real = dir.join("real");
        let link = dir.join("link");
        fs::write(&real, "alice:one\n").unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        write_entry_with(&link, "bob", b"two", cheap()).unwrap();
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        let text = fs::read_to_string(&real).unwrap();
        assert!(text.starts_with("alice:one\nbob:$argon2id$"), "{text:?}");

        assert!(matches!(
            write_entry_with(&real, "bob", b"", cheap()),
            Err(PasswdError::Empty)
        ));
        assert!(matches!(
            write_entry_with(&real, "bob", &[b'p'; 256], cheap()),
            Err(PasswdError::TooLong)
        ));
        assert!(matches!(
            write_entry_with(&real, "b:b", b"pw", cheap()),
            Err(PasswdError::BadName { .. })
        ));
        let missing_dir = dir.join("nope").join("users");
        let err = write_entry_with(&missing_dir, "bob", b"pw", cheap()).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        assert_eq!(
            fs::read_to_string(&real).unwrap(),
            text,
            "unchanged on error"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn password_line_reading() {
        let read = |input: &[u8]| read_password_line(&mut &input[..]).unwrap().0.clone();
        assert_eq!(read(b"secret\nnext\n"), b"secret");
        assert_eq!(read(b"sec ret \r\n"), b"sec ret ");
        assert_eq!(read(b"no newline"), b"no newline");
        assert_eq!(read(b"\n"), b"");
        assert_eq!(read(b""), b"");
        assert!(
            read(&[b'x'; 10_000]).len() > MAX_LEN,
            "too long is still detectable"
        );
    }

    #[test]
    fn errors_do_not_quote_the_hash() {
        let phc =
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$iWh06vD8Fy27wf9npn6FXWiCX4K6pW6Ue1Bnzz07Z8A";
        let err = PasswordHash::parse(phc).unwrap_err().to_string();
        assert!(!err.contains("iWh06vD8"), "{err}");
        assert!(!err.contains("c2FsdA"), "{err}");
    }
}
