//! Errors: [`StoreError`] for I/O requests, [`OpenError`] for opening a store.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// What went wrong with an I/O request, grouped by the SCSI sense scsi-core reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The medium failed (EIO and anything unclassified): MEDIUM ERROR.
    Io,
    /// No space to allocate (ENOSPC, EDQUOT): SPACE ALLOCATION FAILED (write protect).
    NoSpace,
    /// The range lies (partly) outside the store: LBA OUT OF RANGE.
    OutOfRange,
    /// The store is read-only (EROFS, EBADF/EPERM on write): WRITE PROTECTED.
    ReadOnly,
    /// The operation is not supported by this store (EOPNOTSUPP, ENOTTY, ENOSYS).
    Unsupported,
    /// The request was malformed for this store, e.g. an `O_DIRECT` request whose offset or
    /// length is not a multiple of the block size (EINVAL): INVALID FIELD IN CDB.
    Invalid,
    /// The engine shut down before running the request (ECANCELED).
    Cancelled,
}

/// The error of one I/O request: a kind plus the errno it came from (0 when none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StoreError {
    kind: ErrorKind,
    errno: i32,
}

impl StoreError {
    /// An error of `kind` carrying `errno`.
    pub const fn new(kind: ErrorKind, errno: i32) -> Self {
        Self { kind, errno }
    }

    /// EIO: MEDIUM ERROR.
    pub const IO: Self = Self::new(ErrorKind::Io, libc::EIO);
    /// ENOSPC: SPACE ALLOCATION FAILED.
    pub const NO_SPACE: Self = Self::new(ErrorKind::NoSpace, libc::ENOSPC);
    /// Range outside the store (errno 0: detected before any system call).
    pub const OUT_OF_RANGE: Self = Self::new(ErrorKind::OutOfRange, 0);
    /// Write to a read-only store (EROFS).
    pub const READ_ONLY: Self = Self::new(ErrorKind::ReadOnly, libc::EROFS);
    /// Unsupported operation (EOPNOTSUPP).
    pub const UNSUPPORTED: Self = Self::new(ErrorKind::Unsupported, libc::EOPNOTSUPP);
    /// Malformed request (EINVAL).
    pub const INVALID: Self = Self::new(ErrorKind::Invalid, libc::EINVAL);
    /// Cancelled by shutdown (ECANCELED).
    pub const CANCELLED: Self = Self::new(ErrorKind::Cancelled, libc::ECANCELED);

    /// Classify an errno.
    pub const fn from_errno(errno: i32) -> Self {
        let kind = match errno {
            libc::ENOSPC | libc::EDQUOT => ErrorKind::NoSpace,
            libc::EROFS | libc::EBADF | libc::EPERM | libc::EACCES => ErrorKind::ReadOnly,
            libc::EOPNOTSUPP | libc::ENOTTY | libc::ENOSYS => ErrorKind::Unsupported,
            libc::ENXIO | libc::EOVERFLOW | libc::EFBIG => ErrorKind::OutOfRange,
            libc::EINVAL => ErrorKind::Invalid,
            libc::ECANCELED => ErrorKind::Cancelled,
            _ => ErrorKind::Io,
        };
        Self { kind, errno }
    }

    /// The kind (what scsi-core maps to sense data).
    pub const fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The errno this error came from, 0 when it was detected without a system call.
    pub const fn errno(&self) -> i32 {
        self.errno
    }
}

impl From<io::Error> for StoreError {
    fn from(e: io::Error) -> Self {
        match e.raw_os_error() {
            Some(errno) => Self::from_errno(errno),
            None => match e.kind() {
                io::ErrorKind::InvalidInput => Self::INVALID,
                io::ErrorKind::Unsupported => Self::UNSUPPORTED,
                _ => Self::IO,
            },
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            ErrorKind::Io => "medium error",
            ErrorKind::NoSpace => "no space left to allocate",
            ErrorKind::OutOfRange => "range outside the store",
            ErrorKind::ReadOnly => "store is read-only",
            ErrorKind::Unsupported => "operation not supported",
            ErrorKind::Invalid => "invalid request",
            ErrorKind::Cancelled => "cancelled by shutdown",
        };
        if self.errno == 0 {
            f.write_str(what)
        } else {
            write!(f, "{what} ({})", io::Error::from_raw_os_error(self.errno))
        }
    }
}

impl std::error::Error for StoreError {}

/// Why a store could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpenErrorKind {
    /// A system call failed (open, stat, ioctl, set_len) with this errno.
    Os(i32),
    /// `O_DIRECT` was requested on a file system that does not support it (e.g. tmpfs).
    DirectUnsupported,
    /// The block size is not a power of two between 512 and 65536.
    BadBlockSize(u32),
    /// The size is not a multiple of the block size.
    SizeNotMultiple {
        /// Size in bytes.
        size: u64,
        /// Block size in bytes.
        block_size: u32,
    },
    /// The existing file or device is smaller than the size asked for.
    TooSmall {
        /// Actual size in bytes.
        actual: u64,
        /// Size asked for, in bytes.
        wanted: u64,
    },
    /// The size is zero.
    Empty,
    /// The path is neither a regular file nor a block device.
    NotFileOrDevice,
    /// The block size is smaller than (or not a multiple of) the device's logical sector.
    BelowSectorSize {
        /// Block size asked for.
        block_size: u32,
        /// The device's logical sector size.
        sector: u32,
    },
    /// A network store (e.g. an NBD server) could not be reached, refused the export, or
    /// does not match the configuration; the text says why (one line).
    Remote(String),
}

/// A store could not be opened; `Display` is one line naming the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenError {
    /// The path (or a label such as `<memory>`).
    pub path: PathBuf,
    /// What went wrong.
    pub kind: OpenErrorKind,
}

impl OpenError {
    pub(crate) fn new(path: impl Into<PathBuf>, kind: OpenErrorKind) -> Self {
        Self {
            path: path.into(),
            kind,
        }
    }

    pub(crate) fn os(path: impl Into<PathBuf>, e: &io::Error) -> Self {
        Self::new(
            path,
            OpenErrorKind::Os(e.raw_os_error().unwrap_or(libc::EIO)),
        )
    }
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.path.display();
        match &self.kind {
            OpenErrorKind::Os(errno) => write!(f, "{p}: {}", io::Error::from_raw_os_error(*errno)),
            OpenErrorKind::DirectUnsupported => {
                write!(f, "{p}: O_DIRECT is not supported by this file system")
            }
            OpenErrorKind::BadBlockSize(bs) => {
                write!(
                    f,
                    "{p}: block size {bs} is not a power of two between 512 and 65536"
                )
            }
            OpenErrorKind::SizeNotMultiple { size, block_size } => {
                write!(
                    f,
                    "{p}: size {size} is not a multiple of the block size {block_size}"
                )
            }
            OpenErrorKind::TooSmall { actual, wanted } => {
                write!(
                    f,
                    "{p}: is {actual} bytes, smaller than the configured size {wanted}"
                )
            }
            OpenErrorKind::Empty => write!(f, "{p}: size is zero"),
            OpenErrorKind::NotFileOrDevice => {
                write!(f, "{p}: not a regular file or block device")
            }
            OpenErrorKind::BelowSectorSize { block_size, sector } => write!(
                f,
                "{p}: block size {block_size} is not a multiple of the device sector size {sector}"
            ),
            OpenErrorKind::Remote(why) => write!(f, "{p}: {why}"),
        }
    }
}

impl std::error::Error for OpenError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_mapping() {
        assert_eq!(StoreError::from_errno(libc::EIO).kind(), ErrorKind::Io);
        assert_eq!(StoreError::from_errno(libc::EIO).errno(), libc::EIO);
        assert_eq!(
            StoreError::from_errno(libc::ENOSPC).kind(),
            ErrorKind::NoSpace
        );
        assert_eq!(
            StoreError::from_errno(libc::EDQUOT).kind(),
            ErrorKind::NoSpace
        );
        assert_eq!(
            StoreError::from_errno(libc::EROFS).kind(),
            ErrorKind::ReadOnly
        );
        assert_eq!(
            StoreError::from_errno(libc::EBADF).kind(),
            ErrorKind::ReadOnly
        );
        assert_eq!(
            StoreError::from_errno(libc::EOPNOTSUPP).kind(),
            ErrorKind::Unsupported
        );
        assert_eq!(
            StoreError::from_errno(libc::EINVAL).kind(),
            ErrorKind::Invalid
        );
        assert_eq!(
            StoreError::from_errno(libc::ECANCELED),
            StoreError::CANCELLED
        );
        assert_eq!(
            StoreError::from_errno(libc::ENXIO).kind(),
            ErrorKind::OutOfRange
        );
        assert_eq!(
            StoreError::from_errno(libc::ETIMEDOUT).kind(),
            ErrorKind::Io
        );
        let e: StoreError = io::Error::from_raw_os_error(libc::ENOSPC).into();
        assert_eq!(e, StoreError::NO_SPACE);
        let e: StoreError = io::Error::new(io::ErrorKind::InvalidInput, "x").into();
        assert_eq!(e, StoreError::INVALID);
    }

    #[test]
    fn display_is_one_line() {
        assert_eq!(
            StoreError::OUT_OF_RANGE.to_string(),
            "range outside the store"
        );
        assert!(StoreError::IO.to_string().starts_with("medium error ("));
        let e = OpenError::new(
            "/x/disk.img",
            OpenErrorKind::SizeNotMultiple {
                size: 1000,
                block_size: 512,
            },
        );
        assert_eq!(
            e.to_string(),
            "/x/disk.img: size 1000 is not a multiple of the block size 512"
        );
        let e = OpenError::new(
            "/d",
            OpenErrorKind::TooSmall {
                actual: 10,
                wanted: 4096,
            },
        );
        assert_eq!(
            e.to_string(),
            "/d: is 10 bytes, smaller than the configured size 4096"
        );
        assert!(
            !OpenError::new("/d", OpenErrorKind::Os(libc::ENOENT))
                .to_string()
                .contains('\n')
        );
    }
}
