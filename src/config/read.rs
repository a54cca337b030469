//! Bounded reads of the files a config names (the config itself, certificates, secrets).

use std::io;
use std::path::Path;

/// The largest file the gateway reads (config, certificates, secrets).
pub(crate) const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Reads a UTF-8 regular file of at most `limit` bytes. Anything else (a FIFO, a device such as
/// `/dev/zero`, a directory) is refused before a byte is read, so a misplaced path gives a clear
/// error instead of a hang or an endless read. The file is opened non-blocking (opening a FIFO
/// would otherwise wait for a writer) and checked on the opened handle, so a swap between the
/// check and the read cannot slip a FIFO in.
pub(crate) fn read_bounded(path: &Path, limit: u64) -> io::Result<String> {
    use std::io::Read as _;
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (a directory, FIFO, socket or device); give the path of a plain file",
        ));
    }
    if meta.len() > limit {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("larger than {limit} bytes")));
    }
    let mut bytes = Vec::new();
    // `take`: a file that grows while it is read still stops at the bound.
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("larger than {limit} bytes")));
    }
    String::from_utf8(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}
